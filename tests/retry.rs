//! Retryable failures: the job runs again after `retry_after`, without a
//! FAILED in between, up to the worker's bound.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lkagent::proto::JobStatus;
use lkagent::{JobContext, JobError, JobHandler};
use lkagent_devserver::DispatchRequest;

/// Fails retryably until `succeed_on`, recording when each attempt started.
#[derive(Clone)]
struct Flaky {
    succeed_on: u32,
    retry_after: Duration,
    attempts: Arc<Mutex<Vec<(u32, Instant)>>>,
}

impl Flaky {
    fn new(succeed_on: u32, retry_after: Duration) -> Self {
        Self {
            succeed_on,
            retry_after,
            attempts: Arc::default(),
        }
    }
}

impl JobHandler for Flaky {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        self.attempts
            .lock()
            .unwrap()
            .push((ctx.attempt(), Instant::now()));
        if ctx.attempt() >= self.succeed_on {
            Ok(())
        } else {
            Err(JobError::retryable("upstream busy", self.retry_after))
        }
    }
}

#[actix_rt::test]
async fn a_retryable_failure_runs_again_after_its_delay_and_succeeds() {
    let server = devserver().await;
    let handler = Flaky::new(3, Duration::from_millis(150));
    let worker = worker(options(&server), handler.clone());
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    let done = wait_final(&server, &job.id).await;
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess]
    );

    let attempts = handler.attempts.lock().unwrap().clone();
    let numbers: Vec<u32> = attempts.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [1, 2, 3]);
    for pair in attempts.windows(2) {
        let waited = pair[1].1 - pair[0].1;
        assert!(
            waited >= Duration::from_millis(150),
            "retried after {waited:?}"
        );
    }
}

#[actix_rt::test]
async fn retries_are_bounded_then_the_job_fails_with_the_reason() {
    let server = devserver().await;
    let handler = Flaky::new(u32::MAX, Duration::from_millis(10));
    let mut options = options(&server);
    options.restart_policy = lkagent::recovery::RestartPolicy::new(
        2,
        Duration::from_secs(60),
        lkagent::Backoff::default(),
    );
    let worker = worker(options, handler.clone());
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    let done = wait_final(&server, &job.id).await;
    assert_eq!(statuses(&done), [JobStatus::JsRunning, JobStatus::JsFailed]);
    let error = &done.updates[1].error;
    assert!(
        error.contains("upstream busy") && error.contains("3 attempts"),
        "{error}"
    );
    assert_eq!(
        handler.attempts.lock().unwrap().len(),
        3,
        "one run and two retries"
    );
}

#[actix_rt::test]
async fn a_job_terminated_while_waiting_to_retry_is_not_run_again() {
    let server = devserver().await;
    let handler = Flaky::new(2, Duration::from_secs(60));
    let worker = worker(options(&server), handler.clone());
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    wait_worker(&worker, "the first attempt", |s| s.running_jobs.len() == 1).await;
    eventually("the handler to run", || {
        !handler.attempts.lock().unwrap().is_empty()
    })
    .await;
    server.terminate_job(&job.id).await.unwrap();
    wait_worker(&worker, "the job to end", |s| s.running_jobs.is_empty()).await;
    let done = wait_final(&server, &job.id).await;
    assert_eq!(done.updates.last().unwrap().status, JobStatus::JsSuccess);
    assert_eq!(handler.attempts.lock().unwrap().len(), 1);
}
