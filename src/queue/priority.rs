//! [`JobPriority`] and how a job gets one: a [`PriorityCalculator`].
//!
//! A priority only orders work inside this worker — which queued job starts
//! first, and who is still admitted near the load threshold (see
//! [`AdmissionPolicy`](super::AdmissionPolicy)). The server knows nothing of
//! it. The default calculator lets whoever dispatches a job say how urgent it
//! is in the job's metadata (`{"priority": "high"}`), so that no code change
//! is needed to mark a VIP room; the handler's `on_request` may still
//! override it.

use std::fmt;
use std::str::FromStr;

use livekit_protocol::{Job, JobType};

/// How urgent a job is, from [`Low`](Self::Low) to [`Urgent`](Self::Urgent).
///
/// Ordered by urgency (`Low < Normal < High < Urgent`), so the greatest
/// priority is served first. Parsed case-insensitively from `"low"`,
/// `"normal"`, `"high"` and `"urgent"`, and displayed the same way
/// (lowercase), which is also the label used in metrics and in serde forms
/// (the fleet queue's items).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum JobPriority {
    /// Background work that may wait and is the first declined when busy.
    Low,
    /// The default for a job nobody marked.
    #[default]
    Normal,
    /// Served before normal work; admitted a little above the threshold.
    High,
    /// Served first; admitted furthest above the threshold.
    Urgent,
}

impl JobPriority {
    /// Every priority, lowest first: for iterating over per-priority stats.
    pub const ALL: [JobPriority; 4] = [Self::Low, Self::Normal, Self::High, Self::Urgent];

    /// The lowercase name, as parsed and displayed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }

    /// The position in [`ALL`](Self::ALL): 0 for `Low` … 3 for `Urgent`.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The `"priority"` field of a job's metadata, when the metadata is a
    /// JSON object and the field is one of the four names (any case);
    /// `None` otherwise — malformed or absent, the job type decides.
    pub fn from_metadata(metadata: &str) -> Option<Self> {
        // metadata is often free text: skip the JSON parser unless it can be
        // an object at all
        if !metadata.trim_start().starts_with('{') {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(metadata).ok()?;
        value.get(PRIORITY_METADATA_KEY)?.as_str()?.parse().ok()
    }
}

/// The metadata field the default calculator reads.
pub const PRIORITY_METADATA_KEY: &str = "priority";

impl fmt::Display for JobPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority name that is none of `low`, `normal`, `high`, `urgent`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown job priority {0:?}: expected low, normal, high or urgent")]
pub struct ParsePriorityError(pub String);

impl FromStr for JobPriority {
    type Err = ParsePriorityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| ParsePriorityError(text.to_owned()))
    }
}

/// Gives a job its priority when it is accepted. Implemented by
/// [`DefaultPriorityCalculator`] and by any `Fn(&Job) -> JobPriority`
/// closure. Called on the worker's decision path, so it must be quick.
pub trait PriorityCalculator: Send + Sync + 'static {
    /// The priority for this job.
    fn priority(&self, job: &Job) -> JobPriority;
}

impl<F> PriorityCalculator for F
where
    F: Fn(&Job) -> JobPriority + Send + Sync + 'static,
{
    fn priority(&self, job: &Job) -> JobPriority {
        self(job)
    }
}

/// The `"priority"` field of the job's metadata JSON when it is present and
/// valid; otherwise a priority per job type.
///
/// Every type maps to [`Normal`](JobPriority::Normal) by default. The type
/// says what a job is attached to (the room, one participant, one publisher),
/// not how urgent it is: each kind is dispatched because someone is in the
/// room now, waiting for the agent. Ranking the kinds against each other
/// would quietly starve one of them whenever the worker is busy, and a
/// worker usually serves one kind only (`WorkerOptions::job_type`) anyway.
/// An application that does rank them sets the fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultPriorityCalculator {
    /// For `JT_ROOM` jobs (and a type this version does not know).
    pub room: JobPriority,
    /// For `JT_PUBLISHER` jobs.
    pub publisher: JobPriority,
    /// For `JT_PARTICIPANT` jobs.
    pub participant: JobPriority,
}

impl Default for DefaultPriorityCalculator {
    /// Normal for every job type.
    fn default() -> Self {
        Self {
            room: JobPriority::Normal,
            publisher: JobPriority::Normal,
            participant: JobPriority::Normal,
        }
    }
}

impl PriorityCalculator for DefaultPriorityCalculator {
    fn priority(&self, job: &Job) -> JobPriority {
        if let Some(priority) = JobPriority::from_metadata(&job.metadata) {
            return priority;
        }
        match JobType::try_from(job.r#type) {
            Ok(JobType::JtPublisher) => self.publisher,
            Ok(JobType::JtParticipant) => self.participant,
            Ok(JobType::JtRoom) | Err(_) => self.room,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(job_type: JobType, metadata: &str) -> Job {
        Job {
            id: "AJ_1".into(),
            r#type: job_type as i32,
            metadata: metadata.into(),
            ..Job::default()
        }
    }

    #[test]
    fn priorities_are_ordered_by_urgency() {
        use JobPriority::*;
        assert!(Low < Normal && Normal < High && High < Urgent);
        assert_eq!(JobPriority::ALL.iter().max(), Some(&Urgent));
        assert_eq!(JobPriority::default(), Normal);
    }

    #[test]
    fn parses_case_insensitively_and_displays_lowercase() {
        assert_eq!("URGENT".parse(), Ok(JobPriority::Urgent));
        assert_eq!(" High ".parse(), Ok(JobPriority::High));
        assert_eq!("low".parse(), Ok(JobPriority::Low));
        assert_eq!(
            "asap".parse::<JobPriority>(),
            Err(ParsePriorityError("asap".into()))
        );
        for p in JobPriority::ALL {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
        assert_eq!(JobPriority::Normal.to_string(), "normal");
    }

    #[test]
    fn metadata_priority_wins_over_the_job_type() {
        let calc = DefaultPriorityCalculator::default();
        let urgent = job(JobType::JtRoom, r#"{"priority": "Urgent", "x": 1}"#);
        assert_eq!(calc.priority(&urgent), JobPriority::Urgent);
        let low = job(JobType::JtParticipant, r#"  {"priority":"low"}"#);
        assert_eq!(calc.priority(&low), JobPriority::Low);
    }

    #[test]
    fn invalid_or_absent_metadata_falls_back_to_the_job_type() {
        let calc = DefaultPriorityCalculator {
            publisher: JobPriority::High,
            ..DefaultPriorityCalculator::default()
        };
        for metadata in [
            "",
            "plain text",
            "{not json",
            r#"{"priority": "asap"}"#,
            r#"{"priority": 3}"#,
            r#"["priority"]"#,
        ] {
            assert_eq!(
                calc.priority(&job(JobType::JtPublisher, metadata)),
                JobPriority::High,
                "{metadata}"
            );
            assert_eq!(
                calc.priority(&job(JobType::JtRoom, metadata)),
                JobPriority::Normal
            );
        }
        let unknown_type = Job {
            r#type: 99,
            ..Job::default()
        };
        assert_eq!(calc.priority(&unknown_type), JobPriority::Normal);
    }

    #[test]
    fn a_closure_is_a_calculator() {
        let calc: Box<dyn PriorityCalculator> = Box::new(|job: &Job| {
            if job.metadata.contains("vip") {
                JobPriority::Urgent
            } else {
                JobPriority::Low
            }
        });
        assert_eq!(
            calc.priority(&job(JobType::JtRoom, "vip")),
            JobPriority::Urgent
        );
        assert_eq!(calc.priority(&job(JobType::JtRoom, "")), JobPriority::Low);
    }
}
