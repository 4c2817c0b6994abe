//! WorkerPool against the dev server: several workers in one process, each
//! restarted when it stops, removed by draining, and all drawing on one
//! budget.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use lkagent::proto::JobStatus;
use lkagent::{
    AddWorker, GetPoolState, GetPoolWorker, JobContext, JobError, JobHandler, MemberStatus, Pool,
    PoolMember, PoolState, RemoveWorker, Routing, Worker, WorkerPool,
};
use lkagent_devserver::{DevServer, DispatchError, DispatchRequest};
use tokio::sync::watch;

/// Holds every job until released (or cancelled), counting how many run at
/// once across every worker built with it.
#[derive(Clone)]
struct Held {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    release: watch::Receiver<bool>,
}

impl Held {
    fn new() -> (Self, watch::Sender<bool>) {
        let (release, released) = watch::channel(false);
        let held = Self {
            running: Arc::default(),
            most: Arc::default(),
            release: released,
        };
        (held, release)
    }
}

impl JobHandler for Held {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let mut release = self.release.clone();
        tokio::select! {
            _ = release.wait_for(|released| *released) => {}
            _ = ctx.cancelled() => {}
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A member for agent `name` of the dev server, running `handler`.
fn member(server: &DevServer, name: &str, max_jobs: usize, handler: Held) -> PoolMember {
    let options = options(server).max_jobs(max_jobs);
    let agent = name.to_owned();
    PoolMember::new(name, move || {
        Worker::builder(options.clone())
            .agent_name(agent.clone())
            .handler(handler.clone())
    })
}

async fn pool_state(pool: &Pool) -> PoolState {
    pool.send(GetPoolState).await.expect("pool alive")
}

/// Waits until the pool's state satisfies `pred`.
async fn wait_pool(pool: &Pool, what: &str, pred: impl Fn(&PoolState) -> bool) -> PoolState {
    wait_until(what, || pool_state(pool), pred).await
}

fn member_of<'a>(state: &'a PoolState, name: &str) -> Option<&'a lkagent::MemberState> {
    state.members.iter().find(|member| member.name == name)
}

/// True when `name` runs and is registered.
fn registered_member(state: &PoolState, name: &str) -> bool {
    member_of(state, name).is_some_and(|member| {
        member.status == MemberStatus::Running
            && member
                .worker
                .as_ref()
                .is_some_and(|worker| worker.connected)
    })
}

fn worker_id(state: &PoolState, name: &str) -> String {
    member_of(state, name)
        .and_then(|member| member.worker.as_ref())
        .and_then(|worker| worker.worker_id.clone())
        .expect("a registered worker")
}

async fn dispatch(server: &DevServer, agent: &str, room: &str) -> Result<String, DispatchError> {
    server
        .dispatch(DispatchRequest::room(room).agent_name(agent))
        .await
        .map(|job| job.id)
}

#[actix_rt::test]
async fn a_pool_worker_that_stops_is_restarted_and_registers_again() {
    let server = devserver().await;
    let (held, release) = Held::new();
    let pool = WorkerPool::builder()
        .worker(member(&server, "alpha", 2, held.clone()).label("region", "eu-west"))
        .worker(member(&server, "beta", 2, held.clone()).label("region", "us-east"))
        .worker(member(&server, "gamma", 2, held.clone()).label("region", "ap-south"))
        .http("127.0.0.1:0")
        .start()
        .expect("pool starts");
    let names = ["alpha", "beta", "gamma"];
    let state = wait_pool(&pool, "three registered workers", |state| {
        names.iter().all(|name| registered_member(state, name))
    })
    .await;
    let before = worker_id(&state, "beta");

    // stopped behind the pool's back: the pool starts a new incarnation
    let beta = pool
        .send(GetPoolWorker("beta".into()))
        .await
        .unwrap()
        .expect("beta runs");
    beta.stop().await;
    let state = wait_pool(&pool, "beta restarted and registered", |state| {
        registered_member(state, "beta")
            && member_of(state, "beta").unwrap().restarts == 1
            && worker_id(state, "beta") != before
    })
    .await;
    let after = worker_id(&state, "beta");
    server
        .wait_workers(DEADLINE, |workers| {
            workers.iter().any(|w| w.id == before && !w.connected)
                && workers
                    .iter()
                    .any(|w| w.id == after && w.connected && w.agent_name == "beta")
        })
        .await
        .expect("the server sees the old registration gone and the new one");
    // the others were not touched
    for name in ["alpha", "gamma"] {
        assert_eq!(member_of(&state, name).unwrap().restarts, 0, "{name}");
    }
    let labels = &member_of(&state, "beta").unwrap().labels;
    assert_eq!(labels["region"], "us-east");
    assert_eq!(
        member_of(&state, "beta")
            .unwrap()
            .worker
            .as_ref()
            .unwrap()
            .labels["region"],
        "us-east"
    );

    // the new incarnation serves
    let job = dispatch(&server, "beta", "after-restart")
        .await
        .expect("placed");
    assert_eq!(
        server.job(&job).await.unwrap().worker_id.as_deref(),
        Some(after.as_str())
    );
    release.send_replace(true);
    let done = wait_final(&server, &job).await;
    assert_eq!(statuses(&done).last(), Some(&JobStatus::JsSuccess));

    // the pool's endpoints: live, ready, every worker with its labels
    let http = pool.http_addr().expect("serving");
    let (code, body) = http_get(http, "/worker").await;
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let beta_json = json["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "beta")
        .expect("beta in /worker")
        .clone();
    assert_eq!(beta_json["labels"]["region"], "us-east");
    assert_eq!(beta_json["restarts"], 1);
    assert_eq!(beta_json["worker"]["connected"], true);
    assert_eq!(http_get(http, "/").await.0, 200);
    assert_eq!(http_get(http, "/ready").await.0, 200);

    pool.stop().await;
    server
        .wait_workers(DEADLINE, |workers| workers.iter().all(|w| !w.connected))
        .await
        .expect("every worker of the pool disconnected");
}

#[actix_rt::test]
async fn removing_a_worker_drains_it_and_its_job_finishes() {
    let server = devserver().await;
    let (held, release) = Held::new();
    let pool = WorkerPool::builder()
        .worker(member(&server, "stay", 2, held.clone()))
        .worker(member(&server, "leave", 2, held.clone()))
        .start()
        .expect("pool starts");
    let state = wait_pool(&pool, "both registered", |state| {
        registered_member(state, "stay") && registered_member(state, "leave")
    })
    .await;
    let leaving = worker_id(&state, "leave");
    let job = dispatch(&server, "leave", "long-call")
        .await
        .expect("placed");
    wait_job(&server, &job, "running", |job| {
        statuses(job).contains(&JobStatus::JsRunning)
    })
    .await;

    let removal = pool.send(RemoveWorker {
        name: "leave".into(),
        timeout: Duration::from_secs(30),
    });
    let removed = actix_rt::spawn(removal);
    wait_pool(&pool, "leave draining", |state| {
        member_of(state, "leave").is_some_and(|member| {
            member.status == MemberStatus::Draining
                && member.worker.as_ref().is_some_and(|w| w.draining)
        })
    })
    .await;
    // draining lets the job run: it has no final status, and the worker
    // takes no new job
    assert!(
        !server
            .job(&job)
            .await
            .unwrap()
            .updates
            .iter()
            .any(|u| is_final(u.status))
    );
    assert!(dispatch(&server, "leave", "refused").await.is_err());

    release.send_replace(true);
    let done = wait_final(&server, &job).await;
    assert_eq!(
        statuses(&done).last(),
        Some(&JobStatus::JsSuccess),
        "a drained job finishes, it is not cut: {done:?}"
    );
    removed
        .await
        .unwrap()
        .expect("pool alive")
        .expect("removed");
    let state = pool_state(&pool).await;
    assert!(member_of(&state, "leave").is_none(), "{state:?}");
    assert!(registered_member(&state, "stay"));
    server
        .wait_workers(DEADLINE, |workers| {
            workers.iter().any(|w| w.id == leaving && !w.connected)
        })
        .await
        .expect("the removed worker disconnected");

    // added at run time: a name in use is refused, a new one serves
    let again = pool
        .send(AddWorker(member(&server, "stay", 2, held.clone())))
        .await
        .unwrap();
    assert!(
        matches!(again, Err(lkagent::PoolError::Duplicate(_))),
        "{again:?}"
    );
    pool.send(AddWorker(member(&server, "late", 2, held.clone())))
        .await
        .unwrap()
        .expect("added");
    wait_pool(&pool, "the added worker registered", |state| {
        registered_member(state, "late")
    })
    .await;
    let job = dispatch(&server, "late", "late-job").await.expect("placed");
    let done = wait_final(&server, &job).await;
    assert_eq!(statuses(&done).last(), Some(&JobStatus::JsSuccess));
    pool.stop().await;
}

#[actix_rt::test]
async fn two_workers_of_one_pool_never_exceed_the_shared_budget() {
    const BUDGET: usize = 3;
    let server = devserver().await;
    let (held, release) = Held::new();
    // each worker alone could take 3: together they may take only 3
    let pool = WorkerPool::builder()
        .max_jobs(BUDGET)
        .worker(member(&server, "one", BUDGET, held.clone()))
        .worker(member(&server, "two", BUDGET, held.clone()))
        .start()
        .expect("pool starts");
    wait_pool(&pool, "both registered", |state| {
        registered_member(state, "one") && registered_member(state, "two")
    })
    .await;

    // alternate the agents, so each worker sees jobs while the other holds
    // part of the budget
    let mut placed = Vec::new();
    let mut refused = 0;
    for n in 0..8 {
        let agent = if n % 2 == 0 { "one" } else { "two" };
        match dispatch(&server, agent, &format!("room-{n}")).await {
            Ok(job) => placed.push(job),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(placed.len(), BUDGET, "placed {placed:?}");
    assert_eq!(refused, 8 - BUDGET);
    eventually("the budget's jobs running", || {
        held.running.load(Ordering::SeqCst) == BUDGET
    })
    .await;
    // with the budget full, each worker reports full — whichever took the
    // jobs
    let state = wait_pool(&pool, "both workers loaded by the shared budget", |state| {
        state.members.iter().all(|member| {
            member
                .worker
                .as_ref()
                .is_some_and(|w| w.load >= 1.0 && w.status == lkagent::proto::WorkerStatus::WsFull)
        })
    })
    .await;
    assert_eq!(state.budget.in_use.jobs, BUDGET);
    assert_eq!(state.budget.used_share, 1.0);

    release.send_replace(true);
    for job in &placed {
        let done = wait_final(&server, job).await;
        assert_eq!(statuses(&done).last(), Some(&JobStatus::JsSuccess));
    }
    assert!(
        held.most.load(Ordering::SeqCst) <= BUDGET,
        "{} jobs ran at once",
        held.most.load(Ordering::SeqCst)
    );
    wait_pool(&pool, "the budget freed", |state| {
        state.budget.in_use.jobs == 0
            && state
                .members
                .iter()
                .all(|m| m.worker.as_ref().is_some_and(|w| w.load < 1.0))
    })
    .await;
    pool.stop().await;
}

#[actix_rt::test]
async fn a_remote_region_worker_takes_jobs_only_below_its_share() {
    let server = devserver().await;
    let (held, release) = Held::new();
    let pool = WorkerPool::builder()
        .max_jobs(4)
        .worker(member(&server, "local", 4, held.clone()).label("region", "eu-west"))
        .worker(
            member(&server, "remote", 4, held.clone())
                .label("region", "us-east")
                .routing(Routing::BelowLoad(0.5)),
        )
        .start()
        .expect("pool starts");
    wait_pool(&pool, "both registered", |state| {
        registered_member(state, "local") && registered_member(state, "remote")
    })
    .await;

    // below half the budget the remote region's worker helps
    let first = dispatch(&server, "remote", "remote-1")
        .await
        .expect("taken below the share");
    let second = dispatch(&server, "local", "local-1")
        .await
        .expect("local takes");
    // at half, it reports full and refuses; the local one still takes
    wait_pool(&pool, "remote full at half the budget", |state| {
        member_of(state, "remote")
            .and_then(|m| m.worker.as_ref())
            .is_some_and(|w| w.status == lkagent::proto::WorkerStatus::WsFull)
    })
    .await;
    let refused = server
        .dispatch(
            DispatchRequest::room("remote-2")
                .agent_name("remote")
                .to_worker(worker_id(&pool_state(&pool).await, "remote")),
        )
        .await;
    assert!(
        refused.is_err(),
        "the remote worker took a job past its share"
    );
    let third = dispatch(&server, "local", "local-2")
        .await
        .expect("local takes more");

    release.send_replace(true);
    for job in [first, second, third] {
        let done = wait_final(&server, &job).await;
        assert_eq!(statuses(&done).last(), Some(&JobStatus::JsSuccess));
    }
    pool.stop().await;
}

#[actix_rt::test]
async fn a_worker_that_panics_is_restarted_until_its_policy_gives_up() {
    let server = devserver().await;
    let (held, _release) = Held::new();
    let once = lkagent::recovery::RestartPolicy::new(
        1,
        Duration::from_secs(60),
        lkagent::Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(10),
            jitter: 0.0,
        },
    );
    let pool = WorkerPool::builder()
        .worker(member(&server, "fragile", 1, held.clone()).restart_policy(once))
        .worker(member(&server, "steady", 1, held.clone()))
        .start()
        .expect("pool starts");
    wait_pool(&pool, "registered", |state| {
        registered_member(state, "fragile")
    })
    .await;
    let current = || async {
        pool.send(GetPoolWorker("fragile".into()))
            .await
            .unwrap()
            .expect("fragile runs")
    };
    // a panic in the worker's own code: it dies without stopping in order
    current().await.do_send(lkagent::InjectFault::Worker);
    let state = wait_pool(&pool, "restarted after the panic", |state| {
        registered_member(state, "fragile") && member_of(state, "fragile").unwrap().restarts == 1
    })
    .await;
    assert_eq!(lkagent::http::pool_liveness(Some(&state)).0, 200);
    // a second stop within the period is past its limit: failed, not
    // restarted, and the pool is no longer live
    current().await.do_send(lkagent::InjectFault::Worker);
    let state = wait_pool(&pool, "given up", |state| {
        matches!(
            member_of(state, "fragile").unwrap().status,
            MemberStatus::Failed(_)
        )
    })
    .await;
    let (code, why) = lkagent::http::pool_liveness(Some(&state));
    assert_eq!(code, 503);
    assert!(why.contains("fragile"), "{why}");
    assert!(registered_member(&state, "steady"));
    pool.stop().await;
}

#[actix_rt::test]
async fn a_worker_restarted_by_the_pool_resumes_its_running_job() {
    use lkagent::recovery::{CheckpointStore as _, EmbeddedStore};
    let server = devserver().await;
    let (held, release) = Held::new();
    let dir = tempfile::tempdir().unwrap();
    // one durable store across incarnations, and one identity: a new
    // incarnation finds the jobs the last one held
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let mut options = options(&server).max_jobs(2);
    options.instance_id = "pool-durable".into();
    let factory = {
        let (store, held) = (store.clone(), held.clone());
        move || {
            Worker::builder(options.clone())
                .agent_name("durable")
                .checkpoint_store(store.clone())
                .handler(held.clone())
        }
    };
    let pool = WorkerPool::builder()
        .worker(PoolMember::new("durable", factory))
        .start()
        .expect("pool starts");
    let state = wait_pool(&pool, "registered", |state| {
        registered_member(state, "durable")
    })
    .await;
    let first = worker_id(&state, "durable");
    let job = dispatch(&server, "durable", "survives")
        .await
        .expect("placed");
    wait_until(
        "the job's checkpoint stored",
        || async { store.list().await.unwrap_or_default() },
        |records| records.iter().any(|record| record.job_id() == job),
    )
    .await;

    // the worker dies mid-job; the pool starts it again
    pool.send(GetPoolWorker("durable".into()))
        .await
        .unwrap()
        .expect("runs")
        .do_send(lkagent::InjectFault::Worker);
    let state = wait_pool(&pool, "restarted", |state| {
        registered_member(state, "durable")
            && member_of(state, "durable").unwrap().restarts == 1
            && member_of(state, "durable")
                .unwrap()
                .worker
                .as_ref()
                .is_some_and(|w| w.running_jobs.contains(&job))
    })
    .await;
    let second = worker_id(&state, "durable");
    assert_ne!(first, second);

    // the new incarnation claimed the job and finishes it: one final status
    release.send_replace(true);
    let done = wait_final(&server, &job).await;
    let finals: Vec<_> = done
        .updates
        .iter()
        .filter(|u| is_final(u.status))
        .map(|u| (u.status, u.worker_id.clone()))
        .collect();
    assert_eq!(finals, [(JobStatus::JsSuccess, second)], "{done:?}");
    pool.stop().await;
}

/// Holds a job until its room's release: rooms named `long-…` wait for
/// `long`, the others for `short`.
#[derive(Clone)]
struct ByRoom {
    short: watch::Receiver<bool>,
    long: watch::Receiver<bool>,
}

impl JobHandler for ByRoom {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let mut release = if ctx.room_name().starts_with("long-") {
            self.long.clone()
        } else {
            self.short.clone()
        };
        tokio::select! {
            _ = release.wait_for(|released| *released) => {}
            _ = ctx.cancelled() => {}
        }
        Ok(())
    }
}

#[actix_rt::test]
async fn a_scaled_group_grows_with_its_load_and_sheds_its_idle_workers() {
    let server = devserver().await;
    let (short, short_released) = watch::channel(false);
    let (long, long_released) = watch::channel(false);
    let handler = ByRoom {
        short: short_released,
        long: long_released,
    };
    let policy = eager_policy(3);
    let options = options(&server).max_jobs(2);
    let group = lkagent::ScaledGroup::new("conn", policy, move |_| {
        Worker::builder(options.clone())
            .agent_name("scaled")
            .handler(handler.clone())
    })
    .interval(Duration::from_millis(100))
    .drain_timeout(Duration::from_secs(30));
    let pool = WorkerPool::builder()
        .scaled(group)
        .start()
        .expect("pool starts");
    let running = |state: &PoolState| {
        state
            .members
            .iter()
            .filter(|m| m.status == MemberStatus::Running)
            .count()
    };
    wait_pool(&pool, "the minimum registered", |state| {
        running(state) == 1 && registered_member(state, "conn-1")
    })
    .await;

    // fill what there is: the group grows to its maximum
    let mut jobs = Vec::new();
    for n in 0..6 {
        let room = if n == 0 {
            "long-call".to_owned()
        } else {
            format!("short-{n}")
        };
        let placed = wait_until(
            "a worker of the group to take the job",
            || dispatch(&server, "scaled", &room),
            Result::is_ok,
        )
        .await;
        jobs.push(placed.unwrap());
    }
    let long_job = jobs[0].clone();
    let state = wait_pool(&pool, "three workers", |state| running(state) == 3).await;
    let instances: std::collections::BTreeSet<_> = state
        .members
        .iter()
        .filter_map(|m| m.worker.as_ref().map(|w| w.instance_id.clone()))
        .collect();
    assert_eq!(
        instances.len(),
        3,
        "each worker its own instance: {instances:?}"
    );

    // the short jobs end: the group sheds its idle workers and keeps the
    // one still running the long call, which is not cut
    short.send_replace(true);
    for job in &jobs[1..] {
        let done = wait_final(&server, job).await;
        assert_eq!(
            statuses(&done).last(),
            Some(&JobStatus::JsSuccess),
            "{done:?}"
        );
    }
    let state = wait_pool(&pool, "back to one worker", |state| {
        state.members.len() == 1
    })
    .await;
    let kept = state.members[0]
        .worker
        .as_ref()
        .expect("the kept worker runs");
    assert!(
        kept.running_jobs.contains(&long_job),
        "the worker with the long call is kept: {state:?}"
    );
    assert!(
        !server
            .job(&long_job)
            .await
            .unwrap()
            .updates
            .iter()
            .any(|u| is_final(u.status)),
        "the long call was not cut"
    );
    long.send_replace(true);
    let done = wait_final(&server, &long_job).await;
    assert_eq!(statuses(&done).last(), Some(&JobStatus::JsSuccess));
    pool.stop().await;
}

#[actix_rt::test]
async fn a_pool_refuses_bad_members_and_stops_what_it_started() {
    let server = devserver().await;
    let (held, _release) = Held::new();
    let duplicate = WorkerPool::builder()
        .worker(member(&server, "same", 1, held.clone()))
        .worker(member(&server, "same", 1, held.clone()))
        .start()
        .unwrap_err();
    assert!(matches!(duplicate, lkagent::PoolError::Duplicate(ref name) if name == "same"));
    let bad_share = WorkerPool::builder()
        .worker(member(&server, "x", 1, held.clone()).routing(Routing::BelowLoad(1.5)))
        .start()
        .unwrap_err();
    assert!(bad_share.to_string().contains("routing"), "{bad_share}");
    let panicking = WorkerPool::builder()
        .worker(PoolMember::new("boom", || panic!("no config")))
        .start()
        .unwrap_err();
    assert!(panicking.to_string().contains("no config"), "{panicking}");
    // options cloned from one share its random instance name
    let shared = options(&server);
    let (a, b) = (shared.clone(), shared);
    let (ha, hb) = (held.clone(), held.clone());
    let twins = WorkerPool::builder()
        .worker(PoolMember::new("a", move || {
            Worker::builder(a.clone()).handler(ha.clone())
        }))
        .worker(PoolMember::new("b", move || {
            Worker::builder(b.clone()).handler(hb.clone())
        }))
        .start()
        .unwrap_err();
    assert!(
        matches!(twins, lkagent::PoolError::SameInstance { ref name, ref other, .. } if name == "b" && other == "a"),
        "{twins}"
    );
    // the first of each was started, then stopped when the next was refused
    server
        .wait_workers(DEADLINE, |workers| workers.iter().all(|w| !w.connected))
        .await
        .expect("nothing left registered");
}
