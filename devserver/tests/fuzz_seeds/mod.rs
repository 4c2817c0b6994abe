//! Valid messages a worker sends: the seeds that the dev server's fuzz
//! tests (`fuzz.rs`, `fuzz_socket.rs`) mutate.
#![allow(dead_code)] // each fuzz file uses its own subset

use std::collections::HashMap;

use livekit_protocol::{
    AvailabilityResponse, JobStatus, JobType, MigrateJobRequest, ParticipantInfo,
    ParticipantPermission, RegisterWorkerRequest, Room, SimulateJobRequest, TrackInfo,
    UpdateJobStatus, UpdateWorkerStatus, WorkerMessage, WorkerPing, WorkerStatus, worker_message,
};
use lkagent_devserver::decoders::FrameFormat;
use prost::Message as _;

/// A participant with a track and attributes.
pub fn participant() -> ParticipantInfo {
    ParticipantInfo {
        sid: "PA_1".into(),
        identity: "caller".into(),
        name: "Caller".into(),
        tracks: vec![TrackInfo {
            sid: "TR_1".into(),
            mime_type: "audio/opus".into(),
            ..Default::default()
        }],
        attributes: HashMap::from([("lang".into(), "en".into())]),
        ..Default::default()
    }
}

/// One of each message a worker sends, as a worker fills it.
pub fn worker_messages() -> Vec<WorkerMessage> {
    use worker_message::Message as M;
    [
        M::Register(RegisterWorkerRequest {
            r#type: JobType::JtRoom as i32,
            agent_name: "fuzzer".into(),
            version: "1.0".into(),
            namespace: Some("ns".into()),
            allowed_permissions: Some(ParticipantPermission {
                can_publish: true,
                can_publish_sources: vec![1, 2, 3],
                ..Default::default()
            }),
            ..Default::default()
        }),
        M::Availability(AvailabilityResponse {
            job_id: "AJ_1".into(),
            available: true,
            participant_identity: "agent-1".into(),
            participant_name: "Agent".into(),
            participant_metadata: "{}".into(),
            participant_attributes: HashMap::from([("k".into(), "v".into())]),
            ..Default::default()
        }),
        M::UpdateWorker(UpdateWorkerStatus {
            status: Some(WorkerStatus::WsAvailable as i32),
            load: 0.25,
            job_count: 3,
            ..Default::default()
        }),
        M::UpdateJob(UpdateJobStatus {
            job_id: "AJ_1".into(),
            status: JobStatus::JsFailed as i32,
            error: "boom".into(),
        }),
        M::Ping(WorkerPing {
            timestamp: 1_700_000_000_000,
        }),
        M::SimulateJob(SimulateJobRequest {
            r#type: JobType::JtParticipant as i32,
            room: Some(Room {
                sid: "RM_1".into(),
                name: "room".into(),
                ..Default::default()
            }),
            participant: Some(participant()),
        }),
        M::MigrateJob(MigrateJobRequest {
            job_ids: vec!["AJ_1".into(), "AJ_2".into()],
        }),
    ]
    .into_iter()
    .map(|message| WorkerMessage {
        message: Some(message),
    })
    .collect()
}

/// The encodings of [`worker_messages`] in one frame format.
pub fn frame_seeds(format: FrameFormat) -> Vec<Vec<u8>> {
    worker_messages()
        .iter()
        .map(|m| match format {
            FrameFormat::Binary => m.encode_to_vec(),
            FrameFormat::Text => serde_json::to_vec(m).expect("protojson"),
        })
        .collect()
}
