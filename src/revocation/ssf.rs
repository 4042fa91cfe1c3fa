//! Security Event Tokens (RFC 8417) from one Shared Signals transmitter:
//! verified (explicit `typ: secevent+jwt`, `alg` from the allow-list, key
//! from the issuer's JWKS by `kid` — an unknown `kid` refetches at most once
//! per cooldown —, signature, `iss`, `aud`, `iat` no older than `max_age`,
//! `jti` never seen before), then read: which subjects the CAEP / RISC
//! events that end sessions name (RFC 9493 subject identifiers). Event
//! types tokex does not act on are accepted and ignored.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::claims::{self, Claims, Expected};
use crate::auth::jwks::{self, Jwks};
use crate::auth::jwt::parse_header;
use crate::auth::{InboundError, Invalid};
use crate::config::SsfConfig;
use crate::exchange::index::{self, Id};
use crate::metrics::Metrics;

/// The event types that end a subject's sessions, and so its cached tokens.
pub const REVOKING_EVENTS: [&str; 6] = [
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
    "https://schemas.openid.net/secevent/caep/event-type/credential-change",
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
    "https://schemas.openid.net/secevent/risc/event-type/account-purged",
    "https://schemas.openid.net/secevent/risc/event-type/tokens-revoked",
    // RISC's older name for CAEP session-revoked.
    "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked",
];

/// Identifiers read from one `aliases` subject at most (the body's 64 KiB
/// bounds the rest).
const MAX_IDS: usize = 16;
/// `jti`s remembered at least and at most (each for `max_age` plus twice the
/// leeway; room for `max_per_second` from 100 clients that long).
const SEEN: (u64, u64) = (100_000, 10_000_000);

/// Why a SET was refused: an RFC 8935 §2.4 error code and a description
/// (never the token, never a claim value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("{err}: {description}")]
    Refused { err: &'static str, description: String },
    /// The transmitter's keys are not known yet: try again later.
    #[error("the transmitter's JWKS is not available: {0}")]
    Unavailable(String),
}

fn refused(err: &'static str, description: impl Into<String>) -> SetError {
    SetError::Refused { err, description: description.into() }
}

/// What an accepted SET asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The subjects whose entries are purged (hashed `sub` / `email`), and
    /// the event types that named them.
    pub subjects: Vec<Id>,
    pub events: Vec<String>,
    /// Event types accepted and ignored.
    pub ignored: usize,
}

pub struct Receiver {
    cfg: SsfConfig,
    jwks: Arc<Jwks>,
    /// SHA-256 of `jti` of every SET accepted within the window.
    seen: moka::future::Cache<[u8; 32], ()>,
}

/// An accepted SET's `jti`, to forget when what it asked for could not be
/// done (so that the transmitter's retry is not taken for a replay).
pub struct Jti([u8; 32]);

impl Receiver {
    /// Builds the receiver without I/O; [`Receiver::start`] fetches the JWKS
    /// (`servers`: for a JWKS an `issuer:` server publishes).
    pub fn new(
        cfg: &SsfConfig,
        metrics: &Metrics,
        servers: &std::collections::BTreeMap<String, Arc<crate::exchange::client::AsClient>>,
    ) -> Result<Self, String> {
        let uri = crate::auth::fetch::Remote::new(&cfg.jwt.jwks, servers, |c| c.jwks_uri())
            .map_err(|e| format!("revocation.ssf: {e}"))?;
        let http = crate::auth::fetch::client(cfg.jwt.ca_file.as_deref(), cfg.jwt.timeout)
            .map_err(|e| format!("revocation.ssf: {e}"))?;
        let jwks = Jwks::new(uri, http, &cfg.jwt, metrics.jwks_fetches(&jwks::OUTCOMES));
        let window = cfg.max_age + 2 * cfg.jwt.leeway;
        let room = u64::from(cfg.max_per_second).saturating_mul(100).saturating_mul(window.as_secs().max(1));
        let seen = moka::future::Cache::builder().max_capacity(room.clamp(SEEN.0, SEEN.1)).time_to_live(window).build();
        Ok(Receiver { cfg: cfg.clone(), jwks: Arc::new(jwks), seen })
    }

    /// Fetches the transmitter's JWKS now and refreshes it until shutdown.
    pub fn start(&self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        self.jwks.spawn_refresh(shutdown)
    }

    pub fn path(&self) -> &str {
        &self.cfg.path
    }

    pub fn max_per_second(&self) -> u32 {
        self.cfg.max_per_second
    }

    /// Verifies one SET (the request body) and reads its events; its `jti`
    /// is remembered from then on (see [`Receiver::forget`]).
    pub async fn receive(&self, body: &[u8]) -> Result<(Accepted, Jti), SetError> {
        let token =
            std::str::from_utf8(body).map_err(|_| refused("invalid_request", "the body is not a compact JWS"))?;
        let token = token.trim_matches(|c: char| c.is_ascii_whitespace());
        let header = parse_header(token).map_err(|e| verification(&e))?;
        if !self.cfg.jwt.algorithms.contains(&header.alg) {
            return Err(refused("invalid_key", "alg is not allowed"));
        }
        let typ = header.typ.as_deref().map(|t| t.to_ascii_lowercase());
        if typ.as_deref().map(|t| t.strip_prefix("application/").unwrap_or(t)) != Some("secevent+jwt") {
            return Err(refused("invalid_request", "typ must be secevent+jwt (RFC 8417 §2.3)"));
        }
        let key = self.jwks.key(header.kid.as_deref(), header.alg).await.map_err(|e| verification(&e))?;
        let (signed, signature) = token.rsplit_once('.').ok_or_else(|| refused("invalid_request", "not a JWS"))?;
        let good = jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &key.decoding, header.alg)
            .map_err(|_| refused("invalid_key", "the signature does not verify"))?;
        if !good {
            return Err(refused("invalid_key", "the signature does not verify"));
        }
        let payload_b64 = signed.split_once('.').map_or("", |(_, p)| p);
        let registered = Claims::parse(payload_b64).map_err(|e| verification(&e.into()))?;
        let want =
            Expected { issuer: &self.cfg.jwt.issuer, audiences: &self.cfg.jwt.audiences, leeway: self.cfg.jwt.leeway };
        let jti =
            registered.check_event(&want, self.cfg.max_age, claims::now()).map_err(|e| verification(&e.into()))?;
        let jti_key: [u8; 32] = Sha256::digest(jti.as_bytes()).into();
        let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| refused("invalid_request", "payload"))?;
        let set: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| refused("invalid_request", "the payload is not an object"))?;
        let accepted = read_events(&set)?;
        // Remembered only once all of it checked out: a forged SET cannot
        // burn a `jti` the transmitter will use.
        if !self.seen.entry(jti_key).or_insert(()).await.is_fresh() {
            return Err(refused("invalid_request", "jti already received: the SET is a replay"));
        }
        Ok((accepted, Jti(jti_key)))
    }

    /// Forgets an accepted SET's `jti`: what it asked for was not done, and
    /// the transmitter may send it again.
    pub async fn forget(&self, jti: Jti) {
        self.seen.invalidate(&jti.0).await;
    }
}

/// A verification failure as an RFC 8935 error.
fn verification(e: &InboundError) -> SetError {
    match e {
        InboundError::Unavailable(why) => SetError::Unavailable(why.clone()),
        InboundError::Invalid(i) => {
            let err = match i {
                Invalid::UnknownKid | Invalid::KeyMismatch | Invalid::BadSignature | Invalid::AlgNotAllowed => {
                    "invalid_key"
                }
                Invalid::WrongIssuer => "invalid_issuer",
                Invalid::WrongAudience => "invalid_audience",
                _ => "invalid_request",
            };
            let what = match i {
                Invalid::Expired => "iat is older than max_age (or exp has passed)",
                Invalid::NotYetValid => "iat or nbf is in the future",
                Invalid::MissingClaim => "iss, aud, iat and jti are required",
                _ => i.reason(),
            };
            refused(err, what)
        }
        other => refused("invalid_request", other.reason()),
    }
}

/// The `events` claim: the subjects of the revoking events. An event's own
/// `subject` (CAEP drafts) wins over the SET's `sub_id` (SSF 1.0), then its `sub`.
fn read_events(set: &Map<String, Value>) -> Result<Accepted, SetError> {
    let Some(Value::Object(events)) = set.get("events") else {
        return Err(refused("invalid_request", "events must be an object (RFC 8417 §2.2)"));
    };
    if events.is_empty() {
        return Err(refused("invalid_request", "events is empty"));
    }
    let mut accepted = Accepted::default();
    for (kind, payload) in events {
        if !REVOKING_EVENTS.contains(&kind.as_str()) {
            accepted.ignored += 1;
            continue;
        }
        let Value::Object(payload) = payload else {
            return Err(refused("invalid_request", "an event's payload must be an object"));
        };
        let subject = payload.get("subject").or_else(|| set.get("sub_id"));
        let ids = match (subject, set.get("sub")) {
            (Some(s), _) => subject_ids(s, 0),
            (None, Some(Value::String(sub))) => index::id_of("sub", Some(sub)).into_iter().collect(),
            (None, _) => return Err(refused("invalid_request", "the event names no subject (sub_id)")),
        };
        if ids.is_empty() {
            return Err(refused(
                "invalid_request",
                "no subject tokex can find: formats iss_sub, email, opaque, aliases and complex (user) are read",
            ));
        }
        accepted.subjects.extend(ids);
        accepted.events.push(kind.clone());
    }
    accepted.subjects.sort_unstable();
    accepted.subjects.dedup();
    Ok(accepted)
}

/// The identifiers an RFC 9493 subject (or an SSF complex subject's
/// `user`) names. `iss_sub` matches by `sub` whatever the issuer: a purge
/// may only remove more.
fn subject_ids(subject: &Value, depth: usize) -> Vec<Id> {
    let Value::Object(s) = subject else { return Vec::new() };
    let text = |k: &str| s.get(k).and_then(Value::as_str);
    match text("format") {
        Some("iss_sub") if text("iss").is_some() => index::id_of("sub", text("sub")).into_iter().collect(),
        Some("email") => index::id_of("email", text("email")).into_iter().collect(),
        Some("opaque") => index::id_of("sub", text("id")).into_iter().collect(),
        Some("aliases") if depth == 0 => match s.get("identifiers") {
            Some(Value::Array(list)) => list.iter().take(MAX_IDS).flat_map(|i| subject_ids(i, depth + 1)).collect(),
            _ => Vec::new(),
        },
        Some("complex") | None if depth == 0 => s.get("user").map(|u| subject_ids(u, depth + 1)).unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

    fn read(set: Value) -> Result<Accepted, SetError> {
        read_events(set.as_object().unwrap())
    }

    #[test]
    fn subjects_in_every_format() {
        let alice = index::id("sub", "alice");
        let iss_sub = json!({"format": "iss_sub", "iss": "https://idp", "sub": "alice"});
        let ok = read(json!({"sub_id": iss_sub, "events": {REVOKED: {"event_timestamp": 1}}})).unwrap();
        assert_eq!(ok.subjects, vec![alice]);
        assert_eq!(ok.events, vec![REVOKED.to_owned()]);
        let email = json!({"format": "email", "email": "Alice@Example.com"});
        let ok = read(json!({"events": {REVOKED: {"subject": email}}})).unwrap();
        assert_eq!(ok.subjects, vec![index::id("email", "alice@example.com")]);
        let opaque = json!({"format": "opaque", "id": "alice"});
        assert_eq!(read(json!({"sub_id": opaque, "events": {REVOKED: {}}})).unwrap().subjects, vec![alice]);
        let aliases =
            json!({"format": "aliases", "identifiers": [opaque, {"format": "phone_number", "phone_number": "+1"}]});
        assert_eq!(read(json!({"sub_id": aliases, "events": {REVOKED: {}}})).unwrap().subjects, vec![alice]);
        let complex = json!({"format": "complex", "user": iss_sub, "session": {"format": "opaque", "id": "s1"}});
        assert_eq!(read(json!({"sub_id": complex, "events": {REVOKED: {}}})).unwrap().subjects, vec![alice]);
        assert_eq!(read(json!({"sub": "alice", "events": {REVOKED: {}}})).unwrap().subjects, vec![alice]);
    }

    #[test]
    fn unknown_events_are_ignored_and_bad_ones_refused() {
        let ok = read(json!({"events": {"https://example.com/other": {}}})).unwrap();
        assert!(ok.subjects.is_empty() && ok.ignored == 1);
        let bad = |v: Value| matches!(read(v), Err(SetError::Refused { err: "invalid_request", .. }));
        assert!(bad(json!({"events": {}})));
        assert!(bad(json!({"events": []})));
        assert!(bad(json!({})));
        assert!(bad(json!({"events": {REVOKED: {}}})), "no subject");
        assert!(bad(json!({"events": {REVOKED: 7}})));
        assert!(bad(json!({"sub_id": {"format": "phone_number", "phone_number": "+1"}, "events": {REVOKED: {}}})));
        assert!(bad(json!({"sub_id": {"format": "iss_sub", "sub": "alice"}, "events": {REVOKED: {}}})), "no iss");
        let nested = json!({"format": "aliases", "identifiers": [{"format": "aliases", "identifiers": [{"format": "opaque", "id": "a"}]}]});
        assert!(bad(json!({"sub_id": nested, "events": {REVOKED: {}}})), "aliases nest once");
    }
}
