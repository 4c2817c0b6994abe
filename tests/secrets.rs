//! The API secret never reaches a log line or a `Debug` string.
//!
//! One test in its own binary, because it installs the process-wide tracing
//! subscriber: every log line of the worker, its actors on every arbiter, and
//! the dev server, at TRACE, is captured and searched for the secrets.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use lkagent::auth::Credentials;
use lkagent::demo::DemoAgent;
use lkagent::proto::JobStatus;
use lkagent::{JobContext, WorkerOptions};
use lkagent_devserver::DispatchRequest;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const WRONG_SECRET: &str = "Wrong-s3cret-also-never-printed";

#[actix_rt::test]
async fn the_secret_is_absent_from_logs_and_debug_output() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let server = devserver().await;
    let options = options(&server);
    let worker = worker(options.clone(), DemoAgent);
    let refused = common::worker(
        WorkerOptions::new(server.ws_url(), KEY, WRONG_SECRET),
        DemoAgent,
    );
    registered(&worker).await;

    // a full life: success, failure, panic, a dropped connection
    for metadata in [
        r#"{"duration_ms": 10}"#,
        r#"{"duration_ms": 10, "outcome": "fail"}"#,
        r#"{"duration_ms": 10, "outcome": "panic"}"#,
    ] {
        let job = server
            .dispatch(DispatchRequest::room("r").metadata(metadata))
            .await
            .unwrap();
        wait_final(&server, &job.id).await;
    }
    let job = server
        .dispatch(DispatchRequest::room("r").metadata(r#"{"duration_ms": 300}"#))
        .await
        .unwrap();
    wait_job(&server, &job.id, "RUNNING", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;
    server.drop_connections().await;
    wait_worker(&worker, "reconnect", |s| {
        s.connected && s.registrations == 2
    })
    .await;
    wait_final(&server, &job.id).await;
    let refused_state = refused.send(lkagent::GetState).await.unwrap();
    assert!(!refused_state.connected);

    let debug = format!(
        "{options:?} {:?} {:?} {:?} {:?}",
        options.credentials,
        options.api_secret(),
        Credentials::new(KEY, WRONG_SECRET),
        JobContext::new(Default::default(), server.ws_url(), "room-token"),
    );
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("registered"),
        "the capture saw the worker's logs"
    );
    assert!(
        logs.contains("connect"),
        "the capture saw the connection's logs"
    );
    for secret in [SECRET, WRONG_SECRET] {
        assert!(!logs.contains(secret), "a log line holds the secret");
        assert!(
            !debug.contains(secret),
            "Debug output holds the secret: {debug}"
        );
    }
}
