//! Job ownership: a job's statuses and `migrate_job` are taken only from the
//! connection it is assigned to, or, once that connection is gone, from a
//! worker registered with the same API key and agent name. Anything else is
//! ignored.

mod common;

use std::time::Duration;

use common::*;
use livekit_protocol::{JobStatus, MigrateJobRequest, server_message, worker_message};
use lkagent_devserver::{DevServer, DevServerConfig, DispatchRequest, JobInfo};

/// Two keys; a grace period longer than any test, so an orphaned job waits.
async fn two_key_server() -> DevServer {
    server_with(DevServerConfig {
        keys: vec![
            ("devkey".into(), "secret".into()),
            ("other".into(), "other-secret".into()),
        ],
        reconnect_grace: Duration::from_secs(60),
        ..Default::default()
    })
    .await
}

fn other_key_token() -> String {
    token("other", "other-secret", true)
}

/// Dispatches a job for `agent` to `conn` and accepts it.
async fn assigned_job(server: &DevServer, conn: &mut Conn, agent: &str) -> String {
    let dispatch = actix_rt::spawn({
        let server = server.clone();
        let request = DispatchRequest::room("r").agent_name(agent);
        async move { server.dispatch(request).await }
    });
    let job = expect_availability(conn).await;
    answer(conn, &job.id, true, "agent").await;
    let server_message::Message::Assignment(_) = next_msg(conn).await else {
        panic!("no assignment")
    };
    dispatch.await.unwrap().unwrap().id
}

async fn migrate(conn: &mut Conn, job_id: &str) {
    send(
        conn,
        worker_message::Message::MigrateJob(MigrateJobRequest {
            job_ids: vec![job_id.to_owned()],
        }),
    )
    .await;
}

/// The job as assigned to `holder`, untouched since: RUNNING, no status.
fn untouched(job: &JobInfo, holder: &str) {
    assert_eq!(job.worker_id.as_deref(), Some(holder), "{job:?}");
    assert_eq!(job.status, JobStatus::JsRunning, "{job:?}");
    assert!(job.updates.is_empty() && job.error.is_empty(), "{job:?}");
}

#[actix_rt::test]
async fn only_the_jobs_own_worker_changes_its_status_or_moves_it() {
    let server = two_key_server().await;
    let (mut owner, owner_id) = worker(&server, "bot").await;
    let job_id = assigned_job(&server, &mut owner, "bot").await;
    // the same key and agent name, but not the job's connection
    let (mut sibling, sibling_id) = worker(&server, "bot").await;
    // another key altogether
    let (mut stranger, stranger_id) = worker_as(&server, &other_key_token(), "bot").await;

    for (conn, id) in [(&mut sibling, &sibling_id), (&mut stranger, &stranger_id)] {
        update_job(conn, &job_id, JobStatus::JsFailed, "hijacked").await;
        migrate(conn, &job_id).await;
        update_job(conn, &job_id, JobStatus::JsSuccess, "").await;
        handled(&server, conn, id, 1).await;
        untouched(&server.job(&job_id).await.unwrap(), &owner_id);
    }

    // the job's own worker still reports, and ends it
    update_job(&mut owner, &job_id, JobStatus::JsRunning, "").await;
    update_job(&mut owner, &job_id, JobStatus::JsSuccess, "").await;
    let done = server
        .wait_job(&job_id, DEADLINE, |j| j.status == JobStatus::JsSuccess)
        .await
        .unwrap();
    let seen: Vec<_> = done
        .updates
        .iter()
        .map(|u| (u.status, u.worker_id.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (JobStatus::JsRunning, owner_id.as_str()),
            (JobStatus::JsSuccess, owner_id.as_str())
        ]
    );
    assert_eq!(done.worker_id.as_deref(), Some(owner_id.as_str()));
}

#[actix_rt::test]
async fn an_orphaned_job_is_claimed_only_by_a_worker_of_the_same_key_and_agent() {
    let server = two_key_server().await;
    let (mut owner, owner_id) = worker(&server, "bot").await;
    let job_id = assigned_job(&server, &mut owner, "bot").await;
    drop(owner);
    server
        .wait_workers(DEADLINE, |w| {
            w.iter().any(|w| w.id == owner_id && !w.connected)
        })
        .await
        .unwrap();

    // another key, or the same key under another agent name: refused
    let (mut stranger, stranger_id) = worker_as(&server, &other_key_token(), "bot").await;
    let (mut other_agent, other_agent_id) = worker(&server, "not-bot").await;
    for (conn, id) in [
        (&mut stranger, &stranger_id),
        (&mut other_agent, &other_agent_id),
    ] {
        migrate(conn, &job_id).await;
        update_job(conn, &job_id, JobStatus::JsFailed, "hijacked").await;
        handled(&server, conn, id, 1).await;
        untouched(&server.job(&job_id).await.unwrap(), &owner_id);
    }

    // the same key and agent name: the restarted worker takes it back
    let (mut again, again_id) = worker(&server, "bot").await;
    migrate(&mut again, &job_id).await;
    server
        .wait_job(&job_id, DEADLINE, |j| {
            j.worker_id.as_deref() == Some(again_id.as_str())
        })
        .await
        .unwrap();

    // now it holds the job, its siblings may not take it
    let (mut sibling, sibling_id) = worker(&server, "bot").await;
    migrate(&mut sibling, &job_id).await;
    update_job(&mut sibling, &job_id, JobStatus::JsFailed, "hijacked").await;
    handled(&server, &mut sibling, &sibling_id, 1).await;
    untouched(&server.job(&job_id).await.unwrap(), &again_id);

    update_job(&mut again, &job_id, JobStatus::JsSuccess, "").await;
    let done = server
        .wait_job(&job_id, DEADLINE, |j| j.status == JobStatus::JsSuccess)
        .await
        .unwrap();
    assert_eq!(done.worker_id.as_deref(), Some(again_id.as_str()));
    assert!(done.updates.iter().all(|u| u.worker_id == again_id));
}

#[actix_rt::test]
async fn a_status_from_a_claimant_takes_back_a_job_that_ended_while_away() {
    // what lkagent's worker does after an outage: the final status of a job
    // that ended meanwhile comes on the new connection, without migrate_job
    let server = two_key_server().await;
    let (mut owner, owner_id) = worker(&server, "bot").await;
    let job_id = assigned_job(&server, &mut owner, "bot").await;
    drop(owner);
    server
        .wait_workers(DEADLINE, |w| {
            w.iter().any(|w| w.id == owner_id && !w.connected)
        })
        .await
        .unwrap();
    let (mut again, again_id) = worker(&server, "bot").await;
    update_job(&mut again, &job_id, JobStatus::JsSuccess, "").await;
    let done = server
        .wait_job(&job_id, DEADLINE, |j| j.status == JobStatus::JsSuccess)
        .await
        .unwrap();
    assert_eq!(done.worker_id.as_deref(), Some(again_id.as_str()));
}
