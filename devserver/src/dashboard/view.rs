//! The JSON the page reads: the dispatcher's [`Overview`] turned into plain
//! views (times in Unix milliseconds, statuses as short lower-case words),
//! and each job's timeline. Pure functions, tested here.

use std::time::{SystemTime, UNIX_EPOCH};

use livekit_protocol::{JobStatus, JobType, WorkerStatus};
use serde::Serialize;

use crate::load_history::LoadSample;
use crate::messages::{Overview, RoomSummary};
use crate::model::{Counts, JobInfo, WorkerInfo};

/// Everything the page shows, as sent on each push.
#[derive(Debug, Serialize)]
pub struct StateView {
    /// The server's clock when the view was made (Unix ms): the page's "now".
    pub now: i64,
    /// The dev server's version.
    pub version: &'static str,
    /// Whether fault mode is on.
    pub fault_mode: bool,
    /// Everything held, counted (the lists below may be cut).
    pub counts: CountsView,
    /// Workers, connected first, each group in registration order.
    pub workers: Vec<WorkerView>,
    /// Rooms, newest first.
    pub rooms: Vec<RoomView>,
    /// Jobs, newest first.
    pub jobs: Vec<JobView>,
}

/// [`Counts`], serialisable.
#[derive(Debug, Serialize)]
pub struct CountsView {
    workers: usize,
    rooms: usize,
    participants: usize,
    dispatches: usize,
    jobs: usize,
    live_jobs: usize,
}

/// One worker connection.
#[derive(Debug, Serialize)]
pub struct WorkerView {
    id: String,
    agent_name: String,
    job_type: &'static str,
    namespace: String,
    deployment: String,
    version: String,
    protocol: i32,
    status: &'static str,
    load: f32,
    job_count: u32,
    connected: bool,
    registered_at: i64,
    /// `[at, load]` pairs, oldest first.
    load_history: Vec<(i64, f32)>,
}

/// One room with its participants and dispatches.
#[derive(Debug, Serialize)]
pub struct RoomView {
    name: String,
    created_at: i64,
    participants: Vec<ParticipantView>,
    dispatches: Vec<DispatchView>,
}

/// A simulated participant.
#[derive(Debug, Serialize)]
pub struct ParticipantView {
    identity: String,
    published: bool,
}

/// A live dispatch.
#[derive(Debug, Serialize)]
pub struct DispatchView {
    id: String,
    agent_name: String,
    metadata: String,
    job_ids: Vec<String>,
}

/// One job record and its timeline.
#[derive(Debug, Serialize)]
pub struct JobView {
    id: String,
    dispatch_id: String,
    room: String,
    agent_name: String,
    metadata: String,
    job_type: &'static str,
    participant: Option<String>,
    worker_id: Option<String>,
    status: &'static str,
    error: String,
    attempt: u32,
    restart_of: Option<String>,
    ended: bool,
    /// Its worker left and nobody claimed it in time, and no restart
    /// follows: the server no longer follows it (its status is the last
    /// one known).
    abandoned: bool,
    timeline: Vec<Event>,
}

/// One step of a job's life.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// When (Unix ms).
    pub at: i64,
    /// `pending`, `assigned`, or a status the worker reported (`running`,
    /// `success`, `failed`).
    pub what: &'static str,
    /// The worker concerned, if any.
    pub worker_id: Option<String>,
    /// The error text that came with it.
    pub error: String,
}

/// Unix milliseconds.
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A job status as the page shows it.
pub fn job_status(s: JobStatus) -> &'static str {
    match s {
        JobStatus::JsPending => "pending",
        JobStatus::JsRunning => "running",
        JobStatus::JsSuccess => "success",
        JobStatus::JsFailed => "failed",
    }
}

fn worker_status(s: WorkerStatus) -> &'static str {
    match s {
        WorkerStatus::WsAvailable => "available",
        WorkerStatus::WsFull => "full",
    }
}

fn job_type(t: JobType) -> &'static str {
    match t {
        JobType::JtRoom => "room",
        JobType::JtPublisher => "publisher",
        JobType::JtParticipant => "participant",
    }
}

/// A job's life, oldest first: created (pending), assigned to its first
/// worker, every status a worker reported, and the end when the server
/// ended it without a report (termination, a failed placement, a worker
/// that never came back).
pub fn timeline(job: &JobInfo) -> Vec<Event> {
    let mut events = vec![Event {
        at: millis(job.created_at),
        what: "pending",
        worker_id: None,
        error: String::new(),
    }];
    if let Some(at) = job.assigned_at {
        // a later claim moves `worker_id`; it shows as the claimant's updates
        events.push(Event {
            at: millis(at),
            what: "assigned",
            worker_id: job.assigned_to.clone(),
            error: String::new(),
        });
    }
    events.extend(job.updates.iter().map(|u| Event {
        at: millis(u.at),
        what: job_status(u.status),
        worker_id: Some(u.worker_id.clone()),
        error: u.error.clone(),
    }));
    // the end, when no worker reported it: the server ended the job
    // (termination, a failed placement, a worker that never came back);
    // updates that came after it are kept, in time order
    if let Some(at) = job.ended_at {
        let reported = job.updates.iter().any(|u| u.status == job.status);
        if !reported {
            events.push(Event {
                at: millis(at),
                what: job_status(job.status),
                worker_id: job.worker_id.clone(),
                error: job.error.clone(),
            });
            events.sort_by_key(|e| e.at);
        }
    }
    events
}

fn worker_view((w, history): (WorkerInfo, Vec<LoadSample>)) -> WorkerView {
    WorkerView {
        load_history: history.iter().map(|s| (millis(s.at), s.load)).collect(),
        id: w.id,
        agent_name: w.agent_name,
        job_type: job_type(w.job_type),
        namespace: w.namespace.unwrap_or_default(),
        deployment: w.deployment,
        version: w.version,
        protocol: w.protocol,
        status: worker_status(w.status),
        load: w.load,
        job_count: w.job_count,
        connected: w.connected,
        registered_at: millis(w.registered_at),
    }
}

fn room_view(r: RoomSummary) -> RoomView {
    RoomView {
        name: r.name,
        created_at: r.created_at_ms,
        participants: r
            .participants
            .into_iter()
            .map(|(identity, published)| ParticipantView {
                identity,
                published,
            })
            .collect(),
        dispatches: r
            .dispatches
            .into_iter()
            .map(|d| DispatchView {
                id: d.id,
                agent_name: d.agent_name,
                metadata: d.metadata,
                job_ids: d.job_ids,
            })
            .collect(),
    }
}

fn job_view((j, abandoned): (JobInfo, bool)) -> JobView {
    JobView {
        abandoned,
        timeline: timeline(&j),
        ended: j.ended_at.is_some(),
        id: j.id,
        dispatch_id: j.dispatch_id,
        room: j.room,
        agent_name: j.agent_name,
        metadata: j.metadata,
        job_type: job_type(j.job_type),
        participant: j.participant,
        worker_id: j.worker_id,
        status: job_status(j.status),
        error: j.error,
        attempt: j.attempt,
        restart_of: j.restart_of,
    }
}

fn counts_view(c: Counts) -> CountsView {
    CountsView {
        workers: c.workers,
        rooms: c.rooms,
        participants: c.participants,
        dispatches: c.dispatches,
        jobs: c.jobs,
        live_jobs: c.live_jobs,
    }
}

/// The page's view of `overview`, made at `now`.
pub fn state(overview: Overview, now: SystemTime) -> StateView {
    let mut workers: Vec<WorkerView> = overview.workers.into_iter().map(worker_view).collect();
    // connected first; a stable sort keeps registration order in each group
    workers.sort_by_key(|w| !w.connected);
    StateView {
        now: millis(now),
        version: env!("CARGO_PKG_VERSION"),
        fault_mode: overview.fault_mode,
        counts: counts_view(overview.counts),
        workers,
        rooms: overview.rooms.into_iter().map(room_view).collect(),
        jobs: overview.jobs.into_iter().map(job_view).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::StatusUpdate;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn job() -> JobInfo {
        JobInfo {
            id: "AJ_1".into(),
            dispatch_id: "AD_1".into(),
            room: "r".into(),
            agent_name: String::new(),
            metadata: String::new(),
            job_type: JobType::JtRoom,
            worker_id: None,
            participant_identity: String::new(),
            status: JobStatus::JsPending,
            error: String::new(),
            updates: Vec::new(),
            namespace: String::new(),
            participant: None,
            attempt: 1,
            restart_of: None,
            created_at: at(1000),
            assigned_at: None,
            assigned_to: None,
            ended_at: None,
        }
    }

    /// A job assigned to `AW_1` at 1100 ms.
    fn assigned_job() -> JobInfo {
        JobInfo {
            worker_id: Some("AW_1".into()),
            assigned_at: Some(at(1100)),
            assigned_to: Some("AW_1".into()),
            ..job()
        }
    }

    fn update(status: JobStatus, worker: &str, ms: u64, error: &str) -> StatusUpdate {
        StatusUpdate {
            status,
            error: error.into(),
            worker_id: worker.into(),
            at: at(ms),
        }
    }

    fn whats(events: &[Event]) -> Vec<(&'static str, i64, Option<&str>)> {
        events
            .iter()
            .map(|e| (e.what, e.at, e.worker_id.as_deref()))
            .collect()
    }

    #[test]
    fn a_job_not_yet_placed_is_pending_since_its_creation() {
        assert_eq!(whats(&timeline(&job())), vec![("pending", 1000, None)]);
    }

    #[test]
    fn a_job_that_ran_to_success_shows_each_step_once() {
        let mut j = assigned_job();
        j.updates = vec![
            update(JobStatus::JsRunning, "AW_1", 1200, ""),
            update(JobStatus::JsSuccess, "AW_1", 1900, ""),
        ];
        j.status = JobStatus::JsSuccess;
        j.ended_at = Some(at(1900));
        assert_eq!(
            whats(&timeline(&j)),
            vec![
                ("pending", 1000, None),
                ("assigned", 1100, Some("AW_1")),
                ("running", 1200, Some("AW_1")),
                ("success", 1900, Some("AW_1")),
            ]
        );
    }

    #[test]
    fn an_end_the_worker_did_not_report_is_added_with_its_error() {
        let mut j = assigned_job();
        j.updates = vec![update(JobStatus::JsRunning, "AW_1", 1200, "")];
        j.status = JobStatus::JsFailed;
        j.error = "the worker disconnected and did not claim the job in time".into();
        j.ended_at = Some(at(5000));
        let events = timeline(&j);
        let last = events.last().unwrap();
        assert_eq!((last.what, last.at), ("failed", 5000));
        assert_eq!(last.error, j.error);
        assert_eq!(events.len(), 4);
    }

    #[test]
    fn a_placement_that_failed_ends_without_an_assignment() {
        let mut j = job();
        j.status = JobStatus::JsFailed;
        j.error = "no workers available".into();
        j.ended_at = Some(at(1001));
        assert_eq!(
            whats(&timeline(&j)),
            vec![("pending", 1000, None), ("failed", 1001, None)]
        );
    }

    #[test]
    fn a_claimed_job_keeps_its_first_worker_on_the_assignment() {
        let mut j = job();
        j.worker_id = Some("AW_2".into());
        j.assigned_at = Some(at(1100));
        j.assigned_to = Some("AW_1".into());
        j.updates = vec![update(JobStatus::JsRunning, "AW_2", 3000, "")];
        j.status = JobStatus::JsRunning;
        let events = timeline(&j);
        assert_eq!(events[1].worker_id.as_deref(), Some("AW_1"));
        assert_eq!(events[2].worker_id.as_deref(), Some("AW_2"));
    }

    #[test]
    fn connected_workers_come_first_in_registration_order() {
        let worker = |id: &str, connected: bool| WorkerInfo {
            id: id.into(),
            agent_name: String::new(),
            job_type: JobType::JtRoom,
            namespace: None,
            deployment: String::new(),
            version: "1.0".into(),
            protocol: 1,
            status: WorkerStatus::WsAvailable,
            load: 0.0,
            job_count: 0,
            connected,
            registered_at: at(0),
            pings: 0,
            update_count: 0,
            last_update: None,
            migrated_jobs: Vec::new(),
            availability_answers: Vec::new(),
        };
        let overview = Overview {
            workers: vec![
                (worker("a", false), vec![]),
                (worker("b", true), vec![]),
                (worker("c", false), vec![]),
                (worker("d", true), vec![]),
            ],
            ..Default::default()
        };
        let ids: Vec<String> = state(overview, at(0))
            .workers
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(ids, ["b", "d", "a", "c"]);
    }

    #[test]
    fn a_report_after_the_servers_end_stays_after_it() {
        // terminated (SUCCESS by the server), then the worker reports FAILED
        let mut j = assigned_job();
        j.updates = vec![
            update(JobStatus::JsRunning, "AW_1", 1200, ""),
            update(JobStatus::JsFailed, "AW_1", 3000, "cancelled"),
        ];
        j.status = JobStatus::JsSuccess;
        j.ended_at = Some(at(2000));
        let whats: Vec<_> = timeline(&j).iter().map(|e| (e.what, e.at)).collect();
        assert_eq!(
            whats,
            vec![
                ("pending", 1000),
                ("assigned", 1100),
                ("running", 1200),
                ("success", 2000),
                ("failed", 3000),
            ]
        );
    }

    #[test]
    fn a_repeated_final_report_adds_no_second_end() {
        let mut j = job();
        j.updates = vec![
            update(JobStatus::JsSuccess, "AW_1", 1500, ""),
            update(JobStatus::JsSuccess, "AW_1", 1600, ""),
        ];
        j.status = JobStatus::JsSuccess;
        j.ended_at = Some(at(1500));
        let ends = timeline(&j).iter().filter(|e| e.what == "success").count();
        assert_eq!(ends, 2, "the two reports, and no server end beside them");
    }
}
