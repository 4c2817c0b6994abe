//! `Session`: one actor per worker WebSocket. It decodes frames, enforces the
//! register handshake and the frame rules, answers pings itself, and turns
//! everything else into messages for the [`Dispatcher`]. It owns no dispatch
//! state; the dispatcher writes to the worker through [`Deliver`], [`Inject`]
//! and [`Kill`].
//!
//! Lifecycle: `started` arms the register deadline and the Ping timer; the
//! first `register` gets an `AW_` id and the `ServerInfo` once the dispatcher
//! takes the worker (over the workers cap the socket is closed with code
//! 1013, "try again later"); `stopped` reports [`WorkerGone`] if the
//! connection had registered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Handler, StreamHandler, WrapFuture,
};
use actix_web::web::Bytes;
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use livekit_protocol::{
    JobType, RegisterWorkerResponse, ServerInfo, ServerMessage, WorkerMessage, WorkerPong,
    server_message, worker_message,
};
use prost::Message as _;

use crate::dispatcher::Dispatcher;
use crate::ids;
use crate::messages::{
    AvailabilityAnswer, Deliver, Inject, JobStatusUpdate, Kill, MigrateJobs, SimulateJob,
    WorkerGone, WorkerPinged, WorkerRegistered, WorkerStatusUpdate,
};
use crate::model::RawFrame;

/// What every session of one server shares (read-only).
#[derive(Debug)]
pub struct SessionConfig {
    /// Close a connection that has not registered within this.
    pub register_timeout: std::time::Duration,
    /// Period of WebSocket Ping frames.
    pub ping_interval: std::time::Duration,
    /// Sent in every register answer.
    pub server_info: ServerInfo,
    /// Answer protocol `WorkerPing`s (off only to inject a hung server).
    pub answer_pings: bool,
    /// Close each connection right after its registration answer (fault
    /// injection).
    pub drop_after_register: bool,
}

/// The encoding of the worker's last frame; answers use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Protobuf, in binary frames.
    Binary,
    /// Protojson, in text frames.
    Text,
}

/// Decodes the payload of one data frame from a worker: a protobuf
/// `WorkerMessage` in a binary frame, its protojson in a text frame. `None`
/// if it is not one (the session closes the connection, 1007). Pure, so
/// the fuzz tests call it directly (`devserver/tests/fuzz.rs`).
pub fn decode_worker_frame(format: Format, payload: &[u8]) -> Option<WorkerMessage> {
    match format {
        Format::Binary => WorkerMessage::decode(payload).ok(),
        Format::Text => serde_json::from_slice(payload).ok(),
    }
}

/// Messages a session may have queued before the dispatcher's writes to it
/// fail: bounded, and above any burst a test, a person or the benchmark
/// dispatches (terminating 10,000 running jobs at once writes 10,000 frames
/// in one dispatcher turn). Each is one small protocol message.
const SESSION_MAILBOX: usize = 65_536;

/// Requests a session times at once (see [`Session::timed`]); past this a
/// request goes untimed rather than growing the map.
const MAX_TIMED: usize = 65_536;

/// Which round trip a session times: offer → answer, or assignment →
/// RUNNING.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Timed {
    Offer,
    Start,
}

/// One connected worker's socket.
pub struct Session {
    dispatcher: Addr<Dispatcher>,
    config: Arc<SessionConfig>,
    api_key: String,
    protocol: i32,
    worker_id: Option<String>,
    format: Format,
    /// The connection's socket (a duplicate handle), to cut it abruptly.
    socket: Option<std::net::TcpStream>,
    /// When each availability request and assignment went into the socket's
    /// write buffer, until its answer (or RUNNING) comes back: the bench
    /// endpoint's latencies are timed here, at the socket, so they hold the
    /// worker's time and the wire's, not the dispatcher's own mailbox hops.
    timed: HashMap<(Timed, String), Instant>,
}

impl Session {
    /// A session for a connection authenticated with `api_key`.
    pub fn new(
        dispatcher: Addr<Dispatcher>,
        config: Arc<SessionConfig>,
        api_key: String,
        protocol: i32,
        socket: Option<std::net::TcpStream>,
    ) -> Self {
        Self {
            dispatcher,
            config,
            api_key,
            protocol,
            worker_id: None,
            format: Format::Binary,
            socket,
            timed: HashMap::new(),
        }
    }

    /// Starts timing `kind` for `job_id`, unless the map is full.
    fn time(&mut self, kind: Timed, job_id: &str) {
        if self.timed.len() < MAX_TIMED {
            self.timed.insert((kind, job_id.to_owned()), Instant::now());
        }
    }

    /// Ends timing `kind` for `job_id`: how long since it was written.
    fn timed(&mut self, kind: Timed, job_id: &str) -> Option<Duration> {
        self.timed
            .remove(&(kind, job_id.to_owned()))
            .map(|at| at.elapsed())
    }

    fn send(&self, msg: ServerMessage, ctx: &mut ws::WebsocketContext<Self>) {
        match self.format {
            Format::Binary => ctx.binary(msg.encode_to_vec()),
            Format::Text => match serde_json::to_string(&msg) {
                Ok(text) => ctx.text(text),
                Err(e) => tracing::error!(error = %e, "cannot encode server message as JSON"),
            },
        }
    }

    /// Closes with a reason, after logging why.
    fn close(&self, code: CloseCode, why: &str, ctx: &mut ws::WebsocketContext<Self>) {
        tracing::info!(worker_id = ?self.worker_id, reason = why, "closing worker connection");
        ctx.close(Some(CloseReason {
            code,
            description: Some(why.to_owned()),
        }));
        ctx.stop();
    }

    fn on_message(&mut self, msg: WorkerMessage, ctx: &mut ws::WebsocketContext<Self>) {
        use worker_message::Message as M;
        let Some(message) = msg.message else {
            return self.close(CloseCode::Policy, "empty message", ctx);
        };
        if let M::Ping(ping) = message {
            if let Some(worker_id) = &self.worker_id {
                self.dispatcher.do_send(WorkerPinged {
                    worker_id: worker_id.clone(),
                });
            }
            if !self.config.answer_pings {
                return; // fault injection: a server that has stopped answering
            }
            let pong = WorkerPong {
                last_timestamp: ping.timestamp,
                timestamp: now_ms(),
            };
            return self.send(
                ServerMessage {
                    message: Some(server_message::Message::Pong(pong)),
                },
                ctx,
            );
        }
        let Some(worker_id) = self.worker_id.clone() else {
            return match message {
                M::Register(request) => self.register(request, ctx),
                _ => self.close(CloseCode::Policy, "message before register", ctx),
            };
        };
        let dispatcher = self.dispatcher.clone();
        match message {
            M::Register(_) => self.close(CloseCode::Policy, "already registered", ctx),
            M::Availability(answer) => {
                let rtt = self.timed(Timed::Offer, &answer.job_id);
                dispatcher.do_send(AvailabilityAnswer {
                    worker_id,
                    answer,
                    rtt,
                })
            }
            M::UpdateWorker(update) => dispatcher.do_send(WorkerStatusUpdate { worker_id, update }),
            M::UpdateJob(update) => {
                // any status ends the timing; only RUNNING is a start
                let took = self.timed(Timed::Start, &update.job_id);
                let running = update.status == livekit_protocol::JobStatus::JsRunning as i32;
                dispatcher.do_send(JobStatusUpdate {
                    worker_id,
                    update,
                    start: took.filter(|_| running),
                })
            }
            M::MigrateJob(request) => dispatcher.do_send(MigrateJobs { worker_id, request }),
            M::SimulateJob(request) => dispatcher.do_send(SimulateJob { worker_id, request }),
            M::Ping(_) => unreachable!("answered above"),
        }
    }

    fn register(
        &mut self,
        request: livekit_protocol::RegisterWorkerRequest,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        if JobType::try_from(request.r#type).is_err() {
            return self.close(CloseCode::Policy, "unknown job type", ctx);
        }
        let worker_id = ids::new_id(ids::WORKER_PREFIX);
        tracing::info!(
            worker_id,
            agent_name = request.agent_name,
            job_type = request.r#type,
            version = request.version,
            protocol = self.protocol,
            "worker registering"
        );
        // Set now, so that `stopped` reports the worker gone even if the
        // socket ends while the dispatcher decides.
        self.worker_id = Some(worker_id.clone());
        let registered = WorkerRegistered {
            worker_id: worker_id.clone(),
            api_key: self.api_key.clone(),
            request,
            protocol: self.protocol,
            session: ctx.address(),
        };
        // `wait`: nothing else the worker sent is handled until the
        // dispatcher has decided, so everything after the register reaches
        // the dispatcher after it, and the answer is written before anything
        // the dispatcher then sends (an availability request).
        let decided =
            self.dispatcher
                .send(registered)
                .into_actor(self)
                .map(move |admitted, act, ctx| match admitted {
                    Ok(Ok(())) => act.registered(worker_id, ctx),
                    Ok(Err(why)) => {
                        act.worker_id = None; // never registered: nothing to report gone
                        // the code a client reads as "try again later" (1013)
                        act.close(CloseCode::Again, &why, ctx);
                    }
                    Err(_) => act.close(CloseCode::Away, "the dev server is stopping", ctx),
                });
        ctx.wait(decided);
    }

    /// The dispatcher took the worker: answer its registration.
    fn registered(&mut self, worker_id: String, ctx: &mut ws::WebsocketContext<Self>) {
        tracing::info!(worker_id, "worker registered");
        let answer = RegisterWorkerResponse {
            worker_id,
            server_info: Some(self.config.server_info.clone()),
            ..Default::default()
        };
        self.send(
            ServerMessage {
                message: Some(server_message::Message::Register(answer)),
            },
            ctx,
        );
        if self.config.drop_after_register {
            // written after the answer: the worker reads it registered, then closed
            self.close(
                CloseCode::Away,
                "dropped after register (fault injection)",
                ctx,
            );
        }
    }
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // the dispatcher writes with try_send; a burst of dispatches to one
        // worker must not be mistaken for a closed socket at actix's default
        // capacity of 16
        ctx.set_mailbox_capacity(SESSION_MAILBOX);
        ctx.run_later(self.config.register_timeout, |act, ctx| {
            if act.worker_id.is_none() {
                act.close(CloseCode::Policy, "register timeout", ctx);
            }
        });
        ctx.run_interval(self.config.ping_interval, |_, ctx| ctx.ping(b""));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(worker_id) = self.worker_id.take() {
            tracing::info!(worker_id, "worker disconnected");
            self.dispatcher.do_send(WorkerGone { worker_id });
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let msg = match item {
            Ok(msg) => msg,
            Err(ws::ProtocolError::Overflow) => {
                return self.close(CloseCode::Size, "frame too large", ctx);
            }
            Err(e) => {
                tracing::info!(worker_id = ?self.worker_id, error = %e, "websocket protocol error");
                return self.close(CloseCode::Protocol, "protocol error", ctx);
            }
        };
        match msg {
            ws::Message::Binary(bytes) => {
                self.format = Format::Binary;
                match decode_worker_frame(Format::Binary, &bytes) {
                    Some(m) => self.on_message(m, ctx),
                    None => self.close(CloseCode::Invalid, "undecodable frame", ctx),
                }
            }
            ws::Message::Text(text) => {
                self.format = Format::Text;
                match decode_worker_frame(Format::Text, text.as_bytes()) {
                    Some(m) => self.on_message(m, ctx),
                    None => self.close(CloseCode::Invalid, "undecodable frame", ctx),
                }
            }
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
            ws::Message::Continuation(_) => {
                self.close(CloseCode::Unsupported, "fragmented frames", ctx)
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The peer's side of the stream ended (TCP closed).
        ctx.stop();
    }
}

impl Handler<Deliver> for Session {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        use server_message::Message as M;
        match &msg.0.message {
            Some(M::Availability(request)) => {
                if let Some(job) = &request.job {
                    self.time(Timed::Offer, &job.id);
                }
            }
            Some(M::Assignment(assignment)) => {
                if let Some(job) = &assignment.job {
                    self.time(Timed::Start, &job.id);
                }
            }
            _ => {}
        }
        self.send(msg.0, ctx);
    }
}

impl Handler<Inject> for Session {
    type Result = ();

    fn handle(&mut self, msg: Inject, ctx: &mut Self::Context) {
        match msg.0 {
            RawFrame::Binary(bytes) => ctx.binary(Bytes::from(bytes)),
            RawFrame::Text(text) => ctx.text(text),
            RawFrame::Fragmented(parts) => {
                let last = parts.len().saturating_sub(1);
                for (i, part) in parts.into_iter().enumerate() {
                    let part = Bytes::from(part);
                    let item = match i {
                        0 if last == 0 => {
                            ctx.binary(part);
                            break;
                        }
                        0 => actix_http::ws::Item::FirstBinary(part),
                        i if i == last => actix_http::ws::Item::Last(part),
                        _ => actix_http::ws::Item::Continue(part),
                    };
                    ctx.write_raw(ws::Message::Continuation(item));
                    if i != last {
                        ctx.ping(b"between fragments");
                    }
                }
            }
        }
    }
}

impl Handler<Kill> for Session {
    type Result = ();

    fn handle(&mut self, _: Kill, ctx: &mut Self::Context) {
        tracing::info!(worker_id = ?self.worker_id, "dropping worker connection");
        // No close frame: shut the TCP socket itself, so the worker sees the
        // connection end at once, as when a server dies or a network drops.
        if let Some(socket) = self.socket.take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        ctx.stop();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
