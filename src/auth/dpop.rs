//! Callers' DPoP (`inbound.dpop`, RFC 9449 §4.3, §7): a request that
//! presents `Authorization: DPoP <token>` must carry one proof that
//! verifies for this very request and was not seen before, and the token
//! must be bound to the proof's key (`cnf.jkt`, from the verified JWT or
//! the introspection answer). A DPoP-bound token presented as Bearer is
//! refused; with `require`, so is every Bearer token. The challenges of a
//! `401` follow: `DPoP ... algs="..."`.

use std::sync::Arc;

use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderValue, Method};

use crate::config::{DpopInboundConfig, DpopMode};
use crate::dpop::{self, Expect, ProofError, ReplayCache, Verified};
use crate::metrics::{Counters, Metrics};

/// Why a DPoP request (or a bound token sent as Bearer) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopRefusal {
    #[error("invalid DPoP proof: {0}")]
    Proof(ProofError),
    #[error("the token is not bound to the DPoP proof's key")]
    NotBound,
    #[error("a DPoP-bound token presented as a bearer token")]
    BoundAsBearer,
    #[error("this gateway requires DPoP")]
    Required,
}

impl DpopRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            DpopRefusal::Proof(e) => e.reason(),
            DpopRefusal::NotBound => "dpop_not_bound",
            DpopRefusal::BoundAsBearer => "dpop_bound_as_bearer",
            DpopRefusal::Required => "dpop_required",
        }
    }

    /// Every label [`DpopRefusal::reason`] can return.
    pub fn all_reasons() -> Vec<&'static str> {
        ProofError::ALL
            .iter()
            .map(|e| e.reason())
            .chain(["dpop_not_bound", "dpop_bound_as_bearer", "dpop_required"])
            .collect()
    }
}

/// `cnf.jkt` of a JWT's claims (RFC 9449 §6.1): the key a token is bound to.
/// Read from a token the inbound check verified, or, without one, from the
/// token as presented: the authorization server verifies it at the exchange,
/// so an altered `cnf` is refused there.
pub fn token_jkt(token: &str) -> Option<Arc<str>> {
    let claims = crate::exchange::unverified::claims_json(token)?;
    cnf_jkt(claims.get("cnf")).map(Arc::from)
}

/// What a `cnf` member binds the token to: nothing (absent or `null`),
/// the key of its `jkt`, or, for any other confirmation (`x5t#S256`, a
/// `jwk`, a `jkt` that is not a plausible thumbprint), `""`: bound to a key
/// no DPoP proof can match, so the token passes neither as Bearer nor as DPoP.
pub fn cnf_jkt(cnf: Option<&serde_json::Value>) -> Option<&str> {
    let cnf = cnf.filter(|c| !c.is_null())?;
    let jkt = cnf.get("jkt").and_then(serde_json::Value::as_str);
    Some(jkt.filter(|j| !j.is_empty() && j.len() <= 128 && cnf.as_object().is_some_and(|o| o.len() == 1)).unwrap_or(""))
}

/// The binding rules of one request: with `inbound.dpop` on, the proof's
/// key (if the caller used DPoP) against the token's `cnf` — from the
/// inbound check (`checked`), or, with no inbound check (`unchecked`), from
/// the token as presented. With it off, a token the check found bound is
/// refused as the bearer token it was presented as.
pub fn binding(
    dpop: Option<&DpopInbound>,
    proof: Option<&Verified>,
    checked: Option<&str>,
    unchecked: bool,
    token: &str,
) -> Result<(), DpopRefusal> {
    match dpop {
        Some(d) => {
            let presented = if unchecked { token_jkt(token) } else { None };
            d.bind(proof.map(|p| p.jkt.as_str()), checked.or(presented.as_deref()))
        }
        // Off: only a DPoP binding refuses (a certificate-bound token is
        // passed on as before).
        None if checked.is_some_and(|j| !j.is_empty()) => Err(DpopRefusal::BoundAsBearer),
        None => Ok(()),
    }
}

/// The request a proof must match.
pub struct ProofRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The `Host` the caller used, when known.
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The inbound DPoP check, kept across reloads with its replay cache.
pub struct DpopInbound {
    cfg: DpopInboundConfig,
    /// The listener's scheme: `http` or `https`.
    scheme: &'static str,
    replay: Arc<ReplayCache>,
    /// `ES256 EdDSA`, for challenges.
    algs: String,
    /// `tokex_inbound_rejections_total{reason="dpop_*"}`.
    rejections: Counters,
}

impl std::fmt::Debug for DpopInbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopInbound").field("mode", &self.cfg.mode).field("replay", &self.replay).finish()
    }
}

impl DpopInbound {
    /// `None` when `inbound.dpop` is off. The replay cache of `previous`
    /// is kept (a reload must not let a proof be used twice).
    pub fn new(
        cfg: &DpopInboundConfig,
        scheme: &'static str,
        previous: Option<&DpopInbound>,
        metrics: &Metrics,
    ) -> Option<Self> {
        if cfg.mode == DpopMode::Off {
            return None;
        }
        // Kept across reloads (a proof must not be accepted twice because
        // of one), with the new bound.
        let replay = match previous {
            Some(p) => {
                p.replay.set_max(cfg.replay_cache_entries);
                p.replay.clone()
            }
            None => Arc::new(ReplayCache::new(cfg.replay_cache_entries)),
        };
        let algs = cfg.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" ");
        let rejections = metrics.inbound_rejections(&DpopRefusal::all_reasons());
        Some(DpopInbound { cfg: cfg.clone(), scheme, replay, algs, rejections })
    }

    /// Checks the request's one `DPoP` proof for `token`, and that it was
    /// not accepted before. It is remembered only by [`DpopInbound::accept`],
    /// once the token has passed too: proofs for tokens that fail cannot
    /// fill the replay cache.
    pub fn check_proof(&self, req: &ProofRequest<'_>, token: &str) -> Result<Verified, DpopRefusal> {
        self.counted(self.proof(req, token))
    }

    /// Remembers an accepted request's proof; a proof that another request
    /// got accepted with meanwhile is refused now.
    pub fn accept(&self, proof: &Verified) -> Result<(), DpopRefusal> {
        self.counted(self.replay.first_use(proof, self.window()).map_err(DpopRefusal::Proof))
    }

    fn window(&self) -> std::time::Duration {
        self.cfg.max_age + self.cfg.leeway
    }

    fn counted<T>(&self, result: Result<T, DpopRefusal>) -> Result<T, DpopRefusal> {
        if let Err(e) = &result {
            self.rejections.inc(e.reason());
        }
        result
    }

    fn proof(&self, req: &ProofRequest<'_>, token: &str) -> Result<Verified, DpopRefusal> {
        let mut proofs = req.headers.get_all(dpop::HEADER).iter();
        let (Some(proof), None) = (proofs.next(), proofs.next()) else {
            return Err(DpopRefusal::Proof(ProofError::Count));
        };
        let proof = proof.to_str().map_err(|_| DpopRefusal::Proof(ProofError::Malformed))?;
        let htu = self.htu(req).ok_or(DpopRefusal::Proof(ProofError::Htu))?;
        let want = Expect {
            algorithms: &self.cfg.algorithms,
            htm: req.method.as_str(),
            htu: &htu,
            origins: &self.cfg.origins,
            token: Some(token),
            nonce: None,
            max_age: self.cfg.max_age,
            leeway: self.cfg.leeway,
        };
        let verified = dpop::verify(proof, &want).map_err(DpopRefusal::Proof)?;
        if self.replay.seen(&verified, self.window()) {
            return Err(DpopRefusal::Proof(ProofError::Replayed));
        }
        Ok(verified)
    }

    /// The URI the caller addressed: the listener's scheme (or
    /// `X-Forwarded-Proto`) and `Host` (or `X-Forwarded-Host`, both only
    /// with `trust_forwarded`), and the path.
    fn htu(&self, req: &ProofRequest<'_>) -> Option<String> {
        let forwarded = |name: &str| {
            let mut values = req.headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (Some(v), None) => v.to_str().ok().map(str::trim).filter(|v| !v.is_empty() && !v.contains(',')),
                _ => None,
            }
        };
        let (mut scheme, mut host) = (self.scheme, req.authority);
        if self.cfg.trust_forwarded {
            match forwarded("x-forwarded-proto").map(str::to_ascii_lowercase).as_deref() {
                Some("https") => scheme = "https",
                Some("http") => scheme = "http",
                _ => {}
            }
            // A host and port only: no userinfo, path, query or fragment.
            let authority =
                |h: &&str| h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
            host = forwarded("x-forwarded-host").filter(authority).or(host);
        }
        Some(format!("{scheme}://{}{}", host?, req.path))
    }

    /// The binding: a DPoP request's token must name the proof's key
    /// (`cnf.jkt`); a Bearer one must not be bound, and with `require`
    /// there is none.
    pub fn bind(&self, proof_jkt: Option<&str>, token_jkt: Option<&str>) -> Result<(), DpopRefusal> {
        self.counted(match (proof_jkt, token_jkt) {
            (Some(p), Some(t)) if !t.is_empty() && p == t => Ok(()),
            (Some(_), _) => Err(DpopRefusal::NotBound),
            (None, Some(_)) => Err(DpopRefusal::BoundAsBearer),
            (None, None) if self.cfg.mode == DpopMode::Require => Err(DpopRefusal::Required),
            (None, None) => Ok(()),
        })
    }

    /// The challenges of a `401` on an exchange route: a DPoP one with the
    /// accepted algorithms, in place of the Bearer one when the caller used
    /// DPoP or must, beside it when Bearer is allowed too.
    pub fn challenge(&self, headers: &mut HeaderMap, used_dpop: bool) {
        let bearer = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let params = bearer.as_deref().and_then(|b| b.strip_prefix("Bearer ")).unwrap_or("realm=\"tokex\"");
        let dpop = format!("DPoP {params}, algs=\"{}\"", self.algs);
        let Ok(dpop) = HeaderValue::try_from(dpop) else { return };
        if used_dpop || self.cfg.mode == DpopMode::Require {
            headers.insert(WWW_AUTHENTICATE, dpop);
        } else {
            headers.append(WWW_AUTHENTICATE, dpop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(mode: DpopMode, trust: bool) -> DpopInbound {
        let cfg = DpopInboundConfig { mode, trust_forwarded: trust, ..Default::default() };
        DpopInbound::new(&cfg, "http", None, &Metrics::new()).unwrap()
    }

    #[test]
    fn binding_rules() {
        let allow = inbound(DpopMode::Allow, false);
        assert_eq!(allow.bind(Some("k"), Some("k")), Ok(()));
        assert_eq!(allow.bind(Some("k"), Some("j")), Err(DpopRefusal::NotBound));
        assert_eq!(allow.bind(Some("k"), None), Err(DpopRefusal::NotBound), "an unbound token sent as DPoP");
        assert_eq!(allow.bind(Some(""), Some("")), Err(DpopRefusal::NotBound), "another kind of confirmation");
        assert_eq!(allow.bind(None, Some("")), Err(DpopRefusal::BoundAsBearer));
        assert_eq!(allow.bind(None, Some("k")), Err(DpopRefusal::BoundAsBearer));
        assert_eq!(allow.bind(None, None), Ok(()));
        assert_eq!(inbound(DpopMode::Require, false).bind(None, None), Err(DpopRefusal::Required));
        assert!(
            DpopInbound::new(&DpopInboundConfig::default(), "http", None, &Metrics::new()).is_none(),
            "off: no check"
        );
    }

    #[test]
    fn any_confirmation_binds() {
        use serde_json::json;
        assert_eq!(cnf_jkt(None), None);
        assert_eq!(cnf_jkt(Some(&json!(null))), None);
        assert_eq!(cnf_jkt(Some(&json!({"jkt": "abc"}))), Some("abc"));
        for other in [
            json!({"x5t#S256": "x"}),
            json!({"jkt": ["a"]}),
            json!({"jkt": "a".repeat(129)}),
            json!({"jwk": {}}),
            json!("jkt"),
            json!({"jkt": "a", "jwk": {}}),
        ] {
            assert_eq!(cnf_jkt(Some(&other)), Some(""), "{other}");
        }
    }

    #[test]
    fn htu_uses_forwarded_headers_only_when_trusted() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("api.example.com"));
        let req = ProofRequest { method: &Method::GET, path: "/a", authority: Some("10.0.0.1:8080"), headers: &h };
        assert_eq!(inbound(DpopMode::Allow, false).htu(&req).unwrap(), "http://10.0.0.1:8080/a");
        assert_eq!(inbound(DpopMode::Allow, true).htu(&req).unwrap(), "https://api.example.com/a");
        let mut h = h.clone();
        h.append("x-forwarded-host", HeaderValue::from_static("evil.example"));
        let req = ProofRequest { headers: &h, ..req };
        assert_eq!(inbound(DpopMode::Allow, true).htu(&req).unwrap(), "https://10.0.0.1:8080/a", "two hosts: neither");
        for bad in ["rs-b.example/admin/x?", "rs-b.example#", "x@rs-b.example"] {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-host", HeaderValue::from_str(bad).unwrap());
            let req = ProofRequest { headers: &h, ..req };
            assert_eq!(inbound(DpopMode::Allow, true).htu(&req).unwrap(), "http://10.0.0.1:8080/a", "{bad}");
        }
    }

    #[test]
    fn challenges_follow_the_scheme() {
        let mut h = HeaderMap::new();
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tokex\", error=\"invalid_token\""));
        inbound(DpopMode::Allow, false).challenge(&mut h, true);
        let all: Vec<_> = h.get_all(WWW_AUTHENTICATE).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(all, ["DPoP realm=\"tokex\", error=\"invalid_token\", algs=\"ES256 EdDSA\""]);
        let mut h = HeaderMap::new();
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tokex\""));
        inbound(DpopMode::Allow, false).challenge(&mut h, false);
        assert_eq!(h.get_all(WWW_AUTHENTICATE).iter().count(), 2, "Bearer, and DPoP beside it");
    }
}
