//! The worker's hot paths, one at a time: a frame decoded and encoded, the
//! availability answer built, the job table's transitions for one job's life
//! (with 10,000 other jobs in the table, where a cost that grows with the
//! jobs would show), the queue's push and pop; and the floor under every
//! message between the worker's threads: one actor round trip across two
//! arbiters.
//!
//! ```text
//! cargo bench --bench hot_paths
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use lkagent::jobs::{Admission, Assignment, FinalStatus, JobOrigin, JobSpec, JobTable};
use lkagent::proto::{self, server_message, worker_message};
use lkagent::queue::JobQueue;
use lkagent::{JobPriority, Participant};

/// A job as the server offers it: a room, a little metadata, its state.
fn job(id: &str) -> proto::Job {
    proto::Job {
        id: id.into(),
        dispatch_id: "AD_bench".into(),
        r#type: proto::JobType::JtRoom as i32,
        room: Some(proto::Room {
            sid: "RM_bench".into(),
            name: "support-room-1".into(),
            ..Default::default()
        }),
        metadata: r#"{"duration_ms": 0, "priority": "normal"}"#.into(),
        agent_name: "support-bot".into(),
        state: Some(proto::JobState {
            status: proto::JobStatus::JsRunning as i32,
            worker_id: "AW_bench".into(),
            started_at: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn spec(id: &str) -> JobSpec {
    JobSpec {
        job: Arc::new(job(id)),
        url: "ws://127.0.0.1:7880".into(),
        token: "a-room-token".into(),
        identity: Some(format!("agent-{id}")),
    }
}

fn frames(c: &mut Criterion) {
    let offer = lkagent::protocol::encode_server(server_message::Message::Availability(
        proto::AvailabilityRequest {
            job: Some(job("AJ_bench")),
            resuming: false,
        },
    ));
    c.bench_function("decode an availability request", |b| {
        b.iter(|| black_box(lkagent::protocol::decode_server(black_box(&offer)).unwrap()))
    });
    let participant = Participant {
        identity: "agent-AJ_bench".into(),
        ..Participant::default()
    };
    c.bench_function("build and encode the availability answer", |b| {
        b.iter(|| {
            let answer = lkagent::protocol::availability_answer("AJ_bench", Some(&participant));
            black_box(
                lkagent::protocol::encode_worker(&worker_message::Message::Availability(answer))
                    .unwrap(),
            )
        })
    });
}

/// A table of `others` running jobs (plus room for one more).
fn busy_table(others: usize) -> JobTable {
    let now = Instant::now();
    let mut table: JobTable = JobTable::new(others + 1, 1000);
    table.registered();
    for i in 0..others {
        let id = format!("LJ_{i}");
        table
            .admit(
                Admission {
                    id: id.clone(),
                    origin: JobOrigin::Local,
                    priority: JobPriority::Normal,
                    reservation: None,
                    spec: spec(&id),
                    checkpoint: None,
                },
                now,
            )
            .unwrap();
        table.started(&id, now);
    }
    table
}

fn table(c: &mut Criterion) {
    for others in [0, 10_000] {
        c.bench_function(
            &format!("one job's life in the table ({others} others)"),
            |b| {
                b.iter_batched_ref(
                    || busy_table(others),
                    |table| {
                        let now = Instant::now();
                        let ticket = table
                            .offer("AJ_x", JobPriority::Normal, "room", false, now)
                            .unwrap();
                        table.answer("AJ_x", ticket, JobPriority::Normal, None, None, now);
                        let placed = table.assign("AJ_x", spec("AJ_x"), JobPriority::Normal, now);
                        assert!(matches!(placed, Assignment::Placed(_)));
                        black_box(table.slots());
                        table.started("AJ_x", now);
                        black_box(table.can_start());
                        table.finish("AJ_x", FinalStatus::success(), now);
                        table.confirm(["AJ_x"]);
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
}

fn queue(c: &mut Criterion) {
    let priorities = JobPriority::ALL;
    c.bench_function("queue push and pop (1,000 waiting)", |b| {
        let now = Instant::now();
        let mut queue = JobQueue::new(2000);
        for i in 0..1000 {
            queue.push(i, priorities[i % 4], now).unwrap();
        }
        let mut n = 1000;
        b.iter(|| {
            queue.push(n, priorities[n % 4], now).unwrap();
            n += 1;
            black_box(queue.pop())
        })
    });
}

/// An actor that answers at once.
struct Echo;

impl actix::Actor for Echo {
    type Context = actix::Context<Self>;
}

#[derive(actix::Message)]
#[rtype(result = "()")]
struct Ping;

impl actix::Handler<Ping> for Echo {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

/// A message to an actor on another arbiter and its answer back: two
/// wake-ups of a parked thread, what each hop between the worker's
/// connection, worker, hook and job threads costs. The benchmark's
/// availability answer takes four such hops inside the worker.
fn hop(c: &mut Criterion) {
    use actix::Actor as _;
    let system = actix_rt::System::new();
    let (arbiter, echo) = system.block_on(async {
        let arbiter = actix_rt::Arbiter::new();
        let echo = Echo::start_in_arbiter(&arbiter.handle(), |_| Echo);
        (arbiter, echo)
    });
    c.bench_function("actor round trip across arbiters", |b| {
        b.iter(|| system.block_on(echo.send(Ping)).unwrap())
    });
    arbiter.stop();
}

criterion_group!(benches, frames, table, queue, hop);
criterion_main!(benches);
