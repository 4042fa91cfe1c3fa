//! The issuers whose JWTs this server accepts as RFC 7523 authorization
//! grants (`urn:ietf:params:oauth:grant-type:jwt-bearer`, identity chaining
//! across trust domains), and their signing keys.
//!
//! Each trusted issuer is named with its JWK Set URL (`--trust-issuer
//! ISSUER=JWKS_URL`). Its keys are fetched when first needed (timeout
//! [`JWKS_FETCH_TIMEOUT`], at most [`MAX_JWKS_BYTES`], no redirects), held
//! for [`JWKS_CACHE_TTL`], and fetched again at most once per
//! [`JWKS_REFETCH_INTERVAL`] when an assertion names an unknown `kid` (so
//! made-up kids cannot make this server hammer the issuer). A failed fetch
//! keeps the keys already held. One fetch per issuer at a time.
//!
//! Only asymmetric signature keys are kept: RSA of 2048+ bits (RS*/PS*), EC
//! P-256 (ES256) and P-384 (ES384), OKP Ed25519 (EdDSA); a key serves an
//! assertion only when its type, and its `alg` when it names one, suit the
//! assertion's `alg`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::ACCEPT;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::outbound::{http_client, read_capped};
use super::DevStsError;

/// Time allowed for one JWK Set fetch (connect to the last byte).
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest JWK Set read.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// How long a fetched JWK Set is used before it is fetched again.
pub const JWKS_CACHE_TTL: Duration = Duration::from_secs(300);
/// Fetches of one issuer's JWK Set are at least this far apart.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Keys beyond this many in one set are ignored.
const MAX_KEYS: usize = 64;

/// An issuer whose JWTs are accepted as `jwt-bearer` grants, and where its
/// public keys are published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// Compared exactly with an assertion's `iss` (no `/` added or removed).
    pub issuer: String,
    /// Its JWK Set: an absolute http(s) URL.
    pub jwks_uri: String,
}

impl TrustedIssuer {
    /// Parses a `--trust-issuer` value: `ISSUER=JWKS_URL`, both absolute
    /// http(s) URLs (the issuer without query or fragment), split at the
    /// first `=`.
    pub fn parse_flag(value: &str) -> Result<TrustedIssuer, DevStsError> {
        let (issuer, jwks_uri) = value
            .split_once('=')
            .ok_or_else(|| DevStsError::TrustedIssuer(format!("--trust-issuer {value:?}: expected ISSUER=JWKS_URL")))?;
        let trusted = TrustedIssuer { issuer: issuer.trim().to_owned(), jwks_uri: jwks_uri.trim().to_owned() };
        trusted.check()?;
        Ok(trusted)
    }

    /// The JWK Set URL, once both URLs are found usable.
    fn check(&self) -> Result<url::Url, DevStsError> {
        let bad = |why: String| DevStsError::TrustedIssuer(format!("{}: {why}", self.issuer));
        let http = |u: &url::Url| matches!(u.scheme(), "http" | "https") && u.has_host();
        let issuer = url::Url::parse(&self.issuer).map_err(|e| bad(format!("the issuer is not a URL: {e}")))?;
        if !http(&issuer) || issuer.query().is_some() || issuer.fragment().is_some() {
            return Err(bad("the issuer must be an absolute http(s) URL without query or fragment".into()));
        }
        let jwks = url::Url::parse(&self.jwks_uri)
            .map_err(|e| bad(format!("the JWKS URL {:?} is not a URL: {e}", self.jwks_uri)))?;
        if !http(&jwks) {
            return Err(bad(format!("the JWKS URL {:?} must be an absolute http(s) URL", self.jwks_uri)));
        }
        Ok(jwks)
    }
}

/// Why no key was found for an assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// The issuer is not trusted.
    Untrusted,
    /// The issuer's JWK Set could not be fetched (and none is held).
    Unavailable,
    /// No key of the set has this `kid` and suits the `alg`.
    NoKey,
}

/// The trusted issuers of a running server and their cached keys.
pub(crate) struct TrustedIssuers {
    issuers: HashMap<String, IssuerKeys>,
    http: reqwest::Client,
}

struct IssuerKeys {
    jwks_uri: url::Url,
    /// Held across a fetch: one fetch per issuer at a time.
    cache: tokio::sync::Mutex<KeyCache>,
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<TrustedKey>,
    /// When the keys held were fetched.
    fetched: Option<Instant>,
    /// When a fetch was last tried, and whether it failed.
    attempted: Option<Instant>,
    failed: bool,
}

impl KeyCache {
    fn may_fetch(&self) -> bool {
        self.attempted.map_or(true, |t| t.elapsed() >= JWKS_REFETCH_INTERVAL)
    }

    fn find(&self, kid: &str, alg: Algorithm) -> Option<DecodingKey> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid) && k.suits(alg)).map(|k| k.key.clone())
    }
}

impl TrustedIssuers {
    /// `None` when the list is empty (the grant is then not offered).
    pub fn new(list: &[TrustedIssuer]) -> Result<Option<Self>, DevStsError> {
        if list.is_empty() {
            return Ok(None);
        }
        let mut issuers = HashMap::new();
        for t in list {
            let jwks_uri = t.check()?;
            let keys = IssuerKeys { jwks_uri, cache: tokio::sync::Mutex::new(KeyCache::default()) };
            if issuers.insert(t.issuer.clone(), keys).is_some() {
                return Err(DevStsError::TrustedIssuer(format!("{}: listed twice", t.issuer)));
            }
        }
        let http = http_client(JWKS_FETCH_TIMEOUT).map_err(DevStsError::TrustedIssuer)?;
        Ok(Some(TrustedIssuers { issuers, http }))
    }

    pub fn is_trusted(&self, issuer: &str) -> bool {
        self.issuers.contains_key(issuer)
    }

    /// The key of `issuer` for an assertion with this `kid` and `alg`.
    pub async fn key(&self, issuer: &str, kid: &str, alg: Algorithm) -> Result<DecodingKey, KeyError> {
        let entry = self.issuers.get(issuer).ok_or(KeyError::Untrusted)?;
        let mut cache = entry.cache.lock().await;
        let fresh = cache.fetched.is_some_and(|t| t.elapsed() < JWKS_CACHE_TTL);
        if !fresh && cache.may_fetch() {
            self.refresh(issuer, entry, &mut cache).await;
        }
        if let Some(key) = cache.find(kid, alg) {
            return Ok(key);
        }
        // An unknown kid: perhaps the issuer rotated its keys.
        if cache.may_fetch() {
            self.refresh(issuer, entry, &mut cache).await;
            if let Some(key) = cache.find(kid, alg) {
                return Ok(key);
            }
        }
        Err(if cache.failed && cache.fetched.is_none() { KeyError::Unavailable } else { KeyError::NoKey })
    }

    async fn refresh(&self, issuer: &str, entry: &IssuerKeys, cache: &mut KeyCache) {
        cache.attempted = Some(Instant::now());
        match self.fetch(&entry.jwks_uri).await {
            Ok(keys) => {
                tracing::debug!(issuer, keys = keys.len(), "dev-sts: trusted issuer's JWKS fetched");
                cache.keys = keys;
                cache.fetched = cache.attempted;
                cache.failed = false;
            }
            Err(e) => {
                tracing::warn!(issuer, jwks_uri = %entry.jwks_uri, error = %e, "dev-sts: cannot fetch a trusted issuer's JWKS");
                cache.failed = true;
            }
        }
    }

    async fn fetch(&self, uri: &url::Url) -> Result<Vec<TrustedKey>, String> {
        let resp = self
            .http
            .get(uri.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| crate::telemetry::error_chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        let body = read_capped(resp, MAX_JWKS_BYTES).await?;
        parse_jwks(&body)
    }
}

/// A verification key of a trusted issuer.
struct TrustedKey {
    kid: Option<String>,
    kind: KeyKind,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn suits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

impl TrustedKey {
    fn suits(&self, alg: Algorithm) -> bool {
        self.kind.suits(alg) && self.alg.map_or(true, |a| a == alg)
    }
}

/// The usable keys of a JWK Set; an error only when it is not one.
fn parse_jwks(body: &[u8]) -> Result<Vec<TrustedKey>, String> {
    let set: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_owned())?;
    let keys = set.get("keys").and_then(Value::as_array).ok_or("the answer is not a JWK Set (no keys array)")?;
    Ok(keys.iter().take(MAX_KEYS).filter_map(usable_key).collect())
}

/// A JWK this server verifies with, or `None` (skipped).
fn usable_key(value: &Value) -> Option<TrustedKey> {
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD.decode(p.n.trim_end_matches('=')).ok()?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            (bits >= 2048).then_some(KeyKind::Rsa)?
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => KeyKind::Ed25519,
        // Symmetric keys never verify a grant.
        AlgorithmParameters::OctetKeyPair(_) | AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::from_str(&a.to_string()).ok().filter(|a| kind.suits(*a))?),
        None => None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(TrustedKey { kid: jwk.common.key_id, kind, alg, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trust_issuer_flags() {
        let t = TrustedIssuer::parse_flag("http://127.0.0.1:9400=http://127.0.0.1:9400/jwks.json").unwrap();
        assert_eq!(t.issuer, "http://127.0.0.1:9400");
        assert_eq!(t.jwks_uri, "http://127.0.0.1:9400/jwks.json");
        // Split at the first `=`: the JWKS URL may have a query.
        let t = TrustedIssuer::parse_flag(" https://as.example/t1 = https://keys.example/jwks?tenant=t1 ").unwrap();
        assert_eq!(
            (t.issuer.as_str(), t.jwks_uri.as_str()),
            ("https://as.example/t1", "https://keys.example/jwks?tenant=t1")
        );
        for bad in [
            "https://as.example",
            "https://as.example=",
            "=https://as.example/jwks",
            "as.example=https://as.example/jwks",
            "urn:example:issuer=https://as.example/jwks",
            "ftp://as.example=https://as.example/jwks",
            "https://as.example/?x=y=https://as.example/jwks",
            "https://as.example=file:///etc/jwks.json",
            "https://as.example=/jwks.json",
        ] {
            let e = TrustedIssuer::parse_flag(bad).unwrap_err();
            assert!(matches!(e, DevStsError::TrustedIssuer(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn a_list_is_checked_and_empty_means_none() {
        assert!(TrustedIssuers::new(&[]).unwrap().is_none());
        let t = TrustedIssuer { issuer: "https://a.example".into(), jwks_uri: "https://a.example/jwks".into() };
        let list = TrustedIssuers::new(std::slice::from_ref(&t)).unwrap().unwrap();
        assert!(list.is_trusted("https://a.example"));
        assert!(!list.is_trusted("https://a.example/"), "compared exactly");
        assert!(TrustedIssuers::new(&[t.clone(), t.clone()]).is_err(), "listed twice");
        let bad = TrustedIssuer { jwks_uri: "not a url".into(), ..t };
        assert!(TrustedIssuers::new(&[bad]).is_err());
    }

    fn ec_jwk(kid: &str, crv: &str, alg: Option<&str>) -> Value {
        // Any point decodes: jsonwebtoken checks it only when verifying.
        let coord = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let mut k = json!({"kty": "EC", "crv": crv, "x": coord, "y": coord, "kid": kid, "use": "sig"});
        if let Some(a) = alg {
            k["alg"] = json!(a);
        }
        k
    }

    #[test]
    fn only_asymmetric_signature_keys_are_kept() {
        let short_rsa =
            json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB", "kid": "rsa1024"});
        let rsa = json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 256]), "e": "AQAB", "kid": "rsa"});
        let set = json!({"keys": [
            ec_jwk("p256", "P-256", None),
            ec_jwk("pinned", "P-256", Some("ES256")),
            ec_jwk("mismatch", "P-256", Some("RS256")),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "enc", "use": "enc"},
            short_rsa,
            rsa,
            {"kty": "OKP", "crv": "X25519", "x": "AA", "kid": "x25519"},
            {"kty": "weird"},
        ]});
        let keys = parse_jwks(set.to_string().as_bytes()).unwrap();
        let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["p256", "pinned", "rsa"]);
        assert!(
            keys[0].suits(Algorithm::ES256) && !keys[0].suits(Algorithm::ES384) && !keys[0].suits(Algorithm::HS256)
        );
        assert!(keys[2].suits(Algorithm::PS256) && !keys[2].suits(Algorithm::ES256));
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"not json").is_err());
    }

    #[test]
    fn the_cache_finds_by_kid_and_alg() {
        let cache = KeyCache {
            keys: parse_jwks(json!({"keys": [ec_jwk("a", "P-384", None)]}).to_string().as_bytes()).unwrap(),
            ..KeyCache::default()
        };
        assert!(cache.find("a", Algorithm::ES384).is_some());
        assert!(cache.find("a", Algorithm::ES256).is_none(), "the key type decides");
        assert!(cache.find("b", Algorithm::ES384).is_none());
        assert!(cache.may_fetch(), "never tried");
        let tried = KeyCache { attempted: Some(Instant::now()), ..KeyCache::default() };
        assert!(!tried.may_fetch(), "not again within the interval");
    }
}
