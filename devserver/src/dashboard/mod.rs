//! The dashboard at `/dashboard`: a page that shows the workers (with their
//! load over the last minutes), rooms, dispatches and every job's timeline,
//! pushed live over server-sent events, with buttons that act on the server.
//!
//! - **No build step, nothing downloaded:** the page, its script, style and
//!   icon are embedded in the binary (`assets/`), served under a strict
//!   Content-Security-Policy (no inline script, no other origin).
//! - **The same keys as the APIs:** the page and its API open with a
//!   dashboard token: an admin token of every room signed by one of the
//!   server's keys (`auth::authorize_dashboard`). A person gets one by
//!   logging in with a key and its secret, or from the link the binary prints
//!   at start (`?token=…`, which is traded for the cookie and dropped from
//!   the address at once). A key and secret are taken only from a loopback
//!   peer: over plain HTTP the secret would cross the network. The cookie is
//!   `HttpOnly` and `SameSite=Lax` (so a link opened from another site's
//!   page still logs in), and every `POST` must be JSON, which a cross-site
//!   form cannot send without a CORS preflight the server never grants.
//!   Scripts and tests may send the token as `Authorization: Bearer`
//!   instead. An event stream ends when its token expires.
//! - **Live:** `GET /dashboard/api/events` pushes the whole (bounded) state
//!   at once, then again after each change the dispatcher signals, at most
//!   every [`MIN_PUSH_INTERVAL`]; a comment every [`KEEPALIVE`] keeps
//!   proxies from closing an idle stream. At most [`MAX_EVENT_STREAMS`]
//!   streams are open at once; a page that goes away frees its place when
//!   the server next writes to it (the next change, or the keep-alive).
//! - **Actions go through the same code as the rest:** creating a room, a
//!   dispatch or a participant sends the dispatcher the very messages the
//!   Twirp and `/dev` handlers send; terminating a job and dropping a worker
//!   are the [`DevServer`](crate::DevServer) handle's `terminate_job` and
//!   `drop_worker`, which the tests and fault mode use.
//!
//! Routes: `GET /dashboard` (the page, or the login page with 401),
//! `POST /dashboard/login` (form: `key`, `secret`), `POST /dashboard/logout`,
//! `GET /dashboard/assets/{file}`, `GET /dashboard/api/state` (the JSON of one
//! push), `GET /dashboard/api/events`, and the JSON actions
//! `POST /dashboard/api/{rooms, dispatches, participants,
//! participants/publish, jobs/{id}/terminate, workers/{id}/drop}`.

pub(crate) mod view;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::Addr;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use livekit_protocol::{
    CreateAgentDispatchRequest, CreateRoomRequest, ParticipantInfo, participant_info,
};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::auth;
use crate::dispatcher::Dispatcher;
use crate::messages::{
    CreateDispatch, CreateRoom, DropWorker, GetOverview, JoinParticipant, PublishTrack,
    TerminateJob,
};
use crate::model::{ApiError, DevServerError};
use crate::server::AppState;
use crate::twirp::{self, Format, JSON_ONLY, ask, endpoint, error_response};

/// The cookie holding the dashboard token.
const COOKIE: &str = "lkagent_dashboard";
/// How long a login lasts.
pub(crate) const LOGIN_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long the link printed at start opens the dashboard.
pub(crate) const LINK_TTL: Duration = Duration::from_secs(24 * 3600);
/// The least time between two pushes on one stream: a burst of changes is
/// sent as one state.
pub const MIN_PUSH_INTERVAL: Duration = Duration::from_millis(250);
/// How long a stream may stay silent before a keep-alive comment.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Event streams open at once, all pages together; one more is refused
/// with `resource_exhausted`.
pub const MAX_EVENT_STREAMS: usize = 32;
/// Workers listed in a push (the most recently registered).
pub const LISTED_WORKERS: usize = 500;
/// Rooms listed in a push (the newest).
pub const LISTED_ROOMS: usize = 200;
/// Jobs listed in a push (the newest).
pub const LISTED_JOBS: usize = 200;

const PAGE: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
const ICON: &str = include_str!("assets/icon.svg");

/// The Content-Security-Policy of the pages: everything from this origin,
/// nothing inline but styles set from the script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";
/// Where the login page shows why it is shown.
const MESSAGE_SLOT: &str = "<!--message-->";

/// The dashboard's part of the server's state (shared, read-only).
pub(crate) struct Dashboard {
    /// The dispatcher's state-change counter, to push on change.
    pub(crate) version: watch::Receiver<u64>,
    /// Open event streams, bounded.
    pub(crate) streams: Arc<Semaphore>,
    /// The last event made and the state version it was made at: every
    /// stream woken by the same change sends it, so the state is gathered
    /// and serialised once per change, not once per open page.
    last_event: std::sync::Mutex<Option<(u64, Bytes)>>,
}

impl Dashboard {
    pub(crate) fn new(version: watch::Receiver<u64>) -> Self {
        Self {
            version,
            streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
            last_event: std::sync::Mutex::new(None),
        }
    }

    /// The event of state version `version`, if it was made already.
    fn cached(&self, version: u64) -> Option<Bytes> {
        let last = self.last_event.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, event)| event.clone())
    }

    fn cache(&self, version: u64, event: Bytes) {
        *self.last_event.lock().unwrap_or_else(|e| e.into_inner()) = Some((version, event));
    }
}

/// Registers the routes.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint("/dashboard", web::get().to(page)))
        .service(endpoint("/dashboard/login", web::post().to(login)))
        .service(endpoint("/dashboard/logout", web::post().to(logout)))
        .service(endpoint("/dashboard/assets/{file}", web::get().to(asset)))
        .service(endpoint("/dashboard/api/state", web::get().to(state_json)))
        .service(endpoint("/dashboard/api/events", web::get().to(events)))
        .service(endpoint(
            "/dashboard/api/rooms",
            web::post().to(create_room),
        ))
        .service(endpoint(
            "/dashboard/api/dispatches",
            web::post().to(create_dispatch),
        ))
        .service(endpoint(
            "/dashboard/api/participants",
            web::post().to(join_participant),
        ))
        .service(endpoint(
            "/dashboard/api/participants/publish",
            web::post().to(publish_track),
        ))
        .service(endpoint(
            "/dashboard/api/jobs/{id}/terminate",
            web::post().to(terminate_job),
        ))
        .service(endpoint(
            "/dashboard/api/workers/{id}/drop",
            web::post().to(drop_worker),
        ));
}

// ---- authentication -------------------------------------------------------

/// Why a request is not let in.
enum Refusal {
    /// No token at all: the login page, without a complaint.
    NoToken,
    /// A token that does not open the dashboard.
    BadToken,
}

/// A checked dashboard token.
struct Session {
    /// When it expires (its `exp`).
    expires: SystemTime,
}

/// The request's dashboard token, checked: from `Authorization: Bearer`, else
/// the cookie.
fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Session, Refusal> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cookie = req.cookie(COOKIE);
    let token = auth::extract_token(authorization, None)
        .or_else(|| cookie.as_ref().map(Cookie::value).filter(|t| !t.is_empty()))
        .ok_or(Refusal::NoToken)?;
    check(req, token, state)
}

fn check(req: &HttpRequest, token: &str, state: &AppState) -> Result<Session, Refusal> {
    match auth::authorize_dashboard(token, &state.keys) {
        Ok((_, claims)) => Ok(Session {
            expires: std::time::UNIX_EPOCH + Duration::from_secs(claims.exp as u64),
        }),
        Err(e) => {
            // the reason to the log only, never the token
            tracing::info!(peer = ?req.peer_addr(), reason = %e, "dashboard refused a token");
            Err(Refusal::BadToken)
        }
    }
}

/// An API call's refusal: Twirp `unauthenticated`, as the other APIs.
fn api_refusal() -> HttpResponse {
    error_response(&ApiError::unauthenticated("permissions denied"))
}

/// Common headers of every dashboard answer.
fn secured(mut builder: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    builder
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP));
    builder
}

fn html(status: actix_web::http::StatusCode, body: String) -> HttpResponse {
    secured(HttpResponse::build(status))
        .content_type("text/html; charset=utf-8")
        .body(body)
}

/// The login page, with a message of ours (never request text).
fn login_page(status: actix_web::http::StatusCode, message: &'static str) -> HttpResponse {
    let message = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\" id=\"login-error\">{message}</p>")
    };
    html(status, LOGIN.replace(MESSAGE_SLOT, &message))
}

fn session_cookie(token: String, ttl: Duration) -> Cookie<'static> {
    Cookie::build(COOKIE, token)
        .path("/dashboard")
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::seconds(
            i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        ))
        .finish()
}

fn see_other(location: &str) -> actix_web::HttpResponseBuilder {
    let mut builder = secured(HttpResponse::SeeOther());
    builder.insert_header((header::LOCATION, location.to_owned()));
    builder
}

#[derive(Deserialize)]
struct PageQuery {
    token: Option<String>,
}

/// `GET /dashboard`: the page; with `?token=` the token is checked, kept in
/// the cookie and dropped from the address; without a good token, the
/// login page (401).
async fn page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    use actix_web::http::StatusCode;
    let query = web::Query::<PageQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or(PageQuery { token: None });
    if let Some(token) = query.token.filter(|t| !t.is_empty()) {
        return match check(&req, &token, &state) {
            Ok(_) => see_other("/dashboard")
                .cookie(session_cookie(token, LINK_TTL))
                .finish(),
            Err(_) => login_page(
                StatusCode::UNAUTHORIZED,
                "That link does not open this dashboard: it is expired or was made with another key.",
            ),
        };
    }
    match authenticate(&req, &state) {
        Ok(_) => html(StatusCode::OK, PAGE.to_owned()),
        Err(Refusal::NoToken) => login_page(StatusCode::UNAUTHORIZED, ""),
        Err(Refusal::BadToken) => login_page(
            StatusCode::UNAUTHORIZED,
            "Your session has ended or its key is no longer accepted: log in again.",
        ),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
    secret: String,
}

/// `POST /dashboard/login`: a key and its secret buy a session cookie.
async fn login(
    req: HttpRequest,
    form: Result<web::Form<LoginForm>, actix_web::Error>,
    state: web::Data<AppState>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    // over plain HTTP the secret would cross the network in clear: from
    // another machine, the printed link (a token, not the secret) opens
    // the dashboard instead
    if !req.peer_addr().is_some_and(|peer| peer.ip().is_loopback()) {
        tracing::info!(peer = ?req.peer_addr(), "dashboard login refused: not from this machine");
        return login_page(
            StatusCode::FORBIDDEN,
            "A key and secret are taken only from this machine (over plain HTTP the secret would cross the network): open the link the server printed at start.",
        );
    }
    let Ok(form) = form else {
        return login_page(StatusCode::BAD_REQUEST, "Give an API key and its secret.");
    };
    if !auth::check_login(&form.key, &form.secret, &state.keys) {
        tracing::info!(peer = ?req.peer_addr(), "dashboard login refused");
        return login_page(
            StatusCode::UNAUTHORIZED,
            "Wrong API key or secret: use one of the dev server's keys (--keys).",
        );
    }
    match auth::mint_dashboard_token(&form.key, &form.secret, LOGIN_TTL) {
        Ok(token) => {
            tracing::info!(peer = ?req.peer_addr(), key = form.key, "dashboard login");
            see_other("/dashboard")
                .cookie(session_cookie(token, LOGIN_TTL))
                .finish()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot mint a dashboard token");
            login_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The dev server could not make a session token.",
            )
        }
    }
}

/// `POST /dashboard/logout`: forgets the cookie.
async fn logout() -> HttpResponse {
    let mut gone = session_cookie(String::new(), Duration::ZERO);
    gone.make_removal();
    see_other("/dashboard").cookie(gone).finish()
}

/// `GET /dashboard/assets/{file}`: the embedded script, style and icon
/// (public: nothing in them is a secret, and the login page needs them).
async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, content_type) = match file.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "icon.svg" => (ICON, "image/svg+xml"),
        other => {
            return error_response(&ApiError::not_found(format!(
                "no dashboard asset {other:?}"
            )));
        }
    };
    secured(HttpResponse::Ok())
        .content_type(content_type)
        .body(body)
}

// ---- the state, pulled and pushed -------------------------------------------

async fn overview(state: &AppState) -> Result<view::StateView, ApiError> {
    let overview = ask(
        &state.dispatcher,
        GetOverview {
            max_workers: LISTED_WORKERS,
            max_rooms: LISTED_ROOMS,
            max_jobs: LISTED_JOBS,
        },
    )
    .await?;
    Ok(view::state(overview, SystemTime::now()))
}

fn json<T: serde::Serialize>(value: &T) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => secured(HttpResponse::Ok())
            .content_type("application/json")
            .body(body),
        Err(e) => error_response(&ApiError::internal(e.to_string())),
    }
}

/// `GET /dashboard/api/state`: what one push carries.
async fn state_json(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if authenticate(&req, &state).is_err() {
        return api_refusal();
    }
    match overview(&state).await {
        Ok(view) => json(&view),
        Err(e) => error_response(&e),
    }
}

/// One open event stream.
struct Stream {
    state: web::Data<AppState>,
    version: watch::Receiver<u64>,
    /// Nothing sent yet: the first state goes at once.
    first: bool,
    /// When the token that opened it expires: the stream ends then, and
    /// the page's reconnection meets the login.
    expires: SystemTime,
    last_push: tokio::time::Instant,
    /// Released when the stream is dropped (the page went away).
    _permit: OwnedSemaphorePermit,
}

/// One server-sent event, or `None` when the stream is over (the server
/// stops).
async fn next_event(mut s: Stream) -> Option<(Result<Bytes, actix_web::Error>, Stream)> {
    if SystemTime::now() >= s.expires {
        return None;
    }
    if !s.first {
        match tokio::time::timeout(KEEPALIVE, s.version.changed()).await {
            Err(_) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), s)),
            Ok(Err(_)) => return None,
            Ok(Ok(())) => {}
        }
        // a burst of changes goes as one state
        tokio::time::sleep_until(s.last_push + MIN_PUSH_INTERVAL).await;
    }
    // a new page gets a fresh state (a cached one may be old when nothing
    // changed for a while: its clock would be too); a change is sent as
    // made by the first stream it woke
    let cache = !std::mem::take(&mut s.first);
    // the state gathered after this version was read is at least as new
    let version = *s.version.borrow_and_update();
    let event = match s.state.dashboard.cached(version).filter(|_| cache) {
        Some(event) => event,
        None => {
            let view = overview(&s.state).await.ok()?;
            let data = serde_json::to_string(&view).ok()?;
            let event = Bytes::from(format!("event: state\ndata: {data}\n\n"));
            s.state.dashboard.cache(version, event.clone());
            event
        }
    };
    s.last_push = tokio::time::Instant::now();
    Some((Ok(event), s))
}

/// `GET /dashboard/api/events`: server-sent events, one `state` event with
/// the whole view per change.
async fn events(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Ok(session) = authenticate(&req, &state) else {
        return api_refusal();
    };
    let Ok(permit) = state.dashboard.streams.clone().try_acquire_owned() else {
        return error_response(&ApiError::resource_exhausted(format!(
            "too many dashboard pages open: at most {MAX_EVENT_STREAMS} at once"
        )));
    };
    let stream = Stream {
        version: state.dashboard.version.clone(),
        state: state.clone(),
        first: true,
        expires: session.expires,
        last_push: tokio::time::Instant::now(),
        _permit: permit,
    };
    secured(HttpResponse::Ok())
        .content_type("text/event-stream")
        .insert_header(("x-accel-buffering", "no"))
        .streaming(futures_util::stream::unfold(stream, next_event))
}

// ---- actions ------------------------------------------------------------------

/// Runs an action: checks the token, then takes the body as JSON only (which
/// a cross-site form cannot send), decodes it as `B` (an empty body is `{}`)
/// and answers what `run` makes of it with the dispatcher, as JSON or as a
/// Twirp error.
async fn act<B, T, Fut>(
    req: &HttpRequest,
    body: web::Payload,
    state: &AppState,
    run: impl FnOnce(B, Addr<Dispatcher>) -> Fut,
) -> HttpResponse
where
    B: serde::de::DeserializeOwned,
    T: serde::Serialize,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let result = async {
        if authenticate(req, state).is_err() {
            return Err(ApiError::unauthenticated("permissions denied"));
        }
        if Format::of(req) != Some(Format::Json) {
            return Err(ApiError::bad_route(JSON_ONLY));
        }
        let body = twirp::read_body(body).await?;
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &body
        };
        let decoded = serde_json::from_slice(body).map_err(|e| {
            ApiError::malformed(format!("the request body could not be decoded: {e}"))
        })?;
        run(decoded, state.dispatcher.clone()).await
    }
    .await;
    match result {
        Ok(value) => json(&value),
        Err(e) => {
            tracing::info!(code = e.code, msg = e.msg, "dashboard action failed");
            error_response(&e)
        }
    }
}

/// An action without a body that sends the dispatcher one control message
/// (terminate a job, drop a worker), as the [`DevServer`](crate::DevServer)
/// handle does.
async fn control<M>(req: &HttpRequest, body: web::Payload, state: &AppState, msg: M) -> HttpResponse
where
    M: actix::Message<Result = Result<(), DevServerError>> + Send + 'static,
    Dispatcher: actix::Handler<M>,
{
    act(req, body, state, |Empty {}, dispatcher| async move {
        ask(&dispatcher, msg).await??;
        Ok(serde_json::json!({}))
    })
    .await
}

#[derive(Deserialize)]
struct Empty {}

#[derive(Deserialize)]
struct RoomBody {
    name: String,
}

async fn create_room(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    act(&req, body, &state, |b: RoomBody, dispatcher| async move {
        let request = CreateRoomRequest {
            name: b.name,
            ..Default::default()
        };
        ask(&dispatcher, CreateRoom(request)).await?
    })
    .await
}

#[derive(Deserialize)]
struct DispatchBody {
    room: String,
    #[serde(default)]
    agent_name: String,
    #[serde(default)]
    metadata: String,
}

async fn create_dispatch(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    act(
        &req,
        body,
        &state,
        |b: DispatchBody, dispatcher| async move {
            let request = CreateAgentDispatchRequest {
                room: b.room,
                agent_name: b.agent_name,
                metadata: b.metadata,
                ..Default::default()
            };
            ask(&dispatcher, CreateDispatch(request)).await?
        },
    )
    .await
}

#[derive(Deserialize)]
struct ParticipantBody {
    room: String,
    identity: String,
    #[serde(default)]
    publish: bool,
}

async fn join_participant(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    act(
        &req,
        body,
        &state,
        |b: ParticipantBody, dispatcher| async move {
            if b.identity.is_empty() {
                return Err(ApiError::invalid_argument(
                    "a participant needs an identity",
                ));
            }
            let participant = ParticipantInfo {
                identity: b.identity,
                kind: participant_info::Kind::Standard as i32,
                ..Default::default()
            };
            let msg = JoinParticipant {
                room: b.room,
                participant,
                publish: b.publish,
            };
            ask(&dispatcher, msg).await?
        },
    )
    .await
}

async fn publish_track(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    act(
        &req,
        body,
        &state,
        |b: ParticipantBody, dispatcher| async move {
            let msg = PublishTrack {
                room: b.room,
                identity: b.identity,
            };
            ask(&dispatcher, msg).await?
        },
    )
    .await
}

async fn terminate_job(
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let job_id = id.into_inner();
    control(&req, body, &state, TerminateJob { job_id }).await
}

async fn drop_worker(
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let worker_id = id.into_inner();
    control(&req, body, &state, DropWorker { worker_id }).await
}
