//! The fleet simulation (`examples/fleet_sim.rs`, included here so the test
//! runs the very code the example runs) at its CI size: 10 workers, 500
//! jobs in a ramp, a burst above the fleet's capacity and a decay. No job
//! is lost or reported twice, no worker ever runs more than its
//! `max_jobs`, the jobs spread over every worker, and the AutoScaler asks
//! for more replicas at the burst than the fleet started with.

#[path = "../examples/fleet_sim.rs"]
#[allow(dead_code)]
mod fleet_sim;

use fleet_sim::{SimConfig, simulate, write_svg};
use lkagent::scaling::ScaleDecision;

#[actix_rt::test]
async fn a_fleet_under_a_burst_loses_no_job_and_overbooks_no_worker() {
    let config = SimConfig::ci();
    let report = simulate(config.clone()).await;
    println!("{report}");

    // every arrival answered: placed or refused, never both, never neither
    assert_eq!(report.arrivals, config.jobs);
    assert_eq!(report.unresolved, 0, "dispatches never answered");
    assert_eq!(report.placed + report.refused_total(), report.arrivals);
    // every placed job once, with exactly one final status
    assert_eq!(report.duplicate_ids, 0);
    assert_eq!(report.lost, 0, "placed jobs without a final status");
    assert_eq!(report.duplicate_finals, 0);
    assert_eq!(report.succeeded + report.failed, report.placed);
    assert_eq!(report.failed, report.placed_to_fail, "FAILED only as asked");
    let started: usize = report.workers.iter().map(|w| w.started).sum();
    assert_eq!(started, report.placed, "every placed job ran, once");

    // no worker above its slots, by its handler's own count
    for worker in &report.workers {
        assert!(
            worker.peak_running <= config.max_jobs,
            "{} ran {} jobs at once",
            worker.name,
            worker.peak_running
        );
    }
    // what the example's exit code checks: all of the above
    assert_eq!(report.violations(), Vec::<String>::new());

    // the jobs spread: every worker took some, none took most
    let (mean, cv) = report.spread();
    assert!(
        report.workers.iter().all(|w| w.placed > 0),
        "{:?}",
        report.workers
    );
    assert!(cv < 0.5, "jobs per worker: mean {mean:.1}, cv {cv:.2}");

    // the scaler saw the burst: up at some point, above the deployed count
    let first = report.ticks.first().expect("ticks").decision.replicas();
    let (peak, _) = report.peak_recommendation().expect("ticks");
    assert!(
        report
            .ticks
            .iter()
            .any(|t| matches!(t.decision, ScaleDecision::Up { .. })),
        "the scaler never scaled up"
    );
    assert!(peak > first, "peak {peak} vs first {first}");

    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("fleet_sim.svg");
    write_svg(&report, &svg).expect("the plot is written");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("replicas recommended"));
}
