//! The fleet's view on Redis (feature `redis`): workers publish their loads
//! with a short TTL, each computes the fleet's recommended replica count
//! with the AutoScaler, and exports it as a metric; a worker that stops
//! leaves the view at once, one that dies leaves it when its entry lapses.
//! (Rounds are 1 s apart: the test takes some seconds.)
//!
//! `cargo test --workspace --features lkagent/redis`; needs `redis-server`.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::*;
use lkagent::fleet::{FleetView, RedisFleetView};
use lkagent::scaling::ScalingPolicy;
use lkagent::{JobContext, JobError, JobHandler, Worker};
use lkagent_devserver::DispatchRequest;
use tokio::sync::watch;

const PREFIX: &str = "scaling-test";

/// Holds every job until released.
#[derive(Clone)]
struct Held(watch::Receiver<bool>);

impl JobHandler for Held {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let mut release = self.0.clone();
        tokio::select! {
            _ = release.wait_for(|released| *released) => {}
            _ = ctx.cancelled() => {}
        }
        Ok(())
    }
}

async fn recommended(worker: &Worker) -> Option<u32> {
    worker
        .send(lkagent::GetState)
        .await
        .ok()
        .and_then(|state| state.recommended_replicas)
}

#[actix_rt::test]
async fn every_worker_computes_the_fleets_replica_count_from_the_shared_view() {
    let prometheus = lkagent::telemetry::prometheus().expect("the test's recorder");
    let redis = TestRedis::start();
    let server = devserver().await;
    let view = RedisFleetView::connect(&redis.url, PREFIX)
        .await
        .expect("redis");
    let (release, released) = watch::channel(false);
    let mut workers = Vec::new();
    for n in 0..3 {
        let mut options = options(&server).max_jobs(2);
        // entries last three intervals: long enough that a live worker's
        // never lapses on a busy machine
        options.fleet_view_interval = Duration::from_secs(1);
        options.instance_id = format!("scaling-w{n}");
        let worker = Worker::builder(options)
            .fleet_view(view.clone(), eager_policy(10))
            .handler(Held(released.clone()))
            .start()
            .expect("worker starts");
        registered(&worker).await;
        workers.push(worker);
    }

    // idle: three replicas at load 0 need only the minimum
    let loads = wait_until(
        "three loads in the view",
        || async { view.loads().await.unwrap_or_default() },
        |loads| loads.len() == 3,
    )
    .await;
    assert!(loads.iter().all(|load| load.max_jobs == 2), "{loads:?}");
    for worker in &workers {
        wait_until(
            "an idle fleet needs one",
            || recommended(worker),
            |r| *r == Some(1),
        )
        .await;
    }

    // six jobs fill every slot: a load of 1.0 on three replicas, at a
    // target of 0.5, needs six
    let mut jobs = Vec::new();
    for n in 0..6 {
        let job = server
            .dispatch(DispatchRequest::room(format!("busy-{n}")))
            .await
            .expect("placed");
        jobs.push(job.id);
    }
    for worker in &workers {
        wait_until(
            "a full fleet needs six",
            || recommended(worker),
            |r| *r == Some(6),
        )
        .await;
    }
    let text = prometheus.render();
    assert!(
        text.contains(r#"livekit_agent_recommended_replicas{agent_name="",worker="scaling-w0"} 6"#),
        "{text}"
    );

    // the jobs end: back to the minimum
    release.send_replace(true);
    for job in &jobs {
        wait_final(&server, job).await;
    }
    for worker in &workers {
        wait_until(
            "an idle fleet again",
            || recommended(worker),
            |r| *r == Some(1),
        )
        .await;
    }

    // a worker that stops in order withdraws its load at once ...
    workers.pop().unwrap().stop().await;
    let loads = view.loads().await.unwrap();
    assert!(
        loads.iter().all(|load| load.worker != "scaling-w2"),
        "{loads:?}"
    );
    // ... one that dies without stopping leaves when its entry lapses (three
    // intervals), and the others never lapse meanwhile
    workers.pop().unwrap().do_send(lkagent::InjectFault::Worker);
    wait_until(
        "the dead worker's load lapsed, the live one's kept",
        || async {
            let loads = view.loads().await.unwrap_or_default();
            loads.into_iter().map(|l| l.worker).collect::<Vec<_>>()
        },
        |workers| workers == &["scaling-w0"],
    )
    .await;
    workers.pop().unwrap().stop().await;
}

#[actix_rt::test]
async fn an_invalid_scaling_policy_is_refused_at_start() {
    let redis = TestRedis::start();
    let server = devserver().await;
    let view = RedisFleetView::connect(&redis.url, PREFIX)
        .await
        .expect("redis");
    let err = Worker::builder(options(&server))
        .fleet_view(
            view,
            ScalingPolicy {
                min_replicas: 5,
                max_replicas: 2,
                ..ScalingPolicy::default()
            },
        )
        .handler(Held(watch::channel(false).1))
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("scaling_policy"), "{err}");
}
