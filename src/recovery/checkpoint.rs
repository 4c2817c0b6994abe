//! [`JobCheckpoint`]: what a job leaves behind so that it can be resumed.
//!
//! A checkpoint holds the job's identity (job, room, participant identity,
//! agent, attempt, timestamps), the server's original `Job` as prost bytes
//! (so a resumed job sees exactly what it was first given), and the handler's
//! own state as typed key/value pairs through serde_json. It reads no clock:
//! the runtime passes `now` when it creates or stamps one.
//!
//! Stores persist the whole record with [`JobCheckpoint::encode`], a JSON
//! document that carries a `format` version, and read it back with
//! [`JobCheckpoint::decode`], which refuses formats it does not know instead
//! of misreading them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use livekit_protocol::Job;
use prost::Message as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The version of the record [`JobCheckpoint::encode`] writes. Bump it when
/// the record changes shape, and teach [`JobCheckpoint::decode`] to read the
/// older ones. Format 2 added the holder ([`JobCheckpoint::claim`]); a
/// format 1 record reads as held by no one.
pub const CHECKPOINT_FORMAT: u32 = 2;

/// Who holds a job: the worker identity that runs it, and the fencing token
/// of its claim.
///
/// A store takes a write or a delete only from the claim it holds for the
/// job; [`CheckpointStore::claim`](super::CheckpointStore::claim) moves a job
/// to a new holder and raises the fence, so a holder that lost the job (a
/// partition, a long pause) is refused from then on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// The holder's worker identity (`WorkerOptions::worker_identity`); empty
    /// for a record no worker holds.
    pub owner: String,
    /// Raised by one at every claim; 0 for a record written by the worker
    /// that first ran the job.
    pub fence: u64,
}

impl Claim {
    /// `owner`'s claim at `fence`.
    pub fn new(owner: impl Into<String>, fence: u64) -> Self {
        Self {
            owner: owner.into(),
            fence,
        }
    }
}

/// The most a checkpoint's state (keys plus JSON values) may hold: 1 MiB.
/// Every flush rewrites the whole record, and a worker holds one per running
/// job — a thousand jobs at the limit are a gigabyte. State is for progress
/// markers and small decisions; keep media and transcripts elsewhere and
/// checkpoint a reference to them.
pub const MAX_STATE_BYTES: usize = 1 << 20;

/// Why a checkpoint could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The value given to `save` could not be turned into JSON (a map with
    /// non-string keys, a failing `Serialize` impl).
    #[error("could not serialize checkpoint key `{key}`: {source}")]
    Serialize {
        /// The key being saved.
        key: String,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// The stored value does not have the type asked for: load it with the
    /// type it was saved with.
    #[error("checkpoint key `{key}` does not hold the requested type: {source}")]
    Deserialize {
        /// The key being loaded.
        key: String,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// Saving would take the state over [`MAX_STATE_BYTES`]; nothing was
    /// changed. Store less, or store a reference to data kept elsewhere.
    #[error(
        "saving checkpoint key `{key}` would make the state {size} bytes, over the limit of {max}"
    )]
    TooLarge {
        /// The key being saved.
        key: String,
        /// The state's size had the save gone through.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The record was written in a format this version cannot read (by a
    /// newer lkagent): upgrade, or remove the record.
    #[error("checkpoint format {found} is not supported (this version reads {supported})")]
    UnsupportedFormat {
        /// The record's format.
        found: u32,
        /// The format this version reads.
        supported: u32,
    },
    /// The bytes are not a checkpoint record (truncated or not JSON).
    #[error("malformed checkpoint record: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The job stored in the record is not a valid protobuf `Job`.
    #[error("the checkpoint's job does not decode: {0}")]
    Job(String),
}

/// A job's checkpoint: its identity, the job as first assigned, and the
/// handler's saved state.
#[derive(Clone, PartialEq, Eq)]
pub struct JobCheckpoint {
    job_id: String,
    room_name: String,
    participant_identity: String,
    agent_name: String,
    attempt: u32,
    created_at_ms: u64,
    updated_at_ms: u64,
    /// The `Job` as prost bytes.
    job: Vec<u8>,
    /// Key → the value's JSON text. Text rather than `serde_json::Value`
    /// makes the size bound exact and cheap to keep.
    state: BTreeMap<String, String>,
    /// The sum of key and value lengths in `state`.
    state_bytes: usize,
    /// Who holds the job.
    claim: Claim,
    /// The job's final status, once it ended and until the server confirmed
    /// it: a worker that restarts (or takes the job over) re-reports it
    /// instead of running the job again.
    final_status: Option<FinalRecord>,
    /// The job came from the fleet's queue, not from the server: a worker
    /// that takes it over runs it as such (no `migrate_job`, statuses to
    /// subscribers) and drops the record, acknowledging the item, at its
    /// end.
    from_fleet_queue: bool,
}

/// A final status kept in a checkpoint record (see
/// [`JobCheckpoint::final_status`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRecord {
    /// The protocol's `JobStatus` (SUCCESS or FAILED), as its number.
    pub status: i32,
    /// The error text (empty for SUCCESS).
    pub error: String,
}

impl JobCheckpoint {
    /// A first checkpoint for `job`, run as `participant_identity` (the
    /// identity the job was accepted under), at attempt 1, created `now`.
    pub fn new(job: &Job, participant_identity: impl Into<String>, now: SystemTime) -> Self {
        let now_ms = unix_millis(now);
        Self {
            job_id: job.id.clone(),
            room_name: crate::handler::room_name(job).to_owned(),
            participant_identity: participant_identity.into(),
            agent_name: job.agent_name.clone(),
            attempt: 1,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            job: job.encode_to_vec(),
            state: BTreeMap::new(),
            state_bytes: 0,
            claim: Claim::default(),
            final_status: None,
            from_fleet_queue: false,
        }
    }

    /// True when the job came from the fleet's queue (see
    /// [`with_fleet_queue`](Self::with_fleet_queue)).
    pub fn is_from_fleet_queue(&self) -> bool {
        self.from_fleet_queue
    }

    /// Marks the record as a job pulled from the fleet's queue.
    pub fn with_fleet_queue(mut self) -> Self {
        self.from_fleet_queue = true;
        self
    }

    /// The job's final status, if it ended and the server has not yet
    /// confirmed it.
    pub fn final_status(&self) -> Option<&FinalRecord> {
        self.final_status.as_ref()
    }

    /// Records the job's final status (the runtime does, as the job ends).
    pub fn set_final_status(&mut self, status: FinalRecord) {
        self.final_status = Some(status);
    }

    /// This checkpoint, held by worker `owner` (at fence 0: the first run).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.claim = Claim::new(owner, 0);
        self
    }

    /// Who holds the job, and the fence of that claim.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// Sets the holder: for stores, when a claim moves the job.
    pub fn set_claim(&mut self, claim: Claim) {
        self.claim = claim;
    }

    /// The job id (`AJ_…`), the key stores file it under.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The room the job runs in.
    pub fn room_name(&self) -> &str {
        &self.room_name
    }

    /// The identity the agent joins the room as; a resumed job gets a fresh
    /// token for the same identity.
    pub fn participant_identity(&self) -> &str {
        &self.participant_identity
    }

    /// The agent name the job was dispatched to.
    pub fn agent_name(&self) -> &str {
        &self.agent_name
    }

    /// Which run of the job this is: 1 for the first, 2 after one restart.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the checkpoint was first made, in unix milliseconds.
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// When the checkpoint was last stamped with [`touch`](Self::touch), in
    /// unix milliseconds: the job's last sign of life.
    pub fn updated_at_ms(&self) -> u64 {
        self.updated_at_ms
    }

    /// How long ago, as of `now`, the checkpoint was last stamped (zero if
    /// the stamp is in `now`'s future, as a skewed clock may make it).
    pub fn age(&self, now: SystemTime) -> Duration {
        Duration::from_millis(unix_millis(now).saturating_sub(self.updated_at_ms))
    }

    /// Records that the checkpoint is current as of `now`; the runtime calls
    /// it before writing the checkpoint to a store.
    pub fn touch(&mut self, now: SystemTime) {
        self.updated_at_ms = unix_millis(now);
    }

    /// Counts a new run of the job (a restart or a resume) starting `now`,
    /// and returns its attempt number. The saved state is kept.
    pub fn next_attempt(&mut self, now: SystemTime) -> u32 {
        self.attempt = self.attempt.saturating_add(1);
        self.touch(now);
        self.attempt
    }

    /// The job as the server first assigned it, to resume it with.
    pub fn job(&self) -> Result<Job, CheckpointError> {
        Job::decode(self.job.as_slice()).map_err(|err| CheckpointError::Job(err.to_string()))
    }

    /// Saves `value` under `key`, replacing what was there. Fails, changing
    /// nothing, if the value does not serialize or the state would exceed
    /// [`MAX_STATE_BYTES`].
    pub fn save<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), CheckpointError> {
        let json = serde_json::to_string(value).map_err(|source| CheckpointError::Serialize {
            key: key.to_owned(),
            source,
        })?;
        let replaced = self.state.get(key).map_or(0, |old| key.len() + old.len());
        let size = self.state_bytes - replaced + key.len() + json.len();
        if size > MAX_STATE_BYTES {
            return Err(CheckpointError::TooLarge {
                key: key.to_owned(),
                size,
                max: MAX_STATE_BYTES,
            });
        }
        self.state.insert(key.to_owned(), json);
        self.state_bytes = size;
        Ok(())
    }

    /// The value saved under `key`, or `None` if nothing was.
    pub fn load<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CheckpointError> {
        self.state
            .get(key)
            .map(|json| {
                serde_json::from_str(json).map_err(|source| CheckpointError::Deserialize {
                    key: key.to_owned(),
                    source,
                })
            })
            .transpose()
    }

    /// Forgets `key`; true if it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.state.remove(key) {
            Some(json) => {
                self.state_bytes -= key.len() + json.len();
                true
            }
            None => false,
        }
    }

    /// The saved keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.state.keys().map(String::as_str)
    }

    /// The state's size as counted against [`MAX_STATE_BYTES`].
    pub fn state_bytes(&self) -> usize {
        self.state_bytes
    }

    /// The whole record as versioned JSON ([`CHECKPOINT_FORMAT`]), the form
    /// stores keep.
    pub fn encode(&self) -> Vec<u8> {
        let record = Record {
            format: CHECKPOINT_FORMAT,
            job_id: Cow::Borrowed(&self.job_id),
            room_name: Cow::Borrowed(&self.room_name),
            participant_identity: Cow::Borrowed(&self.participant_identity),
            agent_name: Cow::Borrowed(&self.agent_name),
            attempt: self.attempt,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            job: BASE64.encode(&self.job),
            state: Cow::Borrowed(&self.state),
            owner: Cow::Borrowed(&self.claim.owner),
            fence: self.claim.fence,
            final_status: self.final_status.clone(),
            from_fleet_queue: self.from_fleet_queue,
        };
        // Strings, integers and a string map cannot fail to serialize.
        serde_json::to_vec(&record).expect("a checkpoint record always serializes")
    }

    /// Reads a record written by [`encode`](Self::encode), of this format
    /// version.
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let header: Header = serde_json::from_slice(bytes).map_err(CheckpointError::Malformed)?;
        // format 1 lacks only the holder, which reads as no one
        if !(1..=CHECKPOINT_FORMAT).contains(&header.format) {
            return Err(CheckpointError::UnsupportedFormat {
                found: header.format,
                supported: CHECKPOINT_FORMAT,
            });
        }
        let record: Record<'_> =
            serde_json::from_slice(bytes).map_err(CheckpointError::Malformed)?;
        let job = BASE64
            .decode(record.job.as_bytes())
            .map_err(|err| CheckpointError::Job(err.to_string()))?;
        let state = record.state.into_owned();
        let state_bytes = state.iter().map(|(k, v)| k.len() + v.len()).sum();
        Ok(Self {
            job_id: record.job_id.into_owned(),
            room_name: record.room_name.into_owned(),
            participant_identity: record.participant_identity.into_owned(),
            agent_name: record.agent_name.into_owned(),
            attempt: record.attempt,
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            job,
            state,
            state_bytes,
            claim: Claim::new(record.owner.into_owned(), record.fence),
            final_status: record.final_status,
            from_fleet_queue: record.from_fleet_queue,
        })
    }
}

impl fmt::Debug for JobCheckpoint {
    /// Identity and sizes; neither the job's bytes nor the state's values,
    /// which may be large or private.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobCheckpoint")
            .field("job_id", &self.job_id)
            .field("room_name", &self.room_name)
            .field("participant_identity", &self.participant_identity)
            .field("agent_name", &self.agent_name)
            .field("attempt", &self.attempt)
            .field("created_at_ms", &self.created_at_ms)
            .field("updated_at_ms", &self.updated_at_ms)
            .field("job_bytes", &self.job.len())
            .field("state_keys", &self.state.len())
            .field("state_bytes", &self.state_bytes)
            .field("claim", &self.claim)
            .field(
                "final_status",
                &self.final_status.as_ref().map(|f| f.status),
            )
            .field("from_fleet_queue", &self.from_fleet_queue)
            .finish()
    }
}

/// Just the version, read first so that an unknown format is reported as
/// such rather than as whatever field it happens to lack.
#[derive(Deserialize)]
struct Header {
    format: u32,
}

/// The stored record, format 2 (format 1 without `owner` and `fence`).
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    format: u32,
    job_id: Cow<'a, str>,
    room_name: Cow<'a, str>,
    participant_identity: Cow<'a, str>,
    agent_name: Cow<'a, str>,
    attempt: u32,
    created_at_ms: u64,
    updated_at_ms: u64,
    /// The prost-encoded `Job`, base64 (a JSON array of numbers would be
    /// three to four times larger).
    job: String,
    state: Cow<'a, BTreeMap<String, String>>,
    #[serde(default)]
    owner: Cow<'a, str>,
    #[serde(default)]
    fence: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    final_status: Option<FinalRecord>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    from_fleet_queue: bool,
}

/// `time` as milliseconds since the unix epoch (0 before it, `u64::MAX` far
/// after it).
pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use livekit_protocol::{JobState, Room};

    /// A job as the server would assign it.
    pub(crate) fn job(id: &str) -> Job {
        Job {
            id: id.into(),
            room: Some(Room {
                name: "lobby".into(),
                ..Default::default()
            }),
            agent_name: "support-bot".into(),
            metadata: r#"{"duration_ms":5000}"#.into(),
            state: Some(JobState {
                participant_identity: "agent-x".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Progress {
        done_ms: u64,
        phase: String,
    }

    #[test]
    fn a_new_checkpoint_carries_the_jobs_identity() {
        let cp = JobCheckpoint::new(&job("AJ_1"), "agent-AJ_1", at(1_000));
        assert_eq!(cp.job_id(), "AJ_1");
        assert_eq!(cp.room_name(), "lobby");
        assert_eq!(cp.participant_identity(), "agent-AJ_1");
        assert_eq!(cp.agent_name(), "support-bot");
        assert_eq!(cp.attempt(), 1);
        assert_eq!((cp.created_at_ms(), cp.updated_at_ms()), (1_000, 1_000));
        assert_eq!(cp.job().unwrap(), job("AJ_1"));
    }

    #[test]
    fn typed_values_round_trip_and_missing_keys_are_none() {
        let mut cp = JobCheckpoint::new(&job("AJ_1"), "a", at(0));
        let progress = Progress {
            done_ms: 1_500,
            phase: "greeting".into(),
        };
        cp.save("progress", &progress).unwrap();
        cp.save("turns", &3u32).unwrap();
        assert_eq!(cp.load::<Progress>("progress").unwrap(), Some(progress));
        assert_eq!(cp.load::<u32>("turns").unwrap(), Some(3));
        assert_eq!(cp.load::<u32>("absent").unwrap(), None);
        assert_eq!(cp.keys().collect::<Vec<_>>(), ["progress", "turns"]);
    }

    #[test]
    fn loading_with_the_wrong_type_names_the_key() {
        let mut cp = JobCheckpoint::new(&job("AJ_1"), "a", at(0));
        cp.save("turns", "three").unwrap();
        let err = cp.load::<u32>("turns").unwrap_err();
        assert!(matches!(err, CheckpointError::Deserialize { ref key, .. } if key == "turns"));
        assert!(err.to_string().contains("`turns`"), "{err}");
    }

    #[test]
    fn state_size_is_bounded_and_a_refused_save_changes_nothing() {
        let mut cp = JobCheckpoint::new(&job("AJ_1"), "a", at(0));
        cp.save("small", &1u8).unwrap();
        let before = cp.state_bytes();
        let huge = "x".repeat(MAX_STATE_BYTES);
        let err = cp.save("huge", &huge).unwrap_err();
        match err {
            CheckpointError::TooLarge { key, size, max } => {
                assert_eq!(key, "huge");
                assert_eq!(max, MAX_STATE_BYTES);
                assert!(size > MAX_STATE_BYTES);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(cp.state_bytes(), before);
        assert_eq!(cp.load::<String>("huge").unwrap(), None);
    }

    #[test]
    fn replacing_and_removing_keys_keep_the_size_exact() {
        let mut cp = JobCheckpoint::new(&job("AJ_1"), "a", at(0));
        cp.save("k", "a long value to start with").unwrap();
        cp.save("k", "short").unwrap();
        assert_eq!(cp.state_bytes(), "k".len() + "\"short\"".len());
        assert!(cp.remove("k"));
        assert!(!cp.remove("k"));
        assert_eq!(cp.state_bytes(), 0);
        // A value just under the bound fits once the old one is replaced.
        let fits = "y".repeat(MAX_STATE_BYTES - "k".len() - 2);
        cp.save("k", &fits).unwrap();
        cp.save("k", &fits).unwrap();
        assert_eq!(cp.state_bytes(), MAX_STATE_BYTES);
    }

    #[test]
    fn attempts_and_stamps_move_with_time_passed_in() {
        let mut cp = JobCheckpoint::new(&job("AJ_1"), "a", at(1_000));
        cp.touch(at(4_000));
        assert_eq!(cp.age(at(10_000)), Duration::from_secs(6));
        assert_eq!(cp.age(at(0)), Duration::ZERO);
        assert_eq!(cp.next_attempt(at(12_000)), 2);
        assert_eq!(cp.updated_at_ms(), 12_000);
        assert_eq!(cp.created_at_ms(), 1_000);
    }

    #[test]
    fn the_record_round_trips_with_its_format_version() {
        let mut cp = JobCheckpoint::new(&job("AJ_1"), "agent-AJ_1", at(1_000)).with_owner("w1");
        cp.save("turns", &7u32).unwrap();
        cp.next_attempt(at(2_000));
        cp.set_claim(Claim::new("w2", 3));
        let bytes = cp.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["format"], CHECKPOINT_FORMAT);
        assert_eq!(json["job_id"], "AJ_1");
        let back = JobCheckpoint::decode(&bytes).unwrap();
        assert_eq!(back, cp);
        assert_eq!(back.state_bytes(), cp.state_bytes());
        assert_eq!(back.load::<u32>("turns").unwrap(), Some(7));
        assert_eq!(back.claim(), &Claim::new("w2", 3));
    }

    #[test]
    fn a_format_1_record_reads_as_held_by_no_one() {
        let cp = JobCheckpoint::new(&job("AJ_1"), "a", at(0)).with_owner("w1");
        let mut json: serde_json::Value = serde_json::from_slice(&cp.encode()).unwrap();
        json["format"] = 1.into();
        let fields = json.as_object_mut().unwrap();
        fields.remove("owner");
        fields.remove("fence");
        let back = JobCheckpoint::decode(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(back.claim(), &Claim::default());
        assert_eq!(back.job_id(), "AJ_1");
    }

    #[test]
    fn unknown_formats_and_garbage_are_refused_clearly() {
        let cp = JobCheckpoint::new(&job("AJ_1"), "a", at(0));
        let mut json: serde_json::Value = serde_json::from_slice(&cp.encode()).unwrap();
        json["format"] = (CHECKPOINT_FORMAT + 1).into();
        let err = JobCheckpoint::decode(&serde_json::to_vec(&json).unwrap()).unwrap_err();
        assert!(matches!(
            err,
            CheckpointError::UnsupportedFormat {
                found,
                supported: CHECKPOINT_FORMAT
            } if found == CHECKPOINT_FORMAT + 1
        ));
        assert!(matches!(
            JobCheckpoint::decode(b"{\"format\":1"),
            Err(CheckpointError::Malformed(_))
        ));
        json["format"] = 1.into();
        json["job"] = "not base64!".into();
        assert!(matches!(
            JobCheckpoint::decode(&serde_json::to_vec(&json).unwrap()),
            Err(CheckpointError::Job(_))
        ));
    }

    #[test]
    fn debug_leaves_values_out() {
        let mut cp = JobCheckpoint::new(&job("AJ_1"), "a", at(0));
        cp.save("secret", "the caller's card number").unwrap();
        let shown = format!("{cp:?}");
        assert!(!shown.contains("card number"), "{shown}");
        assert!(shown.contains("AJ_1"));
    }
}
