//! Jobs no server dispatched: `SpawnJob` from the application, and jobs
//! pulled from the fleet's queue (`fleet.rs`).

use std::time::Instant;

use livekit_protocol::{Job, Room};
use tracing::info;

use super::*;
use crate::handler::room_name;
use crate::jobs::{Admission, JobOrigin, JobSpec, Placement, Refusal};

impl Handler<SpawnJob> for WorkerActor {
    type Result = MessageResult<SpawnJob>;

    fn handle(&mut self, msg: SpawnJob, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.spawn_job(msg, JobOrigin::Local, ctx))
    }
}

impl WorkerActor {
    /// Admits a job no server dispatched (`Local`, or `Fleet` when pulled
    /// from the fleet's queue): a slot if one is free, else the queue.
    pub(super) fn spawn_job(
        &mut self,
        msg: SpawnJob,
        origin: JobOrigin,
        ctx: &mut Context<Self>,
    ) -> SpawnOutcome {
        let metrics = self.metrics.clone();
        let refuse = move |reason: SpawnRefusal| {
            metrics.declined(
                super::availability::decline_reason(&reason),
                std::time::Duration::ZERO,
            );
            SpawnOutcome::Refused { reason }
        };
        if self.shutting_down() {
            return refuse(SpawnRefusal::ShuttingDown);
        }
        if msg.room.trim().is_empty() {
            return refuse(SpawnRefusal::Invalid("the room is required".into()));
        }
        let job_id = msg.id.unwrap_or_else(|| crate::jobs::fresh_id("LJ_"));
        if self.table.get(&job_id).is_some() {
            return refuse(SpawnRefusal::Duplicate(job_id));
        }
        if !self.table.can_start() && !self.table.queue_has_room() {
            return refuse(SpawnRefusal::AtCapacity);
        }
        let job = Job {
            id: job_id.clone(),
            r#type: msg.job_type as i32,
            room: Some(Room {
                name: msg.room,
                ..Default::default()
            }),
            metadata: msg.metadata,
            agent_name: self.options.agent_name.clone(),
            ..Default::default()
        };
        let priority = msg.priority.unwrap_or_else(|| self.priority_of(&job));
        let room = room_name(&job).to_owned();
        // no load-based admission here: a server offer can go to another
        // worker, a local job has nowhere else to go, so it queues instead
        if matches!(self.memory, UsageState::Pressure | UsageState::Exceeded) {
            return refuse(SpawnRefusal::MemoryPressure);
        }
        let reservation = match self.reserve(&room, msg.resources.unwrap_or_default()) {
            Ok(reservation) => reservation,
            Err(reason) => return refuse(reason),
        };
        let identity = msg.identity.unwrap_or_else(|| format!("agent-{job_id}"));
        let token =
            match self
                .options
                .credentials
                .room_token(&room, &identity, self.options.room_token_ttl)
            {
                Ok(token) => token,
                Err(err) => return refuse(SpawnRefusal::Token(err.to_string())),
            };
        let admission = Admission {
            id: job_id.clone(),
            origin,
            priority,
            reservation: Some(reservation),
            spec: JobSpec {
                job: Arc::new(job),
                url: self.options.url.clone(),
                token,
                identity: Some(identity),
            },
            checkpoint: None,
        };
        let placement = match self.table.admit(admission, Instant::now()) {
            Ok(placement) => placement,
            Err(Refusal::Duplicate(id)) => return refuse(SpawnRefusal::Duplicate(id)),
            Err(Refusal::AtCapacity) => return refuse(SpawnRefusal::AtCapacity),
        };
        self.place(&job_id, placement, ctx);
        match placement {
            Placement::Start => {
                info!(job_id, %priority, ?origin, "started a job of no server's");
                SpawnOutcome::Started { job_id }
            }
            Placement::Queue(_) => {
                let depth = self.table.counts().queued;
                info!(job_id, %priority, ?origin, depth, "queued a job of no server's");
                SpawnOutcome::Queued { job_id, depth }
            }
        }
    }
}
