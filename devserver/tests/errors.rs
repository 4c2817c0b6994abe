//! Every error of the Twirp and development endpoints is a Twirp JSON error
//! `{"code", "msg"}` with the HTTP status Twirp maps its code to: oversized
//! bodies, bodies that do not decode, unexpected content types, unknown
//! routes and methods.

mod common;

use common::*;
use livekit_api::access_token::VideoGrants;
use lkagent_devserver::{DevServer, MAX_BODY_SIZE};

/// Any request: (status, content type, body).
async fn request(
    server: &DevServer,
    method: awc::http::Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let mut resp = awc::Client::new()
        .request(method, format!("{}{path}", server.http_url()))
        .insert_header(("content-type", content_type))
        .bearer_auth(admin_token())
        .send_body(body)
        .await
        .expect("request sent");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp
        .body()
        .limit(1 << 20)
        .await
        .expect("body read")
        .to_vec();
    (resp.status().as_u16(), ct, body)
}

async fn post_as(
    server: &DevServer,
    path: &str,
    ct: &str,
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    request(server, awc::http::Method::POST, path, ct, body).await
}

/// Every grant the endpoints below check, for room `r`.
fn admin_token() -> String {
    grant_token(VideoGrants {
        room_create: true,
        room_list: true,
        room_admin: true,
        room: "r".into(),
        ..Default::default()
    })
}

/// Asserts a Twirp error with this status and code; answers its message.
fn twirp_error(answer: (u16, String, Vec<u8>), status: u16, code: &str, what: &str) -> String {
    let (got, ct, body) = answer;
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(
        (got, ct.as_str()),
        (status, "application/json"),
        "{what}: {text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_eq!(json["code"], code, "{what}: {text}");
    json["msg"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no msg: {text}"))
        .to_owned()
}

const CREATE_ROOM: &str = "/twirp/livekit.RoomService/CreateRoom";
const JOIN: &str = "/dev/rooms/r/participants";
const BENCH_JOBS: &str = "/dev/bench/jobs";

#[actix_rt::test]
async fn an_oversized_body_is_invalid_argument() {
    let server = server().await;
    let big = "x".repeat(MAX_BODY_SIZE + 1);
    let json = serde_json::json!({ "name": "r", "identity": big, "metadata": big })
        .to_string()
        .into_bytes();
    for (path, ct, body) in [
        (CREATE_ROOM, "application/json", json.clone()),
        (
            CREATE_ROOM,
            "application/protobuf",
            vec![0u8; MAX_BODY_SIZE + 1],
        ),
        (JOIN, "application/json", json.clone()),
        (BENCH_JOBS, "application/json", json.clone()),
    ] {
        let what = format!("{path} ({ct})");
        let msg = twirp_error(
            post_as(&server, path, ct, body).await,
            400,
            "invalid_argument",
            &what,
        );
        assert!(msg.contains(&MAX_BODY_SIZE.to_string()), "{what}: {msg}");
    }
    assert_eq!(server.counts().await.rooms, 0, "nothing was created");
    // just under the limit is served
    let name = "n".repeat(MAX_BODY_SIZE - 100);
    let fits = serde_json::json!({ "name": "r", "metadata": name }).to_string();
    let (status, _, _) = post_as(&server, CREATE_ROOM, "application/json", fits.into_bytes()).await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn a_body_that_does_not_decode_is_malformed() {
    let server = server().await;
    for (path, ct, body) in [
        (CREATE_ROOM, "application/json", b"{not json".to_vec()),
        (CREATE_ROOM, "application/protobuf", vec![0xff; 16]),
        (JOIN, "application/json", b"{not json".to_vec()),
        (
            JOIN,
            "application/json",
            br#"{"name": "no identity"}"#.to_vec(),
        ),
        (BENCH_JOBS, "application/json", b"{not json".to_vec()),
    ] {
        let what = format!("{path} ({ct}) {}", String::from_utf8_lossy(&body));
        twirp_error(
            post_as(&server, path, ct, body).await,
            400,
            "malformed",
            &what,
        );
    }
}

#[actix_rt::test]
async fn an_unexpected_content_type_is_bad_route() {
    let server = server().await;
    for path in [CREATE_ROOM, JOIN, BENCH_JOBS] {
        let answer = post_as(&server, path, "text/plain", b"{}".to_vec()).await;
        let msg = twirp_error(answer, 404, "bad_route", path);
        assert!(msg.contains("Content-Type"), "{path}: {msg}");
    }
}

#[actix_rt::test]
async fn unknown_routes_and_methods_are_bad_route() {
    use awc::http::Method;
    let server = server().await;
    for (method, path) in [
        (Method::POST, "/twirp/livekit.RoomService/Nope"),
        (Method::POST, "/twirp/livekit.NoService/ListRooms"),
        (Method::POST, "/twirp/livekit.RoomService"),
        (Method::POST, "/twirp/livekit.RoomService/ListRooms/extra"),
        (Method::POST, "/twirp"),
        (Method::GET, "/twirp/livekit.RoomService/ListRooms"),
        (Method::POST, "/dev/nope"),
        (Method::GET, JOIN),
        (Method::PUT, "/dev/rooms/r/participants/alice/publish"),
        (Method::POST, "/dev/bench/workers"),
        (Method::GET, BENCH_JOBS),
    ] {
        let what = format!("{method} {path}");
        let answer = request(&server, method, path, "application/json", b"{}".to_vec()).await;
        twirp_error(answer, 404, "bad_route", &what);
    }
}
