//! ConnectionActor: the websocket to the server, and nothing else.
//!
//! It connects (with a fresh token each time), registers, keeps the
//! connection alive, turns frames into typed messages for the WorkerActor and
//! writes what it is told to. It holds no job state: when anything goes wrong
//! with the socket it stops, and its `Supervisor` restarts it in place, which
//! re-runs `started()` — after a backoff delay — to connect and register anew.
//!
//! Final job statuses are kept until the server has provably read them (the
//! pong to a ping written after them): a socket that dies with them still in
//! its buffers would otherwise lose them silently.
//!
//! What survives a restart: the options, the worker's address and the attempt
//! counter (fields). What does not: the socket, the stream, the timers
//! (everything started through `ctx`), reset in `restarting()`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use awc::BoxedSocket;
use awc::error::WsProtocolError;
use awc::ws::{Codec, Frame, Message as WsMessage};
use futures_util::StreamExt as _;
use futures_util::stream::SplitSink;
use livekit_protocol::{
    RegisterWorkerRequest, UpdateJobStatus, WorkerPing, server_message, worker_message,
};
use tracing::{debug, info, warn};

use super::messages::*;
use super::worker::WorkerActor;
use crate::auth::WORKER_TOKEN_TTL;
use crate::options::WorkerOptions;
use crate::outbox::is_terminal;
use crate::protocol::{self, FrameError, MAX_FRAME_SIZE, PartialError, PartialMessageBuffer};

type WsSink = SplitSink<actix_codec::Framed<BoxedSocket, Codec>, WsMessage>;

/// Owns the websocket; restarted by its supervisor on any socket failure.
pub struct ConnectionActor {
    options: Arc<WorkerOptions>,
    worker: Addr<WorkerActor>,
    /// Failed attempts since the last registration: drives the backoff.
    attempt: u32,
    /// True from the first start, so the very first connect is immediate.
    first_start: bool,
    sink: Option<SinkWrite<WsMessage, WsSink>>,
    registered: bool,
    last_pong: Instant,
    /// The timestamp of the last protocol ping sent; strictly increasing, so
    /// a pong names exactly which writes the server has read.
    last_ping: i64,
    /// Final job statuses written but not yet known to be read by the
    /// server: each waits for the pong of a ping written after it. A socket
    /// can die with them in its buffers, so on a restart they go back to the
    /// worker's outbox instead of being lost.
    unconfirmed: Vec<(i64, UpdateJobStatus)>,
    /// Reassembles fragmented messages, bounded by the frame limit.
    partial: PartialMessageBuffer,
}

impl ConnectionActor {
    pub(crate) fn new(options: Arc<WorkerOptions>, worker: Addr<WorkerActor>) -> Self {
        Self {
            options,
            worker,
            attempt: 0,
            first_start: true,
            sink: None,
            registered: false,
            last_pong: Instant::now(),
            last_ping: 0,
            unconfirmed: Vec::new(),
            partial: PartialMessageBuffer::new(MAX_FRAME_SIZE),
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let url = match protocol::agent_url(&self.options.url) {
            Ok(url) => url,
            Err(err) => {
                // validated at start; kept as a loud failure rather than a panic
                warn!(%err, "cannot build the agent URL");
                ctx.stop();
                return;
            }
        };
        let token = match self.options.credentials.worker_token(WORKER_TOKEN_TTL) {
            Ok(token) => token,
            Err(err) => {
                warn!(%err, "cannot mint a worker token");
                ctx.stop();
                return;
            }
        };
        debug!(url = %url, attempt = self.attempt, "connecting");
        let client = awc::Client::builder()
            .timeout(self.options.register_timeout)
            .finish();
        let request = client
            .ws(url.as_str())
            .bearer_auth(token)
            .max_frame_size(MAX_FRAME_SIZE);
        let connect = async move { request.connect().await };
        ctx.spawn(actix::fut::wrap_future(connect).map(
            |result, act: &mut Self, ctx| match result {
                Ok((_response, framed)) => act.on_connected(framed, ctx),
                Err(err) => {
                    warn!(error = %err, attempt = act.attempt, "could not connect to the server");
                    ctx.stop();
                }
            },
        ));
    }

    fn on_connected(
        &mut self,
        framed: actix_codec::Framed<BoxedSocket, Codec>,
        ctx: &mut Context<Self>,
    ) {
        let (sink, stream) = framed.split();
        self.sink = Some(SinkWrite::new(sink, ctx));
        ctx.add_stream(stream);
        let options = self.options.clone();
        let register = RegisterWorkerRequest {
            r#type: options.job_type as i32,
            agent_name: options.agent_name.clone(),
            version: options.version.clone(),
            namespace: options.namespace.clone(),
            ping_interval: options
                .ping_interval
                .as_secs()
                .try_into()
                .unwrap_or(u32::MAX),
            ..Default::default()
        };
        self.write(&worker_message::Message::Register(register));
        let deadline = options.register_timeout;
        ctx.run_later(deadline, move |act, ctx| {
            if !act.registered {
                warn!(
                    ?deadline,
                    "the server did not answer the registration in time"
                );
                ctx.stop();
            }
        });
    }

    fn on_registered(
        &mut self,
        response: livekit_protocol::RegisterWorkerResponse,
        ctx: &mut Context<Self>,
    ) {
        if self.registered {
            warn!("ignoring a second registration answer");
            return;
        }
        self.registered = true;
        self.attempt = 0;
        self.last_pong = Instant::now();
        info!(worker_id = %response.worker_id, "registered");
        let (interval, timeout) = (self.options.ping_interval, self.options.ping_timeout);
        ctx.run_interval(interval, move |act, ctx| {
            let silent = act.last_pong.elapsed();
            if silent > timeout {
                warn!(?silent, "no pong from the server: the connection is dead");
                ctx.stop();
                return;
            }
            act.ping();
        });
        self.worker.do_send(Registered {
            worker_id: response.worker_id,
            server_info: response.server_info,
        });
    }

    /// Writes a protocol ping; its pong confirms every earlier write.
    fn ping(&mut self) -> i64 {
        self.last_ping = unix_millis().max(self.last_ping + 1);
        let timestamp = self.last_ping;
        self.write(&worker_message::Message::Ping(WorkerPing { timestamp }));
        timestamp
    }

    /// The server answered the ping sent at `timestamp`, so it has read
    /// everything written before it.
    fn on_pong(&mut self, timestamp: i64) {
        self.last_pong = Instant::now();
        self.unconfirmed
            .retain(|(confirmed_by, _)| *confirmed_by > timestamp);
    }

    /// Writes one message; false when there is no open sink or the message
    /// cannot be encoded.
    fn write(&mut self, message: &worker_message::Message) -> bool {
        let Some(sink) = self.sink.as_mut() else {
            return false;
        };
        match protocol::encode_worker(message) {
            Ok(bytes) => sink.write(WsMessage::Binary(bytes.into())).is_ok(),
            Err(err) => {
                warn!(%err, "dropping a message that cannot be sent");
                // not retried: it would fail the same way every time
                true
            }
        }
    }

    fn on_server_message(&mut self, message: server_message::Message, ctx: &mut Context<Self>) {
        use server_message::Message as M;
        match message {
            M::Register(response) => self.on_registered(response, ctx),
            M::Pong(pong) => self.on_pong(pong.last_timestamp),
            _ if !self.registered => {
                warn!("ignoring a server message that arrived before the registration answer");
            }
            M::Availability(request) => match request.job {
                Some(job) => self.worker.do_send(AvailabilityAsked {
                    job,
                    resuming: request.resuming,
                }),
                None => warn!("ignoring an availability request without a job"),
            },
            M::Assignment(assignment) => match assignment.job {
                Some(job) => self.worker.do_send(JobAssigned {
                    job,
                    url: assignment.url,
                    token: assignment.token,
                }),
                None => warn!("ignoring an assignment without a job"),
            },
            M::Termination(termination) => self.worker.do_send(TerminationRequested {
                job_id: termination.job_id,
            }),
            M::GoAway(_) => {
                info!("the server is going away: reconnecting");
                ctx.stop();
            }
        }
    }

    fn on_payload(
        &mut self,
        decoded: Result<Option<server_message::Message>, FrameError>,
        ctx: &mut Context<Self>,
    ) {
        match decoded {
            Ok(Some(message)) => self.on_server_message(message, ctx),
            Ok(None) => debug!("ignoring an empty or unknown server message"),
            Err(err) => {
                // a frame that does not decode means the stream cannot be trusted
                warn!(%err, "malformed frame from the server: reconnecting");
                ctx.stop();
            }
        }
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let delay = if self.first_start {
            Duration::ZERO
        } else {
            self.options
                .reconnect
                .delay(self.attempt, rand::random::<f64>())
        };
        self.first_start = false;
        if !delay.is_zero() {
            debug!(?delay, attempt = self.attempt, "reconnecting after a delay");
        }
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }
}

impl Supervised for ConnectionActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        if self.registered {
            self.worker.do_send(Disconnected {
                reason: "connection lost".into(),
            });
        } else {
            self.attempt = self.attempt.saturating_add(1);
        }
        self.registered = false;
        self.sink = None;
        self.partial.reset();
        if !self.unconfirmed.is_empty() {
            // sent after `Disconnected`, so they land in the outbox
            let statuses = self
                .unconfirmed
                .drain(..)
                .map(|(_, update)| worker_message::Message::UpdateJob(update));
            self.worker.do_send(Undelivered(statuses.collect()));
        }
    }
}

impl Handler<SendToServer> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: SendToServer, _ctx: &mut Self::Context) {
        if !self.registered {
            self.worker.do_send(Undelivered(msg.0));
            return;
        }
        let mut messages = msg.0.into_iter();
        let mut finals = Vec::new();
        while let Some(message) = messages.next() {
            let update = match &message {
                worker_message::Message::UpdateJob(update) if is_terminal(update.status) => {
                    Some(update.clone())
                }
                _ => None,
            };
            if !self.write(&message) {
                let rest = std::iter::once(message).chain(messages);
                self.worker.do_send(Undelivered(rest.collect()));
                break;
            }
            finals.extend(update);
        }
        if !finals.is_empty() {
            // ask at once for the proof that the server has read them
            let confirmed_by = self.ping();
            self.unconfirmed
                .extend(finals.into_iter().map(|update| (confirmed_by, update)));
        }
    }
}

impl ConnectionActor {
    /// Handles one whole frame (fragmented messages already reassembled).
    fn on_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match frame {
            Frame::Binary(bytes) => self.on_payload(protocol::decode_server(&bytes), ctx),
            Frame::Text(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.on_payload(protocol::decode_server_text(text), ctx),
                Err(_) => {
                    warn!("text frame that is not UTF-8: reconnecting");
                    ctx.stop();
                }
            },
            Frame::Ping(payload) => {
                if let Some(sink) = self.sink.as_mut() {
                    let _ = sink.write(WsMessage::Pong(payload));
                }
            }
            Frame::Pong(_) => {}
            Frame::Close(reason) => {
                info!(?reason, "the server closed the connection");
                ctx.stop();
            }
            Frame::Continuation(_) => {
                // the buffer never hands these on; kept loud in case it does
                warn!("an unassembled fragment reached the handler: reconnecting");
                ctx.stop();
            }
        }
    }
}

impl StreamHandler<Result<Frame, WsProtocolError>> for ConnectionActor {
    fn handle(&mut self, item: Result<Frame, WsProtocolError>, ctx: &mut Self::Context) {
        let frame = match item {
            Ok(frame) => frame,
            Err(err) => {
                warn!(%err, "websocket error: reconnecting");
                ctx.stop();
                return;
            }
        };
        match self.partial.feed(frame) {
            Ok(Some(frame)) => self.on_frame(frame, ctx),
            Ok(None) => {} // a fragment: wait for the rest
            Err(err @ PartialError::Overflow { .. }) => {
                // that one message is dropped; the stream itself is intact
                warn!(%err, "dropping an oversized fragmented message");
            }
            Err(err) => {
                warn!(%err, "fragments out of order: reconnecting");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        info!("the connection to the server ended");
        ctx.stop();
    }
}

impl WriteHandler<WsProtocolError> for ConnectionActor {
    fn error(&mut self, err: WsProtocolError, _ctx: &mut Self::Context) -> Running {
        warn!(%err, "could not write to the server");
        Running::Stop
    }
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
