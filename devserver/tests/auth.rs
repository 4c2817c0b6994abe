//! The token check at the upgrade: 401 before any WebSocket exists.

mod common;

use awc::error::WsClientError;
use awc::http::StatusCode;
use common::*;

fn status(result: Result<Conn, WsClientError>) -> Option<StatusCode> {
    match result {
        Ok(_) => None,
        Err(WsClientError::InvalidResponseStatus(s)) => Some(s),
        Err(e) => panic!("unexpected client error {e}"),
    }
}

#[actix_rt::test]
async fn missing_token_is_401() {
    let server = server().await;
    assert_eq!(
        status(try_connect(&server, None).await),
        Some(StatusCode::UNAUTHORIZED)
    );
}

#[actix_rt::test]
async fn bad_signature_is_401() {
    let server = server().await;
    let t = token("devkey", "not-the-secret", true);
    assert_eq!(
        status(try_connect(&server, Some(&t)).await),
        Some(StatusCode::UNAUTHORIZED)
    );
}

#[actix_rt::test]
async fn unknown_key_is_401() {
    let server = server().await;
    let t = token("otherkey", "secret", true);
    assert_eq!(
        status(try_connect(&server, Some(&t)).await),
        Some(StatusCode::UNAUTHORIZED)
    );
}

#[actix_rt::test]
async fn token_without_agent_grant_is_401() {
    let server = server().await;
    let t = token("devkey", "secret", false);
    assert_eq!(
        status(try_connect(&server, Some(&t)).await),
        Some(StatusCode::UNAUTHORIZED)
    );
}

#[actix_rt::test]
async fn query_token_is_accepted() {
    let server = server().await;
    let url = format!("{}/agent?access_token={}", server.ws_url(), dev_token());
    let result = awc::Client::new().ws(url).connect().await;
    assert!(result.is_ok(), "upgrade with ?access_token= refused");
}

#[actix_rt::test]
async fn second_key_from_the_list_is_accepted() {
    let config = lkagent_devserver::DevServerConfig {
        keys: lkagent_devserver::parse_keys("devkey: secret\nk2: s2").unwrap(),
        ..Default::default()
    };
    let server = server_with(config).await;
    let t = token("k2", "s2", true);
    assert!(status(try_connect(&server, Some(&t)).await).is_none());
}

#[actix_rt::test]
async fn a_public_bind_with_the_default_key_is_refused() {
    // refused before anything listens: no socket is opened beyond loopback
    let config = lkagent_devserver::DevServerConfig {
        bind: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        ..Default::default()
    };
    let Err(err) = lkagent_devserver::DevServer::start(config).await else {
        panic!("started beyond loopback with the default key");
    };
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("--insecure"), "{err}");
}
