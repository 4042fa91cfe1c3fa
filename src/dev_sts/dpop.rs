//! DPoP (RFC 9449) at the development authorization server's token
//! endpoint. A token request may carry one `DPoP` proof: it is checked with
//! [`crate::dpop::verify`] (`htm` POST, `htu` this endpoint as the client
//! addressed it, no `ath`, `iat` at most 60 s old and 5 s ahead, the
//! algorithms of [`SIGNING_ALGS`]) and remembered in a bounded replay
//! cache; the token issued is then bound to the proof's key
//! (`cnf: {jkt}`, RFC 9449 §6.1) and answered as `token_type: DPoP`.
//!
//! Nonces (RFC 9449 §8) are off unless [`super::DevSts::set_dpop_nonce`]
//! (`tokex dev-sts --dpop-nonce`) turns them on: a proof without the current
//! nonce is then answered `400 use_dpop_nonce` with a `DPoP-Nonce` header,
//! and every answer to a request with a proof carries the current nonce.
//! The nonce is random and changes every [`NONCE_LIFETIME`]; a client that
//! still sends the previous one is asked again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Uri};
use jsonwebtoken::Algorithm;
use ring::rand::{SecureRandom, SystemRandom};

use super::endpoint::OAuthError;
use crate::dpop::{self, Expect, ProofError, ReplayCache};

/// Proof algorithms accepted, as advertised in
/// `dpop_signing_alg_values_supported`.
pub const SIGNING_ALGS: [Algorithm; 5] =
    [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256, Algorithm::PS256];
/// [`SIGNING_ALGS`] by their JOSE names.
pub(crate) fn signing_alg_names() -> Vec<String> {
    SIGNING_ALGS.iter().map(|a| format!("{a:?}")).collect()
}
/// How old a proof's `iat` may be (also how long its `jti` is remembered).
pub const PROOF_MAX_AGE: Duration = Duration::from_secs(60);
/// How far ahead of this server's clock a proof's `iat` may be.
pub const PROOF_LEEWAY: Duration = Duration::from_secs(5);
/// Proofs remembered at most; beyond, new proofs are refused (fail closed).
pub const REPLAY_CACHE_ENTRIES: usize = 100_000;
/// How long one nonce is demanded before the next replaces it.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// A token request's `DPoP` header, taken before its body is read.
pub(crate) struct Presented {
    proof: String,
    /// `http://<Host><path>`: the endpoint as the client addressed it.
    htu: String,
}

/// The request's proof: `None` without a `DPoP` header; an error for
/// several, one that is not text, or no usable `Host`.
pub(crate) fn presented(headers: &HeaderMap, uri: &Uri) -> Result<Option<Presented>, ProofError> {
    let mut values = headers.get_all(dpop::HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ProofError::Count);
    }
    let proof = value.to_str().map_err(|_| ProofError::Malformed)?.trim().to_owned();
    // HTTP/1.1 names the authority in `Host`, HTTP/2 in the URI.
    let host = match headers.get(HOST) {
        Some(h) => h.to_str().ok().and_then(|h| h.parse::<Authority>().ok()),
        None => uri.authority().cloned(),
    };
    // No user info: `htu` is scheme, host, port and path.
    let host = host.filter(|a| !a.as_str().contains('@')).ok_or(ProofError::Htu)?;
    Ok(Some(Presented { proof, htu: format!("http://{host}{}", uri.path()) }))
}

/// DPoP state of a running server: the replay cache and the nonce.
pub(crate) struct DpopState {
    replay: ReplayCache,
    demand_nonce: AtomicBool,
    /// The nonce demanded now, and when it was made.
    nonce: Mutex<Option<(String, Instant)>>,
    /// `use_dpop_nonce` answers so far.
    nonce_challenges: AtomicU64,
    rng: SystemRandom,
}

impl Default for DpopState {
    fn default() -> Self {
        DpopState {
            replay: ReplayCache::new(REPLAY_CACHE_ENTRIES),
            demand_nonce: AtomicBool::new(false),
            nonce: Mutex::new(None),
            nonce_challenges: AtomicU64::new(0),
            rng: SystemRandom::new(),
        }
    }
}

impl DpopState {
    pub fn set_demand_nonce(&self, on: bool) {
        self.demand_nonce.store(on, Ordering::Relaxed);
    }

    pub fn nonce_challenges(&self) -> u64 {
        self.nonce_challenges.load(Ordering::Relaxed)
    }

    /// The nonce proofs must carry now, when nonces are demanded; a new
    /// one once the current one is [`NONCE_LIFETIME`] old.
    pub fn current_nonce(&self) -> Option<String> {
        if !self.demand_nonce.load(Ordering::Relaxed) {
            return None;
        }
        let mut nonce = self.nonce.lock().unwrap_or_else(|p| p.into_inner());
        match &*nonce {
            Some((n, made)) if made.elapsed() < NONCE_LIFETIME => Some(n.clone()),
            _ => {
                let mut bytes = [0u8; 16];
                if self.rng.fill(&mut bytes).is_err() {
                    // Never seen on a working system; a dev server goes on.
                    bytes = fastrand::u128(..).to_le_bytes();
                }
                let fresh = dpop::b64(&bytes);
                *nonce = Some((fresh.clone(), Instant::now()));
                Some(fresh)
            }
        }
    }

    /// The answer's `DPoP-Nonce` value, when nonces are demanded.
    pub fn nonce_header(&self) -> Option<HeaderValue> {
        self.current_nonce().and_then(|n| HeaderValue::try_from(n).ok())
    }

    /// Checks a token request's proof and records it as used: the
    /// thumbprint of its key, to bind the new token to. `htu` may also be
    /// the advertised `token_endpoint` (a client that read the metadata,
    /// behind a proxy that changed scheme or host).
    pub fn check(&self, p: &Presented, token_endpoint: &str) -> Result<String, OAuthError> {
        let nonce = self.current_nonce();
        let want = |htu: &str| -> Result<dpop::Verified, ProofError> {
            let expect = Expect {
                algorithms: &SIGNING_ALGS,
                htm: "POST",
                htu,
                origins: &[],
                token: None,
                nonce: nonce.as_deref(),
                max_age: PROOF_MAX_AGE,
                leeway: PROOF_LEEWAY,
            };
            dpop::verify(&p.proof, &expect)
        };
        let verified = match want(&p.htu) {
            Err(ProofError::Htu) if p.htu != token_endpoint => want(token_endpoint),
            other => other,
        };
        let verified = match verified {
            Ok(v) => v,
            Err(ProofError::Nonce) => {
                self.nonce_challenges.fetch_add(1, Ordering::Relaxed);
                return Err(OAuthError::UseDpopNonce);
            }
            Err(e) => return Err(OAuthError::InvalidDpopProof(e)),
        };
        self.replay.first_use(&verified, PROOF_MAX_AGE).map_err(OAuthError::InvalidDpopProof)?;
        Ok(verified.jkt)
    }
}

/// A key thumbprint as `/mint` takes it: RFC 7638 over SHA-256, base64url
/// without padding (43 characters).
pub(crate) fn is_thumbprint(s: &str) -> bool {
    s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof_of(headers: &[(&str, &str)], uri: &str) -> Result<Option<Presented>, ProofError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        presented(&map, &uri.parse().unwrap())
    }

    #[test]
    fn the_proof_header_and_the_addressed_url() {
        assert!(proof_of(&[("host", "127.0.0.1:9400")], "/token").unwrap().is_none());
        let p = proof_of(&[("host", "127.0.0.1:9400"), ("dpop", " a.b.c ")], "/dev/token?x=1").unwrap().unwrap();
        assert_eq!((p.proof.as_str(), p.htu.as_str()), ("a.b.c", "http://127.0.0.1:9400/dev/token"));
        let h2 = proof_of(&[("dpop", "a.b.c")], "http://sts.example:8443/token").unwrap().unwrap();
        assert_eq!(h2.htu, "http://sts.example:8443/token");
        assert_eq!(proof_of(&[("host", "h"), ("dpop", "a"), ("dpop", "b")], "/token").err(), Some(ProofError::Count));
        assert_eq!(proof_of(&[("host", "u@h"), ("dpop", "a")], "/token").err(), Some(ProofError::Htu));
        assert_eq!(proof_of(&[("host", "a b"), ("dpop", "a")], "/token").err(), Some(ProofError::Htu));
        assert_eq!(proof_of(&[("dpop", "a")], "/token").err(), Some(ProofError::Htu), "no host at all");
    }

    #[test]
    fn nonces_are_off_until_asked_for_and_then_stable() {
        let s = DpopState::default();
        assert_eq!(s.current_nonce(), None);
        s.set_demand_nonce(true);
        let n = s.current_nonce().unwrap();
        assert_eq!(n.len(), 22);
        assert_eq!(s.current_nonce().as_deref(), Some(n.as_str()), "the same nonce until it is old");
        assert!(s.nonce_header().is_some());
        s.set_demand_nonce(false);
        assert!(s.nonce_header().is_none());
    }

    #[test]
    fn thumbprints() {
        assert!(is_thumbprint("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"));
        assert!(!is_thumbprint("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9X"));
        assert!(!is_thumbprint("NzbLsXh8uDCcd+6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"));
    }
}
