//! The dev server as a LiveKit stand-in, seen from lkagent workers: jobs
//! created through the official Rust server SDK (`livekit-api`) reach the
//! right worker, are balanced by load, retried on refusal, terminated by
//! DeleteDispatch and restarted on failure; their statuses show in
//! ListDispatch.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use lkagent::demo::DemoAgent;
use lkagent::load::{LoadCalculator, LoadMetrics};
use lkagent::proto::{CreateAgentDispatchRequest, JobRestartPolicy, JobStatus};
use lkagent::{Decision, JobContext, JobError, JobHandler, JobRequest};
use lkagent_devserver::official_api::services::agent_dispatch::AgentDispatchClient;
use lkagent_devserver::official_api::services::room::{CreateRoomOptions, RoomClient};
use lkagent_devserver::{DevServer, DevServerConfig, DispatchRequest, WorkerStatus};

/// A worker load that does not move, so the balancing can be measured.
struct FixedLoad(f32);

impl LoadCalculator for FixedLoad {
    fn calculate(&self, _: &LoadMetrics) -> f32 {
        self.0
    }
    fn default_threshold(&self) -> f32 {
        0.95
    }
}

/// Refuses every job.
struct Refuser;

impl JobHandler for Refuser {
    async fn on_request(&self, _: &JobRequest) -> Decision {
        Decision::reject("busy")
    }
    async fn on_job(&self, _: JobContext) -> Result<(), JobError> {
        unreachable!("refuses every job")
    }
}

fn dispatches(server: &DevServer) -> AgentDispatchClient {
    AgentDispatchClient::with_api_key(&server.http_url(), KEY, SECRET)
}

fn named(
    room: &str,
    agent: &str,
    metadata: &str,
    policy: JobRestartPolicy,
) -> CreateAgentDispatchRequest {
    CreateAgentDispatchRequest {
        agent_name: agent.into(),
        room: room.into(),
        metadata: metadata.into(),
        restart_policy: policy as i32,
        ..Default::default()
    }
}

/// Waits until the dispatch lists `n` jobs all in `status`.
async fn wait_listed(
    server: &DevServer,
    room: &str,
    dispatch_id: &str,
    n: usize,
    status: JobStatus,
) -> Vec<lkagent::proto::Job> {
    let client = dispatches(server);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let d = client
            .get_dispatch(dispatch_id, room)
            .await
            .unwrap()
            .expect("dispatch listed");
        let jobs = d.state.unwrap_or_default().jobs;
        let done = jobs.len() == n
            && jobs
                .iter()
                .all(|j| j.state.as_ref().is_some_and(|s| s.status == status as i32));
        if done {
            return jobs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dispatch {dispatch_id}: {jobs:?}"
        );
        // Wake on the next state change of the server (or in 100 ms).
        let _ = server
            .wait_jobs(Duration::from_millis(100), |_| false)
            .await;
    }
}

#[actix_rt::test]
async fn default_and_named_dispatch_reach_the_right_worker() {
    let server = devserver().await;
    let unnamed = worker(options(&server), DemoAgent);
    let bot = worker(options(&server).agent_name("bot"), DemoAgent);
    let unnamed_id = registered(&unnamed).await;
    let bot_id = registered(&bot).await;

    // A room without agents: the default dispatch, for the unnamed worker.
    RoomClient::with_api_key(&server.http_url(), KEY, SECRET)
        .create_room("plain", CreateRoomOptions::default())
        .await
        .unwrap();
    let jobs = server
        .wait_jobs(DEADLINE, |jobs| {
            jobs.iter()
                .any(|j| j.room == "plain" && j.worker_id.is_some())
        })
        .await
        .unwrap();
    let plain: Vec<_> = jobs.iter().filter(|j| j.room == "plain").collect();
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].worker_id.as_deref(), Some(unnamed_id.as_str()));

    // An explicit dispatch: the named worker; its status shows in ListDispatch.
    let d = dispatches(&server)
        .create_dispatch(named(
            "named",
            "bot",
            r#"{"duration_ms": 10}"#,
            JobRestartPolicy::JrpNever,
        ))
        .await
        .unwrap();
    let jobs = wait_listed(&server, "named", &d.id, 1, JobStatus::JsSuccess).await;
    assert_eq!(jobs[0].state.as_ref().unwrap().worker_id, bot_id);
    // (The room, created by the dispatch, also got the default dispatch: its
    // job went to the unnamed worker, as on the server.)
    let all = server.jobs().await;
    assert!(
        all.iter()
            .filter(|j| j.dispatch_id == d.id)
            .all(|j| j.agent_name == "bot")
    );
}

#[actix_rt::test]
async fn jobs_follow_spare_capacity_and_skip_full_workers() {
    let server = devserver().await;
    let loads = [("light", 0.2), ("heavy", 0.8), ("full", 1.0)];
    let mut ids = HashMap::new();
    let mut workers = Vec::new();
    for (name, load) in loads {
        let w = lkagent::Worker::builder(options(&server).max_jobs(50))
            .load_calculator(FixedLoad(load))
            .handler(DemoAgent)
            .start()
            .expect("worker starts");
        ids.insert(registered(&w).await, name);
        workers.push(w);
    }
    // The server has seen every load (and FULL from the full one).
    server
        .wait_workers(DEADLINE, |ws| {
            let seen = |l: f32| ws.iter().any(|w| (w.load - l).abs() < 1e-3);
            seen(0.2)
                && seen(0.8)
                && ws
                    .iter()
                    .any(|w| w.status == WorkerStatus::WsFull && w.load >= 1.0)
        })
        .await
        .unwrap();

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for i in 0..200 {
        let job = server
            .dispatch(DispatchRequest::room(format!("w{i}")).metadata(r#"{"duration_ms": 1}"#))
            .await
            .expect("placed");
        *counts
            .entry(ids[job.worker_id.as_deref().unwrap()])
            .or_default() += 1;
    }
    // Expected 160 / 40 / 0: "light" below 2x "heavy" is a 5-sigma event.
    let (light, heavy, full) = (counts.get("light"), counts.get("heavy"), counts.get("full"));
    let (light, heavy) = (light.copied().unwrap_or(0), heavy.copied().unwrap_or(0));
    assert!(light > 2 * heavy && heavy > 0, "{counts:?}");
    assert_eq!(full, None, "{counts:?}");
}

#[actix_rt::test]
async fn a_refusal_moves_the_job_to_another_worker() {
    let server = devserver().await;
    let refuser = worker(options(&server).agent_name("bot"), Refuser);
    let taker = worker(options(&server).agent_name("bot"), DemoAgent);
    let refuser_id = registered(&refuser).await;
    let taker_id = registered(&taker).await;
    let client = dispatches(&server);
    // 30 dispatches, one after the other: the refuser is asked first in
    // about half of them (never in none: 2^-30).
    for i in 0..30 {
        let room = format!("r{i}");
        let d = client
            .create_dispatch(named(
                &room,
                "bot",
                r#"{"duration_ms": 1}"#,
                JobRestartPolicy::JrpNever,
            ))
            .await
            .unwrap();
        let jobs = wait_listed(&server, &room, &d.id, 1, JobStatus::JsSuccess).await;
        assert_eq!(jobs[0].state.as_ref().unwrap().worker_id, taker_id);
    }
    let ws = server.workers().await;
    let refused = &ws
        .iter()
        .find(|w| w.id == refuser_id)
        .unwrap()
        .availability_answers;
    assert!(
        !refused.is_empty() && refused.iter().all(|(_, ok)| !ok),
        "{refused:?}"
    );
}

#[actix_rt::test]
async fn delete_dispatch_terminates_the_running_job() {
    let server = devserver().await;
    let bot = worker(options(&server).agent_name("bot"), DemoAgent);
    registered(&bot).await;
    let client = dispatches(&server);
    let d = client
        .create_dispatch(named(
            "long",
            "bot",
            r#"{"duration_ms": 60000}"#,
            JobRestartPolicy::JrpNever,
        ))
        .await
        .unwrap();
    let jobs = wait_listed(&server, "long", &d.id, 1, JobStatus::JsRunning).await;
    let job_id = jobs[0].id.clone();
    wait_worker(&bot, "the job running", |s| {
        s.running_jobs.contains(&job_id)
    })
    .await;

    client.delete_dispatch(&d.id, "long").await.unwrap();
    assert_eq!(
        server.job(&job_id).await.unwrap().status,
        JobStatus::JsSuccess
    );
    wait_worker(&bot, "the job torn down", |s| {
        !s.running_jobs.contains(&job_id)
    })
    .await;
}

#[actix_rt::test]
async fn a_failing_job_is_restarted_up_to_the_limit() {
    let server = devserver_with(DevServerConfig {
        max_job_attempts: 3,
        ..Default::default()
    })
    .await;
    let bot = worker(options(&server).agent_name("bot"), DemoAgent);
    registered(&bot).await;
    let d = dispatches(&server)
        .create_dispatch(named(
            "flaky",
            "bot",
            r#"{"duration_ms": 1, "outcome": "fail"}"#,
            JobRestartPolicy::JrpOnFailure,
        ))
        .await
        .unwrap();
    let jobs = wait_listed(&server, "flaky", &d.id, 3, JobStatus::JsFailed).await;
    let records: Vec<_> = {
        let mut v = Vec::new();
        for j in &jobs {
            v.push(server.job(&j.id).await.unwrap());
        }
        v
    };
    assert_eq!(
        records.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(records[1].restart_of.as_deref(), Some(jobs[0].id.as_str()));
    assert_eq!(
        server
            .jobs()
            .await
            .iter()
            .filter(|j| j.dispatch_id == d.id)
            .count(),
        3
    );
}
