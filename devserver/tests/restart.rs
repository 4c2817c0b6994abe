//! Restart on failure (beyond the open-source server) and the reconnect
//! grace period: failed jobs of JRP_ON_FAILURE dispatches run again, bounded;
//! a worker that comes back and claims its job keeps it.

mod common;

use std::time::Duration;

use common::*;
use livekit_protocol::{
    CreateAgentDispatchRequest, JobRestartPolicy, JobStatus, MigrateJobRequest, server_message,
    worker_message,
};
use lkagent_devserver::DevServerConfig;

fn dispatch(room: &str, policy: JobRestartPolicy) -> CreateAgentDispatchRequest {
    CreateAgentDispatchRequest {
        agent_name: "bot".into(),
        room: room.into(),
        restart_policy: policy as i32,
        ..Default::default()
    }
}

/// Answers the next availability with an accept and reads the assignment.
async fn take_job(conn: &mut Conn) -> String {
    let job = expect_availability(conn).await;
    answer(conn, &job.id, true, "").await;
    assert!(matches!(
        next_msg(conn).await,
        server_message::Message::Assignment(_)
    ));
    job.id
}

#[actix_rt::test]
async fn a_failed_job_runs_again_up_to_the_attempt_limit() {
    let server = server_with(DevServerConfig {
        max_job_attempts: 3,
        ..Default::default()
    })
    .await;
    let (mut bot, _) = worker(&server, "bot").await;
    let client = dispatch_client(&server);
    // JRP_ON_FAILURE is the protocol's default value.
    let d = client
        .create_dispatch(dispatch("flaky", JobRestartPolicy::JrpOnFailure))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = take_job(&mut bot).await;
        update_job(&mut bot, &id, JobStatus::JsFailed, "boom").await;
        ids.push(id);
    }
    let last = server
        .wait_job(&ids[2], DEADLINE, |j| j.status == JobStatus::JsFailed)
        .await
        .unwrap();
    assert_eq!(last.attempt, 3);
    assert_eq!(last.restart_of.as_deref(), Some(ids[1].as_str()));
    // The restart is launched with the failure; with the budget used up,
    // there is no fourth job.
    let jobs: Vec<_> = server
        .jobs()
        .await
        .into_iter()
        .filter(|j| j.dispatch_id == d.id)
        .collect();
    assert_eq!(jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), ids);
    // ListDispatch shows each attempt's job with its status.
    let listed = client.get_dispatch(&d.id, "flaky").await.unwrap().unwrap();
    let states: Vec<(String, i32, String)> = listed
        .state
        .unwrap()
        .jobs
        .iter()
        .map(|j| {
            let s = j.state.clone().unwrap();
            (j.id.clone(), s.status, s.error)
        })
        .collect();
    let want: Vec<_> = ids
        .iter()
        .map(|id| (id.clone(), JobStatus::JsFailed as i32, "boom".to_owned()))
        .collect();
    assert_eq!(states, want);
}

#[actix_rt::test]
async fn jrp_never_does_not_restart() {
    let server = server().await;
    let (mut bot, _) = worker(&server, "bot").await;
    let d = dispatch_client(&server)
        .create_dispatch(dispatch("once", JobRestartPolicy::JrpNever))
        .await
        .unwrap();
    let id = take_job(&mut bot).await;
    update_job(&mut bot, &id, JobStatus::JsFailed, "boom").await;
    server
        .wait_job(&id, DEADLINE, |j| j.status == JobStatus::JsFailed)
        .await
        .unwrap();
    let jobs = server.jobs().await;
    assert_eq!(jobs.iter().filter(|j| j.dispatch_id == d.id).count(), 1);
}

#[actix_rt::test]
async fn an_unclaimed_job_of_a_lost_worker_runs_again_elsewhere() {
    let server = server_with(DevServerConfig {
        reconnect_grace: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let (mut first, first_id) = worker(&server, "bot").await;
    dispatch_client(&server)
        .create_dispatch(dispatch("lost", JobRestartPolicy::JrpOnFailure))
        .await
        .unwrap();
    let old = take_job(&mut first).await;
    update_job(&mut first, &old, JobStatus::JsRunning, "").await;
    server
        .wait_job(&old, DEADLINE, |j| !j.updates.is_empty())
        .await
        .unwrap();
    let (mut second, second_id) = worker(&server, "bot").await;
    drop(first);
    server
        .wait_workers(DEADLINE, |w| {
            w.iter().any(|w| w.id == first_id && !w.connected)
        })
        .await
        .unwrap();

    // After the grace period: the old job failed, a new one goes to `second`.
    let new = take_job(&mut second).await;
    let failed = server.job(&old).await.unwrap();
    assert_eq!(failed.status, JobStatus::JsFailed);
    assert!(failed.error.contains("did not claim"), "{}", failed.error);
    let restarted = server.job(&new).await.unwrap();
    assert_eq!(restarted.restart_of.as_deref(), Some(old.as_str()));
    assert_eq!(restarted.worker_id.as_deref(), Some(second_id.as_str()));
}

#[actix_rt::test]
async fn a_worker_that_comes_back_and_claims_its_job_keeps_it() {
    let server = server_with(DevServerConfig {
        reconnect_grace: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let (mut first, first_id) = worker(&server, "bot").await;
    let d = dispatch_client(&server)
        .create_dispatch(dispatch("kept", JobRestartPolicy::JrpOnFailure))
        .await
        .unwrap();
    let id = take_job(&mut first).await;
    drop(first);
    server
        .wait_workers(DEADLINE, |w| {
            w.iter().any(|w| w.id == first_id && !w.connected)
        })
        .await
        .unwrap();

    // The restarted worker registers again and claims the job.
    let (mut again, again_id) = worker(&server, "bot").await;
    send(
        &mut again,
        worker_message::Message::MigrateJob(MigrateJobRequest {
            job_ids: vec![id.clone()],
        }),
    )
    .await;
    update_job(&mut again, &id, JobStatus::JsRunning, "").await;
    update_job(&mut again, &id, JobStatus::JsSuccess, "").await;
    let done = server
        .wait_job(&id, DEADLINE, |j| j.status == JobStatus::JsSuccess)
        .await
        .unwrap();
    assert_eq!(done.worker_id.as_deref(), Some(again_id.as_str()));
    let seen: Vec<_> = done
        .updates
        .iter()
        .map(|u| (u.status, u.worker_id.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (JobStatus::JsRunning, again_id.clone()),
            (JobStatus::JsSuccess, again_id.clone())
        ]
    );
    // Not dispatched twice.
    let jobs = server.jobs().await;
    assert_eq!(jobs.iter().filter(|j| j.dispatch_id == d.id).count(), 1);
    // ListDispatch shows the claimed job with its final status.
    let listed = dispatch_client(&server)
        .get_dispatch(&d.id, "kept")
        .await
        .unwrap()
        .unwrap();
    let job = &listed.state.unwrap().jobs[0];
    assert_eq!(
        job.state.as_ref().unwrap().status,
        JobStatus::JsSuccess as i32
    );
    assert_eq!(job.state.as_ref().unwrap().worker_id, again_id);
}
