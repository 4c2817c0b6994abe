//! Local jobs: `SpawnJob` from the application.

use super::*;

impl Handler<SpawnJob> for WorkerActor {
    type Result = MessageResult<SpawnJob>;

    fn handle(&mut self, msg: SpawnJob, ctx: &mut Self::Context) -> Self::Result {
        let refuse = |reason| MessageResult(SpawnOutcome::Refused { reason });
        if msg.room.trim().is_empty() {
            return refuse(SpawnRefusal::Invalid("the room is required".into()));
        }
        let job_id = msg.id.unwrap_or_else(local_job_id);
        if self.jobs.contains_key(&job_id) || self.reserved.contains_key(&job_id) {
            return refuse(SpawnRefusal::Duplicate(job_id));
        }
        if !self.can_run_now() && !self.queue_has_room() {
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
        let token = match self
            .options
            .credentials
            .room_token(&room, &identity, ROOM_TOKEN_TTL)
        {
            Ok(token) => token,
            Err(err) => return refuse(SpawnRefusal::Token(err.to_string())),
        };
        let launch = JobLaunch {
            job,
            url: self.options.url.clone(),
            token,
            identity: Some(identity),
            origin: JobOrigin::Local,
            recovered: None,
            reservation: Some(reservation),
        };
        MessageResult(match self.launch(launch, priority, ctx) {
            None => {
                info!(job_id, %priority, "started a local job");
                SpawnOutcome::Started { job_id }
            }
            Some(depth) => {
                info!(job_id, %priority, depth, "queued a local job");
                SpawnOutcome::Queued { job_id, depth }
            }
        })
    }
}

/// A fresh id for a local job: `LJ_` and twelve letters or digits.
fn local_job_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..12)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("LJ_{suffix}")
}
