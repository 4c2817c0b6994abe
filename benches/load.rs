//! One load cycle: sample CPU and memory, compute the load, decide the
//! report. The LoadReporterActor runs this every 500 ms per worker.
//!
//! ```text
//! cargo bench --bench load
//! ```

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use lkagent::load::system::{ResourceSample, SystemSampler};
use lkagent::load::{
    CpuMemoryLoadCalculator, DefaultLoadCalculator, LoadCalculator, LoadMetrics, LoadReport,
    PredictiveLoadCalculator, ReportPolicy, Slots,
};

fn metrics(sample: ResourceSample) -> LoadMetrics {
    LoadMetrics {
        active_jobs: 40,
        max_jobs: 100,
        reserved_jobs: 2,
        job_durations: Vec::new(),
        process_cpu: sample.process_cpu,
        system_cpu: sample.system_cpu,
        memory_used: sample.memory_used,
        memory_total: sample.memory_total,
        recent_loads: Vec::new(),
    }
}

fn cycle(c: &mut Criterion) {
    let slots = Slots {
        active: 40,
        reserved: 2,
        max: 100,
    };
    let policy = ReportPolicy::default();
    let last = LoadReport::new(slots, 0.4, 0.7);
    let sent_at = Instant::now();

    let mut sampler = SystemSampler::new();
    let calculator = CpuMemoryLoadCalculator::default();
    c.bench_function("sample + cpu/memory calculate + decide", |b| {
        b.iter(|| {
            let m = metrics(sampler.sample());
            let report = LoadReport::new(slots, calculator.calculate(&m), 0.7);
            black_box(policy.should_send(Some((&last, sent_at)), &report, Instant::now()))
        })
    });

    let sample = sampler.sample();
    let predictive = PredictiveLoadCalculator::new(CpuMemoryLoadCalculator::default(), 10);
    c.bench_function("predictive calculate (no sampling)", |b| {
        b.iter(|| black_box(predictive.calculate(black_box(&metrics(sample)))))
    });
    c.bench_function("default calculate (no sampling)", |b| {
        b.iter(|| black_box(DefaultLoadCalculator.calculate(black_box(&metrics(sample)))))
    });
}

criterion_group!(benches, cycle);
criterion_main!(benches);
