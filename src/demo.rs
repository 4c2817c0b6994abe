//! A demo agent whose behaviour is set by the job's metadata.
//!
//! The quickstart, the example worker and the tests use it to make jobs that
//! succeed, fail or panic on cue. The metadata is JSON:
//! `{"duration_ms": 1000, "outcome": "success" | "fail" | "panic"}`; both
//! fields are optional, and metadata that is not JSON means the defaults
//! (one second, success).

use std::time::Duration;

use serde::Deserialize;

use crate::handler::{JobContext, JobError, JobHandler};

/// How long a demo job runs when its metadata does not say.
pub const DEFAULT_DURATION: Duration = Duration::from_millis(1000);

/// What a demo job does, read from its metadata.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct DemoPlan {
    /// How long to run, in milliseconds.
    pub duration_ms: Option<u64>,
    /// `"success"` (default), `"fail"` or `"panic"`.
    pub outcome: Option<String>,
}

/// How a demo job ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoOutcome {
    /// Return `Ok`.
    Success,
    /// Return an error.
    Fail,
    /// Panic inside the handler.
    Panic,
}

impl DemoPlan {
    /// Reads a plan from job metadata; anything that is not a JSON object
    /// of this shape gives the defaults.
    pub fn parse(metadata: &str) -> Self {
        serde_json::from_str(metadata).unwrap_or_default()
    }

    /// How long the job runs.
    pub fn duration(&self) -> Duration {
        self.duration_ms
            .map_or(DEFAULT_DURATION, Duration::from_millis)
    }

    /// How the job ends; an unknown word means success.
    pub fn outcome(&self) -> DemoOutcome {
        match self.outcome.as_deref() {
            Some("fail") => DemoOutcome::Fail,
            Some("panic") => DemoOutcome::Panic,
            _ => DemoOutcome::Success,
        }
    }
}

/// The text a failing demo job reports.
pub const FAIL_TEXT: &str = "demo agent failed as asked";
/// The message a panicking demo job panics with.
pub const PANIC_TEXT: &str = "demo agent panicked as asked";

/// The checkpoint key under which a demo job keeps the milliseconds it has
/// already run.
pub const PROGRESS_KEY: &str = "progress_ms";

/// How often a demo job checkpoints its progress.
pub const CHECKPOINT_STEP: Duration = Duration::from_millis(250);

/// Runs for the planned time (or until terminated), then ends as planned.
/// It checkpoints the time already run every [`CHECKPOINT_STEP`], so a job
/// resumed after a panic or a worker restart runs only what remains.
#[derive(Clone, Copy, Debug, Default)]
pub struct DemoAgent;

impl JobHandler for DemoAgent {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let plan = DemoPlan::parse(ctx.metadata());
        let total = plan.duration();
        let checkpoint = ctx.checkpoint();
        let saved = checkpoint
            .load::<u64>(PROGRESS_KEY)
            .ok()
            .flatten()
            .unwrap_or(0);
        let mut done = Duration::from_millis(saved).min(total);
        if ctx.is_restart() {
            tracing::info!(
                job_id = ctx.id(),
                attempt = ctx.attempt(),
                progress_ms = saved,
                "resuming from checkpoint"
            );
        }
        while done < total {
            let step = (total - done).min(CHECKPOINT_STEP);
            if actix_rt::time::timeout(step, ctx.cancelled()).await.is_ok() {
                return Ok(()); // terminated: wind down at once
            }
            done += step;
            let progress_ms = u64::try_from(done.as_millis()).unwrap_or(u64::MAX);
            if let Err(err) = checkpoint.save(PROGRESS_KEY, &progress_ms) {
                tracing::warn!(job_id = ctx.id(), %err, "cannot save progress");
            } else if let Err(err) = checkpoint.flush().await {
                tracing::warn!(job_id = ctx.id(), %err, "cannot flush progress");
            } else {
                tracing::debug!(job_id = ctx.id(), progress_ms, "progress checkpointed");
            }
        }
        match plan.outcome() {
            DemoOutcome::Success => Ok(()),
            DemoOutcome::Fail => Err(JobError::failed(FAIL_TEXT)),
            DemoOutcome::Panic => panic!("{PANIC_TEXT}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_plan_from_json_metadata() {
        let plan = DemoPlan::parse(r#"{"duration_ms": 250, "outcome": "fail"}"#);
        assert_eq!(plan.duration(), Duration::from_millis(250));
        assert_eq!(plan.outcome(), DemoOutcome::Fail);
        assert_eq!(
            DemoPlan::parse(r#"{"outcome":"panic"}"#).outcome(),
            DemoOutcome::Panic
        );
    }

    #[test]
    fn non_json_metadata_means_the_defaults() {
        for metadata in ["", "hello", "[1,2]", r#"{"duration_ms":"soon"}"#] {
            let plan = DemoPlan::parse(metadata);
            assert_eq!(plan.duration(), DEFAULT_DURATION, "{metadata}");
            assert_eq!(plan.outcome(), DemoOutcome::Success, "{metadata}");
        }
    }
}
