//! The issuer's signing keys (RFC 7517 JWK Set), fetched over HTTPS and held
//! by `kid`. Refreshed in the background as `Cache-Control: max-age` says,
//! clamped to `[jwks_refresh_min, jwks_refresh_max]`; a token naming an
//! unknown `kid` triggers at most one refetch per `unknown_kid_cooldown`,
//! shared by every concurrent request, so forged kids cannot make tokex
//! hammer the authorization server.
//!
//! Only asymmetric signature keys are kept (`kty` RSA of 2048+ bits, EC
//! P-256/P-384, OKP Ed25519); `oct` keys, encryption keys and keys whose
//! `alg` does not suit their type are skipped. A key serves a token only when
//! its type (and its `alg`, when it names one) matches the token's `alg`.
//!
//! The key generation counts the changes of the key set in use (a fetch that
//! brings other keys than the ones held, or keys taken over on a reload): a
//! token verified under one generation is verified again under the next.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{ACCEPT, CACHE_CONTROL};
use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::fetch::Remote;
use super::fetch::{read_capped, ReadError};
use super::{InboundError, Invalid};
use crate::config::JwtConfig;
use crate::metrics::Counters;
use crate::readiness::Gate;
use crate::telemetry::error_chain;

/// Largest JWK Set read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys beyond this many in one set are ignored.
const MAX_KEYS: usize = 64;
/// Refresh interval when the answer has no `Cache-Control: max-age` (clamped too).
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Longest pause between retries of a failed fetch (also capped by `jwks_refresh_min`).
const MAX_RETRY: Duration = Duration::from_secs(30);

/// `tokex_jwks_fetches_total` outcomes.
pub const OUTCOMES: [&str; 3] = ["ok", "unreachable", "invalid"];

/// The key types tokex verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    fn suits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::P256 => alg == ES256,
            KeyType::P384 => alg == ES384,
            KeyType::Ed25519 => alg == EdDSA,
        }
    }
}

/// One verification key.
pub struct Key {
    kind: KeyType,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

impl Key {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.suits(alg) && self.alg.map_or(true, |a| a == alg)
    }
}

/// A fetched JWK Set.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Vec<Arc<Key>>>,
    all: Vec<Arc<Key>>,
    /// SHA-256 over what decides verification (each kept key's `kid`,
    /// `kty`, `crv`, `alg` and key material, in order): equal for the same keys.
    fingerprint: [u8; 32],
}

enum Found {
    Key(Arc<Key>),
    /// No key with this `kid` (or, without a `kid`, not exactly one usable key).
    Unknown,
    /// Keys with this `kid` exist, but none of a type that suits the token's `alg`.
    Mismatch,
}

impl KeySet {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Found {
        match kid {
            Some(kid) => match self.by_kid.get(kid) {
                None => Found::Unknown,
                Some(keys) => keys.iter().find(|k| k.accepts(alg)).map_or(Found::Mismatch, |k| Found::Key(k.clone())),
            },
            // No `kid`: only unambiguous when one key suits the algorithm.
            None => {
                let mut usable = self.all.iter().filter(|k| k.accepts(alg));
                match (usable.next(), usable.next()) {
                    (Some(k), None) => Found::Key(k.clone()),
                    _ => Found::Unknown,
                }
            }
        }
    }
}

enum FetchError {
    Unreachable(String),
    Invalid(String),
}

pub struct Jwks {
    uri: Remote,
    http: reqwest::Client,
    /// `ca_file`: part of what makes two sets the same source.
    trust: Option<std::path::PathBuf>,
    /// Budget of one fetch, and of a request waiting for one.
    timeout: Duration,
    refresh_min: Duration,
    refresh_max: Duration,
    cooldown: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// Bumped by every stored fetch; 0 until the first one.
    generation: AtomicU64,
    /// Bumped when the keys in use change (other keys fetched, or adopted);
    /// 0 until the first keys are held.
    key_generation: AtomicU64,
    /// Serialises fetches; holds when an unknown `kid` last caused one.
    fetch_lock: tokio::sync::Mutex<Option<Instant>>,
    /// Opened by the first good fetch.
    gate: Mutex<Option<Gate>>,
    fetches: Counters,
}

impl Jwks {
    /// `cfg` gives the refresh bounds, the unknown-kid cooldown, the trust
    /// and the budget of one fetch.
    pub fn new(uri: Remote, http: reqwest::Client, cfg: &JwtConfig, fetches: Counters) -> Self {
        Jwks {
            uri,
            http,
            trust: cfg.ca_file.clone(),
            timeout: cfg.timeout,
            refresh_min: cfg.jwks_refresh_min,
            refresh_max: cfg.jwks_refresh_max,
            cooldown: cfg.unknown_kid_cooldown,
            keys: RwLock::new(Arc::new(KeySet::default())),
            generation: AtomicU64::new(0),
            key_generation: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(None),
            gate: Mutex::new(None),
            fetches,
        }
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_loaded(&self) -> bool {
        self.generation.load(Ordering::Acquire) > 0
    }

    /// The generation of the keys in use: a result verified under another
    /// one must be verified again. Read it before choosing a key: a change
    /// is counted only once the new keys are in place.
    pub fn key_generation(&self) -> u64 {
        self.key_generation.load(Ordering::Acquire)
    }

    /// Replaces the keys; a set that differs from the one held starts a new
    /// key generation.
    fn store(&self, set: Arc<KeySet>) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let changed = keys.fingerprint != set.fingerprint;
        *keys = set;
        if changed {
            self.key_generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn uri(&self) -> &Remote {
        &self.uri
    }

    /// True when `other` fetches the same set the same way (the URL as it
    /// resolves now, and the trust), so its keys are ours too.
    pub fn same_source(&self, other: &Jwks) -> bool {
        self.uri.resolve().is_some() && self.uri.resolve() == other.uri.resolve() && self.trust == other.trust
    }

    /// Starts with the keys `from` holds (after a reload that keeps the JWKS).
    pub fn adopt_keys(&self, from: &Jwks) {
        if from.is_loaded() {
            self.store(from.snapshot());
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The key for a token's `kid` and `alg`. An unknown `kid` refetches the
    /// set, at most once per cooldown for all callers together; a caller
    /// waits for that (or for a fetch already running) no longer than one
    /// fetch's budget (`timeout`) in all (before the first good fetch too:
    /// then the answer is `Unavailable`, and the background fetch keeps trying).
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<Key>, InboundError> {
        let seen = self.generation.load(Ordering::Acquire);
        match self.snapshot().find(kid, alg) {
            Found::Key(k) => return Ok(k),
            Found::Mismatch => return Err(Invalid::KeyMismatch.into()),
            Found::Unknown => {}
        }
        let refetch = async {
            let mut last = self.fetch_lock.lock().await;
            // A fetch that finished while we waited answers for us too.
            if self.generation.load(Ordering::Acquire) != seen || last.is_some_and(|t| t.elapsed() < self.cooldown) {
                return;
            }
            *last = Some(Instant::now());
            tracing::debug!(uri = %self.uri, "token names an unknown kid: refetching the JWKS");
            let _ = self.fetch_and_store().await;
        };
        if tokio::time::timeout(self.timeout, refetch).await.is_err() {
            tracing::debug!(uri = %self.uri, "JWKS refetch still running after the budget: answering without it");
        }
        match self.snapshot().find(kid, alg) {
            Found::Key(k) => Ok(k),
            Found::Mismatch => Err(Invalid::KeyMismatch.into()),
            Found::Unknown => Err(self.unknown()),
        }
    }

    fn unknown(&self) -> InboundError {
        if self.is_loaded() {
            Invalid::UnknownKid.into()
        } else {
            InboundError::Unavailable("the JWKS has not been fetched yet".into())
        }
    }

    /// Registers the readiness gate the first good fetch opens.
    pub fn set_gate(&self, gate: Gate) {
        if self.is_loaded() {
            gate.open();
        } else {
            *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(gate);
        }
    }

    /// The readiness gate, if no fetch has opened it yet.
    pub fn take_gate(&self) -> Option<Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Fetches now, then again when the answer says (or after a backoff on
    /// failure), until shutdown or until this set is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let wait = {
                    let Some(jwks) = weak.upgrade() else { return };
                    let result = tokio::select! {
                        r = jwks.refresh() => r,
                        _ = shutdown.changed() => return,
                    };
                    match result {
                        Some(next) => {
                            failures = 0;
                            next
                        }
                        None => {
                            failures = failures.saturating_add(1);
                            jwks.retry_delay(failures)
                        }
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    }

    /// 0.5 s, 1 s, 2 s, ... up to `min(jwks_refresh_min, 30 s)`.
    fn retry_delay(&self, failures: u32) -> Duration {
        let step = Duration::from_millis(500u64 << failures.saturating_sub(1).min(8));
        step.min(self.refresh_min).min(MAX_RETRY)
    }

    /// One scheduled fetch; `Some(delay until the next)` when it succeeded.
    async fn refresh(&self) -> Option<Duration> {
        let _serial = self.fetch_lock.lock().await;
        self.fetch_and_store().await
    }

    /// Fetches the set and, when it holds a usable key, replaces the keys.
    async fn fetch_and_store(&self) -> Option<Duration> {
        match self.fetch().await {
            Ok((set, max_age)) => {
                let n = set.all.len();
                self.store(Arc::new(set));
                let first = self.generation.fetch_add(1, Ordering::AcqRel) == 0;
                self.fetches.inc("ok");
                if first {
                    tracing::info!(uri = %self.uri, keys = n, "JWKS fetched");
                } else {
                    tracing::debug!(uri = %self.uri, keys = n, "JWKS refreshed");
                }
                if let Some(gate) = self.take_gate() {
                    gate.open();
                }
                let next = max_age.unwrap_or(DEFAULT_REFRESH);
                Some(next.clamp(self.refresh_min, self.refresh_max))
            }
            Err(FetchError::Unreachable(why)) => {
                self.fetches.inc("unreachable");
                tracing::warn!(uri = %self.uri, error = %why, "JWKS fetch failed; keeping the keys we have");
                None
            }
            Err(FetchError::Invalid(why)) => {
                self.fetches.inc("invalid");
                tracing::warn!(uri = %self.uri, error = %why, "unusable JWKS; keeping the keys we have");
                None
            }
        }
    }

    async fn fetch(&self) -> Result<(KeySet, Option<Duration>), FetchError> {
        let url = self.uri.resolve().ok_or_else(|| {
            FetchError::Unreachable("the authorization server's metadata has not been discovered yet".into())
        })?;
        let resp = self
            .http
            .get(url)
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .send()
            .await
            .map_err(|e| FetchError::Unreachable(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Unreachable(format!("HTTP {}", status.as_u16())));
        }
        let max_age = max_age(resp.headers());
        let body = read_capped(resp, MAX_JWKS_BYTES).await.map_err(|e| match e {
            ReadError::TooLarge => FetchError::Invalid(format!("larger than {MAX_JWKS_BYTES} bytes")),
            ReadError::Network(why) => FetchError::Unreachable(why),
        })?;
        Ok((parse_set(&body).map_err(FetchError::Invalid)?, max_age))
    }
}

/// `Cache-Control: max-age=N` → N seconds; `no-cache`/`no-store` → zero
/// (the caller clamps to the floor).
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut out = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for directive in text.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                return Some(Duration::ZERO);
            }
            if let Some(n) = lower.strip_prefix("max-age=") {
                if let Ok(secs) = n.trim_matches('"').parse::<u64>() {
                    out = Some(Duration::from_secs(secs.min(86_400 * 365)));
                }
            }
        }
    }
    out
}

/// A JWK Set with at least one usable signature key.
fn parse_set(body: &[u8]) -> Result<KeySet, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "not JSON".to_owned())?;
    let keys = v.get("keys").and_then(Value::as_array).ok_or("no \"keys\" array")?;
    let mut set = KeySet::default();
    let mut fingerprint = Sha256::new();
    for (i, jwk) in keys.iter().take(MAX_KEYS).enumerate() {
        match parse_key(jwk) {
            Ok(Some((kid, key))) => {
                for name in ["kid", "kty", "crv", "alg", "n", "e", "x", "y"] {
                    // Length-prefixed, absent distinct from empty: no two keys read alike.
                    let v = jwk.get(name).and_then(Value::as_str).map(str::as_bytes);
                    fingerprint.update(v.map_or(u64::MAX, |v| v.len() as u64).to_be_bytes());
                    fingerprint.update(v.unwrap_or_default());
                }
                let key = Arc::new(key);
                if let Some(kid) = kid {
                    set.by_kid.entry(kid).or_default().push(key.clone());
                }
                set.all.push(key);
            }
            Ok(None) => {}
            Err(why) => tracing::debug!(index = i, why, "JWKS key skipped"),
        }
    }
    if set.all.is_empty() {
        return Err("no usable signature key (RSA 2048+, EC P-256/P-384, Ed25519)".into());
    }
    set.fingerprint = fingerprint.finalize().into();
    Ok(set)
}

/// One JWK → `(kid, key)`; `Ok(None)` for keys that are not for us
/// (encryption, symmetric, unknown types).
fn parse_key(jwk: &Value) -> Result<Option<(Option<String>, Key)>, &'static str> {
    let s = |name: &str| jwk.get(name).and_then(Value::as_str);
    if s("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array) {
        if !ops.iter().any(|o| o == "verify") {
            return Ok(None);
        }
    }
    let alg = match s("alg") {
        None => None,
        Some(a) => match Algorithm::from_str(a) {
            Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) | Err(_) => return Ok(None),
            Ok(a) => Some(a),
        },
    };
    let b64len = |name: &str| s(name).and_then(|v| URL_SAFE_NO_PAD.decode(v).ok()).map(|b| b.len());
    let (kind, decoding) = match (s("kty"), s("crv")) {
        (Some("RSA"), _) => {
            let (n, e) = (s("n").ok_or("RSA key without n")?, s("e").ok_or("RSA key without e")?);
            let modulus = URL_SAFE_NO_PAD.decode(n).map_err(|_| "RSA n is not base64url")?;
            if rsa_bits(&modulus) < 2048 {
                return Err("RSA key shorter than 2048 bits");
            }
            (KeyType::Rsa, DecodingKey::from_rsa_components(n, e).map_err(|_| "unusable RSA key")?)
        }
        (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
            let (kind, len) = if crv == "P-256" { (KeyType::P256, 32) } else { (KeyType::P384, 48) };
            if b64len("x") != Some(len) || b64len("y") != Some(len) {
                return Err("EC coordinates of the wrong size");
            }
            let (x, y) = (s("x").unwrap_or_default(), s("y").unwrap_or_default());
            (kind, DecodingKey::from_ec_components(x, y).map_err(|_| "unusable EC key")?)
        }
        (Some("OKP"), Some("Ed25519")) => {
            if b64len("x") != Some(32) {
                return Err("Ed25519 key of the wrong size");
            }
            let x = s("x").unwrap_or_default();
            (KeyType::Ed25519, DecodingKey::from_ed_components(x).map_err(|_| "unusable Ed25519 key")?)
        }
        (Some("EC" | "OKP"), _) => return Err("unsupported curve"),
        _ => return Ok(None),
    };
    if alg.is_some_and(|a| !kind.suits(a)) {
        return Err("the key's alg does not suit its type");
    }
    Ok(Some((s("kid").map(str::to_owned), Key { kind, alg, decoding })))
}

/// The size of a big-endian RSA modulus in bits (leading zero bits do not count).
fn rsa_bits(modulus: &[u8]) -> usize {
    let significant = modulus.iter().position(|b| *b != 0).map_or(&[][..], |i| &modulus[i..]);
    match significant.first() {
        None => 0,
        Some(top) => significant.len() * 8 - top.leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rsa_modulus_size_counts_bits() {
        assert_eq!(rsa_bits(&[]), 0);
        assert_eq!(rsa_bits(&[0, 0]), 0);
        assert_eq!(rsa_bits(&[0x01]), 1);
        let mut n = vec![0xffu8; 256];
        assert_eq!(rsa_bits(&n), 2048);
        n[0] = 0x80;
        assert_eq!(rsa_bits(&n), 2048);
        n[0] = 0x7f;
        assert_eq!(rsa_bits(&n), 2047);
        n[0] = 0x01;
        assert_eq!(rsa_bits(&n), 2041);
        n.insert(0, 0);
        assert_eq!(rsa_bits(&n), 2041, "a leading zero byte adds nothing");
        let short = json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB", "kid": "short"});
        assert!(parse_set(json!({"keys": [short]}).to_string().as_bytes()).is_err());
    }

    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn ec(kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": kid})
    }

    fn rsa(kid: &str) -> Value {
        json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 256]), "e": "AQAB", "kid": kid})
    }

    #[test]
    fn keeps_signature_keys_by_kid() {
        let body = json!({"keys": [
            ec("a"),
            rsa("r"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128]), "e": "AQAB", "kid": "small"},
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "enc", "use": "enc"},
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "wrong-alg", "alg": "RS256"},
            {"kty": "EC", "crv": "secp256k1", "x": X, "y": Y, "kid": "k1"},
        ]});
        let set = parse_set(body.to_string().as_bytes()).unwrap();
        assert_eq!(set.all.len(), 2);
        assert!(matches!(set.find(Some("a"), Algorithm::ES256), Found::Key(_)));
        assert!(matches!(set.find(Some("r"), Algorithm::PS256), Found::Key(_)));
        // Key confusion: the EC key's kid with an RSA alg, the RSA key's with ES256.
        assert!(matches!(set.find(Some("a"), Algorithm::RS256), Found::Mismatch));
        assert!(matches!(set.find(Some("r"), Algorithm::ES256), Found::Mismatch));
        for kid in ["h", "small", "enc", "wrong-alg", "k1", "nope"] {
            assert!(matches!(set.find(Some(kid), Algorithm::ES256), Found::Unknown), "{kid}");
        }
        // Without a kid: only when exactly one key suits.
        assert!(matches!(set.find(None, Algorithm::ES256), Found::Key(_)));
        assert!(matches!(set.find(None, Algorithm::ES384), Found::Unknown));
    }

    #[test]
    fn a_jwk_alg_pins_the_algorithm() {
        let mut k = rsa("r");
        k["alg"] = json!("RS256");
        let set = parse_set(json!({"keys": [k]}).to_string().as_bytes()).unwrap();
        assert!(matches!(set.find(Some("r"), Algorithm::RS256), Found::Key(_)));
        assert!(matches!(set.find(Some("r"), Algorithm::PS256), Found::Mismatch));
    }

    #[test]
    fn the_fingerprint_changes_with_the_keys_in_use_only() {
        let fp = |keys: Value| parse_set(json!({ "keys": keys }).to_string().as_bytes()).unwrap().fingerprint;
        let both = fp(json!([ec("a"), rsa("r")]));
        assert_eq!(both, fp(json!([ec("a"), rsa("r"), {"kty": "oct", "k": "c2VjcmV0", "kid": "h"}])));
        let mut annotated = ec("a");
        annotated["x5t"] = json!("ignored");
        assert_eq!(both, fp(json!([annotated, rsa("r")])));
        for other in
            [json!([ec("a")]), json!([rsa("r"), ec("a")]), json!([ec("b"), rsa("r")]), json!([ec("a"), rsa("")])]
        {
            assert_ne!(both, fp(other.clone()), "{other}");
        }
        assert_ne!(KeySet::default().fingerprint, fp(json!([ec("a")])));
    }

    #[test]
    fn unusable_sets_are_errors() {
        assert!(parse_set(b"<html>").is_err());
        assert!(parse_set(b"{}").is_err());
        assert!(parse_set(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
    }

    #[test]
    fn reads_max_age() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(CACHE_CONTROL, v.parse().unwrap());
            m
        };
        assert_eq!(max_age(&h("public, max-age=600")), Some(Duration::from_secs(600)));
        assert_eq!(max_age(&h("no-store")), Some(Duration::ZERO));
        assert_eq!(max_age(&h("public")), None);
        assert_eq!(max_age(&HeaderMap::new()), None);
    }
}
