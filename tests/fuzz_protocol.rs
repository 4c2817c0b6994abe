//! Fuzzing the worker's decoders of network input: random bytes and
//! mutations of valid encodings (flipped bits, inserted tokens, deleted,
//! repeated and truncated spans) fed to every function that reads what the
//! server sends. Each property asserts that the decoder returns instead of
//! panicking and that what it allocates is bounded by its input.
//!
//! - binary frames (protobuf `ServerMessage`): `protocol::decode_server`;
//! - text frames (protojson), as the connection reads them (UTF-8 first):
//!   `protocol::decode_server_text`;
//! - fragmented messages: the `PartialMessageBuffer`, fed random sequences
//!   of fragments and control frames, holds no more than its bound, frees
//!   what it drops, and puts a valid message back together exactly;
//! - job metadata, which comes from whoever dispatched the job:
//!   `JobPriority::from_metadata` and the demo agent's `DemoPlan::parse`;
//! - what a fleet reads back from Redis: `JobCheckpoint::decode` (and the
//!   checkpoint it gives) and the queue's `SpawnJob`s.
//!
//! `cargo test` runs a few thousand cases in all; a long run (see the
//! README's *Fuzzing*):
//! `PROPTEST_CASES=1000000 cargo test --release --test fuzz_protocol`.

mod fuzz_support;

use std::collections::HashMap;
use std::time::SystemTime;

use actix_http::ws::Item;
use awc::ws::Frame;
use bytes::Bytes;
use fuzz_support::{allocation_bound, config, inputs, peak_during, text_inputs};
use lkagent::demo::DemoPlan;
use lkagent::proto::{
    AvailabilityRequest, Job, JobAssignment, JobState, JobTermination, ParticipantInfo,
    ParticipantPermission, RegisterWorkerResponse, Room, ServerInfo, ServerMessage, TrackInfo,
    WorkerPong, agent_http, server_message,
};
use lkagent::protocol::{
    self, CompleteMessage, FrameError, MAX_FRAME_SIZE, PartialError, PartialMessageBuffer,
};
use lkagent::recovery::JobCheckpoint;
use lkagent::{JobPriority, SpawnJob};
use proptest::prelude::*;

/// A job as the server offers it, with every part a decoder walks.
fn job() -> Job {
    Job {
        id: "AJ_fuzz".into(),
        dispatch_id: "AD_fuzz".into(),
        r#type: lkagent::proto::JobType::JtParticipant as i32,
        room: Some(Room {
            sid: "RM_fuzz".into(),
            name: "room-1".into(),
            metadata: "{\"topic\":\"fuzz\"}".into(),
            num_participants: 2,
            creation_time: 1_700_000_000,
            ..Default::default()
        }),
        participant: Some(ParticipantInfo {
            sid: "PA_fuzz".into(),
            identity: "caller".into(),
            name: "Caller".into(),
            metadata: "meta".into(),
            joined_at: 1_700_000_001,
            tracks: vec![TrackInfo {
                sid: "TR_1".into(),
                name: "mic".into(),
                mime_type: "audio/opus".into(),
                ..Default::default()
            }],
            permission: Some(ParticipantPermission {
                can_publish: true,
                can_publish_sources: vec![1, 2],
                ..Default::default()
            }),
            attributes: HashMap::from([("lang".into(), "en".into())]),
            ..Default::default()
        }),
        metadata: "{\"priority\":\"high\",\"duration_ms\":10}".into(),
        agent_name: "fuzzer".into(),
        state: Some(JobState {
            status: lkagent::proto::JobStatus::JsRunning as i32,
            participant_identity: "agent-1".into(),
            worker_id: "AW_1".into(),
            started_at: 1_700_000_002,
            ..Default::default()
        }),
        attributes: HashMap::from([("k".into(), "v".into())]),
        ..Default::default()
    }
}

/// One of each message the server sends, as the server would fill it.
fn server_messages() -> Vec<ServerMessage> {
    use server_message::Message as M;
    [
        M::Register(RegisterWorkerResponse {
            worker_id: "AW_fuzz".into(),
            server_info: Some(ServerInfo {
                version: "1.9.0".into(),
                protocol: 16,
                region: "local".into(),
                node_id: "ND_1".into(),
                agent_protocol: 1,
                ..Default::default()
            }),
            ..Default::default()
        }),
        M::Availability(AvailabilityRequest {
            job: Some(job()),
            resuming: true,
        }),
        M::Assignment(JobAssignment {
            job: Some(job()),
            url: Some("wss://example.livekit.cloud".into()),
            token: "eyJhbGciOiJIUzI1NiJ9.e30.c2ln".into(),
        }),
        M::Termination(JobTermination {
            job_id: "AJ_fuzz".into(),
        }),
        M::Pong(WorkerPong {
            last_timestamp: 1_700_000_000_000,
            timestamp: -1,
        }),
        M::GoAway(agent_http::GoAway {
            reason: "draining".into(),
        }),
    ]
    .into_iter()
    .map(|message| ServerMessage {
        message: Some(message),
    })
    .collect()
}

fn protobuf_seeds() -> Vec<Vec<u8>> {
    server_messages()
        .into_iter()
        .map(|m| protocol::encode_server(m.message.expect("seeds carry a message")))
        .collect()
}

fn protojson_seeds() -> Vec<Vec<u8>> {
    server_messages()
        .iter()
        .map(|m| serde_json::to_vec(m).expect("a message encodes as protojson"))
        .collect()
}

/// The connection's reading of a text frame: UTF-8, then protojson.
fn read_text_frame(payload: &[u8]) -> Option<Result<Option<server_message::Message>, FrameError>> {
    std::str::from_utf8(payload)
        .ok()
        .map(protocol::decode_server_text)
}

/// The worst amplification we know: a frame of empty `TrackInfo`s, two
/// bytes each on the wire and 272 bytes each decoded (three bytes, `{},`,
/// in protojson). About 330 times the frame: a 2 MiB frame costs ~700 MB
/// for a moment. Linear, within [`allocation_bound`], but large.
#[test]
fn repeated_empty_messages_cost_a_bounded_multiple_of_the_frame() {
    let job = Job {
        participant: Some(ParticipantInfo {
            tracks: vec![TrackInfo::default(); 50_000],
            ..Default::default()
        }),
        ..Default::default()
    };
    let message = server_message::Message::Availability(AvailabilityRequest {
        job: Some(job),
        resuming: false,
    });
    let text = serde_json::to_string(&ServerMessage {
        message: Some(message.clone()),
    })
    .unwrap();
    let bytes = protocol::encode_server(message);
    let (decoded, peak) = peak_during(|| protocol::decode_server(&bytes));
    assert!(matches!(decoded, Ok(Some(_))));
    assert!(
        peak <= allocation_bound(bytes.len()),
        "{peak} bytes for a {}-byte frame",
        bytes.len()
    );
    let (decoded, peak) = peak_during(|| protocol::decode_server_text(&text));
    assert!(matches!(decoded, Ok(Some(_))));
    assert!(
        peak <= allocation_bound(text.len()),
        "{peak} bytes for a {}-byte text frame",
        text.len()
    );
}

/// The meter the bounds rely on sees what a call allocates, and only that.
#[test]
fn the_allocation_meter_sees_what_a_call_holds() {
    let (held, peak) = peak_during(|| vec![0u8; 1 << 20]);
    assert!((1 << 20..(1 << 20) + 1024).contains(&peak), "{peak}");
    let (_, peak) = peak_during(|| drop(held));
    assert_eq!(peak, 0);
}

#[test]
fn the_seeds_decode_to_the_messages_they_encode() {
    let messages = server_messages();
    for (bytes, message) in protobuf_seeds().iter().zip(&messages) {
        assert_eq!(protocol::decode_server(bytes).unwrap(), message.message);
    }
    for (bytes, message) in protojson_seeds().iter().zip(&messages) {
        assert_eq!(read_text_frame(bytes).unwrap().unwrap(), message.message);
    }
}

proptest! {
    #![proptest_config(config(2000))]

    /// Binary frames: any bytes decode to a message, to nothing, or to an
    /// error — never a panic — within the allocation bound.
    #[test]
    fn binary_frames_never_panic_and_stay_bounded(bytes in inputs(protobuf_seeds())) {
        let (decoded, peak) = peak_during(|| protocol::decode_server(&bytes));
        prop_assert!(matches!(decoded, Ok(_) | Err(FrameError::Decode(_))), "{decoded:?}");
        prop_assert!(peak <= allocation_bound(bytes.len()), "{peak} bytes for {}", bytes.len());
    }

    /// Text frames, as the connection reads them: any bytes are refused as
    /// not UTF-8, or decode to a message, to nothing, or to a JSON error,
    /// within the allocation bound.
    #[test]
    fn text_frames_never_panic_and_stay_bounded(bytes in text_inputs(protojson_seeds())) {
        let (decoded, peak) = peak_during(|| read_text_frame(&bytes));
        prop_assert!(
            matches!(decoded, None | Some(Ok(_)) | Some(Err(FrameError::Json(_)))),
            "{decoded:?}"
        );
        prop_assert!(peak <= allocation_bound(bytes.len()), "{peak} bytes for {}", bytes.len());
    }

    /// Job metadata is free text from whoever dispatched the job: the
    /// priority and the demo plan read it without panicking, within the
    /// allocation bound.
    #[test]
    fn job_metadata_never_panics(bytes in text_inputs(vec![
        br#"{"priority":"urgent","duration_ms":250,"outcome":"fail"}"#.to_vec(),
        br#"{"priority":"LOW"}"#.to_vec(),
        b"plain words".to_vec(),
    ])) {
        let text = String::from_utf8_lossy(&bytes);
        let ((priority, plan), peak) = peak_during(|| {
            (JobPriority::from_metadata(&text), DemoPlan::parse(&text))
        });
        // the plan's readers are total too
        let _ = (priority, plan.duration(), plan.outcome());
        prop_assert!(peak <= allocation_bound(text.len()), "{peak} bytes for {}", text.len());
    }
}

// ---- what the fleet reads back from Redis ----

/// A checkpoint as a worker writes it: a job, an owner, saved state.
fn checkpoint_seeds() -> Vec<Vec<u8>> {
    let mut checkpoint = JobCheckpoint::new(&job(), "agent-1", SystemTime::UNIX_EPOCH)
        .with_owner("worker-a")
        .with_fleet_queue();
    checkpoint.save("progress_ms", &250u64).unwrap();
    checkpoint.save("notes", &["a", "b"]).unwrap();
    let spawn = SpawnJob::new("room-1").priority(JobPriority::High);
    vec![
        checkpoint.encode(),
        JobCheckpoint::new(&Job::default(), "", SystemTime::UNIX_EPOCH).encode(),
        serde_json::to_vec(&spawn).unwrap(),
        br#"{"room":"r","job_type":"JT_PUBLISHER","resources":{"slots":2}}"#.to_vec(),
    ]
}

proptest! {
    #![proptest_config(config(1000))]

    /// Checkpoints and queued jobs come back from Redis, which anything on
    /// the network may have written: a record decodes or is refused, and
    /// a decoded checkpoint can be read, changed and emptied (its state
    /// size counted down to zero, never below) without a panic, within
    /// the allocation bound.
    #[test]
    fn records_read_from_the_fleet_store_never_panic(bytes in text_inputs(checkpoint_seeds())) {
        let (checkpoint, peak) = peak_during(|| JobCheckpoint::decode(&bytes));
        prop_assert!(peak <= allocation_bound(bytes.len()), "{peak} bytes for {}", bytes.len());
        let (_, peak) = peak_during(|| serde_json::from_slice::<SpawnJob>(&bytes));
        prop_assert!(peak <= allocation_bound(bytes.len()), "{peak} bytes for {}", bytes.len());
        if let Ok(mut checkpoint) = checkpoint {
            let _ = checkpoint.job();
            let keys: Vec<String> = checkpoint.keys().map(str::to_owned).collect();
            for key in &keys {
                let _ = checkpoint.load::<serde_json::Value>(key);
            }
            let _ = checkpoint.save("progress_ms", &1u64);
            for key in keys.iter().chain([&"progress_ms".to_owned()]) {
                checkpoint.remove(key);
            }
            prop_assert_eq!(checkpoint.state_bytes(), 0);
            prop_assert_eq!(JobCheckpoint::decode(&checkpoint.encode()).map(|c| c.job_id().to_owned()).ok(), Some(checkpoint.job_id().to_owned()));
        }
    }
}

// ---- fragmented messages ----

/// The bound the fragment properties use: small, so that random sequences
/// reach it often.
const SMALL_MAX: usize = 256;

/// What the buffer may allocate beyond the fragments it is given: its
/// message grows by doubling up to the bound, and while it grows the old
/// and the new block are both held for a moment.
const BUFFER_SLACK: usize = 3 * SMALL_MAX + 1024;

/// A payload of up to twice the bound (some fragments overflow on their
/// own). Only its length matters to the buffer, so it is one byte
/// repeated: random contents would cost most of the test's time.
fn payload() -> impl Strategy<Value = Bytes> {
    (0..=2 * SMALL_MAX, any::<u8>()).prop_map(|(len, byte)| Bytes::from(vec![byte; len]))
}

/// A frame the connection can read (awc's `Frame` is not `Clone`, which a
/// strategy's values must be).
#[derive(Clone, Debug)]
enum Input {
    FirstText(Bytes),
    FirstBinary(Bytes),
    Continue(Bytes),
    Last(Bytes),
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close,
}

impl Input {
    fn frame(&self) -> Frame {
        match self.clone() {
            Self::FirstText(b) => Frame::Continuation(Item::FirstText(b)),
            Self::FirstBinary(b) => Frame::Continuation(Item::FirstBinary(b)),
            Self::Continue(b) => Frame::Continuation(Item::Continue(b)),
            Self::Last(b) => Frame::Continuation(Item::Last(b)),
            Self::Text(b) => Frame::Text(b),
            Self::Binary(b) => Frame::Binary(b),
            Self::Ping(b) => Frame::Ping(b),
            Self::Pong(b) => Frame::Pong(b),
            Self::Close => Frame::Close(None),
        }
    }

    fn is_fragment(&self) -> bool {
        matches!(
            self,
            Self::FirstText(_) | Self::FirstBinary(_) | Self::Continue(_) | Self::Last(_)
        )
    }

    fn is_control(&self) -> bool {
        matches!(self, Self::Ping(_) | Self::Pong(_) | Self::Close)
    }
}

/// Any frame, fragments most often.
fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        2 => payload().prop_map(Input::FirstText),
        2 => payload().prop_map(Input::FirstBinary),
        6 => payload().prop_map(Input::Continue),
        3 => payload().prop_map(Input::Last),
        1 => payload().prop_map(Input::Text),
        1 => payload().prop_map(Input::Binary),
        1 => payload().prop_map(Input::Ping),
        1 => payload().prop_map(Input::Pong),
        1 => Just(Input::Close),
    ]
}

/// Cuts `message` into fragments at `cuts` (positions, any order) and puts
/// control frames where `controls` says (after the fragment of that index).
fn fragments(message: &Bytes, text: bool, cuts: &[usize], controls: &[usize]) -> Vec<Frame> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (message.len() + 1)).collect();
    at.push(0);
    at.push(message.len());
    at.sort_unstable();
    let pieces: Vec<Bytes> = at.windows(2).map(|w| message.slice(w[0]..w[1])).collect();
    let last = pieces.len() - 1;
    let mut frames = Vec::new();
    for (i, piece) in pieces.into_iter().enumerate() {
        let item = match i {
            0 if text => Item::FirstText(piece),
            0 => Item::FirstBinary(piece),
            i if i == last => Item::Last(piece),
            _ => Item::Continue(piece),
        };
        frames.push(Frame::Continuation(item));
        if controls.contains(&i) && i != last {
            frames.push(Frame::Ping(Bytes::from_static(b"between")));
        }
    }
    // a first fragment that is also the last cannot be expressed: end it
    if last == 0 {
        frames.push(Frame::Continuation(Item::Last(Bytes::new())));
    }
    frames
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any sequence of frames: the buffer never panics, never holds more
    /// than its bound, holds nothing (and has freed what it held) whenever
    /// no message is open, and returns only what it was given: a
    /// reassembled message is never larger than the bound, and every
    /// other frame comes back as it went in.
    #[test]
    fn any_frame_sequence_stays_within_the_bound(inputs in proptest::collection::vec(input(), 0..64)) {
        // build every frame now, and keep them: their payloads are then
        // shared (the first clone of a `Bytes` made from a `Vec` allocates
        // its shared header), and feeding a clone frees nothing, so that
        // the meter sees only what the buffer allocates
        let kept: Vec<Frame> = inputs.iter().map(Input::frame).collect();
        let mut buf = PartialMessageBuffer::new(SMALL_MAX);
        let base = fuzz_support::live();
        for input in &inputs {
            let before = (buf.is_open(), buf.buffered());
            let (out, peak) = peak_during(|| buf.feed(input.frame()));
            prop_assert!(peak <= BUFFER_SLACK, "{peak} bytes allocated by one feed");
            prop_assert!(buf.buffered() <= buf.max());
            match out {
                Ok(Some(Frame::Text(b) | Frame::Binary(b))) if input.is_fragment() => {
                    prop_assert!(b.len() <= SMALL_MAX);
                    prop_assert!(!buf.is_open());
                }
                Ok(Some(out)) => prop_assert_eq!(out, input.frame()),
                Ok(None) => prop_assert!(input.is_fragment()),
                Err(PartialError::Overflow { size, max }) => {
                    prop_assert!(size > max && max == SMALL_MAX);
                    prop_assert_eq!(buf.buffered(), 0, "an overflow frees the message");
                }
                Err(_) => prop_assert!(!buf.is_open(), "a protocol error resets the buffer"),
            }
            if input.is_control() {
                prop_assert_eq!((buf.is_open(), buf.buffered()), before);
            }
            let held = fuzz_support::live() - base;
            if buf.buffered() == 0 {
                prop_assert!(held <= 0, "{held} bytes held with no message buffered");
            } else {
                prop_assert!(held <= 2 * SMALL_MAX as isize, "{held} bytes held");
            }
        }
        drop(kept);
    }

    /// A message within the bound, cut anywhere and with control frames
    /// between its fragments, comes back exactly; one over the bound is
    /// refused once, and the message after it is read normally.
    #[test]
    fn a_fragmented_message_reassembles_exactly(
        message in proptest::collection::vec(any::<u8>(), 0..=SMALL_MAX + 64).prop_map(Bytes::from),
        text in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        controls in proptest::collection::vec(0usize..12, 0..4),
    ) {
        let mut buf = PartialMessageBuffer::new(SMALL_MAX);
        let mut complete = Vec::new();
        let mut overflows = 0;
        for frame in fragments(&message, text, &cuts, &controls) {
            match buf.feed(frame) {
                Ok(Some(Frame::Ping(_))) => {}
                Ok(Some(whole)) => complete.push(whole),
                Ok(None) => {}
                Err(PartialError::Overflow { .. }) => overflows += 1,
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
        if message.len() <= SMALL_MAX {
            let want = if text { Frame::Text(message) } else { Frame::Binary(message) };
            prop_assert_eq!(complete, vec![want]);
            prop_assert_eq!(overflows, 0);
        } else {
            prop_assert!(complete.is_empty());
            prop_assert_eq!(overflows, 1);
        }
        prop_assert!(!buf.is_open());
        // the next message is read normally
        buf.push(Item::FirstBinary(Bytes::from_static(b"next"))).unwrap();
        prop_assert_eq!(
            buf.push(Item::Last(Bytes::new())),
            Ok(Some(CompleteMessage::Binary(Bytes::from_static(b"next"))))
        );
    }

    /// A real server message, fragmented at the protocol's bound, decodes
    /// after reassembly to the message that was sent.
    #[test]
    fn a_fragmented_server_message_decodes_to_the_original(
        which in 0usize..6,
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let message = server_messages().swap_remove(which);
        let bytes = Bytes::from(protocol::encode_server(message.message.clone().unwrap()));
        let mut buf = PartialMessageBuffer::new(MAX_FRAME_SIZE);
        let mut whole = None;
        for frame in fragments(&bytes, false, &cuts, &[0]) {
            if let Some(Frame::Binary(b)) = buf.feed(frame).unwrap() {
                whole = Some(b);
            }
        }
        let whole = whole.expect("the last fragment completes the message");
        prop_assert_eq!(protocol::decode_server(&whole).unwrap(), message.message);
    }
}
