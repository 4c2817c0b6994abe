//! Credentials and the tokens minted from them.
//!
//! The worker holds the API key and secret, and mints a fresh, short-lived
//! token for every connection attempt rather than one long-lived token: a token
//! that leaks from a proxy log is worth minutes, not hours. The secret lives in
//! [`ApiSecret`], whose `Debug` and `Display` never print it, so no `{:?}` of
//! an options struct or an error can leak it into a log.

use std::fmt;
use std::time::Duration;

use livekit_api::access_token::{AccessToken, VideoGrants};

/// How long a worker's connection token is valid. The server checks the token
/// only at the websocket upgrade, so this only has to cover one connect.
pub const WORKER_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// An API secret. Printing it in any form shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiSecret(String);

impl ApiSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for signing. Kept crate-private so that nothing
    /// outside the token code can reach it by accident.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiSecret([redacted])")
    }
}

impl fmt::Display for ApiSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An API key and its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The API key: public, it names the secret and becomes the token's `iss`.
    pub api_key: String,
    /// The API secret that signs tokens.
    pub api_secret: ApiSecret,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key or the secret is empty.
    #[error("the API key and secret must both be set")]
    MissingKeys,
    /// Signing failed (the message never contains the secret).
    #[error("could not sign the token: {0}")]
    Sign(String),
}

impl Credentials {
    /// Pairs a key with its secret.
    pub fn new(api_key: impl Into<String>, api_secret: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            api_secret: ApiSecret::new(api_secret),
        }
    }

    /// Mints the token a worker presents when it connects: HS256, `iss` = the
    /// key, `video.agent = true`, valid for `ttl`.
    pub fn worker_token(&self, ttl: Duration) -> Result<String, AuthError> {
        if self.api_key.is_empty() || self.api_secret.is_empty() {
            return Err(AuthError::MissingKeys);
        }
        AccessToken::with_api_key(&self.api_key, self.api_secret.expose())
            .with_ttl(ttl)
            .with_grants(VideoGrants {
                agent: true,
                ..Default::default()
            })
            .to_jwt()
            .map_err(|e| AuthError::Sign(e.to_string()))
    }
}

/// How long a room token minted by the worker itself is valid (the server
/// mints 1-hour tokens for the jobs it assigns; the same here).
pub const ROOM_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

impl Credentials {
    /// Mints a token to join `room` as `identity` (kind agent), for jobs the
    /// worker starts itself: local jobs, and jobs resumed after a restart.
    pub fn room_token(
        &self,
        room: &str,
        identity: &str,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        if self.api_key.is_empty() || self.api_secret.is_empty() {
            return Err(AuthError::MissingKeys);
        }
        AccessToken::with_api_key(&self.api_key, self.api_secret.expose())
            .with_ttl(ttl)
            .with_identity(identity)
            .with_kind("agent")
            .with_grants(VideoGrants {
                room_join: true,
                room: room.to_owned(),
                agent: true,
                can_publish: Some(true),
                can_subscribe: Some(true),
                can_publish_data: Some(true),
                can_update_own_metadata: Some(true),
                ..Default::default()
            })
            .to_jwt()
            .map_err(|e| AuthError::Sign(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livekit_api::access_token::TokenVerifier;

    #[test]
    fn worker_token_carries_the_agent_grant_and_a_short_expiry() {
        let creds = Credentials::new("devkey", "secret");
        let token = creds.worker_token(WORKER_TOKEN_TTL).unwrap();
        let claims = TokenVerifier::with_api_key("devkey", "secret")
            .verify(&token)
            .unwrap();
        assert!(claims.video.agent);
        assert_eq!(claims.iss, "devkey");
        let lifetime = claims.exp.saturating_sub(claims.nbf);
        assert!(lifetime <= 600, "token lives {lifetime}s");
        assert!(lifetime >= 60, "token lives {lifetime}s");
    }

    #[test]
    fn a_token_signed_with_another_secret_does_not_verify() {
        let token = Credentials::new("devkey", "other")
            .worker_token(WORKER_TOKEN_TTL)
            .unwrap();
        assert!(
            TokenVerifier::with_api_key("devkey", "secret")
                .verify(&token)
                .is_err()
        );
    }

    #[test]
    fn room_tokens_join_one_room_as_one_identity() {
        let creds = Credentials::new("devkey", "secret");
        let token = creds
            .room_token("lobby", "agent-LJ_1", ROOM_TOKEN_TTL)
            .unwrap();
        let claims = TokenVerifier::with_api_key("devkey", "secret")
            .verify(&token)
            .unwrap();
        assert!(claims.video.room_join);
        assert_eq!(claims.video.room, "lobby");
        assert_eq!(claims.sub, "agent-LJ_1");
        assert_eq!(claims.kind, "agent");
        assert!(
            creds.room_token("", "x", ROOM_TOKEN_TTL).is_err(),
            "a room is required"
        );
    }

    #[test]
    fn empty_keys_are_refused() {
        assert!(matches!(
            Credentials::new("", "s").worker_token(WORKER_TOKEN_TTL),
            Err(AuthError::MissingKeys)
        ));
        assert!(matches!(
            Credentials::new("k", "").worker_token(WORKER_TOKEN_TTL),
            Err(AuthError::MissingKeys)
        ));
    }

    #[test]
    fn the_secret_never_prints() {
        let creds = Credentials::new("devkey", "hunter2-very-secret");
        let shown = format!("{creds:?} {} {:?}", creds.api_secret, creds.api_secret);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("devkey"));
    }
}
