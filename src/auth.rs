//! Credentials and the tokens minted from them.
//!
//! The worker holds the API key and secret, and mints a fresh, short-lived
//! token for every connection attempt rather than one long-lived token: a token
//! that leaks from a proxy log is worth minutes, not hours. The secret lives in
//! [`ApiSecret`], whose `Debug` and `Display` never print it, so no `{:?}` of
//! an options struct or an error can leak it into a log.
//!
//! Where the secret comes from is a [`SecretSource`]: a value given once, a
//! file read again at every use (a Kubernetes secret mounted as a file is
//! rotated in place, and the next connection signs with the new one, no
//! restart needed), or a closure of the application's own (a vault client).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
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

/// A closure that answers the current API secret.
pub type SecretProvider = Arc<dyn Fn() -> Result<ApiSecret, String> + Send + Sync>;

/// Where the API secret comes from, asked again for every token.
#[derive(Clone)]
pub enum SecretSource {
    /// A secret given once.
    Value(ApiSecret),
    /// A file holding the secret (surrounding whitespace is ignored), read at
    /// every use: rotate the file and the next token is signed with the new
    /// secret.
    File(PathBuf),
    /// The application's own source, called at every use.
    Provider(SecretProvider),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Value(secret) => f.debug_tuple("Value").field(secret).finish(),
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
            SecretSource::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

impl SecretSource {
    /// The secret now. Reads the file or calls the provider: call it when a
    /// token is to be signed, off any thread that must stay responsive.
    pub fn current(&self) -> Result<ApiSecret, AuthError> {
        let secret = match self {
            SecretSource::Value(secret) => secret.clone(),
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    AuthError::Secret(format!("cannot read {}: {e}", path.display()))
                })?;
                ApiSecret::new(text.trim())
            }
            SecretSource::Provider(provider) => provider().map_err(AuthError::Secret)?,
        };
        if secret.is_empty() {
            return Err(AuthError::MissingKeys);
        }
        Ok(secret)
    }

    /// True for a secret given once that is empty: the only source known to
    /// be unusable before it is asked.
    pub fn is_known_empty(&self) -> bool {
        matches!(self, SecretSource::Value(secret) if secret.is_empty())
    }
}

/// An API key and where its secret comes from.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The API key: public, it names the secret and becomes the token's `iss`.
    pub api_key: String,
    /// Where the API secret that signs tokens comes from.
    pub api_secret: SecretSource,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key or the secret is empty.
    #[error("the API key and secret must both be set")]
    MissingKeys,
    /// The secret could not be read from its source (the message never
    /// contains the secret).
    #[error("cannot get the API secret: {0}")]
    Secret(String),
    /// Signing failed (the message never contains the secret).
    #[error("could not sign the token: {0}")]
    Sign(String),
}

impl Credentials {
    /// Pairs a key with its secret.
    pub fn new(api_key: impl Into<String>, api_secret: impl Into<String>) -> Self {
        Self::with_source(api_key, SecretSource::Value(ApiSecret::new(api_secret)))
    }

    /// Pairs a key with a source of its secret, asked at every token.
    pub fn with_source(api_key: impl Into<String>, source: SecretSource) -> Self {
        Self {
            api_key: api_key.into(),
            api_secret: source,
        }
    }

    /// The key and the current secret, or why there are none.
    fn keys(&self) -> Result<ApiSecret, AuthError> {
        if self.api_key.is_empty() {
            return Err(AuthError::MissingKeys);
        }
        self.api_secret.current()
    }

    /// Mints the token a worker presents when it connects: HS256, `iss` = the
    /// key, `video.agent = true`, valid for `ttl`. Asks the secret's source.
    pub fn worker_token(&self, ttl: Duration) -> Result<String, AuthError> {
        let secret = self.keys()?;
        AccessToken::with_api_key(&self.api_key, secret.expose())
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
    /// Asks the secret's source.
    pub fn room_token(
        &self,
        room: &str,
        identity: &str,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        let secret = self.keys()?;
        AccessToken::with_api_key(&self.api_key, secret.expose())
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
        let secret = creds.api_secret.current().unwrap();
        let shown = format!("{creds:?} {secret} {secret:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("devkey"));
        let provider = Credentials::with_source(
            "devkey",
            SecretSource::Provider(Arc::new(|| Ok(ApiSecret::new("hunter2")))),
        );
        assert!(!format!("{provider:?}").contains("hunter2"));
    }

    #[test]
    fn a_secret_file_is_read_at_every_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "first\n").unwrap();
        let creds = Credentials::with_source("devkey", SecretSource::File(path.clone()));
        let verify = |token: &str, secret: &str| {
            TokenVerifier::with_api_key("devkey", secret)
                .verify(token)
                .is_ok()
        };
        let token = creds.worker_token(WORKER_TOKEN_TTL).unwrap();
        assert!(verify(&token, "first"), "surrounding whitespace is ignored");
        std::fs::write(&path, "second").unwrap();
        let token = creds.worker_token(WORKER_TOKEN_TTL).unwrap();
        assert!(verify(&token, "second") && !verify(&token, "first"));
        std::fs::remove_file(&path).unwrap();
        let err = creds.worker_token(WORKER_TOKEN_TTL).unwrap_err();
        assert!(matches!(err, AuthError::Secret(_)), "{err}");
        assert!(err.to_string().contains("cannot read"), "{err}");
        std::fs::write(&path, "  ").unwrap();
        assert!(matches!(
            creds.worker_token(WORKER_TOKEN_TTL),
            Err(AuthError::MissingKeys)
        ));
    }

    #[test]
    fn a_provider_is_asked_at_every_token() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let creds = Credentials::with_source(
            "devkey",
            SecretSource::Provider(Arc::new(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(ApiSecret::new("secret"))
            })),
        );
        creds.worker_token(WORKER_TOKEN_TTL).unwrap();
        creds.room_token("r", "a", ROOM_TOKEN_TTL).unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        let failing = Credentials::with_source(
            "devkey",
            SecretSource::Provider(Arc::new(|| Err("vault sealed".into()))),
        );
        let err = failing.worker_token(WORKER_TOKEN_TTL).unwrap_err();
        assert!(err.to_string().contains("vault sealed"), "{err}");
    }
}
