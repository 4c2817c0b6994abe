//! Job records after assignment: status history across reconnects,
//! migrate, terminate, and the fault-injection controls.

mod common;

use common::*;
use livekit_protocol::{JobStatus, MigrateJobRequest, server_message, worker_message};
use lkagent_devserver::{DevServer, DevServerError, DispatchRequest, RawFrame};

/// Dispatches one job to `conn` and accepts it.
async fn assigned_job(server: &DevServer, conn: &mut Conn) -> String {
    let dispatch = actix_rt::spawn({
        let server = server.clone();
        async move { server.dispatch(DispatchRequest::room("r")).await }
    });
    let job = expect_availability(conn).await;
    answer(conn, &job.id, true, "agent").await;
    let server_message::Message::Assignment(_) = next_msg(conn).await else {
        panic!("no assignment")
    };
    dispatch.await.unwrap().unwrap().id
}

#[actix_rt::test]
async fn statuses_are_recorded_in_order_across_a_reconnect() {
    let server = server().await;
    let (mut first, first_id) = worker(&server, "").await;
    let job_id = assigned_job(&server, &mut first).await;
    update_job(&mut first, &job_id, JobStatus::JsRunning, "").await;
    server
        .wait_job(&job_id, DEADLINE, |j| j.updates.len() == 1)
        .await
        .unwrap();

    drop(first);
    server
        .wait_workers(DEADLINE, |w| w.iter().all(|w| !w.connected))
        .await
        .unwrap();
    let job = server
        .job(&job_id)
        .await
        .expect("the record survives the disconnect");
    assert_eq!(job.worker_id.as_deref(), Some(first_id.as_str()));

    let (mut second, second_id) = worker(&server, "").await;
    update_job(&mut second, &job_id, JobStatus::JsRunning, "").await;
    update_job(&mut second, &job_id, JobStatus::JsFailed, "boom").await;
    update_job(&mut second, "AJ_unknown", JobStatus::JsRunning, "").await;
    let job = server
        .wait_job(&job_id, DEADLINE, |j| j.updates.len() == 3)
        .await
        .unwrap();

    let seen: Vec<(JobStatus, &str, &str)> = job
        .updates
        .iter()
        .map(|u| (u.status, u.error.as_str(), u.worker_id.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (JobStatus::JsRunning, "", first_id.as_str()),
            (JobStatus::JsRunning, "", second_id.as_str()),
            (JobStatus::JsFailed, "boom", second_id.as_str()),
        ]
    );
    assert!(job.updates.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(job.worker_id.as_deref(), Some(second_id.as_str()));
    assert_eq!(
        (job.status, job.error.as_str()),
        (JobStatus::JsFailed, "boom")
    );
    assert_eq!(
        server.jobs().await.len(),
        1,
        "unknown job ids create nothing"
    );
}

#[actix_rt::test]
async fn migrate_job_is_recorded_and_reassociates() {
    let server = server().await;
    let (mut first, first_id) = worker(&server, "").await;
    let job_id = assigned_job(&server, &mut first).await;
    drop(first);
    // a claim is taken once the job's connection is gone
    server
        .wait_workers(DEADLINE, |w| {
            w.iter().any(|w| w.id == first_id && !w.connected)
        })
        .await
        .unwrap();
    let (mut second, second_id) = worker(&server, "").await;
    send(
        &mut second,
        worker_message::Message::MigrateJob(MigrateJobRequest {
            job_ids: vec![job_id.clone(), "AJ_gone".into()],
        }),
    )
    .await;
    let job = server
        .wait_job(&job_id, DEADLINE, |j| {
            j.worker_id.as_deref() == Some(second_id.as_str())
        })
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::JsRunning);
    let workers = server.workers().await;
    let w = workers.iter().find(|w| w.id == second_id).unwrap();
    assert_eq!(w.migrated_jobs, vec![job_id, "AJ_gone".to_owned()]);
}

#[actix_rt::test]
async fn terminate_job_sends_termination_and_ends_the_job() {
    let server = server().await;
    let (mut conn, _) = worker(&server, "").await;
    let job_id = assigned_job(&server, &mut conn).await;
    server.terminate_job(&job_id).await.unwrap();
    let server_message::Message::Termination(t) = next_msg(&mut conn).await else {
        panic!("no termination")
    };
    assert_eq!(t.job_id, job_id);
    assert_eq!(
        server.job(&job_id).await.unwrap().status,
        JobStatus::JsSuccess
    );

    // What the worker reports afterwards is still recorded.
    update_job(&mut conn, &job_id, JobStatus::JsSuccess, "").await;
    let job = server
        .wait_job(&job_id, DEADLINE, |j| j.updates.len() == 1)
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::JsSuccess);

    assert_eq!(
        server.terminate_job(&job_id).await,
        Err(DevServerError::JobNotRunning(job_id))
    );
    assert_eq!(
        server.terminate_job("AJ_nope").await,
        Err(DevServerError::UnknownJob("AJ_nope".into()))
    );
}

#[actix_rt::test]
async fn drop_connections_ends_every_socket() {
    let server = server().await;
    let (mut a, _) = worker(&server, "").await;
    let (mut b, _) = worker(&server, "x").await;
    assert_eq!(server.drop_connections().await, 2);
    for conn in [&mut a, &mut b] {
        match next_event(conn).await {
            Event::Closed => {}
            other => panic!("expected an abrupt end without a close frame, got {other:?}"),
        }
    }
    let workers = server
        .wait_workers(DEADLINE, |w| w.iter().all(|w| !w.connected))
        .await
        .unwrap();
    assert_eq!(workers.len(), 2);
}

#[actix_rt::test]
async fn inject_frame_delivers_exact_bytes() {
    let server = server().await;
    let (mut conn, id) = worker(&server, "").await;
    let big = vec![7u8; 3 << 20]; // above max_frame_size: no limit outbound
    server
        .inject_frame(&id, RawFrame::Binary(big.clone()))
        .await
        .unwrap();
    match next_event(&mut conn).await {
        Event::Binary(bytes) => assert_eq!(bytes, big),
        other => panic!(
            "expected raw bytes, got {:?}",
            std::mem::discriminant(&other)
        ),
    }
    server
        .inject_frame(&id, RawFrame::Text("not json".into()))
        .await
        .unwrap();
    match next_event(&mut conn).await {
        Event::Text(t) => assert_eq!(t, "not json"),
        other => panic!("expected text, got {other:?}"),
    }
    assert_eq!(
        server
            .inject_frame("AW_nope", RawFrame::Text(String::new()))
            .await,
        Err(DevServerError::UnknownWorker("AW_nope".into()))
    );
}

#[actix_rt::test]
async fn stop_ends_connections_and_fails_calls() {
    let server = server().await;
    let (mut conn, _) = worker(&server, "").await;
    server.stop().await;
    assert!(closed(&mut conn).await);
    assert_eq!(
        server
            .dispatch(DispatchRequest::room("r"))
            .await
            .unwrap_err(),
        lkagent_devserver::DispatchError::Stopped
    );
}
