//! The socket's thread stays free: a handler whose `on_request` blocks its
//! thread does not delay pongs, the availability answers for other jobs, or
//! the delivery of other jobs' statuses.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use lkagent::proto::JobStatus;
use lkagent::{Decision, JobContext, JobError, JobHandler, JobRequest};
use lkagent_devserver::{DevServerConfig, DispatchRequest};

/// `on_request` of a job whose metadata is `"block"` blocks its thread (a
/// synchronous wait, as a careless handler would do) until released or 5 s
/// pass. Jobs whose metadata is `"hold"` run until released.
#[derive(Clone)]
struct Careless {
    blocking: Arc<AtomicBool>,
    release_block: Arc<Mutex<mpsc::Receiver<()>>>,
    release_hold: Arc<tokio::sync::Semaphore>,
}

impl JobHandler for Careless {
    async fn on_request(&self, request: &JobRequest) -> Decision {
        if request.metadata() == "block" {
            self.blocking.store(true, Ordering::SeqCst);
            let _ = self
                .release_block
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(5));
            self.blocking.store(false, Ordering::SeqCst);
        }
        Decision::accept(request)
    }

    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        if ctx.metadata() == "hold" {
            self.release_hold.acquire().await.expect("open").forget();
        }
        Ok(())
    }
}

#[actix_rt::test]
async fn a_blocked_on_request_delays_no_pong_no_other_answer_and_no_status() {
    // the server gives up on an answer after 2 s: a delayed answer fails
    let server = devserver_with(DevServerConfig {
        availability_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let (release, blocked) = mpsc::channel();
    let handler = Careless {
        blocking: Arc::default(),
        release_block: Arc::new(Mutex::new(blocked)),
        release_hold: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    // pings every 100 ms, reconnect after 1 s without a pong
    let worker = worker(options(&server), handler.clone());
    let worker_id = registered(&worker).await;
    let held = server
        .dispatch(DispatchRequest::room("held").metadata("hold"))
        .await
        .unwrap();
    wait_job(&server, &held.id, "RUNNING", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;

    // an offer whose decision blocks its thread
    let blocked_dispatch = {
        let server = server.clone();
        actix_rt::spawn(async move {
            server
                .dispatch(DispatchRequest::room("blocked").metadata("block"))
                .await
        })
    };
    eventually("on_request to block", || {
        handler.blocking.load(Ordering::SeqCst)
    })
    .await;

    // another job is answered, and accepted, meanwhile
    let other = server
        .dispatch(DispatchRequest::room("other"))
        .await
        .expect("another offer is answered while one hook blocks");
    // a running job's status is delivered meanwhile
    handler.release_hold.add_permits(1);
    let done = wait_final(&server, &held.id).await;
    assert_eq!(done.updates.last().unwrap().status, JobStatus::JsSuccess);
    wait_final(&server, &other.id).await;
    // and the keepalive goes on: ten more pings (a second) while it blocks
    let pings = |ws: &[lkagent_devserver::WorkerInfo]| {
        ws.iter().find(|w| w.id == worker_id).map_or(0, |w| w.pings)
    };
    let before = pings(&server.workers().await);
    server
        .wait_workers(DEADLINE, |ws| pings(ws) >= before + 10)
        .await
        .expect("pings go on");
    assert!(
        handler.blocking.load(Ordering::SeqCst),
        "all of it happened while the hook was still blocked"
    );
    let state = worker.send(lkagent::GetState).await.unwrap();
    assert!(state.connected);
    assert_eq!(
        state.registrations, 1,
        "no pong was late enough to reconnect"
    );

    release.send(()).unwrap();
    let _ = blocked_dispatch.await;
}
