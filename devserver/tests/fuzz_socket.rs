//! Fuzzing a running dev server over loopback, the way a broken or hostile
//! worker would talk to it. A worker connects, maybe registers, and sends a
//! handful of frames: well-formed messages with random fields (unknown enum
//! values, NaN loads, job ids nobody gave out, simulated jobs), which get
//! past the decoder into the dispatcher, and byte-mutated protobuf and
//! protojson frames, fragments, pings and closes; sometimes a job is
//! dispatched meanwhile. The offers the server makes get random answers and
//! job statuses. After each case the server must still be serving: the
//! fuzzed connection is answered or closed (never left hanging), a fresh
//! worker registers, the dispatcher answers, and nothing in the process
//! panicked.
//!
//! Each case is two real connections, so `cargo test` runs a few dozen; a
//! longer run: `PROPTEST_CASES=10000 cargo test --release -p
//! lkagent-devserver --test fuzz_socket`.

mod common;
mod fuzz_seeds;
#[path = "../../tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, mpsc};

use actix_http::ws::Item;
use awc::ws::Message;
use bytes::Bytes;
use common::{Conn, Event, connect, next_event, register_request, send, worker};
use futures_util::SinkExt as _;
use fuzz_seeds::{frame_seeds, participant};
use fuzz_support::{config, inputs, text_inputs};
use livekit_protocol::{
    AvailabilityResponse, MigrateJobRequest, Room, SimulateJobRequest, UpdateJobStatus,
    UpdateWorkerStatus, WorkerMessage, WorkerPing, server_message, worker_message,
};
use lkagent_devserver::decoders::FrameFormat;
use lkagent_devserver::{DevServer, DevServerConfig, DispatchRequest};
use proptest::prelude::*;
use prost::Message as _;

/// Panics in the server's threads (any thread of this process but the
/// test's own, whose failures proptest reports), counted by a hook
/// installed before the server starts.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The timestamp of the ping that follows a case's frames (and, plus one,
/// of the second round's): its pong proves that the server has read every
/// frame before it.
const LAST_PING: i64 = 0x5eed_f022;

/// One dev server for the whole run, on its own thread and actix system
/// (each case runs its client in a system of its own).
static SERVER: LazyLock<DevServer> = LazyLock::new(|| {
    let test_thread = std::thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != test_thread {
            PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let server = DevServer::start(DevServerConfig::default())
                .await
                .expect("dev server starts");
            tx.send(server).expect("the test waits for the server");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("the server thread sends its handle")
});

// ---- well-formed messages with random fields ----

/// Short strings that mean something to the server, and any string.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(vec!["", "AJ_unknown", "AW_unknown", "agent", "room-1", "\0"])
            .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// An enum field: a known value most often, any `i32` sometimes.
fn enumeration() -> impl Strategy<Value = i32> {
    prop_oneof![3 => -1..8i32, 1 => any::<i32>()]
}

/// A load: in range, out of range, or not a number at all.
fn load() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => 0.0f32..=1.0,
        1 => proptest::sample::select(vec![f32::NAN, f32::INFINITY, -1.0, 1e30, -0.0]),
        1 => any::<f32>(),
    ]
}

/// An answer to an offer, but for the job id, which is the offer's.
#[derive(Clone, Debug)]
struct Answer {
    available: bool,
    terminate: bool,
    identity: String,
    /// The job status sent after the answer, if any.
    status: Option<i32>,
}

fn answer() -> impl Strategy<Value = Answer> {
    (
        any::<bool>(),
        prop_oneof![4 => Just(false), 1 => Just(true)],
        text(),
        proptest::option::of(enumeration()),
    )
        .prop_map(|(available, terminate, identity, status)| Answer {
            available,
            terminate,
            identity,
            status,
        })
}

/// Any message a worker sends, with random fields.
fn worker_message() -> impl Strategy<Value = worker_message::Message> {
    use worker_message::Message as M;
    // weighted away from `Register`, which closes a registered connection
    prop_oneof![
        1 => (enumeration(), text()).prop_map(|(r#type, agent_name)| M::Register(
            livekit_protocol::RegisterWorkerRequest {
                r#type,
                agent_name,
                ..Default::default()
            }
        )),
        3 => (text(), any::<bool>(), any::<bool>(), text(), proptest::collection::hash_map(text(), text(), 0..3))
            .prop_map(|(job_id, available, terminate, participant_identity, participant_attributes)| {
                M::Availability(AvailabilityResponse {
                    job_id,
                    available,
                    terminate,
                    participant_identity,
                    participant_attributes,
                    ..Default::default()
                })
            }),
        3 => (proptest::option::of(enumeration()), load(), any::<u32>(), any::<bool>(), any::<u64>())
            .prop_map(|(status, load, job_count, draining, seq)| M::UpdateWorker(UpdateWorkerStatus {
                status,
                load,
                job_count,
                draining,
                seq,
            })),
        3 => (text(), enumeration(), text()).prop_map(|(job_id, status, error)| M::UpdateJob(
            UpdateJobStatus { job_id, status, error }
        )),
        1 => any::<i64>().prop_map(|timestamp| M::Ping(WorkerPing { timestamp })),
        4 => (enumeration(), proptest::option::of(text()), any::<bool>()).prop_map(
            |(r#type, room, with_participant)| M::SimulateJob(SimulateJobRequest {
                r#type,
                room: room.map(|name| Room { name, ..Default::default() }),
                participant: with_participant.then(participant),
            })
        ),
        2 => proptest::collection::vec(text(), 0..4)
            .prop_map(|job_ids| M::MigrateJob(MigrateJobRequest { job_ids })),
    ]
}

// ---- frames ----

/// A frame a broken worker might send.
#[derive(Clone, Debug)]
enum Sent {
    /// A well-formed message with random fields, as protobuf or protojson.
    Message(Box<worker_message::Message>, bool),
    /// A byte-mutated protobuf frame.
    Binary(Vec<u8>),
    /// A byte-mutated protojson frame (made UTF-8, as awc requires).
    Text(Vec<u8>),
    /// A binary message in two fragments, which the server refuses.
    Fragmented(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

impl Sent {
    fn messages(self) -> Vec<Message> {
        match self {
            Self::Message(message, text) => {
                let message = WorkerMessage {
                    message: Some(*message),
                };
                // protojson has no spelling for an unknown enum value:
                // such a message goes as protobuf
                match serde_json::to_string(&message) {
                    Ok(json) if text => vec![Message::Text(json.into())],
                    _ => vec![Message::Binary(message.encode_to_vec().into())],
                }
            }
            Self::Binary(bytes) => vec![Message::Binary(bytes.into())],
            Self::Text(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                vec![Message::Text(text.into())]
            }
            Self::Fragmented(bytes) => {
                let mut first = Bytes::from(bytes);
                let last = first.split_off(first.len() / 2);
                vec![
                    Message::Continuation(Item::FirstBinary(first)),
                    Message::Continuation(Item::Last(last)),
                ]
            }
            // a control frame carries at most 125 bytes
            Self::Ping(mut bytes) => {
                bytes.truncate(125);
                vec![Message::Ping(bytes.into())]
            }
            Self::Close => vec![Message::Close(None)],
        }
    }
}

/// Well-formed messages most often: a byte-mutated frame usually fails to
/// decode and ends the connection, so they come last (see [`frames`]).
fn mutated_frame() -> impl Strategy<Value = Sent> {
    let binary = || inputs(frame_seeds(FrameFormat::Binary));
    prop_oneof![
        4 => binary().prop_map(Sent::Binary),
        4 => text_inputs(frame_seeds(FrameFormat::Text)).prop_map(Sent::Text),
        1 => binary().prop_map(Sent::Fragmented),
        1 => binary().prop_map(Sent::Ping),
        1 => Just(Sent::Close),
    ]
}

/// Up to eight well-formed messages with random fields, then perhaps (one
/// time in three) a byte-mutated frame.
fn frames() -> impl Strategy<Value = Vec<Sent>> {
    (
        proptest::collection::vec(
            (worker_message(), any::<bool>())
                .prop_map(|(m, text)| Sent::Message(Box::new(m), text)),
            0..8,
        ),
        proptest::option::weighted(0.3, mutated_frame()),
    )
        .prop_map(|(mut frames, last)| {
            frames.extend(last);
            frames
        })
}

/// How a connection ended a round of [`drain`].
#[derive(Debug, PartialEq)]
enum Drained {
    /// The server answered the round's ping: the connection is open.
    Answered,
    /// The server closed the connection.
    Closed,
    /// Neither, in time: the server hangs.
    Hung,
}

/// Sends a ping, then answers every offer on `conn` with the next of
/// `answers` (and its job status), until the server answers that ping or
/// closes.
async fn drain(conn: &mut Conn, timestamp: i64, answers: &[Answer]) -> Drained {
    let ping = WorkerMessage {
        message: Some(worker_message::Message::Ping(WorkerPing { timestamp })),
    };
    let _ = conn
        .send(Message::Binary(ping.encode_to_vec().into()))
        .await;
    let mut answers = answers.iter().cycle();
    loop {
        match next_event(conn).await {
            Event::Msg(server_message::Message::Pong(pong)) if pong.last_timestamp == timestamp => {
                return Drained::Answered;
            }
            Event::Closed | Event::CloseFrame => return Drained::Closed,
            Event::TimedOut => return Drained::Hung,
            Event::Msg(server_message::Message::Availability(offer)) => {
                let (Some(job), Some(answer)) = (offer.job, answers.next()) else {
                    continue;
                };
                let reply = worker_message::Message::Availability(AvailabilityResponse {
                    job_id: job.id.clone(),
                    available: answer.available,
                    terminate: answer.terminate,
                    participant_identity: answer.identity.clone(),
                    ..Default::default()
                });
                let update = answer.status.map(|status| {
                    worker_message::Message::UpdateJob(UpdateJobStatus {
                        job_id: job.id,
                        status,
                        error: String::new(),
                    })
                });
                for message in std::iter::once(reply).chain(update) {
                    let frame = WorkerMessage {
                        message: Some(message),
                    };
                    let _ = conn
                        .send(Message::Binary(frame.encode_to_vec().into()))
                        .await;
                }
            }
            _ => {} // the register answer, an assignment, a termination
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// Frames from one broken worker leave the server serving everyone: it
    /// answers the worker's last ping or closes its connection, a new
    /// worker registers, and no code in the process panicked.
    #[test]
    fn mutated_frames_leave_the_server_serving(
        register in proptest::bool::weighted(0.8),
        dispatch in proptest::bool::weighted(0.3),
        frames in frames(),
        answers in proptest::collection::vec(answer(), 1..4),
    ) {
        let server = SERVER.clone();
        let panics = PANICS.load(Ordering::SeqCst);
        actix_rt::System::new().block_on(async move {
            let mut conn = connect(&server).await;
            if register {
                // the default agent, so that simulated jobs come back to it
                send(&mut conn, register_request("")).await;
            }
            if dispatch {
                // a job placed by load among the default agent's workers,
                // perhaps this one with a load it made up; the placement's
                // outcome is not awaited (dropped with this case's system)
                let server = server.clone();
                actix_rt::spawn(async move { server.dispatch(DispatchRequest::room("fuzz")).await });
            }
            // a write fails once the server has closed: the rest is moot
            'frames: for frame in frames {
                for message in frame.messages() {
                    if conn.send(message).await.is_err() {
                        break 'frames;
                    }
                }
            }
            // the pong of a ping sent after the frames means the session
            // has read them all and passed them on; a round trip through
            // the dispatcher then lets it act on them (a simulated job is
            // offered), and a second round answers those offers
            let first = drain(&mut conn, LAST_PING, &answers).await;
            prop_assert_ne!(&first, &Drained::Hung, "the server neither answered nor closed");
            if first == Drained::Answered {
                server.workers().await;
                let second = drain(&mut conn, LAST_PING + 1, &answers).await;
                prop_assert_ne!(second, Drained::Hung, "the server neither answered nor closed");
            }
            drop(conn);

            let (_fresh, worker_id) = worker(&server, "after-fuzz").await;
            let workers = server.workers().await;
            prop_assert!(
                workers.iter().any(|w| w.id == worker_id),
                "the dispatcher knows the new worker"
            );
            // counted from this case's start, so that shrinking finds the
            // frames that panic (if the server survived the panic at all)
            prop_assert_eq!(PANICS.load(Ordering::SeqCst), panics, "a panic in the server");
            Ok(())
        })?;
    }
}
