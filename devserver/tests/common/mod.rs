//! Shared helpers: a raw awc WebSocket worker, tokens, deadlines.
#![allow(dead_code)]

use std::time::Duration;

use actix_codec::Framed;
use awc::BoxedSocket;
use awc::ws::{Codec, Frame, Message};
use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_protocol::{
    AvailabilityResponse, JobType, RegisterWorkerRequest, ServerMessage, UpdateJobStatus,
    WorkerMessage, server_message, worker_message,
};
use lkagent_devserver::{DevServer, DevServerConfig};
use prost::Message as _;

/// Every wait in these tests ends by this.
pub const DEADLINE: Duration = Duration::from_secs(5);

pub type Conn = Framed<BoxedSocket, Codec>;

pub async fn server() -> DevServer {
    server_with(DevServerConfig::default()).await
}

pub async fn server_with(config: DevServerConfig) -> DevServer {
    DevServer::start(config).await.expect("dev server starts")
}

pub fn token(key: &str, secret: &str, agent: bool) -> String {
    AccessToken::with_api_key(key, secret)
        .with_grants(VideoGrants {
            agent,
            ..Default::default()
        })
        .to_jwt()
        .unwrap()
}

pub fn dev_token() -> String {
    token("devkey", "secret", true)
}

/// Connects with a bearer token; Err carries the HTTP status on refusal.
pub async fn try_connect(
    server: &DevServer,
    token: Option<&str>,
) -> Result<Conn, awc::error::WsClientError> {
    let mut req = awc::Client::new()
        .ws(format!("{}/agent?protocol=1", server.ws_url()))
        .max_frame_size(8 << 20);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.connect().await.map(|(_, conn)| conn)
}

pub async fn connect(server: &DevServer) -> Conn {
    try_connect(server, Some(&dev_token()))
        .await
        .expect("upgrade accepted")
}

pub async fn send(conn: &mut Conn, msg: worker_message::Message) {
    let bytes = WorkerMessage { message: Some(msg) }.encode_to_vec();
    conn.send(Message::Binary(bytes.into()))
        .await
        .expect("send");
}

/// What the server did next, skipping its WebSocket pings.
#[allow(clippy::large_enum_variant)] // a test helper, moved once per frame
#[derive(Debug)]
pub enum Event {
    Msg(server_message::Message),
    Text(String),
    Binary(Vec<u8>),
    /// The socket ended without a close frame.
    Closed,
    /// The server sent a close frame.
    CloseFrame,
    TimedOut,
}

pub async fn next_event(conn: &mut Conn) -> Event {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let item = match tokio::time::timeout_at(deadline, conn.next()).await {
            Err(_) => return Event::TimedOut,
            Ok(None) | Ok(Some(Err(_))) => return Event::Closed,
            Ok(Some(Ok(frame))) => frame,
        };
        match item {
            Frame::Binary(bytes) => {
                return match ServerMessage::decode(bytes.clone()) {
                    Ok(ServerMessage { message: Some(m) }) => Event::Msg(m),
                    _ => Event::Binary(bytes.to_vec()),
                };
            }
            Frame::Text(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                return match serde_json::from_str::<ServerMessage>(&text) {
                    Ok(ServerMessage { message: Some(m) }) => Event::Msg(m),
                    _ => Event::Text(text),
                };
            }
            Frame::Close(_) => return Event::CloseFrame,
            Frame::Ping(_) | Frame::Pong(_) | Frame::Continuation(_) => continue,
        }
    }
}

pub async fn next_msg(conn: &mut Conn) -> server_message::Message {
    match next_event(conn).await {
        Event::Msg(m) => m,
        other => panic!("expected a server message, got {other:?}"),
    }
}

/// Reads until the server ends the connection; true if it did in time.
pub async fn closed(conn: &mut Conn) -> bool {
    loop {
        match next_event(conn).await {
            Event::Closed | Event::CloseFrame => return true,
            Event::TimedOut => return false,
            _ => continue,
        }
    }
}

pub fn register_request(agent_name: &str) -> worker_message::Message {
    worker_message::Message::Register(RegisterWorkerRequest {
        r#type: JobType::JtRoom as i32,
        agent_name: agent_name.to_owned(),
        version: "test-1".to_owned(),
        ..Default::default()
    })
}

/// Connects and registers; returns the socket and the worker id.
pub async fn worker(server: &DevServer, agent_name: &str) -> (Conn, String) {
    worker_as(server, &dev_token(), agent_name).await
}

/// Connects with `token` (any key) and registers.
pub async fn worker_as(server: &DevServer, token: &str, agent_name: &str) -> (Conn, String) {
    let mut conn = try_connect(server, Some(token))
        .await
        .expect("upgrade accepted");
    send(&mut conn, register_request(agent_name)).await;
    match next_msg(&mut conn).await {
        server_message::Message::Register(r) => (conn, r.worker_id),
        other => panic!("expected register, got {other:?}"),
    }
}

/// Sends a protocol ping and waits until the server has counted `n` pings
/// from this worker: everything the worker sent before it has then been
/// handled (one connection's messages reach the dispatcher in order), so a
/// test can check that something it sent changed nothing.
pub async fn handled(server: &DevServer, conn: &mut Conn, worker_id: &str, n: u64) {
    send(
        conn,
        worker_message::Message::Ping(livekit_protocol::WorkerPing { timestamp: 1 }),
    )
    .await;
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| w.id == worker_id && w.pings >= n)
        })
        .await
        .expect("the ping is counted");
}

/// Reads the next availability request; returns the job.
pub async fn expect_availability(conn: &mut Conn) -> livekit_protocol::Job {
    match next_msg(conn).await {
        server_message::Message::Availability(a) => a.job.expect("availability carries the job"),
        other => panic!("expected availability, got {other:?}"),
    }
}

pub async fn answer(conn: &mut Conn, job_id: &str, available: bool, identity: &str) {
    send(
        conn,
        worker_message::Message::Availability(AvailabilityResponse {
            job_id: job_id.to_owned(),
            available,
            participant_identity: identity.to_owned(),
            participant_name: "Agent".to_owned(),
            ..Default::default()
        }),
    )
    .await;
}

pub async fn update_job(
    conn: &mut Conn,
    job_id: &str,
    status: livekit_protocol::JobStatus,
    error: &str,
) {
    send(
        conn,
        worker_message::Message::UpdateJob(UpdateJobStatus {
            job_id: job_id.to_owned(),
            status: status as i32,
            error: error.to_owned(),
        }),
    )
    .await;
}

/// Connects and registers with a job type and namespace.
pub async fn worker_of(
    server: &DevServer,
    agent_name: &str,
    job_type: JobType,
    namespace: Option<&str>,
) -> (Conn, String) {
    let mut conn = connect(server).await;
    let register = worker_message::Message::Register(RegisterWorkerRequest {
        r#type: job_type as i32,
        agent_name: agent_name.to_owned(),
        version: "test-1".to_owned(),
        namespace: namespace.map(str::to_owned),
        ..Default::default()
    });
    send(&mut conn, register).await;
    match next_msg(&mut conn).await {
        server_message::Message::Register(r) => (conn, r.worker_id),
        other => panic!("expected register, got {other:?}"),
    }
}

/// The official Rust SDK's dispatch client, pointed at the dev server.
pub fn dispatch_client(
    server: &DevServer,
) -> livekit_api::services::agent_dispatch::AgentDispatchClient {
    livekit_api::services::agent_dispatch::AgentDispatchClient::with_api_key(
        &server.http_url(),
        "devkey",
        "secret",
    )
}

/// The official Rust SDK's room client, pointed at the dev server.
pub fn room_client(server: &DevServer) -> livekit_api::services::room::RoomClient {
    livekit_api::services::room::RoomClient::with_api_key(&server.http_url(), "devkey", "secret")
}

/// A token with these video grants, signed with the dev key.
pub fn grant_token(grants: VideoGrants) -> String {
    AccessToken::with_api_key("devkey", "secret")
        .with_grants(grants)
        .to_jwt()
        .unwrap()
}

/// A raw HTTP POST: (status, content type, body).
pub async fn post(
    server: &DevServer,
    path: &str,
    content_type: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let mut req = awc::Client::new()
        .post(format!("{}{path}", server.http_url()))
        .insert_header(("content-type", content_type));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut resp = req.send_body(body).await.expect("request sent");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.body().await.expect("body read").to_vec();
    (resp.status().as_u16(), ct, body)
}

/// A Twirp or development call in JSON: (HTTP status, body as JSON).
pub async fn post_json(
    server: &DevServer,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let (status, _, bytes) = post(
        server,
        path,
        "application/json",
        Some(token),
        body.to_string().into_bytes(),
    )
    .await;
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{path}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

/// Simulates a participant joining through the development endpoint.
pub async fn join(server: &DevServer, room: &str, body: serde_json::Value) -> (u16, Vec<u8>) {
    let token = grant_token(VideoGrants {
        room_admin: true,
        room: room.to_owned(),
        ..Default::default()
    });
    let (status, _, body) = post(
        server,
        &format!("/dev/rooms/{room}/participants"),
        "application/json",
        Some(&token),
        body.to_string().into_bytes(),
    )
    .await;
    (status, body)
}

/// Waits until the server has at least `n` jobs matching `pred`; returns them.
pub async fn wait_jobs(
    server: &DevServer,
    n: usize,
    pred: impl Fn(&lkagent_devserver::JobInfo) -> bool,
) -> Vec<lkagent_devserver::JobInfo> {
    match server
        .wait_jobs(DEADLINE, |jobs| {
            jobs.iter().filter(|j| pred(j)).count() >= n
        })
        .await
    {
        Ok(jobs) => jobs.into_iter().filter(|j| pred(j)).collect(),
        Err(e) => panic!("waiting for {n} jobs: {e}; have {:?}", server.jobs().await),
    }
}
