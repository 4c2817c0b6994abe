//! The HTTP APIs beside `/agent`: the Twirp services the official server SDKs
//! call, and the development endpoints that stand in for room events.
//!
//! - `POST /twirp/livekit.AgentDispatchService/{CreateDispatch,DeleteDispatch,ListDispatch}`
//! - `POST /twirp/livekit.RoomService/{CreateRoom,ListRooms,DeleteRoom,ListParticipants}`
//!
//! Bodies are protobuf (`application/protobuf`) or protojson
//! (`application/json`); the answer uses the request's encoding. Grants, as
//! the server checks them: `roomCreate` for CreateRoom and DeleteRoom,
//! `roomList` for ListRooms, `roomAdmin` on the named room for the rest. A
//! missing, bad or insufficient token is `unauthenticated` (401), as the
//! server answers (`twirpAuthError`).
//!
//! Every error, here and on the development endpoints, is Twirp's JSON
//! `{"code", "msg"}` with the HTTP status Twirp maps the code to: an unknown
//! path or a method other than the route's is `bad_route` (404), as is an
//! unexpected Content-Type (as the generated Twirp servers answer); a body
//! that does not decode is `malformed` (400); one above [`MAX_BODY_SIZE`] is
//! `invalid_argument` (400); a cap reached is `resource_exhausted` (429).
//!
//! Development (JSON, `roomAdmin` on the room):
//! - `POST /dev/rooms/{room}/participants` `{"identity", "name"?, "metadata"?,
//!   "attributes"?, "agent"?, "publish"?}`: a participant joins (the room is
//!   created if missing): JT_PARTICIPANT jobs, and JT_PUBLISHER ones with
//!   `publish`;
//! - `POST /dev/rooms/{room}/participants/{identity}/publish`: its first
//!   publish: JT_PUBLISHER jobs.

use std::collections::HashMap;

use actix::{Addr, Handler, Message};
use actix_web::error::JsonPayloadError;
use actix_web::http::{StatusCode, header};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use livekit_api::access_token::Claims;
use livekit_protocol::{
    CreateAgentDispatchRequest, CreateRoomRequest, DeleteAgentDispatchRequest, DeleteRoomRequest,
    DeleteRoomResponse, ListAgentDispatchRequest, ListAgentDispatchResponse,
    ListParticipantsRequest, ListParticipantsResponse, ListRoomsRequest, ListRoomsResponse,
    ParticipantInfo, participant_info,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth;
use crate::dispatcher::Dispatcher;
use crate::messages::{
    CreateDispatch, CreateRoom, DeleteDispatch, DeleteRoom, JoinParticipant, ListDispatch,
    ListParticipants, ListRooms, PublishTrack,
};
use crate::model::ApiError;
use crate::server::AppState;

const AGENT_DISPATCH_SERVICE: &str = "livekit.AgentDispatchService";
const ROOM_SERVICE: &str = "livekit.RoomService";
const PROTOBUF: &str = "application/protobuf";
const JSON: &str = "application/json";
/// What a Twirp call is told about another Content-Type.
const TWIRP_TYPES: &str = "unexpected Content-Type: use application/protobuf or application/json";
/// What a development endpoint is told about another Content-Type.
pub(crate) const JSON_ONLY: &str = "unexpected Content-Type: use application/json";

/// The largest request body taken, Twirp or development (256 KiB, actix-web's
/// own default): far above any room, dispatch or participant request, and
/// its metadata still fits the 2 MiB frame a worker accepts once it is
/// copied into a job.
pub const MAX_BODY_SIZE: usize = 256 << 10;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint("/twirp/{service}/{method}", web::post().to(twirp)))
        .service(endpoint(
            "/dev/rooms/{room}/participants",
            web::post().to(join_participant),
        ))
        .service(endpoint(
            "/dev/rooms/{room}/participants/{identity}/publish",
            web::post().to(publish_track),
        ));
}

/// One route at `path`; any other method is a Twirp `bad_route` (actix would
/// answer an empty 405).
pub(crate) fn endpoint(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(bad_method))
}

/// What answers a path no route takes: a Twirp `bad_route`, as a Twirp
/// server answers an unknown path.
pub(crate) async fn no_route(req: HttpRequest) -> HttpResponse {
    error_response(&ApiError::bad_route(format!(
        "no handler for path {:?}",
        req.path()
    )))
}

/// A body above [`MAX_BODY_SIZE`]. Twirp has no code for it (no 413): the
/// Twirp maintainers answer `invalid_argument` for a payload too large
/// (twitchtv/twirp#290); `resource_exhausted` (429) would tell the client to
/// retry later, which can never succeed with the same body.
fn too_large() -> ApiError {
    ApiError::invalid_argument(format!(
        "the request body is larger than the {MAX_BODY_SIZE} bytes the dev server takes"
    ))
}

/// The body, read up to [`MAX_BODY_SIZE`].
pub(crate) async fn read_body(payload: web::Payload) -> Result<Bytes, ApiError> {
    match payload.to_bytes_limited(MAX_BODY_SIZE).await {
        Ok(Ok(body)) => Ok(body),
        // as a Twirp server answers a body it cannot read
        Ok(Err(e)) => Err(ApiError::malformed(format!(
            "failed to read the request body: {e}"
        ))),
        Err(_) => Err(too_large()),
    }
}

/// The `web::Json` bodies of the benchmark endpoints: the same limit, and
/// Twirp errors instead of actix's plain-text ones.
pub(crate) fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY_SIZE)
        .error_handler(|err, _| {
            let api = match &err {
                JsonPayloadError::OverflowKnownLength { .. }
                | JsonPayloadError::Overflow { .. } => too_large(),
                JsonPayloadError::ContentType => ApiError::bad_route(JSON_ONLY),
                other => {
                    ApiError::malformed(format!("the json request could not be decoded: {other}"))
                }
            };
            actix_web::error::InternalError::from_response(err, error_response(&api)).into()
        })
}

/// The body encoding of a Twirp call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/protobuf` (or `application/x-protobuf`).
    Protobuf,
    /// `application/json`: protojson.
    Json,
}

impl Format {
    pub(crate) fn of(req: &HttpRequest) -> Option<Self> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let ct = ct.split(';').next().unwrap_or_default().trim();
        match ct {
            PROTOBUF | "application/x-protobuf" => Some(Self::Protobuf),
            JSON => Some(Self::Json),
            _ => None,
        }
    }
}

pub(crate) fn error_response(err: &ApiError) -> HttpResponse {
    let body = serde_json::json!({ "code": err.code, "msg": err.msg });
    HttpResponse::build(StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::OK))
        .content_type(JSON)
        .body(body.to_string())
}

/// Decodes a Twirp request body of type `T` in `format`; an empty body is
/// the empty message in either. Pure, so the fuzz tests call it directly
/// for every request type `call` handles (`devserver/tests/fuzz.rs`).
pub fn decode<T: prost::Message + Default + DeserializeOwned>(
    format: Format,
    body: &Bytes,
) -> Result<T, ApiError> {
    let malformed =
        |e: String| ApiError::malformed(format!("the request body could not be decoded: {e}"));
    match format {
        Format::Protobuf => T::decode(body.clone()).map_err(|e| malformed(e.to_string())),
        // An empty JSON body is an empty message, as for protobuf.
        Format::Json if body.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        Format::Json => serde_json::from_slice(body).map_err(|e| malformed(e.to_string())),
    }
}

fn encode<T: prost::Message + Serialize>(format: Format, msg: &T) -> HttpResponse {
    match format {
        Format::Protobuf => HttpResponse::Ok()
            .content_type(PROTOBUF)
            .body(msg.encode_to_vec()),
        Format::Json => match serde_json::to_vec(msg) {
            Ok(bytes) => HttpResponse::Ok().content_type(JSON).body(bytes),
            Err(e) => error_response(&ApiError::internal(e.to_string())),
        },
    }
}

/// The verified claims of the request's bearer token.
pub(crate) fn claims(req: &HttpRequest, state: &AppState) -> Result<Claims, ApiError> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = auth::extract_token(authorization, None).ok_or_else(denied)?;
    match auth::verify(token, &state.keys) {
        Ok((_, claims)) => Ok(claims),
        Err(e) => {
            // The reason goes to the log only (never the token): told to the
            // caller, it would say which key names exist
            tracing::info!(peer = ?req.peer_addr(), reason = %e, "API call refused");
            Err(denied())
        }
    }
}

fn denied() -> ApiError {
    ApiError::unauthenticated("permissions denied")
}

/// `EnsureAdminPermission`: `roomAdmin` for this very room.
fn ensure_admin(claims: &Claims, room: &str) -> Result<(), ApiError> {
    if claims.video.room_admin && claims.video.room == room {
        Ok(())
    } else {
        Err(denied())
    }
}

fn ensure_create(claims: &Claims) -> Result<(), ApiError> {
    if claims.video.room_create {
        Ok(())
    } else {
        Err(denied())
    }
}

fn ensure_list(claims: &Claims) -> Result<(), ApiError> {
    if claims.video.room_list {
        Ok(())
    } else {
        Err(denied())
    }
}

/// Sends a message to the dispatcher; a stopped dispatcher is `internal`.
pub(crate) async fn ask<M>(dispatcher: &Addr<Dispatcher>, msg: M) -> Result<M::Result, ApiError>
where
    M: Message + Send + 'static,
    M::Result: Send,
    Dispatcher: Handler<M>,
{
    dispatcher
        .send(msg)
        .await
        .map_err(|_| ApiError::internal("the dev server is stopping"))
}

async fn bad_method(req: HttpRequest) -> HttpResponse {
    error_response(&ApiError::bad_route(format!(
        "unsupported method {} on {:?}",
        req.method(),
        req.path()
    )))
}

/// `POST /twirp/{service}/{method}`.
async fn twirp(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (service, method) = path.into_inner();
    match call(&req, &service, &method, body, &state).await {
        Ok(response) => {
            tracing::debug!(service, method, "API call served");
            response
        }
        Err(e) => {
            tracing::info!(
                service,
                method,
                code = e.code,
                msg = e.msg,
                "API call failed"
            );
            error_response(&e)
        }
    }
}

async fn call(
    req: &HttpRequest,
    service: &str,
    method: &str,
    body: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let known = matches!(
        (service, method),
        (
            AGENT_DISPATCH_SERVICE,
            "CreateDispatch" | "DeleteDispatch" | "ListDispatch"
        ) | (
            ROOM_SERVICE,
            "CreateRoom" | "ListRooms" | "DeleteRoom" | "ListParticipants"
        )
    );
    if !known {
        return Err(ApiError::bad_route(format!(
            "no handler for {service}/{method} on the dev server"
        )));
    }
    let format = Format::of(req).ok_or_else(|| ApiError::bad_route(TWIRP_TYPES))?;
    let claims = claims(req, state)?;
    let body = &read_body(body).await?;
    let dispatcher = &state.dispatcher;
    match (service, method) {
        (AGENT_DISPATCH_SERVICE, "CreateDispatch") => {
            let r: CreateAgentDispatchRequest = decode(format, body)?;
            ensure_admin(&claims, &r.room)?;
            let dispatch = ask(dispatcher, CreateDispatch(r)).await??;
            Ok(encode(format, &dispatch))
        }
        (AGENT_DISPATCH_SERVICE, "DeleteDispatch") => {
            let r: DeleteAgentDispatchRequest = decode(format, body)?;
            ensure_admin(&claims, &r.room)?;
            let dispatch = ask(dispatcher, DeleteDispatch(r)).await??;
            Ok(encode(format, &dispatch))
        }
        (AGENT_DISPATCH_SERVICE, "ListDispatch") => {
            let r: ListAgentDispatchRequest = decode(format, body)?;
            ensure_admin(&claims, &r.room)?;
            let agent_dispatches = ask(dispatcher, ListDispatch(r)).await??;
            Ok(encode(
                format,
                &ListAgentDispatchResponse { agent_dispatches },
            ))
        }
        (ROOM_SERVICE, "CreateRoom") => {
            let r: CreateRoomRequest = decode(format, body)?;
            ensure_create(&claims)?;
            let room = ask(dispatcher, CreateRoom(r)).await??;
            Ok(encode(format, &room))
        }
        (ROOM_SERVICE, "ListRooms") => {
            let r: ListRoomsRequest = decode(format, body)?;
            ensure_list(&claims)?;
            let rooms = ask(dispatcher, ListRooms(r)).await?;
            Ok(encode(format, &ListRoomsResponse { rooms }))
        }
        (ROOM_SERVICE, "DeleteRoom") => {
            let r: DeleteRoomRequest = decode(format, body)?;
            ensure_create(&claims)?;
            ask(dispatcher, DeleteRoom(r)).await??;
            Ok(encode(format, &DeleteRoomResponse {}))
        }
        (ROOM_SERVICE, "ListParticipants") => {
            let r: ListParticipantsRequest = decode(format, body)?;
            ensure_admin(&claims, &r.room)?;
            let participants = ask(dispatcher, ListParticipants(r)).await??;
            Ok(encode(format, &ListParticipantsResponse { participants }))
        }
        _ => unreachable!("checked above"),
    }
}

/// The body of `POST /dev/rooms/{room}/participants`.
#[derive(Debug, serde::Deserialize)]
pub struct JoinBody {
    identity: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    attributes: HashMap<String, String>,
    /// Join as an agent participant (which never triggers jobs).
    #[serde(default)]
    agent: bool,
    /// Also publish a first track.
    #[serde(default)]
    publish: bool,
}

async fn join_participant(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let room = path.into_inner();
    let result = async {
        if Format::of(&req) != Some(Format::Json) {
            return Err(ApiError::bad_route(JSON_ONLY));
        }
        ensure_admin(&claims(&req, &state)?, &room)?;
        let body = read_body(body).await?;
        let body: JoinBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::malformed(format!("expected {{\"identity\": ...}}: {e}")))?;
        let kind = if body.agent {
            participant_info::Kind::Agent
        } else {
            participant_info::Kind::Standard
        };
        let participant = ParticipantInfo {
            identity: body.identity,
            name: body.name,
            metadata: body.metadata,
            attributes: body.attributes,
            kind: kind as i32,
            ..Default::default()
        };
        let msg = JoinParticipant {
            room: room.clone(),
            participant,
            publish: body.publish,
        };
        ask(&state.dispatcher, msg).await?
    }
    .await;
    match result {
        Ok(info) => encode(Format::Json, &info),
        Err(e) => error_response(&e),
    }
}

async fn publish_track(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (room, identity) = path.into_inner();
    let result = async {
        ensure_admin(&claims(&req, &state)?, &room)?;
        ask(
            &state.dispatcher,
            PublishTrack {
                room: room.clone(),
                identity,
            },
        )
        .await?
    }
    .await;
    match result {
        Ok(info) => encode(Format::Json, &info),
        Err(e) => error_response(&e),
    }
}
