//! ConnectionActor: the websocket to the server, and nothing else.
//!
//! One incarnation is one connection: it connects (with a fresh token), registers,
//! keeps the connection alive, turns frames into typed messages for the
//! WorkerActor and writes what it is told to. When anything goes wrong with
//! the socket it stops, saying why through its [`Link`]; the WorkerActor
//! decides when to start the next one (`src/reconnect.rs`). It runs on an
//! arbiter of its own, where no user code runs, so nothing a handler does can
//! delay a pong.
//!
//! It holds no job state. Final job statuses it writes are reported back as
//! [`Confirmed`] once the server has provably read them (the pong to a ping
//! written after them); until then the job table keeps them, and sends them
//! again after the next registration if this socket dies with them in its
//! buffers.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use awc::BoxedSocket;
use awc::error::{WsClientError, WsProtocolError};
use awc::ws::{CloseCode, CloseReason, Codec, Frame, Message as WsMessage};
use futures_util::StreamExt as _;
use futures_util::stream::SplitSink;
use livekit_protocol::{RegisterWorkerRequest, WorkerPing, server_message, worker_message};
use tracing::{debug, info, warn};

use super::messages::*;
use super::supervision::Link;
use super::worker::WorkerActor;
use crate::options::WorkerOptions;
use crate::protocol::{self, FrameError, MAX_FRAME_SIZE, PartialMessageBuffer};

type WsSink = SplitSink<actix_codec::Framed<BoxedSocket, Codec>, WsMessage>;

/// How long a deliberate close may take to flush what was written before it.
const CLOSE_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

/// Owns one websocket connection; stops when it ends.
pub struct ConnectionActor {
    options: Arc<WorkerOptions>,
    link: Link,
    /// The token to present, minted by the worker (reading the secret is
    /// I/O, kept off this thread), or why there is none.
    token: Option<Result<String, String>>,
    sink: Option<SinkWrite<WsMessage, WsSink>>,
    registered: bool,
    last_pong: Instant,
    /// The timestamp of the last protocol ping sent; strictly increasing, so
    /// a pong names exactly which writes the server has read.
    last_ping: i64,
    /// Final job statuses written but not yet known to be read: each waits
    /// for the pong of a ping written after it.
    unconfirmed: Vec<(i64, String)>,
    /// Reassembles fragmented messages, bounded by the frame limit.
    partial: PartialMessageBuffer,
}

impl ConnectionActor {
    pub(crate) fn new(
        options: Arc<WorkerOptions>,
        link: Link,
        token: Result<String, String>,
    ) -> Self {
        Self {
            options,
            link,
            token: Some(token),
            sink: None,
            registered: false,
            last_pong: Instant::now(),
            last_ping: 0,
            unconfirmed: Vec::new(),
            partial: PartialMessageBuffer::new(MAX_FRAME_SIZE),
        }
    }

    fn worker(&self) -> &Addr<WorkerActor> {
        self.link.worker()
    }

    /// Ends this connection for `reason`: the worker hears it from the link.
    fn end(&mut self, reason: ConnectionExit, ctx: &mut Context<Self>) {
        let reason = match reason {
            // a failure after the registration is a lost connection
            ConnectionExit::Failed(why) if self.registered => ConnectionExit::Lost(why),
            other => other,
        };
        self.link.set_reason(reason);
        ctx.stop();
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let url = match protocol::agent_url(&self.options.url) {
            Ok(url) => url,
            Err(err) => {
                // validated at start; kept as a loud failure rather than a panic
                return self.end(ConnectionExit::Failed(err.to_string()), ctx);
            }
        };
        let token = match self.token.take() {
            Some(Ok(token)) => token,
            Some(Err(err)) => return self.end(ConnectionExit::Failed(err), ctx),
            None => return self.end(ConnectionExit::Failed("no token".into()), ctx),
        };
        debug!(url = %url, "connecting");
        let client = awc::Client::builder()
            .connector(awc::Connector::new().connector(NoDelay::default()))
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
                Err(WsClientError::InvalidResponseStatus(status))
                    if status.as_u16() == 401 || status.as_u16() == 403 =>
                {
                    act.end(ConnectionExit::Unauthorized(format!("HTTP {status}")), ctx)
                }
                Err(err) => act.end(ConnectionExit::Failed(err.to_string()), ctx),
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
                let why = format!("the server did not answer the registration within {deadline:?}");
                act.end(ConnectionExit::Failed(why), ctx);
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
        self.last_pong = Instant::now();
        info!(worker_id = %response.worker_id, "registered");
        let (interval, timeout) = (self.options.ping_interval, self.options.ping_timeout);
        ctx.run_interval(interval, move |act, ctx| {
            if !act.worker().connected() {
                // the worker is gone: no registered connection may outlive it
                act.close(ctx);
                return;
            }
            let silent = act.last_pong.elapsed();
            if silent > timeout {
                let why = format!("no pong from the server for {silent:?}");
                act.end(ConnectionExit::Lost(why), ctx);
                return;
            }
            act.ping();
        });
        self.worker().do_send(Registered {
            worker_id: response.worker_id,
            server_info: response.server_info,
            generation: self.link.generation(),
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
        let mut confirmed = Vec::new();
        self.unconfirmed.retain(|(confirmed_by, job_id)| {
            let read = *confirmed_by <= timestamp;
            if read {
                confirmed.push(job_id.clone());
            }
            !read
        });
        if !confirmed.is_empty() {
            self.worker().do_send(Confirmed { job_ids: confirmed });
        }
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

    /// Closes the connection on purpose: a close frame after everything
    /// already written, the sink flushed and closed, then stop (at the
    /// latest after [`CLOSE_FLUSH`]).
    fn close(&mut self, ctx: &mut Context<Self>) {
        self.link.set_reason(ConnectionExit::Closed);
        let Some(sink) = self.sink.as_mut() else {
            return ctx.stop();
        };
        let _ = sink.write(WsMessage::Close(Some(CloseReason {
            code: CloseCode::Normal,
            description: Some("worker stopping".into()),
        })));
        // the server answers with its own close frame and ends the stream,
        // which stops this actor once everything before it was read
        ctx.run_later(CLOSE_FLUSH, |_act, ctx| ctx.stop());
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
                Some(job) => self.worker().do_send(AvailabilityAsked {
                    job,
                    resuming: request.resuming,
                }),
                None => warn!("ignoring an availability request without a job"),
            },
            M::Assignment(assignment) => match assignment.job {
                Some(job) => self.worker().do_send(JobAssigned {
                    job,
                    url: assignment.url,
                    token: assignment.token,
                }),
                None => warn!("ignoring an assignment without a job"),
            },
            M::Termination(termination) => self.worker().do_send(TerminationRequested {
                job_id: termination.job_id,
            }),
            M::GoAway(_) => {
                info!("the server is going away: reconnecting");
                self.end(ConnectionExit::Lost("the server is going away".into()), ctx);
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
                self.end(
                    ConnectionExit::Failed(format!("malformed frame: {err}")),
                    ctx,
                );
            }
        }
    }

    /// Handles one whole frame (fragmented messages already reassembled).
    fn on_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match frame {
            Frame::Binary(bytes) => self.on_payload(protocol::decode_server(&bytes), ctx),
            Frame::Text(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.on_payload(protocol::decode_server_text(text), ctx),
                Err(_) => {
                    warn!("text frame that is not UTF-8: reconnecting");
                    self.end(
                        ConnectionExit::Failed("a text frame that is not UTF-8".into()),
                        ctx,
                    );
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
                let why = format!("closed by the server ({reason:?})");
                self.end(ConnectionExit::Failed(why), ctx);
            }
            Frame::Continuation(_) => {
                // the buffer never hands these on; kept loud in case it does
                warn!("an unassembled fragment reached the handler: reconnecting");
                self.end(
                    ConnectionExit::Failed("an unassembled fragment".into()),
                    ctx,
                );
            }
        }
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // the worker has already waited whatever backoff applies
        self.connect(ctx);
    }
}

impl Handler<SendToServer> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: SendToServer, _ctx: &mut Self::Context) {
        if !self.registered {
            // nothing is lost: statuses stay in the job table until confirmed,
            // loads are recomputed, answers are moot without the connection
            debug!(messages = msg.0.len(), "not registered: dropping messages");
            return;
        }
        let mut finals = Vec::new();
        for message in msg.0 {
            let job_id = match &message {
                worker_message::Message::UpdateJob(update)
                    if crate::jobs::is_final(update.status) =>
                {
                    Some(update.job_id.clone())
                }
                _ => None,
            };
            if !self.write(&message) {
                break; // the socket is closing: its end is on its way
            }
            finals.extend(job_id);
        }
        if !finals.is_empty() {
            // ask at once for the proof that the server has read them
            let confirmed_by = self.ping();
            self.unconfirmed
                .extend(finals.into_iter().map(|job_id| (confirmed_by, job_id)));
        }
    }
}

impl Handler<CloseConnection> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, _msg: CloseConnection, ctx: &mut Self::Context) {
        info!("closing the connection to the server");
        self.close(ctx);
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<Panic> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, _msg: Panic, _ctx: &mut Self::Context) {
        panic!("injected fault: the connection actor panics");
    }
}

impl StreamHandler<Result<Frame, WsProtocolError>> for ConnectionActor {
    fn handle(&mut self, item: Result<Frame, WsProtocolError>, ctx: &mut Self::Context) {
        let frame = match item {
            Ok(frame) => frame,
            Err(err) => {
                warn!(%err, "websocket error: reconnecting");
                return self.end(
                    ConnectionExit::Failed(format!("websocket error: {err}")),
                    ctx,
                );
            }
        };
        match self.partial.feed(frame) {
            Ok(Some(frame)) => self.on_frame(frame, ctx),
            Ok(None) => {} // a fragment: wait for the rest
            Err(err) => {
                // an oversized message is a protocol error like a malformed
                // one: dropping it and going on could lose an assignment
                // without a word, so the connection is renewed (the server
                // forgets its offers, the worker claims its jobs again)
                warn!(%err, "a fragmented message the server should not send: reconnecting");
                self.end(ConnectionExit::Failed(err.to_string()), ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        info!("the connection to the server ended");
        self.end(ConnectionExit::Failed("the socket closed".into()), ctx);
    }
}

impl WriteHandler<WsProtocolError> for ConnectionActor {
    fn error(&mut self, err: WsProtocolError, _ctx: &mut Self::Context) -> Running {
        warn!(%err, "could not write to the server");
        let why = format!("write failed: {err}");
        self.link.set_reason(if self.registered {
            ConnectionExit::Lost(why)
        } else {
            ConnectionExit::Failed(why)
        });
        Running::Stop
    }
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// awc's TCP connector with `TCP_NODELAY` set on every socket it opens.
///
/// The agent protocol is small request/answer frames: an availability answer
/// written while the previous frame's ACK is still delayed by the server would
/// wait for Nagle's algorithm, about 40 ms on Linux loopback, where the answer
/// itself takes microseconds. The official workers (Python asyncio, Node) and
/// the Go server all set `TCP_NODELAY`; awc does not, so the worker does.
#[derive(Clone)]
struct NoDelay(actix_tls::connect::ConnectorService);

impl Default for NoDelay {
    fn default() -> Self {
        let resolver = actix_tls::connect::Resolver::default();
        NoDelay(actix_tls::connect::Connector::new(resolver).service())
    }
}

type TcpConnection = actix_tls::connect::Connection<awc::http::Uri, actix_rt::net::TcpStream>;

impl actix_service::Service<actix_tls::connect::ConnectInfo<awc::http::Uri>> for NoDelay {
    type Response = TcpConnection;
    type Error = actix_tls::connect::ConnectError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<TcpConnection, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, info: actix_tls::connect::ConnectInfo<awc::http::Uri>) -> Self::Future {
        let connect = self.0.call(info);
        Box::pin(async move {
            let connection = connect.await?;
            if let Err(err) = connection.io_ref().set_nodelay(true) {
                // only slower, never wrong: keep the connection
                debug!(%err, "could not set TCP_NODELAY");
            }
            Ok(connection)
        })
    }
}
