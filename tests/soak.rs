//! The chaos soak (`examples/soak.rs`, included here so the test runs the
//! very code the example runs) at CI size: 5,000 short jobs through a dev
//! server that drops the worker's connection, terminates its jobs, repeats
//! availability requests and assignments and restarts failed jobs, at
//! moments drawn from a seed. Every assigned job ends, every acknowledged
//! one with exactly one terminal status; no job runs twice at once; no
//! status is lost; the worker's memory stays put after the warm-up.
//!
//! The seed is fixed so that CI replays one schedule; `LKAGENT_SOAK_SEED`
//! runs another.

#[path = "../examples/soak.rs"]
#[allow(dead_code)]
mod soak;

use std::process::Command;

use soak::{SoakConfig, soak, worker_process};

/// Names this file's child test, for the worker process.
const WORKER_TEST: &str = "the_soak_worker_process";

#[actix_rt::test]
async fn a_worker_under_chaos_loses_nothing_repeats_nothing_and_leaks_nothing() {
    let seed = std::env::var("LKAGENT_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261202);
    let config = SoakConfig::ci(seed);
    let mut worker = Command::new(std::env::current_exe().unwrap());
    worker.args([
        "--exact",
        WORKER_TEST,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    let report = soak(config.clone(), worker).await.unwrap();
    println!("{report}");

    // the faults happened
    let counts = report.faults.counts;
    assert!(counts.dropped_connections > 0, "no connection dropped");
    assert!(counts.terminated_jobs > 0, "no job terminated");
    assert!(counts.duplicated_messages > 0, "no message repeated");
    assert!(report.registrations > 1, "the worker never reconnected");
    // every job asked for was assigned at least once; restarts come on top
    assert!(report.faults.assigned >= config.jobs);
    assert!(report.handler_runs >= config.jobs as u64);
    // and nothing was lost, repeated, run twice at once or leaked
    let problems = report.problems();
    assert!(
        problems.is_empty(),
        "seed {seed}: {problems:#?}\n{report}\nreplay: LKAGENT_SOAK_SEED={seed} cargo test --test soak"
    );
}

/// The worker's half of the soak, run as a child process by the test
/// above (with `--ignored`); on its own it finds no server to talk to.
#[test]
#[ignore = "run as a child process by the soak test"]
fn the_soak_worker_process() {
    worker_process().unwrap();
}
