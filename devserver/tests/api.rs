//! The Twirp APIs through the official Rust SDK (`livekit-api`), raw-protocol
//! workers on the websocket side: dispatch rules, rooms, participants, auth.

mod common;

use std::time::Duration;

use common::*;
use livekit_api::access_token::VideoGrants;
use livekit_api::services::ServerError;
use livekit_api::services::ServiceError;
use livekit_api::services::room::CreateRoomOptions;
use livekit_protocol::{
    CreateAgentDispatchRequest, CreateRoomRequest, JobRestartPolicy, JobStatus, JobType,
    ListRoomsResponse, Room, RoomAgentDispatch, participant_info, server_message,
};
use lkagent_devserver::DevServerConfig;
use prost::Message as _;

fn twirp_code(err: &ServiceError) -> &str {
    match err {
        ServiceError::Twirp(ServerError::Twirp(code)) => &code.code,
        other => panic!("expected a Twirp error, got {other:?}"),
    }
}

fn named(room: &str, agent: &str) -> CreateAgentDispatchRequest {
    CreateAgentDispatchRequest {
        agent_name: agent.into(),
        room: room.into(),
        metadata: "md".into(),
        restart_policy: JobRestartPolicy::JrpNever as i32,
        ..Default::default()
    }
}

#[actix_rt::test]
async fn create_list_delete_dispatch_with_the_official_client() {
    let server = server().await;
    let (mut bot, bot_id) = worker(&server, "bot").await;
    let client = dispatch_client(&server);

    let dispatch = client.create_dispatch(named("r1", "bot")).await.unwrap();
    assert!(dispatch.id.starts_with("AD_"));
    assert_eq!(
        (dispatch.agent_name.as_str(), dispatch.room.as_str()),
        ("bot", "r1")
    );

    let job = expect_availability(&mut bot).await;
    assert_eq!(job.dispatch_id, dispatch.id);
    assert_eq!(
        (job.agent_name.as_str(), job.metadata.as_str()),
        ("bot", "md")
    );
    assert_eq!(job.r#type, JobType::JtRoom as i32);
    answer(&mut bot, &job.id, true, "agent-bot").await;
    assert!(matches!(
        next_msg(&mut bot).await,
        server_message::Message::Assignment(_)
    ));
    update_job(&mut bot, &job.id, JobStatus::JsRunning, "").await;
    server
        .wait_job(&job.id, DEADLINE, |j| !j.updates.is_empty())
        .await
        .unwrap();

    // The room was created with its default dispatch (no unnamed worker, so
    // no job for it) and holds the explicit one with its running job.
    let listed = client.list_dispatch("r1").await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let default = listed.iter().find(|d| d.agent_name.is_empty()).unwrap();
    assert!(default.state.as_ref().unwrap().jobs.is_empty());
    let ours = listed.iter().find(|d| d.id == dispatch.id).unwrap();
    let jobs = &ours.state.as_ref().unwrap().jobs;
    assert_eq!(jobs.len(), 1);
    let state = jobs[0].state.as_ref().unwrap();
    assert_eq!(state.status, JobStatus::JsRunning as i32);
    assert_eq!(state.worker_id, bot_id);
    assert_eq!(state.participant_identity, "agent-bot");
    let one = client.get_dispatch(&dispatch.id, "r1").await.unwrap();
    assert_eq!(one.map(|d| d.id), Some(dispatch.id.clone()));

    // DeleteDispatch: termination to the worker, the job ends as a success.
    let deleted = client.delete_dispatch(&dispatch.id, "r1").await.unwrap();
    assert!(deleted.state.as_ref().unwrap().deleted_at > 0);
    match next_msg(&mut bot).await {
        server_message::Message::Termination(t) => assert_eq!(t.job_id, job.id),
        other => panic!("expected termination, got {other:?}"),
    }
    assert_eq!(
        server.job(&job.id).await.unwrap().status,
        JobStatus::JsSuccess
    );
    let listed = client.list_dispatch("r1").await.unwrap();
    assert!(listed.iter().all(|d| d.id != dispatch.id));
    let again = client
        .delete_dispatch(&dispatch.id, "r1")
        .await
        .unwrap_err();
    assert_eq!(twirp_code(&again), "not_found");
}

#[actix_rt::test]
async fn default_dispatch_goes_to_unnamed_workers_and_named_to_named() {
    let server = server().await;
    let (mut unnamed, unnamed_id) = worker(&server, "").await;
    let (mut bot, bot_id) = worker(&server, "bot").await;
    let rooms = room_client(&server);

    // A room without `agents`: one job, for the unnamed worker.
    let room = rooms
        .create_room("plain", CreateRoomOptions::default())
        .await
        .unwrap();
    assert!(room.sid.starts_with("RM_"));
    let job = expect_availability(&mut unnamed).await;
    assert_eq!(job.room.as_ref().unwrap().name, "plain");
    assert_eq!(job.agent_name, "");
    answer(&mut unnamed, &job.id, true, "").await;
    let plain = wait_jobs(&server, 1, |j| j.room == "plain" && j.worker_id.is_some()).await;
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].worker_id.as_deref(), Some(unnamed_id.as_str()));
    // CreateRoom again: the same room, no second launch.
    let again = rooms
        .create_room("plain", CreateRoomOptions::default())
        .await
        .unwrap();
    assert_eq!(again.sid, room.sid);

    // A room naming an agent (the Rust SDK has no `agents` option: the same
    // Twirp call, in protobuf, by hand): one job, for the named worker.
    let token = grant_token(VideoGrants {
        room_create: true,
        ..Default::default()
    });
    let request = CreateRoomRequest {
        name: "named".into(),
        agents: vec![RoomAgentDispatch {
            agent_name: "bot".into(),
            metadata: "for-bot".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (status, ct, body) = post(
        &server,
        "/twirp/livekit.RoomService/CreateRoom",
        "application/protobuf",
        Some(&token),
        request.encode_to_vec(),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/protobuf"));
    assert_eq!(Room::decode(&body[..]).unwrap().name, "named");
    let job = expect_availability(&mut bot).await;
    assert_eq!(
        (job.agent_name.as_str(), job.metadata.as_str()),
        ("bot", "for-bot")
    );
    answer(&mut bot, &job.id, true, "").await;
    let named = wait_jobs(&server, 1, |j| j.room == "named" && j.worker_id.is_some()).await;
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].worker_id.as_deref(), Some(bot_id.as_str()));
    // Both rooms listed; a filter by name works.
    let all = rooms.list_rooms(vec![]).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["plain", "named"]
    );
    let some = rooms.list_rooms(vec!["named".into()]).await.unwrap();
    assert_eq!(some.len(), 1);
}

#[actix_rt::test]
async fn one_job_per_namespace_and_none_without_workers() {
    let server = server().await;
    let (mut a, _) = worker_of(&server, "bot", JobType::JtRoom, Some("ns-a")).await;
    let (mut b, _) = worker_of(&server, "bot", JobType::JtRoom, Some("ns-b")).await;
    dispatch_client(&server)
        .create_dispatch(named("ns", "bot"))
        .await
        .unwrap();
    let job_a = expect_availability(&mut a).await;
    let job_b = expect_availability(&mut b).await;
    assert_ne!(job_a.id, job_b.id);
    assert_eq!(job_a.dispatch_id, job_b.dispatch_id);

    // Nobody registered as "ghost": the dispatch exists, no job is launched.
    let d = dispatch_client(&server)
        .create_dispatch(named("ns", "ghost"))
        .await
        .unwrap();
    let jobs = server.jobs().await;
    assert!(jobs.iter().all(|j| j.dispatch_id != d.id), "{jobs:?}");
}

#[actix_rt::test]
async fn a_decline_moves_on_to_the_next_worker() {
    let server = server().await;
    let (mut a, id_a) = worker(&server, "bot").await;
    let (mut b, id_b) = worker(&server, "bot").await;
    dispatch_client(&server)
        .create_dispatch(named("r", "bot"))
        .await
        .unwrap();
    let (second, second_id) = tokio::select! {
        job = expect_availability(&mut a) => { answer(&mut a, &job.id, false, "").await; (&mut b, id_b) }
        job = expect_availability(&mut b) => { answer(&mut b, &job.id, false, "").await; (&mut a, id_a) }
    };
    let job = expect_availability(second).await;
    answer(second, &job.id, true, "").await;
    let done = server
        .wait_job(&job.id, DEADLINE, |j| j.worker_id.is_some())
        .await
        .unwrap();
    assert_eq!(done.worker_id, Some(second_id));
    assert_eq!(done.status, JobStatus::JsRunning);
}

#[actix_rt::test]
async fn no_answer_in_time_fails_the_job_and_lists_no_job() {
    let server = server_with(DevServerConfig {
        availability_timeout: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let (mut bot, _) = worker(&server, "bot").await;
    let client = dispatch_client(&server);
    let d = client.create_dispatch(named("slow", "bot")).await.unwrap();
    let job = expect_availability(&mut bot).await;
    let failed = server
        .wait_job(&job.id, DEADLINE, |j| j.status == JobStatus::JsFailed)
        .await
        .unwrap();
    assert!(failed.error.contains("did not answer"), "{}", failed.error);
    // As on the server, a job that never reached a worker is not in the
    // dispatch's state.
    let listed = client.get_dispatch(&d.id, "slow").await.unwrap().unwrap();
    assert!(listed.state.unwrap().jobs.is_empty());
}

#[actix_rt::test]
async fn participants_rooms_and_delete_room() {
    let server = server().await;
    let (mut participant_worker, _) = worker_of(&server, "", JobType::JtParticipant, None).await;
    let (mut publisher_worker, _) = worker_of(&server, "", JobType::JtPublisher, None).await;
    let (mut room_worker, _) = worker(&server, "").await;
    let rooms = room_client(&server);

    // A participant joins and publishes: the room is created (its room job),
    // and each of the other kinds gets a job naming the participant.
    let (status, _) = join(
        &server,
        "live",
        serde_json::json!({"identity": "alice", "name": "Alice", "publish": true}),
    )
    .await;
    assert_eq!(status, 200);
    let room_job = expect_availability(&mut room_worker).await;
    assert!(room_job.participant.is_none());
    let pj = expect_availability(&mut participant_worker).await;
    assert_eq!(pj.r#type, JobType::JtParticipant as i32);
    assert_eq!(pj.participant.as_ref().unwrap().identity, "alice");
    let pubj = expect_availability(&mut publisher_worker).await;
    assert_eq!(pubj.r#type, JobType::JtPublisher as i32);
    assert_eq!(pubj.participant.as_ref().unwrap().identity, "alice");

    // An agent participant triggers nothing.
    let before = server.jobs().await.len();
    let (status, _) = join(
        &server,
        "live",
        serde_json::json!({"identity": "bot-1", "agent": true}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(server.jobs().await.len(), before);

    // The room job's agent shows in ListParticipants once accepted.
    answer(&mut room_worker, &room_job.id, true, "agent-room").await;
    assert!(matches!(
        next_msg(&mut room_worker).await,
        server_message::Message::Assignment(_)
    ));
    server
        .wait_job(&room_job.id, DEADLINE, |j| j.worker_id.is_some())
        .await
        .unwrap();
    let people = rooms.list_participants("live").await.unwrap();
    let agent = people
        .iter()
        .find(|p| p.identity == "agent-room")
        .expect("agent listed");
    assert_eq!(agent.kind, participant_info::Kind::Agent as i32);
    assert_eq!(agent.attributes["lk.agent_name"], "");
    assert!(
        people
            .iter()
            .any(|p| p.identity == "alice" && p.is_publisher)
    );

    // DeleteRoom ends the room's jobs: termination, success; the room is gone.
    rooms.delete_room("live").await.unwrap();
    match next_msg(&mut room_worker).await {
        server_message::Message::Termination(t) => assert_eq!(t.job_id, room_job.id),
        other => panic!("expected termination, got {other:?}"),
    }
    assert_eq!(
        server.job(&room_job.id).await.unwrap().status,
        JobStatus::JsSuccess
    );
    assert!(rooms.list_rooms(vec![]).await.unwrap().is_empty());
    let err = rooms.list_participants("live").await.unwrap_err();
    assert_eq!(twirp_code(&err), "not_found");
}

#[actix_rt::test]
async fn tokens_and_grants_are_checked_with_twirp_errors() {
    let server = server().await;
    let wrong_room = grant_token(VideoGrants {
        room_admin: true,
        room: "other".into(),
        ..Default::default()
    });
    let client = livekit_api::services::agent_dispatch::AgentDispatchClient::with_token(
        &server.http_url(),
        &wrong_room,
    );
    let err = client.list_dispatch("mine").await.unwrap_err();
    assert_eq!(twirp_code(&err), "unauthenticated");
    let bad_key = livekit_api::services::room::RoomClient::with_api_key(
        &server.http_url(),
        "devkey",
        "not-the-secret",
    );
    let err = bad_key.list_rooms(vec![]).await.unwrap_err();
    assert_eq!(twirp_code(&err), "unauthenticated");

    // Raw: no token is a 401 with a Twirp JSON body.
    let (status, ct, body) = post(
        &server,
        "/twirp/livekit.RoomService/ListRooms",
        "application/json",
        None,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!((status, ct.as_str()), (401, "application/json"));
    let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["code"], "unauthenticated");
    assert!(err["msg"].is_string());
    // An unknown method is a bad route.
    let token = grant_token(VideoGrants {
        room_list: true,
        ..Default::default()
    });
    let (status, _, body) = post(
        &server,
        "/twirp/livekit.RoomService/Nope",
        "application/json",
        Some(&token),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"],
        "bad_route"
    );
}

#[actix_rt::test]
async fn json_bodies_are_served_in_json() {
    let server = server().await;
    let token = grant_token(VideoGrants {
        room_create: true,
        room_list: true,
        ..Default::default()
    });
    let (status, ct, body) = post(
        &server,
        "/twirp/livekit.RoomService/CreateRoom",
        "application/json",
        Some(&token),
        br#"{"name": "json-room", "agents": [{"agentName": "bot"}]}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status, ct.as_str()),
        (200, "application/json"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let room: Room = serde_json::from_slice(&body).unwrap();
    assert_eq!(room.name, "json-room");
    let (status, _, body) = post(
        &server,
        "/twirp/livekit.RoomService/ListRooms",
        "application/json",
        Some(&token),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let list: ListRoomsResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.rooms.len(), 1);
    // A body that does not decode is `malformed`.
    let (status, _, body) = post(
        &server,
        "/twirp/livekit.RoomService/ListRooms",
        "application/json",
        Some(&token),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"],
        "malformed"
    );
}

/// A token for key `devkey` (secret `secret`) valid from `nbf` to `exp`
/// (seconds since the epoch), signed here: the access-token builder only
/// makes tokens valid from now.
fn token_valid(nbf: u64, exp: u64) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": "devkey",
        "nbf": nbf,
        "exp": exp,
        "video": {"roomList": true},
    });
    let payload = b64.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"secret").unwrap();
    mac.update(signed.as_bytes());
    let signature = b64.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

#[actix_rt::test]
async fn expired_and_not_yet_valid_tokens_are_refused_without_detail() {
    let server = server().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // past the verifier's leeway (60 s) either way
    let cases = [
        ("valid", token_valid(now - 10, now + 3600), 200),
        ("expired", token_valid(now - 7200, now - 3600), 401),
        ("not yet valid", token_valid(now + 3600, now + 7200), 401),
        (
            "unknown key",
            livekit_api::access_token::AccessToken::with_api_key("nokey", "secret")
                .with_grants(VideoGrants {
                    room_list: true,
                    ..Default::default()
                })
                .to_jwt()
                .unwrap(),
            401,
        ),
    ];
    for (what, token, expected) in cases {
        let (status, _, body) = post(
            &server,
            "/twirp/livekit.RoomService/ListRooms",
            "application/json",
            Some(&token),
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(
            status,
            expected,
            "{what}: {}",
            String::from_utf8_lossy(&body)
        );
        if expected == 401 {
            let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(err["code"], "unauthenticated", "{what}");
            // no hint of why: which keys exist, what was wrong
            assert_eq!(err["msg"], "permissions denied", "{what}");
        }
    }
}
