//! Fuzzing the dev server's decoders of network input: random bytes and
//! mutations of valid encodings fed to every function that reads what a
//! worker or an API client sends. Each property asserts that the decoder
//! answers instead of panicking, that what it allocates is bounded by its
//! input, and what its answer must be.
//!
//! - a worker's frames, protobuf and protojson (`decode_worker_frame`, what
//!   the session calls on every data frame);
//! - the Twirp request bodies, protobuf and JSON, for each of the seven
//!   request types the server handles (`decode_body`);
//! - the body of `POST /dev/rooms/{room}/participants` (`JoinBody`);
//! - the token of an upgrade or an API call (`extract_token`, `verify`).
//!
//! `fuzz_socket.rs` sends mutated frames to a running server over loopback.
//! A long run (see the README's *Fuzzing*):
//! `PROPTEST_CASES=1000000 cargo test --release -p lkagent-devserver --test fuzz`.

mod fuzz_seeds;
#[path = "../../tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::Bytes;
use fuzz_seeds::{frame_seeds, worker_messages};
use fuzz_support::{allocation_bound, config, inputs, peak_during, text_inputs};
use livekit_api::access_token::{AccessToken, Claims, VideoGrants};
use livekit_protocol::{
    CreateAgentDispatchRequest, CreateRoomRequest, DeleteAgentDispatchRequest, DeleteRoomRequest,
    ListAgentDispatchRequest, ListParticipantsRequest, ListRoomsRequest, ParticipantInfo,
    RoomAgentDispatch, SimulateJobRequest, TrackInfo, WorkerMessage, worker_message,
};
use lkagent_devserver::decoders::{
    BodyFormat, FrameFormat, JoinBody, decode_body, decode_worker_frame, extract_token, verify,
};
use proptest::prelude::*;
use prost::Message as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---- a worker's frames ----

/// The worst amplification we know (see `tests/fuzz_protocol.rs`): a
/// `simulate_job` whose participant has empty tracks, two bytes each on
/// the wire and 272 each decoded. About 330 times the frame, so a worker
/// can make the server hold ~700 MB for a moment with one 2 MiB frame:
/// linear, within [`allocation_bound`], but large.
#[test]
fn repeated_empty_messages_cost_a_bounded_multiple_of_the_frame() {
    let message = WorkerMessage {
        message: Some(worker_message::Message::SimulateJob(SimulateJobRequest {
            participant: Some(ParticipantInfo {
                tracks: vec![TrackInfo::default(); 50_000],
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    for format in [FrameFormat::Binary, FrameFormat::Text] {
        let bytes = match format {
            FrameFormat::Binary => message.encode_to_vec(),
            FrameFormat::Text => serde_json::to_vec(&message).unwrap(),
        };
        let (decoded, peak) = peak_during(|| decode_worker_frame(format, &bytes));
        assert!(decoded.is_some());
        assert!(
            peak <= allocation_bound(bytes.len()),
            "{peak} bytes for a {}-byte frame",
            bytes.len()
        );
    }
}

#[test]
fn frame_seeds_decode_to_the_messages_they_encode() {
    for format in [FrameFormat::Binary, FrameFormat::Text] {
        for (bytes, message) in frame_seeds(format).iter().zip(worker_messages()) {
            assert_eq!(decode_worker_frame(format, bytes), Some(message));
        }
    }
}

// ---- Twirp bodies ----

/// Bodies of one request type: mutations of its protobuf and its JSON
/// encodings and of the empty body (either decoder is fed all of them: a
/// JSON body sent as protobuf is input too).
fn body_inputs<T: prost::Message + Serialize>(messages: &[T]) -> impl Strategy<Value = Vec<u8>> {
    let mut protobuf: Vec<Vec<u8>> = messages.iter().map(|m| m.encode_to_vec()).collect();
    let mut json: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| serde_json::to_vec(m).expect("json"))
        .collect();
    protobuf.push(Vec::new());
    json.push(Vec::new());
    prop_oneof![inputs(protobuf), text_inputs(json)]
}

/// The property every body decoder must have: in either format it answers
/// with a message or a `malformed` error, within the allocation bound.
fn check_body<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: prost::Message + Default + DeserializeOwned + Serialize,
{
    let body = Bytes::copy_from_slice(bytes);
    for format in [BodyFormat::Protobuf, BodyFormat::Json] {
        let (decoded, peak) = peak_during(|| decode_body::<T>(format, &body));
        if let Err(err) = &decoded {
            prop_assert_eq!(err.code, "malformed", "{:?}", err);
        }
        prop_assert!(
            peak <= allocation_bound(bytes.len()),
            "{peak} bytes for {}",
            bytes.len()
        );
    }
    Ok(())
}

/// Checks that every seed of `T` decodes to its message in its format.
fn seeds_round_trip<T>(messages: &[T])
where
    T: prost::Message + Default + DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    for m in messages {
        let protobuf = Bytes::from(m.encode_to_vec());
        let json = Bytes::from(serde_json::to_vec(m).unwrap());
        assert_eq!(
            &decode_body::<T>(BodyFormat::Protobuf, &protobuf).unwrap(),
            m
        );
        assert_eq!(&decode_body::<T>(BodyFormat::Json, &json).unwrap(), m);
    }
    let empty = Bytes::new();
    assert_eq!(
        decode_body::<T>(BodyFormat::Json, &empty).unwrap(),
        T::default()
    );
    assert_eq!(
        decode_body::<T>(BodyFormat::Protobuf, &empty).unwrap(),
        T::default()
    );
}

fn create_dispatch() -> Vec<CreateAgentDispatchRequest> {
    vec![CreateAgentDispatchRequest {
        agent_name: "fuzzer".into(),
        room: "room-1".into(),
        metadata: "{\"a\":1}".into(),
        restart_policy: 1,
        attributes: HashMap::from([("k".into(), "v".into())]),
        ..Default::default()
    }]
}

fn delete_dispatch() -> Vec<DeleteAgentDispatchRequest> {
    vec![DeleteAgentDispatchRequest {
        dispatch_id: "AD_1".into(),
        room: "room-1".into(),
    }]
}

fn list_dispatch() -> Vec<ListAgentDispatchRequest> {
    vec![ListAgentDispatchRequest {
        dispatch_id: "AD_1".into(),
        room: "room-1".into(),
    }]
}

fn create_room() -> Vec<CreateRoomRequest> {
    vec![CreateRoomRequest {
        name: "room-1".into(),
        empty_timeout: 30,
        max_participants: 10,
        metadata: "m".into(),
        tags: HashMap::from([("t".into(), "u".into())]),
        agents: vec![RoomAgentDispatch {
            agent_name: "fuzzer".into(),
            metadata: "x".into(),
            ..Default::default()
        }],
        ..Default::default()
    }]
}

fn list_rooms() -> Vec<ListRoomsRequest> {
    vec![ListRoomsRequest {
        names: vec!["a".into(), "b".into()],
    }]
}

fn delete_room() -> Vec<DeleteRoomRequest> {
    vec![DeleteRoomRequest {
        room: "room-1".into(),
    }]
}

fn list_participants() -> Vec<ListParticipantsRequest> {
    vec![ListParticipantsRequest {
        room: "room-1".into(),
    }]
}

#[test]
fn body_seeds_decode_to_the_messages_they_encode() {
    seeds_round_trip(&create_dispatch());
    seeds_round_trip(&delete_dispatch());
    seeds_round_trip(&list_dispatch());
    seeds_round_trip(&create_room());
    seeds_round_trip(&list_rooms());
    seeds_round_trip(&delete_room());
    seeds_round_trip(&list_participants());
}

// ---- tokens ----

const KEY: &str = "devkey";
const SECRET: &str = "secret";

fn keys() -> Vec<(String, String)> {
    vec![(KEY.into(), SECRET.into())]
}

/// Tokens as workers and API clients send them: an agent grant, an admin
/// grant with a name and attributes. Minted once, so that the seeds and
/// the claims a property compares with are the same tokens.
static TOKENS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let agent = AccessToken::with_api_key(KEY, SECRET)
        .with_grants(VideoGrants {
            agent: true,
            ..Default::default()
        })
        .to_jwt()
        .unwrap();
    let admin = AccessToken::with_api_key(KEY, SECRET)
        .with_identity("admin")
        .with_name("Admin")
        .with_attributes(HashMap::from([("k".to_owned(), "v".to_owned())]))
        .with_grants(VideoGrants {
            room_admin: true,
            room: "room-1".into(),
            ..Default::default()
        })
        .to_jwt()
        .unwrap();
    vec![agent, admin]
});

/// The claims of [`TOKENS`], as the server verifies them.
static SIGNED: LazyLock<Vec<Claims>> = LazyLock::new(|| {
    TOKENS
        .iter()
        .map(|t| verify(t, &keys()).expect("a seed verifies").1)
        .collect()
});

fn header_seeds() -> Vec<Vec<u8>> {
    TOKENS
        .iter()
        .map(|t| format!("Bearer {t}").into_bytes())
        .collect()
}

proptest! {
    #![proptest_config(config(2000))]

    /// A worker's binary frame: a message or `None` (the session closes
    /// the connection), never a panic, within the allocation bound.
    #[test]
    fn binary_frames_never_panic_and_stay_bounded(bytes in inputs(frame_seeds(FrameFormat::Binary))) {
        let (_, peak) = peak_during(|| decode_worker_frame(FrameFormat::Binary, &bytes));
        prop_assert!(peak <= allocation_bound(bytes.len()), "{peak} bytes for {}", bytes.len());
    }

    /// A worker's text frame (actix has checked it is UTF-8; the decoder
    /// takes any bytes all the same): the same.
    #[test]
    fn text_frames_never_panic_and_stay_bounded(bytes in text_inputs(frame_seeds(FrameFormat::Text))) {
        let (_, peak) = peak_during(|| decode_worker_frame(FrameFormat::Text, &bytes));
        prop_assert!(peak <= allocation_bound(bytes.len()), "{peak} bytes for {}", bytes.len());
    }

    /// A token, from the `Authorization` header or the query: it is
    /// refused, or it verifies with exactly the claims that were signed —
    /// a mutation never yields other grants — and never panics.
    #[test]
    fn mutated_tokens_are_refused_or_carry_the_signed_claims(bytes in inputs(header_seeds())) {
        let header = String::from_utf8_lossy(&bytes);
        let keys = keys();
        for (authorization, query) in [(Some(&*header), None), (None, header.get(7..))] {
            let (verified, peak) = peak_during(|| {
                extract_token(authorization, query).map(|token| verify(token, &keys))
            });
            if let Some(Ok((key, claims))) = verified {
                prop_assert_eq!(key, KEY);
                prop_assert!(SIGNED.contains(&claims), "unsigned claims {:?}", claims);
            }
            prop_assert!(peak <= allocation_bound(bytes.len()), "{peak} bytes for {}", bytes.len());
        }
    }

    /// `POST /dev/rooms/{room}/participants`: its JSON body decodes or is
    /// refused, within the allocation bound.
    #[test]
    fn join_bodies_never_panic(bytes in text_inputs(vec![
        br#"{"identity":"p1","name":"P","metadata":"m","attributes":{"k":"v"},"agent":false,"publish":true}"#.to_vec(),
        br#"{"identity":"p2"}"#.to_vec(),
    ])) {
        let (_, peak) = peak_during(|| serde_json::from_slice::<JoinBody>(&bytes));
        prop_assert!(peak <= allocation_bound(bytes.len()), "{peak} bytes for {}", bytes.len());
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// `AgentDispatchService/CreateDispatch`.
    #[test]
    fn create_dispatch_bodies(bytes in body_inputs(&create_dispatch())) {
        check_body::<CreateAgentDispatchRequest>(&bytes)?;
    }

    /// `AgentDispatchService/DeleteDispatch`.
    #[test]
    fn delete_dispatch_bodies(bytes in body_inputs(&delete_dispatch())) {
        check_body::<DeleteAgentDispatchRequest>(&bytes)?;
    }

    /// `AgentDispatchService/ListDispatch`.
    #[test]
    fn list_dispatch_bodies(bytes in body_inputs(&list_dispatch())) {
        check_body::<ListAgentDispatchRequest>(&bytes)?;
    }

    /// `RoomService/CreateRoom`.
    #[test]
    fn create_room_bodies(bytes in body_inputs(&create_room())) {
        check_body::<CreateRoomRequest>(&bytes)?;
    }

    /// `RoomService/ListRooms`.
    #[test]
    fn list_rooms_bodies(bytes in body_inputs(&list_rooms())) {
        check_body::<ListRoomsRequest>(&bytes)?;
    }

    /// `RoomService/DeleteRoom`.
    #[test]
    fn delete_room_bodies(bytes in body_inputs(&delete_room())) {
        check_body::<DeleteRoomRequest>(&bytes)?;
    }

    /// `RoomService/ListParticipants`.
    #[test]
    fn list_participants_bodies(bytes in body_inputs(&list_participants())) {
        check_body::<ListParticipantsRequest>(&bytes)?;
    }
}
