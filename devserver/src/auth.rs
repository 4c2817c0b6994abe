//! Keys and tokens: parsing `key:secret` lists, checking a worker's token at
//! the upgrade, and minting the room token sent with an assignment.
//!
//! Nothing here logs or formats a token or a secret.

use std::collections::HashMap;
use std::time::Duration;

use livekit_api::access_token::{
    AccessToken, AccessTokenError, Claims, TokenVerifier, VideoGrants,
};
use livekit_protocol::ParticipantPermission;
use subtle::ConstantTimeEq;

/// A participant attribute the server adds to every agent's room token.
pub const AGENT_NAME_ATTRIBUTE: &str = "lk.agent_name";
/// The participant kind in an agent's room token.
const AGENT_KIND: &str = "agent";

/// Why a `key:secret` list did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// An entry has no `:` between key and secret.
    #[error("entry {index} has no ':' between key and secret")]
    MissingColon {
        /// 0-based position of the entry.
        index: usize,
    },
    /// An entry has an empty key or an empty secret.
    #[error("entry {index} has an empty key or secret")]
    Empty {
        /// 0-based position of the entry.
        index: usize,
    },
    /// The list holds no entry at all.
    #[error("no keys given")]
    NoKeys,
}

/// Parses API keys as `key:secret,key2:secret2`; also accepts livekit-server's
/// `LIVEKIT_KEYS` form, `key: secret` with entries on separate lines.
pub fn parse_keys(input: &str) -> Result<Vec<(String, String)>, KeyParseError> {
    let mut keys = Vec::new();
    for (index, entry) in input
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let (key, secret) = entry
            .split_once(':')
            .ok_or(KeyParseError::MissingColon { index })?;
        let (key, secret) = (key.trim(), secret.trim());
        if key.is_empty() || secret.is_empty() {
            return Err(KeyParseError::Empty { index });
        }
        keys.push((key.to_owned(), secret.to_owned()));
    }
    if keys.is_empty() {
        return Err(KeyParseError::NoKeys);
    }
    Ok(keys)
}

/// Why a worker's upgrade was refused (answered with HTTP 401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header and no `access_token` query.
    #[error("no access token")]
    Missing,
    /// The token is not a JWT we can read.
    #[error("malformed access token")]
    Malformed,
    /// The token's issuer is not one of the server's API keys.
    #[error("unknown API key")]
    UnknownKey,
    /// Signature, expiry, not-before or issuer check failed.
    #[error("invalid access token: {0}")]
    Invalid(AccessTokenError),
    /// The token is valid but lacks `video.agent = true`.
    #[error("token has no agent grant")]
    NoAgentGrant,
    /// The token is valid but is not an admin token for every room
    /// (`roomAdmin`, `roomCreate` and `roomList`, no `room`): what the
    /// dashboard asks, as it acts on every room.
    #[error("token is not an admin token for every room")]
    NotAdmin,
}

/// Takes the token from an `Authorization` header value (`Bearer …`) or,
/// failing that, from the `access_token` query value.
pub fn extract_token<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<&'a str> {
    let from_header = authorization.and_then(|h| {
        let h = h.trim();
        let (scheme, rest) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    from_header.or(query).filter(|t| !t.is_empty())
}

/// Checks a worker's token against `keys` and returns the API key it was
/// signed with. The issuer is read unverified only to pick the secret; the
/// token is then verified with it (HS256, `exp`, `nbf` with 60 s leeway, `iss`).
pub fn authorize(token: &str, keys: &[(String, String)]) -> Result<String, AuthError> {
    let (key, claims) = verify(token, keys)?;
    if !claims.video.agent {
        return Err(AuthError::NoAgentGrant);
    }
    Ok(key)
}

/// Verifies a token against `keys` (any grants): the API key it was signed
/// with and its claims.
pub fn verify(token: &str, keys: &[(String, String)]) -> Result<(String, Claims), AuthError> {
    let unverified = Claims::from_unverified(token).map_err(|_| AuthError::Malformed)?;
    let (key, secret) = keys
        .iter()
        .find(|(k, _)| *k == unverified.iss)
        .ok_or(AuthError::UnknownKey)?;
    let claims = TokenVerifier::with_api_key(key, secret)
        .verify(token)
        .map_err(AuthError::Invalid)?;
    Ok((key.clone(), claims))
}

/// Identity in the dashboard tokens the server mints.
const DASHBOARD_IDENTITY: &str = "lkagent-dashboard";

/// Mints a token that opens the dashboard: admin of every room (the grants
/// [`authorize_dashboard`] asks), valid for `ttl`.
pub fn mint_dashboard_token(
    api_key: &str,
    secret: &str,
    ttl: Duration,
) -> Result<String, AccessTokenError> {
    AccessToken::with_api_key(api_key, secret)
        .with_grants(VideoGrants {
            room_admin: true,
            room_create: true,
            room_list: true,
            ..Default::default()
        })
        .with_identity(DASHBOARD_IDENTITY)
        .with_ttl(ttl)
        .to_jwt()
}

/// Checks a dashboard token (minted by [`mint_dashboard_token`], or any
/// token of the server's keys with the same grants): the API key it was
/// signed with and its claims.
pub fn authorize_dashboard(
    token: &str,
    keys: &[(String, String)],
) -> Result<(String, Claims), AuthError> {
    let (key, claims) = verify(token, keys)?;
    let v = &claims.video;
    if !(v.room_admin && v.room_create && v.room_list && v.room.is_empty()) {
        return Err(AuthError::NotAdmin);
    }
    Ok((key, claims))
}

/// Whether `key` is one of `keys` and `secret` is its secret. The secret is
/// compared in time independent of where it differs.
pub fn check_login(key: &str, secret: &str, keys: &[(String, String)]) -> bool {
    keys.iter()
        .find(|(k, _)| k == key)
        .is_some_and(|(_, s)| bool::from(s.as_bytes().ct_eq(secret.as_bytes())))
}

/// What goes into an agent's room token.
pub struct RoomTokenSpec<'a> {
    /// The room to join.
    pub room: &'a str,
    /// The agent participant's identity (must not be empty).
    pub identity: &'a str,
    /// The display name.
    pub name: &'a str,
    /// The participant metadata.
    pub metadata: &'a str,
    /// Attributes the worker asked for; `lk.agent_name` is added.
    pub attributes: &'a HashMap<String, String>,
    /// The registering worker's `agent_name`.
    pub agent_name: &'a str,
    /// The worker's `allowed_permissions`, or the server's defaults.
    pub permissions: Option<&'a ParticipantPermission>,
    /// Validity (the server uses one hour).
    pub ttl: Duration,
}

/// Mints a room token as the server's `BuildAgentToken` does: kind agent,
/// `roomJoin` for that room, `agent: true`, the worker's permissions (publish,
/// subscribe, publish data, update own metadata default to true).
pub fn mint_room_token(
    api_key: &str,
    secret: &str,
    spec: &RoomTokenSpec<'_>,
) -> Result<String, AccessTokenError> {
    let default_permissions = ParticipantPermission {
        can_subscribe: true,
        can_publish: true,
        can_publish_data: true,
        can_update_metadata: true,
        ..Default::default()
    };
    let p = spec.permissions.unwrap_or(&default_permissions);
    let grants = VideoGrants {
        room_join: true,
        agent: true,
        room: spec.room.to_owned(),
        can_subscribe: Some(p.can_subscribe),
        can_publish: Some(p.can_publish),
        can_publish_data: Some(p.can_publish_data),
        can_update_own_metadata: Some(p.can_update_metadata),
        hidden: p.hidden,
        ..Default::default()
    };
    let mut attributes = spec.attributes.clone();
    attributes.insert(AGENT_NAME_ATTRIBUTE.to_owned(), spec.agent_name.to_owned());
    AccessToken::with_api_key(api_key, secret)
        .with_grants(grants)
        .with_identity(spec.identity)
        .with_name(spec.name)
        .with_kind(AGENT_KIND)
        .with_metadata(spec.metadata)
        .with_attributes(attributes)
        .with_ttl(spec.ttl)
        .to_jwt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<(String, String)> {
        vec![
            ("devkey".into(), "secret".into()),
            ("other".into(), "s2".into()),
        ]
    }

    fn agent_token(key: &str, secret: &str, agent: bool) -> String {
        AccessToken::with_api_key(key, secret)
            .with_grants(VideoGrants {
                agent,
                ..Default::default()
            })
            .to_jwt()
            .unwrap()
    }

    #[test]
    fn parses_comma_and_livekit_forms() {
        let want = keys();
        assert_eq!(parse_keys("devkey:secret,other:s2").unwrap(), want);
        assert_eq!(parse_keys("devkey: secret\nother: s2\n").unwrap(), want);
        assert_eq!(parse_keys(" devkey : secret , ").unwrap(), want[..1]);
        // a secret may itself contain ':'
        assert_eq!(
            parse_keys("k:a:b").unwrap(),
            vec![("k".into(), "a:b".into())]
        );
    }

    #[test]
    fn rejects_bad_key_lists() {
        assert_eq!(parse_keys(""), Err(KeyParseError::NoKeys));
        assert_eq!(
            parse_keys("a:b,nocolon"),
            Err(KeyParseError::MissingColon { index: 1 })
        );
        assert_eq!(
            parse_keys(":secret"),
            Err(KeyParseError::Empty { index: 0 })
        );
        assert_eq!(parse_keys("key:"), Err(KeyParseError::Empty { index: 0 }));
    }

    #[test]
    fn extracts_bearer_then_query() {
        assert_eq!(extract_token(Some("Bearer abc"), Some("q")), Some("abc"));
        assert_eq!(extract_token(Some("bearer  abc "), None), Some("abc"));
        assert_eq!(extract_token(Some("Basic abc"), Some("q")), Some("q"));
        assert_eq!(extract_token(None, Some("")), None);
        assert_eq!(extract_token(None, None), None);
    }

    #[test]
    fn authorizes_by_issuer() {
        assert_eq!(
            authorize(&agent_token("other", "s2", true), &keys()).unwrap(),
            "other"
        );
        assert!(matches!(
            authorize(&agent_token("other", "wrong", true), &keys()),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            authorize(&agent_token("nobody", "s2", true), &keys()),
            Err(AuthError::UnknownKey)
        ));
        assert!(matches!(
            authorize(&agent_token("devkey", "secret", false), &keys()),
            Err(AuthError::NoAgentGrant)
        ));
        assert!(matches!(
            authorize("not-a-jwt", &keys()),
            Err(AuthError::Malformed)
        ));
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let token = agent_token("devkey", "secret", true);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        // flip the signature's first character
        let first = if parts[2].starts_with('A') { "B" } else { "A" };
        parts[2].replace_range(0..1, first);
        assert!(matches!(
            authorize(&parts.join("."), &keys()),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn room_token_names_room_identity_and_agent() {
        let attrs = HashMap::from([("role".to_owned(), "helper".to_owned())]);
        let token = mint_room_token(
            "devkey",
            "secret",
            &RoomTokenSpec {
                room: "room1",
                identity: "agent-AJ_1",
                name: "Agent",
                metadata: "md",
                attributes: &attrs,
                agent_name: "bot",
                permissions: None,
                ttl: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let claims = TokenVerifier::with_api_key("devkey", "secret")
            .verify(&token)
            .unwrap();
        assert_eq!(claims.sub, "agent-AJ_1");
        assert_eq!(claims.kind, "agent");
        assert!(claims.video.room_join && claims.video.agent);
        assert_eq!(claims.video.room, "room1");
        assert_eq!(claims.attributes["lk.agent_name"], "bot");
        assert_eq!(claims.attributes["role"], "helper");
        assert!(claims.exp - claims.nbf >= 3599);
    }

    #[test]
    fn dashboard_tokens_are_admin_tokens_of_a_known_key() {
        let token = mint_dashboard_token("other", "s2", Duration::from_secs(60)).unwrap();
        let (key, claims) = authorize_dashboard(&token, &keys()).unwrap();
        assert_eq!(key, "other");
        assert_eq!(claims.sub, DASHBOARD_IDENTITY);
        let forged = mint_dashboard_token("other", "wrong", Duration::from_secs(60)).unwrap();
        assert!(matches!(
            authorize_dashboard(&forged, &keys()),
            Err(AuthError::Invalid(_))
        ));
        let unknown = mint_dashboard_token("nobody", "s2", Duration::from_secs(60)).unwrap();
        assert!(matches!(
            authorize_dashboard(&unknown, &keys()),
            Err(AuthError::UnknownKey)
        ));
    }

    #[test]
    fn a_worker_or_one_room_token_does_not_open_the_dashboard() {
        let worker = agent_token("devkey", "secret", true);
        assert!(matches!(
            authorize_dashboard(&worker, &keys()),
            Err(AuthError::NotAdmin)
        ));
        let one_room = AccessToken::with_api_key("devkey", "secret")
            .with_grants(VideoGrants {
                room_admin: true,
                room_create: true,
                room_list: true,
                room: "r1".into(),
                ..Default::default()
            })
            .to_jwt()
            .unwrap();
        assert!(matches!(
            authorize_dashboard(&one_room, &keys()),
            Err(AuthError::NotAdmin)
        ));
    }

    #[test]
    fn login_needs_the_key_and_its_own_secret() {
        assert!(check_login("devkey", "secret", &keys()));
        assert!(check_login("other", "s2", &keys()));
        assert!(!check_login("devkey", "s2", &keys()));
        assert!(!check_login("devkey", "secre", &keys()));
        assert!(!check_login("devkey", "", &keys()));
        assert!(!check_login("nobody", "secret", &keys()));
    }
}
