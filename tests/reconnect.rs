//! Reconnecting without storms: a server that accepts the registration and
//! drops the socket gets backed-off reconnects, not a reconnect every few
//! milliseconds; a refused token is reported and retried on a long delay; a
//! server that stays unreachable past the give-up budget is reported so.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use lkagent::demo::DemoAgent;
use lkagent::{Backoff, GetState, WorkerEvent, WorkerOptions};
use lkagent_devserver::{DevServer, DevServerConfig};

fn backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
        jitter: 0.0,
    }
}

#[actix_rt::test]
async fn a_server_that_drops_every_registration_sees_backed_off_reconnects() {
    let server = devserver_with(DevServerConfig {
        drop_after_register: true,
        ..Default::default()
    })
    .await;
    let worker = worker(options(&server).reconnect(backoff()), DemoAgent);
    let workers = server
        .wait_workers(DEADLINE, |ws| ws.len() >= 6)
        .await
        .expect("six registrations");
    let mut at: Vec<SystemTime> = workers.iter().map(|w| w.registered_at).collect();
    at.sort();
    // each registration lasted no time, so each counts as a failure: the
    // gaps follow the backoff (50, 100, 200, 400, 400 ms) instead of
    // resetting to the first delay every time
    for (k, pair) in at.windows(2).enumerate() {
        let gap = pair[1].duration_since(pair[0]).unwrap();
        let least = backoff().delay(k as u32, 0.0);
        assert!(
            gap >= least,
            "gap {k} was {gap:?}, less than {least:?}: {at:?}"
        );
    }
    let state = worker.send(GetState).await.unwrap();
    assert!(state.reconnect_failures >= 5, "{state:?}");
}

#[actix_rt::test]
async fn a_refused_token_is_reported_and_retried_on_the_long_delay() {
    let server = devserver().await;
    let mut bad: WorkerOptions = options(&server);
    bad.credentials = lkagent::auth::Credentials::new(KEY, "not-the-secret");
    bad.reconnect.unauthorized_retry = Duration::from_millis(600);
    let worker = worker(bad, DemoAgent);
    let watch = WorkerWatch::start(&worker).await;
    let state = wait_worker(&worker, "the refusal reported", |s| {
        s.connection_error.is_some()
    })
    .await;
    let error = state.connection_error.unwrap();
    assert!(
        error.contains("refused the token") && error.contains("401"),
        "{error}"
    );
    assert!(!state.connected);
    // retried after the long delay, not the 50 ms backoff
    let events = wait_seen(&watch, "two refusals", |e| {
        e.iter()
            .filter(|(_, e)| matches!(e, WorkerEvent::Unauthorized { .. }))
            .count()
            >= 2
    })
    .await;
    let at: Vec<Instant> = events
        .iter()
        .filter(|(_, e)| matches!(e, WorkerEvent::Unauthorized { .. }))
        .map(|(at, _)| *at)
        .collect();
    assert!(
        at[1] - at[0] >= Duration::from_millis(550),
        "retried after {:?}",
        at[1] - at[0]
    );
    assert!(server.refused_connections() >= 2);
    assert!(server.workers().await.is_empty(), "it never registered");
}

#[actix_rt::test]
async fn past_the_give_up_budget_the_server_counts_as_unreachable_until_it_returns() {
    // a port nothing listens on, for now
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let options = WorkerOptions::new(format!("ws://{port}"), KEY, SECRET)
        .keepalive(Duration::from_millis(100), Duration::from_millis(1000))
        .reconnect(backoff())
        .reconnect_give_up_after(Duration::from_millis(300));
    let worker = worker(options, DemoAgent);
    let watch = WorkerWatch::start(&worker).await;
    let state = wait_worker(&worker, "unreachable", |s| s.unreachable).await;
    assert!(!state.connected);
    assert!(state.connection_error.is_some(), "{state:?}");
    wait_seen(&watch, "the unreachable event", |e| {
        e.iter()
            .any(|(_, e)| matches!(e, WorkerEvent::Unreachable { .. }))
    })
    .await;

    // the server comes (back) on that port: the worker registers, reachable
    let server = DevServer::start(DevServerConfig {
        bind: port,
        keys: vec![(KEY.into(), SECRET.into())],
        ..Default::default()
    })
    .await
    .expect("the port is free again");
    let state = wait_worker(&worker, "registered", |s| s.connected).await;
    assert!(!state.unreachable);
    assert_eq!(state.connection_error, None);
    serve_quick_job(&server, "back").await;
}
