//! Dispatch: availability, accept/decline/terminate/timeout, the room token.

mod common;

use std::time::Duration;

use common::*;
use livekit_api::access_token::TokenVerifier;
use livekit_protocol::{AvailabilityResponse, JobStatus, server_message, worker_message};
use lkagent_devserver::{DevServerConfig, DispatchError, DispatchRequest};

#[actix_rt::test]
async fn accept_gets_an_assignment_with_a_room_token() {
    let server = server().await;
    let (mut conn, worker_id) = worker(&server, "").await;
    let dispatch = actix_rt::spawn({
        let server = server.clone();
        async move {
            server
                .dispatch(DispatchRequest::room("room-a").metadata("md"))
                .await
        }
    });

    let job = expect_availability(&mut conn).await;
    assert!(job.id.starts_with("AJ_"));
    assert_eq!(job.room.as_ref().unwrap().name, "room-a");
    assert_eq!(job.metadata, "md");
    let state = job.state.clone().expect("job.state filled");
    assert_eq!(state.worker_id, worker_id);
    assert_eq!(state.status, JobStatus::JsRunning as i32);
    assert!(state.started_at > 0);

    answer(&mut conn, &job.id, true, "agent-1").await;
    let server_message::Message::Assignment(assignment) = next_msg(&mut conn).await else {
        panic!("no assignment")
    };
    assert_eq!(assignment.url, None);
    assert_eq!(assignment.job.as_ref().unwrap().id, job.id);
    let claims = TokenVerifier::with_api_key("devkey", "secret")
        .verify(&assignment.token)
        .unwrap();
    assert_eq!(claims.video.room, "room-a");
    assert!(claims.video.room_join && claims.video.agent);
    assert_eq!(claims.sub, "agent-1");
    assert_eq!(claims.kind, "agent");
    assert_eq!(claims.attributes["lk.agent_name"], "");

    let info = dispatch.await.unwrap().expect("dispatch succeeds");
    assert_eq!(info.id, job.id);
    assert_eq!(info.worker_id.as_deref(), Some(worker_id.as_str()));
    assert_eq!(info.participant_identity, "agent-1");
    assert_eq!(info.status, JobStatus::JsRunning);
    assert!(info.dispatch_id.starts_with("AD_"));

    let workers = server.workers().await;
    assert_eq!(
        workers[0].availability_answers,
        vec![(job.id.clone(), true)]
    );
}

#[actix_rt::test]
async fn no_matching_worker_is_no_workers() {
    let server = server().await;
    let (_conn, _) = worker(&server, "named").await;
    let result = server.dispatch(DispatchRequest::room("r")).await;
    assert_eq!(result.unwrap_err(), DispatchError::NoWorkers);
}

#[actix_rt::test]
async fn decline_tries_the_next_worker_then_gives_up() {
    let server = server().await;
    let (mut a, id_a) = worker(&server, "bot").await;
    let (mut b, id_b) = worker(&server, "bot").await;
    let dispatch = actix_rt::spawn({
        let server = server.clone();
        async move {
            server
                .dispatch(DispatchRequest::room("r").agent_name("bot"))
                .await
        }
    });
    // Whichever is asked first declines; then the other is asked and declines.
    let mut asked = Vec::new();
    for _ in 0..2 {
        let id = tokio::select! {
            job = expect_availability(&mut a) => { answer(&mut a, &job.id, false, "").await; id_a.clone() }
            job = expect_availability(&mut b) => { answer(&mut b, &job.id, false, "").await; id_b.clone() }
        };
        asked.push(id);
    }
    let err = dispatch.await.unwrap().unwrap_err();
    assert_eq!(
        err,
        DispatchError::Declined {
            tried: asked.clone()
        }
    );
    assert_ne!(asked[0], asked[1]);
}

#[actix_rt::test]
async fn a_decline_then_an_accept_places_the_job() {
    let server = server().await;
    let (mut a, _) = worker(&server, "").await;
    let (mut b, _) = worker(&server, "").await;
    let dispatch = actix_rt::spawn({
        let server = server.clone();
        async move { server.dispatch(DispatchRequest::room("r")).await }
    });
    let first_was_a = tokio::select! {
        job = expect_availability(&mut a) => { answer(&mut a, &job.id, false, "").await; true }
        job = expect_availability(&mut b) => { answer(&mut b, &job.id, false, "").await; false }
    };
    let second = if first_was_a { &mut b } else { &mut a };
    let job = expect_availability(second).await;
    answer(second, &job.id, true, "").await;
    let server_message::Message::Assignment(assignment) = next_msg(second).await else {
        panic!("no assignment")
    };
    let info = dispatch.await.unwrap().unwrap();
    // No identity sent: the official workers' default, agent-<job id>.
    assert_eq!(info.participant_identity, format!("agent-{}", job.id));
    let claims = TokenVerifier::with_api_key("devkey", "secret")
        .verify(&assignment.token)
        .unwrap();
    assert_eq!(claims.sub, info.participant_identity);
}

#[actix_rt::test]
async fn a_forced_worker_is_asked_even_when_full() {
    let server = server().await;
    let (mut conn, id) = worker(&server, "").await;
    send(
        &mut conn,
        worker_message::Message::UpdateWorker(livekit_protocol::UpdateWorkerStatus {
            status: Some(livekit_protocol::WorkerStatus::WsFull as i32),
            load: 1.0,
            ..Default::default()
        }),
    )
    .await;
    server
        .wait_workers(DEADLINE, |w| w.iter().any(|w| w.update_count == 1))
        .await
        .unwrap();
    assert_eq!(
        server
            .dispatch(DispatchRequest::room("r"))
            .await
            .unwrap_err(),
        DispatchError::NoWorkers
    );

    let dispatch = actix_rt::spawn({
        let server = server.clone();
        let id = id.clone();
        async move {
            server
                .dispatch(DispatchRequest::room("r").to_worker(id))
                .await
        }
    });
    let job = expect_availability(&mut conn).await;
    answer(&mut conn, &job.id, false, "").await;
    assert_eq!(
        dispatch.await.unwrap().unwrap_err(),
        DispatchError::Declined { tried: vec![id] }
    );
}

#[actix_rt::test]
async fn terminate_answer_ends_the_job_as_success() {
    let server = server().await;
    let (mut conn, _) = worker(&server, "").await;
    let dispatch = actix_rt::spawn({
        let server = server.clone();
        async move { server.dispatch(DispatchRequest::room("r")).await }
    });
    let job = expect_availability(&mut conn).await;
    send(
        &mut conn,
        worker_message::Message::Availability(AvailabilityResponse {
            job_id: job.id.clone(),
            terminate: true,
            ..Default::default()
        }),
    )
    .await;
    let info = dispatch.await.unwrap().unwrap();
    assert_eq!(info.status, JobStatus::JsSuccess);
}

#[actix_rt::test]
async fn no_answer_is_a_timeout_and_the_job_fails() {
    let server = server_with(DevServerConfig {
        availability_timeout: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let (mut conn, id) = worker(&server, "").await;
    let dispatch = actix_rt::spawn({
        let server = server.clone();
        async move { server.dispatch(DispatchRequest::room("r")).await }
    });
    let job = expect_availability(&mut conn).await;
    assert_eq!(
        dispatch.await.unwrap().unwrap_err(),
        DispatchError::Timeout { worker_id: id }
    );
    let record = server.job(&job.id).await.unwrap();
    assert_eq!(record.status, JobStatus::JsFailed);
}

#[actix_rt::test]
async fn a_closed_socket_fails_the_dispatch() {
    let server = server().await;
    let (mut conn, id) = worker(&server, "").await;
    let dispatch = actix_rt::spawn({
        let server = server.clone();
        async move { server.dispatch(DispatchRequest::room("r")).await }
    });
    let _job = expect_availability(&mut conn).await;
    drop(conn);
    assert_eq!(
        dispatch.await.unwrap().unwrap_err(),
        DispatchError::WorkerClosed { worker_id: id }
    );
}
