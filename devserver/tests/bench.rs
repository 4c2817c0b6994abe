//! The benchmark endpoints (`/dev/bench/*`), driven over loopback with a
//! raw-protocol worker: what they dispatch, what they time, what they end,
//! and what they refuse.

mod common;

use common::*;
use livekit_api::access_token::VideoGrants;
use livekit_protocol::{JobStatus, server_message};
use lkagent_devserver::DevServer;
use serde_json::{Value, json};

fn admin() -> String {
    grant_token(VideoGrants {
        room_admin: true,
        ..Default::default()
    })
}

async fn bench_post(server: &DevServer, path: &str, body: Value) -> (u16, Value) {
    let token = admin();
    let (status, _, body) = post(
        server,
        path,
        "application/json",
        Some(&token),
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Posts `body` to `path` in a task of its own, so that the test can play
/// the worker meanwhile.
fn bench_post_later(
    server: &DevServer,
    path: &'static str,
    body: Value,
) -> actix_rt::task::JoinHandle<(u16, Value)> {
    let server = server.clone();
    actix_rt::spawn(async move { bench_post(&server, path, body).await })
}

/// Answers the next offer, takes the assignment and reports RUNNING: the
/// job's id.
async fn take_job(conn: &mut Conn) -> String {
    let job = expect_availability(conn).await;
    answer(conn, &job.id, true, "bench").await;
    let server_message::Message::Assignment(assignment) = next_msg(conn).await else {
        panic!("no assignment");
    };
    assert_eq!(
        assignment.job.map(|j| j.id).as_deref(),
        Some(job.id.as_str())
    );
    update_job(conn, &job.id, JobStatus::JsRunning, "").await;
    job.id
}

#[actix_rt::test]
async fn bench_jobs_counts_and_times_every_round_trip() {
    let server = server().await;
    let (mut conn, _) = worker(&server, "b").await;
    let run = bench_post_later(
        &server,
        "/dev/bench/jobs",
        json!({"agent_name": "b", "count": 3, "concurrency": 1,
                       "wait_running": true, "wait_final": true}),
    );
    for _ in 0..3 {
        let id = take_job(&mut conn).await;
        update_job(&mut conn, &id, JobStatus::JsSuccess, "").await;
    }
    let (status, answer) = run.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["dispatched"], 3);
    assert_eq!(answer["refused"], 0);
    for timing in ["availability_us", "job_start_us"] {
        let t = &answer[timing];
        assert_eq!(t["n"], 3, "{timing}: one sample per job: {answer}");
        let (p50, p99, max) = (
            t["p50"].as_u64().unwrap(),
            t["p99"].as_u64().unwrap(),
            t["max"].as_u64().unwrap(),
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{timing}: {t}");
    }
    let (running, done) = (
        answer["running_ms"].as_f64().unwrap(),
        answer["done_ms"].as_f64().unwrap(),
    );
    assert!(running <= done, "{answer}");
}

#[actix_rt::test]
async fn bench_terminate_ends_every_running_job_of_the_agent() {
    let server = server().await;
    let (mut conn, _) = worker(&server, "b").await;
    let run = bench_post_later(
        &server,
        "/dev/bench/jobs",
        json!({"agent_name": "b", "count": 2, "concurrency": 2, "wait_running": true}),
    );
    // both offers come before either assignment
    let mut ids = Vec::new();
    for _ in 0..2 {
        let job = expect_availability(&mut conn).await;
        answer(&mut conn, &job.id, true, "bench").await;
        ids.push(job.id);
    }
    for _ in 0..2 {
        let server_message::Message::Assignment(a) = next_msg(&mut conn).await else {
            panic!("no assignment");
        };
        update_job(&mut conn, &a.job.unwrap().id, JobStatus::JsRunning, "").await;
    }
    let (status, answer) = run.await.unwrap();
    assert_eq!((status, &answer["dispatched"]), (200, &json!(2)));
    assert!(answer["done_ms"].is_null(), "no wait for the end was asked");

    let (status, answer) =
        bench_post(&server, "/dev/bench/terminate", json!({"agent_name": "b"})).await;
    assert_eq!(
        (status, &answer["terminated"]),
        (200, &json!(2)),
        "{answer}"
    );
    let mut terminated = Vec::new();
    for _ in 0..2 {
        let server_message::Message::Termination(t) = next_msg(&mut conn).await else {
            panic!("no termination");
        };
        terminated.push(t.job_id);
    }
    terminated.sort();
    ids.sort();
    assert_eq!(terminated, ids);
    for id in &ids {
        let job = server.job(id).await.unwrap();
        assert_eq!(job.status, JobStatus::JsSuccess, "ended on the server");
    }
    let (_, again) = bench_post(&server, "/dev/bench/terminate", json!({"agent_name": "b"})).await;
    assert_eq!(again["terminated"], 0, "nothing left to end");
}

#[actix_rt::test]
async fn bench_endpoints_refuse_bad_input_and_missing_grants() {
    let server = server().await;
    for (body, why) in [
        (json!({"agent_name": "b"}), "count or a duration_ms"),
        (
            json!({"agent_name": "b", "count": 1, "concurrency": 0}),
            "concurrency",
        ),
        (
            json!({"agent_name": "b", "count": 1, "concurrency": 5000}),
            "concurrency",
        ),
        (json!({"agent_name": "b", "count": 100_000_000}), "count"),
    ] {
        let (status, answer) = bench_post(&server, "/dev/bench/jobs", body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["msg"].as_str().unwrap().contains(why), "{answer}");
    }
    let (status, answer) = bench_post(
        &server,
        "/dev/bench/reconnects",
        json!({"agent_name": "b", "drops": 1, "interval_ms": 0}),
    )
    .await;
    assert_eq!(status, 400, "no worker to drop: {answer}");

    let no_grant = grant_token(VideoGrants::default());
    let (status, _, _) = post(
        &server,
        "/dev/bench/terminate",
        "application/json",
        Some(&no_grant),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 401);
}
