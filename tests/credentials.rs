//! Credential rotation: a secret file is read again at every connection, so a
//! rotated secret takes effect at the next reconnect; the room tokens the
//! worker mints itself are replaced before they expire.

mod common;

use std::time::Duration;

use common::*;
use lkagent::{JobContext, JobError, JobHandler, SpawnJob, SpawnOutcome, WorkerOptions};
use lkagent_devserver::official_api::access_token::TokenVerifier;

/// Follows its room token and records every one it is given.
#[derive(Clone, Default)]
struct Follower {
    tokens: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl JobHandler for Follower {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        self.tokens.lock().unwrap().push(ctx.token());
        let mut watch = ctx.watch_token();
        while let Some(token) = watch.changed().await {
            self.tokens.lock().unwrap().push(token);
            if self.tokens.lock().unwrap().len() >= 3 {
                break;
            }
        }
        Ok(())
    }
}

#[actix_rt::test]
async fn a_rotated_secret_file_is_used_at_the_next_connect() {
    let server = devserver().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("livekit-secret");
    std::fs::write(&file, "an-old-secret\n").unwrap();
    let mut options: WorkerOptions = options(&server).api_secret_file(&file);
    options.reconnect.unauthorized_retry = Duration::from_millis(200);
    let worker = worker(options, lkagent::demo::DemoAgent);
    let state = wait_worker(&worker, "the old secret refused", |s| {
        s.connection_error.is_some()
    })
    .await;
    assert!(!state.connected);
    assert!(
        state.connection_error.as_deref().unwrap().contains("401"),
        "{state:?}"
    );

    // the secret is rotated in place, as a mounted Kubernetes secret is
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let worker_id = registered(&worker).await;
    assert!(worker_id.starts_with("AW_"));
    serve_quick_job(&server, "rotated").await;
}

#[actix_rt::test]
async fn room_tokens_the_worker_mints_are_replaced_before_they_expire() {
    let server = devserver().await;
    let handler = Follower::default();
    let mut options = options(&server);
    // a short life, so that the test sees two refreshes (at 3/4 of it)
    options.room_token_ttl = Duration::from_secs(2);
    let worker = worker(options, handler.clone());
    registered(&worker).await;
    let spawned = worker
        .send(SpawnJob::new("lobby").id("refreshed").identity("agent-7"))
        .await
        .unwrap();
    assert!(
        matches!(spawned, SpawnOutcome::Started { .. }),
        "{spawned:?}"
    );
    eventually("two new tokens", || {
        handler.tokens.lock().unwrap().len() >= 3
    })
    .await;

    let tokens = handler.tokens.lock().unwrap().clone();
    let verifier = TokenVerifier::with_api_key(KEY, SECRET);
    let claims: Vec<_> = tokens
        .iter()
        .map(|t| verifier.verify(t).expect("a valid token"))
        .collect();
    for c in &claims {
        assert_eq!(c.sub, "agent-7");
        assert_eq!(c.video.room, "lobby");
        assert!(c.video.room_join);
    }
    assert!(
        claims.windows(2).all(|w| w[1].exp >= w[0].exp),
        "each new token lives at least as long: {:?}",
        claims.iter().map(|c| c.exp).collect::<Vec<_>>()
    );
    assert_ne!(tokens[0], tokens[2], "the token was replaced");
    assert!(claims[2].exp > claims[0].exp, "a later token expires later");
}
