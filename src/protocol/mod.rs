//! The wire format of the agent protocol, without sockets.
//!
//! A worker talks to the server over one websocket. Binary frames carry a
//! protobuf `WorkerMessage` (worker → server) or `ServerMessage` (server →
//! worker); text frames carry the same messages as protojson. This module turns
//! those frames into typed messages and back, enforces the frame size the
//! server allows, builds the `/agent` URL, and puts fragmented messages back
//! together within that size ([`PartialMessageBuffer`]). It knows nothing of
//! the socket that moves the bytes (see `actors/connection.rs`).

mod partial;

pub use partial::{CompleteMessage, PartialError, PartialMessageBuffer};

use livekit_protocol::{ServerMessage, server_message, worker_message};
use prost::Message as _;
use url::Url;

/// The largest frame either side accepts: the server closes the socket above
/// this, so the worker refuses to send anything larger and its websocket codec
/// is raised to accept this much (the codec's own default is 64 KiB).
pub const MAX_FRAME_SIZE: usize = 2 << 20;

/// The agent protocol version the worker asks for in the URL.
pub const AGENT_PROTOCOL: u32 = 1;

/// Why a frame could not be turned into a message or onto the wire.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame is larger than [`MAX_FRAME_SIZE`]; the server would close the
    /// connection over it, so it is never sent.
    #[error("frame of {size} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Size of the encoded frame.
        size: usize,
        /// The limit it broke.
        max: usize,
    },
    /// The bytes are not a valid protobuf message: the stream can no longer be
    /// trusted and the connection should be re-established.
    #[error("malformed protobuf frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The text is not valid protojson for the message.
    #[error("malformed protojson frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a worker message as the payload of one binary frame. It borrows
/// the message, so a caller whose write fails still holds it to retry.
pub fn encode_worker(message: &worker_message::Message) -> Result<Vec<u8>, FrameError> {
    // a `WorkerMessage` is exactly its oneof field on the wire
    let size = message.encoded_len();
    check_size(size)?;
    let mut bytes = Vec::with_capacity(size);
    message.encode(&mut bytes);
    Ok(bytes)
}

/// Decodes the payload of a binary frame from the server.
///
/// `Ok(None)` is an empty message, or one whose kind this version does not
/// know (prost skips unknown fields): harmless, to be logged and ignored.
pub fn decode_server(payload: &[u8]) -> Result<Option<server_message::Message>, FrameError> {
    check_size(payload.len())?;
    Ok(ServerMessage::decode(payload)?.message)
}

/// Decodes the payload of a text frame (protojson) from the server, with the
/// same meaning of `Ok(None)` as [`decode_server`].
pub fn decode_server_text(payload: &str) -> Result<Option<server_message::Message>, FrameError> {
    check_size(payload.len())?;
    Ok(serde_json::from_str::<ServerMessage>(payload)?.message)
}

/// The answer to an offer: `available: true` as `accepted`'s participant
/// (the server mints the room token for that identity, with that name,
/// metadata and attributes), or `available: false`.
pub fn availability_answer(
    job_id: &str,
    accepted: Option<&crate::handler::Participant>,
) -> livekit_protocol::AvailabilityResponse {
    match accepted {
        Some(participant) => livekit_protocol::AvailabilityResponse {
            job_id: job_id.to_owned(),
            available: true,
            participant_identity: participant.identity.clone(),
            participant_name: participant.name.clone(),
            participant_metadata: participant.metadata.clone(),
            participant_attributes: participant.attributes.clone(),
            ..Default::default()
        },
        None => livekit_protocol::AvailabilityResponse {
            job_id: job_id.to_owned(),
            available: false,
            ..Default::default()
        },
    }
}

/// Encodes a server message as a binary frame payload (used by tests and tools
/// that play the server's side).
pub fn encode_server(message: server_message::Message) -> Vec<u8> {
    ServerMessage {
        message: Some(message),
    }
    .encode_to_vec()
}

fn check_size(size: usize) -> Result<(), FrameError> {
    if size > MAX_FRAME_SIZE {
        Err(FrameError::TooLarge {
            size,
            max: MAX_FRAME_SIZE,
        })
    } else {
        Ok(())
    }
}

/// Why a server URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// The text does not parse as a URL at all.
    #[error("not a URL: {0}")]
    Parse(#[from] url::ParseError),
    /// The scheme is not one a LiveKit server speaks.
    #[error("unsupported scheme {0:?}: use http, https, ws or wss")]
    Scheme(String),
}

/// Builds the websocket URL of the agent endpoint from a server URL.
///
/// `http` becomes `ws` and `https` becomes `wss`; a path prefix is kept (a
/// server behind a reverse proxy at `/livekit` serves `/livekit/agent`), and
/// `protocol=1` is added to the query.
pub fn agent_url(server_url: &str) -> Result<Url, UrlError> {
    let mut url = Url::parse(server_url.trim())?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => return Err(UrlError::Scheme(other.to_owned())),
    };
    url.set_scheme(scheme)
        .map_err(|()| UrlError::Scheme(scheme.to_owned()))?;
    let path = format!("{}/agent", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.query_pairs_mut()
        .append_pair("protocol", &AGENT_PROTOCOL.to_string());
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acceptance_carries_the_participant_and_a_refusal_nothing() {
        let participant = crate::handler::Participant {
            identity: "agent-7".into(),
            name: "Agent".into(),
            metadata: "{}".into(),
            attributes: [("k".to_owned(), "v".to_owned())].into(),
        };
        let yes = availability_answer("AJ_1", Some(&participant));
        assert!(yes.available && !yes.terminate);
        assert_eq!(
            (yes.job_id.as_str(), yes.participant_identity.as_str()),
            ("AJ_1", "agent-7")
        );
        assert_eq!(yes.participant_name, "Agent");
        assert_eq!(yes.participant_attributes["k"], "v");
        let no = availability_answer("AJ_2", None);
        assert!(!no.available && !no.terminate);
        assert!(no.participant_identity.is_empty() && no.job_id == "AJ_2");
    }
    use livekit_protocol::{JobTermination, UpdateJobStatus, WorkerMessage, WorkerPong};

    #[test]
    fn worker_message_round_trips_through_a_binary_frame() {
        let bytes = encode_worker(&worker_message::Message::UpdateJob(UpdateJobStatus {
            job_id: "AJ_1".into(),
            status: livekit_protocol::JobStatus::JsSuccess as i32,
            error: String::new(),
        }))
        .unwrap();
        let decoded = WorkerMessage::decode(bytes.as_slice()).unwrap();
        match decoded.message {
            Some(worker_message::Message::UpdateJob(update)) => assert_eq!(update.job_id, "AJ_1"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_worker_message_is_refused() {
        let err = encode_worker(&worker_message::Message::UpdateJob(UpdateJobStatus {
            job_id: "AJ_1".into(),
            status: 0,
            error: "x".repeat(MAX_FRAME_SIZE),
        }))
        .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn server_frames_decode_to_typed_messages() {
        let bytes = encode_server(server_message::Message::Termination(JobTermination {
            job_id: "AJ_2".into(),
        }));
        match decode_server(&bytes).unwrap() {
            Some(server_message::Message::Termination(t)) => assert_eq!(t.job_id, "AJ_2"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_and_unknown_server_frames_are_harmless() {
        assert!(decode_server(&[]).unwrap().is_none());
        // field 15, varint 1: a message kind this version does not know
        assert!(decode_server(&[0x78, 0x01]).unwrap().is_none());
    }

    #[test]
    fn garbage_and_oversized_server_frames_are_errors() {
        assert!(matches!(
            decode_server(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::Decode(_))
        ));
        let big = vec![0u8; MAX_FRAME_SIZE + 1];
        assert!(matches!(
            decode_server(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn text_frames_decode_from_protojson() {
        let msg = decode_server_text(r#"{"pong":{"lastTimestamp":"5","timestamp":"7"}}"#).unwrap();
        assert_eq!(
            msg,
            Some(server_message::Message::Pong(WorkerPong {
                last_timestamp: 5,
                timestamp: 7
            }))
        );
        assert!(decode_server_text("not json").is_err());
    }

    #[test]
    fn agent_url_maps_schemes_and_keeps_prefixes() {
        let cases = [
            (
                "http://localhost:7880",
                "ws://localhost:7880/agent?protocol=1",
            ),
            (
                "https://x.livekit.cloud",
                "wss://x.livekit.cloud/agent?protocol=1",
            ),
            (
                "ws://127.0.0.1:7880/",
                "ws://127.0.0.1:7880/agent?protocol=1",
            ),
            ("wss://h/livekit/", "wss://h/livekit/agent?protocol=1"),
        ];
        for (input, want) in cases {
            assert_eq!(agent_url(input).unwrap().as_str(), want, "{input}");
        }
    }

    #[test]
    fn agent_url_rejects_other_schemes_and_junk() {
        assert!(matches!(agent_url("ftp://h"), Err(UrlError::Scheme(_))));
        assert!(matches!(agent_url("localhost"), Err(UrlError::Parse(_))));
    }
}
