//! Rooms, dispatches and participants, as the server's room side keeps them,
//! and the rules that turn them into jobs:
//!
//! - a room is created by `CreateRoom`, by `CreateDispatch` on a missing
//!   room, or by a participant joining; a new room gets the dispatches of
//!   its `agents`, or, when it names none, the default dispatch (agent name
//!   "") for unnamed workers;
//! - a dispatch launches one JT_ROOM job, and one JT_PARTICIPANT job per
//!   participant that joins and one JT_PUBLISHER job per participant that
//!   publishes, for each namespace that has workers of its agent name, job
//!   type and deployment; with no such worker it launches nothing (nothing
//!   queues a job);
//! - agent participants never trigger jobs;
//! - deleting a dispatch terminates its jobs (ended as success) and forgets
//!   the dispatch; deleting a room ends all of its jobs the same way and
//!   forgets the room and its dispatches.
//!
//! The caps (`max_rooms`, `max_dispatches`, `max_participants`, `max_jobs`)
//! are checked before a call changes anything: a call either fits whole —
//! the rooms, dispatches and jobs it would create — or is refused with
//! `resource_exhausted`, naming the cap.

use std::collections::{BTreeSet, HashMap};

use actix::{Context, Handler};
use livekit_protocol::{
    AgentDispatch, AgentDispatchState, CreateRoomRequest, Job, JobRestartPolicy, JobType,
    ParticipantInfo, Room, RoomAgentDispatch, participant_info,
};

use super::{Dispatcher, Launch, unix_nanos};
use crate::auth::AGENT_NAME_ATTRIBUTE;
use crate::ids;
use crate::messages::{
    CreateDispatch, CreateRoom, DeleteDispatch, DeleteRoom, DispatchSummary, JoinParticipant,
    ListDispatch, ListParticipants, ListRooms, PublishTrack, RoomSummary,
};
use crate::model::ApiError;

/// `empty_timeout` of a room created without one (the server's default).
const DEFAULT_EMPTY_TIMEOUT: u32 = 300;
/// `departure_timeout` of a room created without one (the server's default).
const DEFAULT_DEPARTURE_TIMEOUT: u32 = 20;
/// Participant sids (`PA_…`).
const PARTICIPANT_PREFIX: &str = "PA_";

/// The room side's state, owned by the [`Dispatcher`].
#[derive(Default)]
pub(super) struct Rooms {
    rooms: HashMap<String, RoomEntry>,
    dispatches: HashMap<String, DispatchEntry>,
}

struct RoomEntry {
    room: Room,
    /// Live dispatches, in creation order.
    dispatch_ids: Vec<String>,
    /// Simulated (non-agent) participants, in join order.
    participants: Vec<Participant>,
}

struct Participant {
    info: ParticipantInfo,
    published: bool,
}

struct DispatchEntry {
    /// The dispatch as listed, without `state.jobs` (filled when listed).
    proto: AgentDispatch,
    /// Every job launched for it, restarts included, oldest first.
    job_ids: Vec<String>,
}

/// What a call would add, checked against the caps before it changes
/// anything.
#[derive(Debug, Default, Clone, Copy)]
struct Cost {
    rooms: usize,
    dispatches: usize,
    jobs: usize,
}

impl std::ops::Add for Cost {
    type Output = Cost;

    fn add(self, other: Cost) -> Cost {
        Cost {
            rooms: self.rooms + other.rooms,
            dispatches: self.dispatches + other.dispatches,
            jobs: self.jobs + other.jobs,
        }
    }
}

impl Rooms {
    /// Whether the dispatch still exists (it is forgotten once deleted).
    pub(super) fn has_dispatch(&self, dispatch_id: &str) -> bool {
        self.dispatches.contains_key(dispatch_id)
    }

    /// Rooms, simulated participants (all rooms) and dispatches held.
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        let participants = self.rooms.values().map(|r| r.participants.len()).sum();
        (self.rooms.len(), participants, self.dispatches.len())
    }

    /// The `limit` most recently created rooms, newest first, with their
    /// participants and live dispatches (the dashboard's list).
    pub(super) fn summaries(&self, limit: usize) -> Vec<RoomSummary> {
        let mut rooms: Vec<&RoomEntry> = self.rooms.values().collect();
        rooms.sort_by(|a, b| {
            (b.room.creation_time_ms, &b.room.name).cmp(&(a.room.creation_time_ms, &a.room.name))
        });
        rooms
            .into_iter()
            .take(limit)
            .map(|r| RoomSummary {
                name: r.room.name.clone(),
                created_at_ms: r.room.creation_time_ms,
                participants: r
                    .participants
                    .iter()
                    .map(|p| (p.info.identity.clone(), p.published))
                    .collect(),
                dispatches: r
                    .dispatch_ids
                    .iter()
                    .filter_map(|id| self.dispatches.get(id))
                    .map(|d| DispatchSummary {
                        id: d.proto.id.clone(),
                        agent_name: d.proto.agent_name.clone(),
                        metadata: d.proto.metadata.clone(),
                        job_ids: d.job_ids.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Records a job launched for a dispatch.
    pub(super) fn add_job(&mut self, dispatch_id: &str, job_id: &str) {
        if let Some(d) = self.dispatches.get_mut(dispatch_id) {
            d.job_ids.push(job_id.to_owned());
        }
    }
}

fn now_ms() -> i64 {
    unix_nanos() / 1_000_000
}

/// The dispatches a new room gets: those its request names, or, when it
/// names none, the default dispatch for workers registered without an
/// agent name (as the server).
fn new_room_dispatches(req: &CreateRoomRequest) -> Vec<RoomAgentDispatch> {
    if req.agents.is_empty() {
        vec![RoomAgentDispatch::default()]
    } else {
        req.agents.clone()
    }
}

fn is_agent(participant: &ParticipantInfo) -> bool {
    participant.kind == participant_info::Kind::Agent as i32
}

impl Dispatcher {
    /// The room, created with its dispatches if it does not exist.
    fn ensure_room(&mut self, req: CreateRoomRequest, ctx: &mut Context<Self>) -> Room {
        if let Some(entry) = self.rooms.rooms.get(&req.name) {
            return entry.room.clone();
        }
        let now = now_ms();
        let room = Room {
            sid: ids::new_id(ids::ROOM_PREFIX),
            name: req.name.clone(),
            empty_timeout: if req.empty_timeout == 0 {
                DEFAULT_EMPTY_TIMEOUT
            } else {
                req.empty_timeout
            },
            departure_timeout: if req.departure_timeout == 0 {
                DEFAULT_DEPARTURE_TIMEOUT
            } else {
                req.departure_timeout
            },
            max_participants: req.max_participants,
            creation_time: now / 1000,
            creation_time_ms: now,
            metadata: req.metadata.clone(),
            ..Default::default()
        };
        tracing::info!(room = room.name, sid = room.sid, "room created");
        self.rooms.rooms.insert(
            req.name.clone(),
            RoomEntry {
                room: room.clone(),
                dispatch_ids: Vec::new(),
                participants: Vec::new(),
            },
        );
        for agent in new_room_dispatches(&req) {
            self.add_dispatch(&req.name, agent, ctx);
        }
        room
    }

    /// Adds a dispatch to an existing room and launches its jobs: the room
    /// job, and participant/publisher jobs for who is already there.
    fn add_dispatch(
        &mut self,
        room_name: &str,
        spec: RoomAgentDispatch,
        ctx: &mut Context<Self>,
    ) -> AgentDispatch {
        let dispatch = AgentDispatch {
            id: ids::new_id(ids::DISPATCH_PREFIX),
            agent_name: spec.agent_name,
            room: room_name.to_owned(),
            metadata: spec.metadata,
            state: Some(AgentDispatchState {
                jobs: Vec::new(),
                created_at: unix_nanos(),
                deleted_at: 0,
            }),
            restart_policy: spec.restart_policy,
            deployment: spec.deployment,
            attributes: spec.attributes,
        };
        tracing::info!(
            dispatch_id = dispatch.id,
            room = room_name,
            agent_name = dispatch.agent_name,
            restart_policy = JobRestartPolicy::try_from(dispatch.restart_policy)
                .map(|p| p.as_str_name())
                .unwrap_or("?"),
            "dispatch created"
        );
        self.rooms.dispatches.insert(
            dispatch.id.clone(),
            DispatchEntry {
                proto: dispatch.clone(),
                job_ids: Vec::new(),
            },
        );
        // agent participants never trigger jobs
        let participants: Vec<(ParticipantInfo, bool)> = match self.rooms.rooms.get_mut(room_name) {
            Some(entry) => {
                entry.dispatch_ids.push(dispatch.id.clone());
                entry
                    .participants
                    .iter()
                    .filter(|p| !is_agent(&p.info))
                    .map(|p| (p.info.clone(), p.published))
                    .collect()
            }
            None => Vec::new(),
        };
        self.launch(&dispatch.id, JobType::JtRoom, None, ctx);
        for (participant, published) in participants {
            self.launch(
                &dispatch.id,
                JobType::JtParticipant,
                Some(participant.clone()),
                ctx,
            );
            if published {
                self.launch(&dispatch.id, JobType::JtPublisher, Some(participant), ctx);
            }
        }
        dispatch
    }

    /// Launches the jobs of one dispatch for one trigger: one per namespace
    /// with registered workers of the dispatch's agent name, this job type
    /// and the dispatch's deployment.
    fn launch(
        &mut self,
        dispatch_id: &str,
        job_type: JobType,
        participant: Option<ParticipantInfo>,
        ctx: &mut Context<Self>,
    ) {
        let Some(dispatch) = self.rooms.dispatches.get(dispatch_id) else {
            return;
        };
        let Some(room) = self.rooms.rooms.get(&dispatch.proto.room) else {
            return;
        };
        let d = &dispatch.proto;
        let namespaces = self.namespaces(&d.agent_name, &d.deployment, job_type);
        if namespaces.is_empty() {
            tracing::info!(
                dispatch_id,
                room = d.room,
                agent_name = d.agent_name,
                job_type = job_type.as_str_name(),
                participant = participant.as_ref().map(|p| p.identity.as_str()),
                "dispatch: no worker registered for this agent name and job type: no job launched"
            );
            return;
        }
        let policy =
            JobRestartPolicy::try_from(d.restart_policy).unwrap_or(JobRestartPolicy::JrpOnFailure);
        let jobs: Vec<Job> = namespaces
            .into_iter()
            .map(|namespace| {
                #[allow(deprecated)] // the server still fills `namespace`
                Job {
                    id: ids::new_id(ids::JOB_PREFIX),
                    dispatch_id: d.id.clone(),
                    r#type: job_type as i32,
                    room: Some(room.room.clone()),
                    participant: participant.clone(),
                    namespace,
                    metadata: d.metadata.clone(),
                    agent_name: d.agent_name.clone(),
                    deployment: d.deployment.clone(),
                    attributes: d.attributes.clone(),
                    ..Default::default()
                }
            })
            .collect();
        for job in jobs {
            tracing::info!(
                dispatch_id,
                job_id = job.id,
                room = job.room.as_ref().map(|r| r.name.as_str()),
                agent_name = job.agent_name,
                job_type = job_type.as_str_name(),
                "dispatch: launching job"
            );
            let job_id = job.id.clone();
            if self.start_job(job, Launch::dispatched(policy), ctx) {
                self.rooms.add_job(dispatch_id, &job_id);
            }
        }
    }

    /// The namespaces one trigger of a dispatch launches a job for: those
    /// with connected workers of its agent name, this job type and its
    /// deployment.
    fn namespaces(
        &self,
        agent_name: &str,
        deployment: &str,
        job_type: JobType,
    ) -> BTreeSet<String> {
        self.workers
            .values()
            .filter(|w| {
                w.session.is_some()
                    && w.info.agent_name == agent_name
                    && w.info.job_type == job_type
                    && w.info.deployment == deployment
            })
            .map(|w| w.info.namespace.clone().unwrap_or_default())
            .collect()
    }

    /// Jobs one trigger (`job_type`) launches over these dispatches.
    fn trigger_jobs(&self, dispatches: &[RoomAgentDispatch], job_type: JobType) -> usize {
        dispatches
            .iter()
            .map(|d| {
                self.namespaces(&d.agent_name, &d.deployment, job_type)
                    .len()
            })
            .sum()
    }

    /// The dispatches of `room`, or, if it is missing, those it would be
    /// created with.
    fn room_dispatches(&self, room: &str) -> Vec<RoomAgentDispatch> {
        match self.rooms.rooms.get(room) {
            Some(entry) => entry
                .dispatch_ids
                .iter()
                .filter_map(|id| self.rooms.dispatches.get(id))
                .map(|d| RoomAgentDispatch {
                    agent_name: d.proto.agent_name.clone(),
                    deployment: d.proto.deployment.clone(),
                    ..Default::default()
                })
                .collect(),
            None => new_room_dispatches(&CreateRoomRequest::default()),
        }
    }

    /// What creating the room costs: nothing if it exists; else the room,
    /// its dispatches and their room jobs.
    fn room_cost(&self, req: &CreateRoomRequest) -> Cost {
        if self.rooms.rooms.contains_key(&req.name) {
            return Cost::default();
        }
        let dispatches = new_room_dispatches(req);
        Cost {
            rooms: 1,
            dispatches: dispatches.len(),
            jobs: self.trigger_jobs(&dispatches, JobType::JtRoom),
        }
    }

    /// What adding `spec` to `room` (existing or about to be) costs: the
    /// dispatch, its room job, and the jobs of the participants already
    /// there.
    fn dispatch_cost(&self, room: &str, spec: &RoomAgentDispatch) -> Cost {
        let spec = std::slice::from_ref(spec);
        let mut jobs = self.trigger_jobs(spec, JobType::JtRoom);
        if let Some(entry) = self.rooms.rooms.get(room) {
            for p in entry.participants.iter().filter(|p| !is_agent(&p.info)) {
                jobs += self.trigger_jobs(spec, JobType::JtParticipant);
                if p.published {
                    jobs += self.trigger_jobs(spec, JobType::JtPublisher);
                }
            }
        }
        Cost {
            dispatches: 1,
            jobs,
            ..Cost::default()
        }
    }

    /// Takes `cost` if the caps allow all of it (evicting finished job
    /// records to make room), or refuses naming the cap, changing nothing.
    fn admit(&mut self, cost: Cost) -> Result<(), ApiError> {
        let max_rooms = self.config.max_rooms;
        if self.rooms.rooms.len() + cost.rooms > max_rooms {
            return Err(ApiError::resource_exhausted(format!(
                "too many rooms: the dev server holds at most {max_rooms} (--max-rooms)"
            )));
        }
        let max_dispatches = self.config.max_dispatches;
        if self.rooms.dispatches.len() + cost.dispatches > max_dispatches {
            return Err(ApiError::resource_exhausted(format!(
                "too many dispatches: the dev server holds at most {max_dispatches} (--max-dispatches)"
            )));
        }
        if !self.admit_jobs(cost.jobs) {
            return Err(self.too_many_jobs());
        }
        Ok(())
    }

    /// A dispatch as `ListDispatch` shows it: with the jobs that reached a
    /// worker (as the server, which records a job once it is assigned).
    fn dispatch_view(&self, entry: &DispatchEntry) -> AgentDispatch {
        let mut dispatch = entry.proto.clone();
        let jobs = entry
            .job_ids
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| j.assigned)
            .map(|j| j.proto.clone())
            .collect();
        if let Some(state) = dispatch.state.as_mut() {
            state.jobs = jobs;
        }
        dispatch
    }

    /// The agent participants of the room's running jobs.
    fn agent_participants(&self, room: &str) -> Vec<ParticipantInfo> {
        let mut jobs: Vec<_> = self
            .jobs
            .values()
            .filter(|j| j.assigned && !j.ended() && j.info.room == room)
            .collect();
        jobs.sort_by_key(|j| j.proto.state.as_ref().map(|s| s.started_at));
        jobs.into_iter()
            .map(|j| {
                let answer = j.accepted.clone().unwrap_or_default();
                let mut attributes = answer.participant_attributes;
                attributes.insert(AGENT_NAME_ATTRIBUTE.to_owned(), j.info.agent_name.clone());
                let joined_ns = j.proto.state.as_ref().map(|s| s.started_at).unwrap_or(0);
                ParticipantInfo {
                    sid: format!(
                        "{PARTICIPANT_PREFIX}{}",
                        &j.info.id[ids::JOB_PREFIX.len()..]
                    ),
                    identity: j.info.participant_identity.clone(),
                    state: participant_info::State::Active as i32,
                    metadata: answer.participant_metadata,
                    joined_at: joined_ns / 1_000_000_000,
                    joined_at_ms: joined_ns / 1_000_000,
                    name: answer.participant_name,
                    kind: participant_info::Kind::Agent as i32,
                    attributes,
                    ..Default::default()
                }
            })
            .collect()
    }

    fn refresh_counts(&mut self, room: &str) {
        let agents = self.agent_participants(room).len();
        if let Some(entry) = self.rooms.rooms.get_mut(room) {
            entry.room.num_participants = (entry.participants.len() + agents) as u32;
            entry.room.num_publishers =
                entry.participants.iter().filter(|p| p.published).count() as u32;
        }
    }
}

fn require_room(name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        Err(ApiError::invalid_argument("room name is required"))
    } else {
        Ok(())
    }
}

impl Handler<CreateRoom> for Dispatcher {
    type Result = Result<Room, ApiError>;

    fn handle(&mut self, msg: CreateRoom, ctx: &mut Context<Self>) -> Self::Result {
        require_room(&msg.0.name)?;
        self.admit(self.room_cost(&msg.0))?;
        let room = self.ensure_room(msg.0, ctx);
        self.changed();
        Ok(room)
    }
}

impl Handler<ListRooms> for Dispatcher {
    type Result = Vec<Room>;

    fn handle(&mut self, msg: ListRooms, _: &mut Context<Self>) -> Vec<Room> {
        let names: Vec<String> = self.rooms.rooms.keys().cloned().collect();
        for name in &names {
            self.refresh_counts(name);
        }
        let mut rooms: Vec<Room> = self
            .rooms
            .rooms
            .values()
            .filter(|r| msg.0.names.is_empty() || msg.0.names.contains(&r.room.name))
            .map(|r| r.room.clone())
            .collect();
        rooms.sort_by(|a, b| (a.creation_time_ms, &a.name).cmp(&(b.creation_time_ms, &b.name)));
        rooms
    }
}

impl Handler<DeleteRoom> for Dispatcher {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: DeleteRoom, ctx: &mut Context<Self>) -> Self::Result {
        let name = msg.0.room;
        let Some(entry) = self.rooms.rooms.remove(&name) else {
            return Err(ApiError::not_found("room not found"));
        };
        tracing::info!(room = name, "room deleted: ending its jobs");
        for dispatch_id in entry.dispatch_ids {
            self.rooms.dispatches.remove(&dispatch_id);
        }
        // Every job in the room, whatever launched it.
        let job_ids: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.info.room == name && !j.ended())
            .map(|j| j.info.id.clone())
            .collect();
        for job_id in job_ids {
            self.end_for_deletion(&job_id, "room deleted", ctx);
        }
        self.changed();
        Ok(())
    }
}

impl Handler<ListParticipants> for Dispatcher {
    type Result = Result<Vec<ParticipantInfo>, ApiError>;

    fn handle(&mut self, msg: ListParticipants, _: &mut Context<Self>) -> Self::Result {
        let entry = self
            .rooms
            .rooms
            .get(&msg.0.room)
            .ok_or_else(|| ApiError::not_found("room not found"))?;
        let mut participants: Vec<ParticipantInfo> =
            entry.participants.iter().map(|p| p.info.clone()).collect();
        participants.extend(self.agent_participants(&msg.0.room));
        Ok(participants)
    }
}

impl Handler<CreateDispatch> for Dispatcher {
    type Result = Result<AgentDispatch, ApiError>;

    fn handle(&mut self, msg: CreateDispatch, ctx: &mut Context<Self>) -> Self::Result {
        let req = msg.0;
        require_room(&req.room)?;
        // As the server (room auto-creation on): a missing room is created
        // first, with its default dispatch.
        let room = CreateRoomRequest {
            name: req.room.clone(),
            ..Default::default()
        };
        let spec = RoomAgentDispatch {
            agent_name: req.agent_name,
            metadata: req.metadata,
            restart_policy: req.restart_policy,
            deployment: req.deployment,
            attributes: req.attributes,
        };
        self.admit(self.room_cost(&room) + self.dispatch_cost(&req.room, &spec))?;
        self.ensure_room(room, ctx);
        let dispatch = self.add_dispatch(&req.room, spec, ctx);
        self.changed();
        Ok(dispatch)
    }
}

impl Handler<DeleteDispatch> for Dispatcher {
    type Result = Result<AgentDispatch, ApiError>;

    fn handle(&mut self, msg: DeleteDispatch, ctx: &mut Context<Self>) -> Self::Result {
        let req = msg.0;
        let found = self
            .rooms
            .dispatches
            .get_mut(&req.dispatch_id)
            .filter(|d| d.proto.room == req.room);
        let Some(entry) = found else {
            return Err(ApiError::not_found("dispatch not found"));
        };
        if let Some(state) = entry.proto.state.as_mut() {
            state.deleted_at = unix_nanos();
        }
        let job_ids = entry.job_ids.clone();
        if let Some(room) = self.rooms.rooms.get_mut(&req.room) {
            room.dispatch_ids.retain(|id| *id != req.dispatch_id);
        }
        tracing::info!(
            dispatch_id = req.dispatch_id,
            room = req.room,
            jobs = job_ids.len(),
            "dispatch deleted: terminating its jobs"
        );
        for job_id in &job_ids {
            if self.jobs.get(job_id).is_some_and(|j| !j.ended()) {
                self.end_for_deletion(job_id, "dispatch deleted", ctx);
            }
        }
        // answered with its final state, then forgotten
        let view = self
            .rooms
            .dispatches
            .remove(&req.dispatch_id)
            .map(|d| self.dispatch_view(&d))
            .expect("found above");
        self.changed();
        Ok(view)
    }
}

impl Handler<ListDispatch> for Dispatcher {
    type Result = Result<Vec<AgentDispatch>, ApiError>;

    fn handle(&mut self, msg: ListDispatch, _: &mut Context<Self>) -> Self::Result {
        let req = msg.0;
        require_room(&req.room)?;
        let entry = self
            .rooms
            .rooms
            .get(&req.room)
            .ok_or_else(|| ApiError::not_found("room not found"))?;
        Ok(entry
            .dispatch_ids
            .iter()
            .filter(|id| req.dispatch_id.is_empty() || **id == req.dispatch_id)
            .filter_map(|id| self.rooms.dispatches.get(id))
            .map(|d| self.dispatch_view(d))
            .collect())
    }
}

impl Handler<JoinParticipant> for Dispatcher {
    type Result = Result<ParticipantInfo, ApiError>;

    fn handle(&mut self, msg: JoinParticipant, ctx: &mut Context<Self>) -> Self::Result {
        require_room(&msg.room)?;
        let mut info = msg.participant;
        if info.identity.is_empty() {
            return Err(ApiError::invalid_argument(
                "participant identity is required",
            ));
        }
        let present = self
            .rooms
            .rooms
            .get(&msg.room)
            .map(|r| r.participants.as_slice())
            .unwrap_or_default();
        if present.iter().any(|p| p.info.identity == info.identity) {
            return Err(ApiError::already_exists("participant already in the room"));
        }
        let max = self.config.max_participants;
        if present.len() >= max {
            return Err(ApiError::resource_exhausted(format!(
                "too many participants in room {}: the dev server holds at most {max} per room (--max-participants)",
                msg.room
            )));
        }
        // A participant joining a missing room creates it, as on the server.
        let room = CreateRoomRequest {
            name: msg.room.clone(),
            ..Default::default()
        };
        let mut cost = self.room_cost(&room);
        if !is_agent(&info) {
            let dispatches = self.room_dispatches(&msg.room);
            cost.jobs += self.trigger_jobs(&dispatches, JobType::JtParticipant);
            if msg.publish {
                cost.jobs += self.trigger_jobs(&dispatches, JobType::JtPublisher);
            }
        }
        self.admit(cost)?;
        self.ensure_room(room, ctx);
        let entry = self.rooms.rooms.get_mut(&msg.room).expect("ensured above");
        let now = now_ms();
        if info.sid.is_empty() {
            info.sid = ids::new_id(PARTICIPANT_PREFIX);
        }
        info.state = participant_info::State::Active as i32;
        info.joined_at = now / 1000;
        info.joined_at_ms = now;
        info.is_publisher = false;
        entry.participants.push(Participant {
            info: info.clone(),
            published: false,
        });
        let dispatch_ids = entry.dispatch_ids.clone();
        let agent = is_agent(&info);
        tracing::info!(
            room = msg.room,
            identity = info.identity,
            agent,
            "participant joined"
        );
        if !agent {
            for id in &dispatch_ids {
                self.launch(id, JobType::JtParticipant, Some(info.clone()), ctx);
            }
        }
        let info = if msg.publish {
            self.publish(&msg.room, &info.identity, ctx)?
        } else {
            info
        };
        self.refresh_counts(&msg.room);
        self.changed();
        Ok(info)
    }
}

impl Handler<PublishTrack> for Dispatcher {
    type Result = Result<ParticipantInfo, ApiError>;

    fn handle(&mut self, msg: PublishTrack, ctx: &mut Context<Self>) -> Self::Result {
        let participant = self
            .rooms
            .rooms
            .get(&msg.room)
            .ok_or_else(|| ApiError::not_found("room not found"))?
            .participants
            .iter()
            .find(|p| p.info.identity == msg.identity)
            .ok_or_else(|| ApiError::not_found("participant not found"))?;
        // only a first publish of a non-agent launches jobs
        if !participant.published && !is_agent(&participant.info) {
            let dispatches = self.room_dispatches(&msg.room);
            self.admit(Cost {
                jobs: self.trigger_jobs(&dispatches, JobType::JtPublisher),
                ..Cost::default()
            })?;
        }
        let info = self.publish(&msg.room, &msg.identity, ctx)?;
        self.refresh_counts(&msg.room);
        self.changed();
        Ok(info)
    }
}

impl Dispatcher {
    /// A participant's first publish launches publisher jobs; later ones
    /// change nothing.
    fn publish(
        &mut self,
        room: &str,
        identity: &str,
        ctx: &mut Context<Self>,
    ) -> Result<ParticipantInfo, ApiError> {
        let entry = self
            .rooms
            .rooms
            .get_mut(room)
            .ok_or_else(|| ApiError::not_found("room not found"))?;
        let participant = entry
            .participants
            .iter_mut()
            .find(|p| p.info.identity == identity)
            .ok_or_else(|| ApiError::not_found("participant not found"))?;
        if participant.published {
            return Ok(participant.info.clone());
        }
        participant.published = true;
        participant.info.is_publisher = true;
        let info = participant.info.clone();
        let dispatch_ids = entry.dispatch_ids.clone();
        tracing::info!(room, identity, "participant published its first track");
        if !is_agent(&info) {
            for id in &dispatch_ids {
                self.launch(id, JobType::JtPublisher, Some(info.clone()), ctx);
            }
        }
        Ok(info)
    }
}
