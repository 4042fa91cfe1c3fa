//! Revocation at the development authorization server: `POST /revoke`
//! (OAuth 2.0 token revocation, RFC 7009) and the store behind it and
//! behind [`super::DevSts::revoke_subject`].
//!
//! `/revoke` takes the client authentication of `/token`; any registered
//! client may revoke any token (as any may mint one: development only; RFC
//! 7009 §2.1 would refuse a token issued to another client). The answer is
//! `200` with an empty body for every token, invalid or unknown ones too
//! (§2.2). The server keeps only the SHA-256 of a revoked token. A revoked
//! token of this server is refused afterwards as a subject or actor token
//! (`invalid_grant`) until it expires; other tokens are only recorded (for
//! tests to see), and make room first when the store is full.
//!
//! A revoked subject (`sub`) stays revoked for every token issued (`iat`)
//! at or before the revocation, in whole seconds: a token minted in that
//! same second is refused too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use http::Request;
use hyper::body::Incoming;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::clients::AssertionContext;
use super::endpoint::{read_form, OAuthError};
use super::{unix_now, State};

/// Most revoked tokens remembered at once.
pub const MAX_REVOKED_TOKENS: usize = 100_000;
/// Most revoked subjects remembered at once (the oldest revocation goes).
pub const MAX_REVOKED_SUBJECTS: usize = 100_000;
/// Longest `token_type_hint` accepted, in characters.
const MAX_HINT_CHARS: usize = 128;

/// One token revoked at `/revoke`, as [`super::DevSts::revocations`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    /// The client that revoked it.
    pub client_id: String,
    /// SHA-256 of the token as presented, lowercase hex.
    pub token_sha256_hex: String,
    /// `token_type_hint` as given.
    pub token_type_hint: Option<String>,
}

struct Entry {
    record: RevocationRecord,
    /// `exp` of a live token of this server (refused until then); `None`
    /// for any other token (recorded only).
    enforce_until: Option<u64>,
}

/// The revoked tokens and subjects.
#[derive(Default)]
pub(crate) struct Revocations {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Token digests, oldest first.
    order: VecDeque<[u8; 32]>,
    tokens: HashMap<[u8; 32], Entry>,
    /// `sub` → revoked at (unix seconds).
    subjects: HashMap<String, u64>,
}

/// The store cannot take another token that must be enforced.
#[derive(Debug)]
pub(crate) struct Full;

impl Revocations {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a revoked token (once: a second revocation changes nothing).
    /// When full: forgets expired tokens of this server, then the oldest
    /// token that is only recorded; [`Full`] when all are still enforced.
    fn record(
        &self,
        digest: [u8; 32],
        record: RevocationRecord,
        enforce_until: Option<u64>,
        now: u64,
    ) -> Result<(), Full> {
        let mut inner = self.lock();
        if inner.tokens.contains_key(&digest) {
            return Ok(());
        }
        if inner.tokens.len() >= MAX_REVOKED_TOKENS {
            inner.tokens.retain(|_, e| e.enforce_until.map_or(true, |exp| exp > now));
            if inner.tokens.len() >= MAX_REVOKED_TOKENS {
                let Inner { order, tokens, .. } = &mut *inner;
                let oldest = order.iter().find(|d| tokens.get(*d).is_some_and(|e| e.enforce_until.is_none()));
                let oldest = oldest.copied().ok_or(Full)?;
                tokens.remove(&oldest);
            }
            let Inner { order, tokens, .. } = &mut *inner;
            order.retain(|d| tokens.contains_key(d));
        }
        inner.order.push_back(digest);
        inner.tokens.insert(digest, Entry { record, enforce_until });
        Ok(())
    }

    /// Whether `token` was revoked at `/revoke`.
    pub fn token_revoked(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.lock().tokens.contains_key(&digest)
    }

    /// Revokes every token of `sub` issued at or before `at`.
    pub fn revoke_subject(&self, sub: &str, at: u64) {
        let mut inner = self.lock();
        if !inner.subjects.contains_key(sub) && inner.subjects.len() >= MAX_REVOKED_SUBJECTS {
            let oldest = inner.subjects.iter().min_by_key(|(_, t)| **t).map(|(s, _)| s.clone());
            if let Some(oldest) = oldest {
                tracing::warn!("dev-sts: {MAX_REVOKED_SUBJECTS} revoked subjects; forgetting the oldest revocation");
                inner.subjects.remove(&oldest);
            }
        }
        let when = inner.subjects.entry(sub.to_owned()).or_insert(at);
        *when = (*when).max(at);
    }

    /// When `sub` was last revoked, if it was.
    pub fn subject_revoked_at(&self, sub: &str) -> Option<u64> {
        self.lock().subjects.get(sub).copied()
    }

    /// The revoked tokens, oldest first.
    pub fn records(&self) -> Vec<RevocationRecord> {
        let inner = self.lock();
        inner.order.iter().filter_map(|d| inner.tokens.get(d)).map(|e| e.record.clone()).collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl State {
    /// `POST /revoke`: authenticate the client (as at `/token`), then
    /// record the token, whatever it is.
    pub(super) async fn revoke(&self, req: Request<Incoming>) -> Result<(), OAuthError> {
        let form = read_form(req).await?;
        let now = unix_now();
        // An assertion may name this endpoint, the token endpoint or the issuer.
        let audiences = [self.revocation_endpoint.as_str(), self.token_endpoint.as_str(), self.issuer.as_str()];
        let ctx = AssertionContext { audiences: &audiences, now };
        let client = self.clients.authenticate(form.authorization.as_deref(), &form.params, &ctx)?;
        let token = form.params.one("token")?.ok_or_else(|| OAuthError::InvalidRequest("token is required".into()))?;
        let hint = form.params.one("token_type_hint")?;
        if hint.is_some_and(|h| h.chars().count() > MAX_HINT_CHARS || h.chars().any(char::is_control)) {
            return Err(OAuthError::InvalidRequest(format!(
                "token_type_hint must be at most {MAX_HINT_CHARS} characters without control characters"
            )));
        }
        let own = self.key.verify_own(token, &self.issuer, now);
        let enforce_until = own.as_ref().and_then(|c| c.get("exp")).and_then(Value::as_u64);
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let token_sha256_hex = hex(&digest);
        let record = RevocationRecord {
            client_id: client.id.clone(),
            token_sha256_hex: token_sha256_hex.clone(),
            token_type_hint: hint.map(str::to_owned),
        };
        self.revocations.record(digest, record, enforce_until, now).map_err(|Full| OAuthError::Unavailable)?;
        let sub = own.as_ref().and_then(|c| c.get("sub")).and_then(Value::as_str).unwrap_or("-");
        tracing::info!(
            client_id = %client.id,
            token_sha256 = %token_sha256_hex,
            token_type_hint = hint.unwrap_or("-"),
            issued_here = enforce_until.is_some(),
            sub,
            "dev-sts: token revoked"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8) -> ([u8; 32], RevocationRecord) {
        let d = [n; 32];
        (d, RevocationRecord { client_id: "c".into(), token_sha256_hex: hex(&d), token_type_hint: None })
    }

    #[test]
    fn tokens_are_recorded_once_and_found_by_digest() {
        let r = Revocations::default();
        let token = "a.b.c";
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let record = RevocationRecord {
            client_id: "gw".into(),
            token_sha256_hex: hex(&digest),
            token_type_hint: Some("access_token".into()),
        };
        assert!(!r.token_revoked(token));
        r.record(digest, record.clone(), Some(100), 10).unwrap();
        r.record(digest, RevocationRecord { client_id: "other".into(), ..record.clone() }, None, 11).unwrap();
        assert!(r.token_revoked(token));
        assert_eq!(r.records(), [record]);
        assert_eq!(hex(&digest).len(), 64);
    }

    #[test]
    fn a_full_store_forgets_what_no_longer_matters_first() {
        let r = Revocations::default();
        {
            let mut inner = r.lock();
            for i in 0..MAX_REVOKED_TOKENS {
                let mut d = [0u8; 32];
                d[..8].copy_from_slice(&(i as u64).to_be_bytes());
                d[31] = 1;
                // The first two are enforced until 50, the third only recorded.
                let enforce_until = if i == 2 { None } else { Some(if i < 2 { 50 } else { 1_000 }) };
                let (_, record) = rec(0);
                inner.order.push_back(d);
                inner.tokens.insert(d, Entry { record, enforce_until });
            }
        }
        // Before 50 the only candidate is the recorded-only third.
        let (d1, r1) = rec(1);
        r.record(d1, r1, Some(1_000), 10).unwrap();
        assert_eq!(r.lock().tokens.len(), MAX_REVOKED_TOKENS);
        let (d2, r2) = rec(2);
        assert!(r.record(d2, r2.clone(), Some(1_000), 10).is_err(), "every entry is still enforced");
        // At 60 the two expired ones go.
        r.record(d2, r2, Some(1_000), 60).unwrap();
        assert_eq!(r.lock().tokens.len(), MAX_REVOKED_TOKENS - 1);
        assert_eq!(r.lock().order.len(), MAX_REVOKED_TOKENS - 1);
    }

    #[test]
    fn subjects_keep_their_latest_revocation() {
        let r = Revocations::default();
        assert_eq!(r.subject_revoked_at("alice"), None);
        r.revoke_subject("alice", 20);
        r.revoke_subject("alice", 10);
        assert_eq!(r.subject_revoked_at("alice"), Some(20));
        r.revoke_subject("alice", 30);
        assert_eq!(r.subject_revoked_at("alice"), Some(30));
    }
}
