//! The demo's DPoP backend: a resource server that takes only DPoP-bound
//! tokens (RFC 9449 §7). A request needs `Authorization: DPoP <token>`, a
//! token of the dev authorization server (signature, issuer, expiry), one
//! `DPoP` proof for this very request (`htm`, `htu` = the URL the request addressed, `ath` of
//! the token, `iat` window) signed by the key the token names in `cnf.jkt`,
//! and a proof `jti` not seen before. It answers `200` with what it
//! checked, or `401` with `WWW-Authenticate: DPoP error="invalid_token"`
//! (or `"invalid_dpop_proof"`) and the reason in the body.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use super::{call, show, DemoError, Verifier, Walk, DPOP_SERVER};
use crate::dpop::{self, Expect, ProofKey, ReplayCache};
use crate::proxy::server::Handler;
use crate::proxy::Body;

/// Proof algorithms this backend takes.
const ALGORITHMS: [Algorithm; 2] = [Algorithm::ES256, Algorithm::EdDSA];
const MAX_AGE: Duration = Duration::from_secs(60);
const LEEWAY: Duration = Duration::from_secs(5);

/// A request the backend accepted: its token and proof, as anyone who can
/// read the backend's traffic or logs would have them.
#[derive(Clone)]
pub struct Seen {
    pub token: String,
    pub proof: String,
}

pub(super) struct Secure {
    verifier: Verifier,
    /// `http://127.0.0.1:<port>`: the start of `htu` for a request without `Host`.
    origin: String,
    replay: ReplayCache,
    last: Mutex<Option<Seen>>,
}

/// Why a request was refused: the `WWW-Authenticate` error and a reason.
struct Refusal {
    error: &'static str,
    reason: String,
}

fn invalid_token(reason: impl Into<String>) -> Refusal {
    Refusal { error: "invalid_token", reason: reason.into() }
}

fn invalid_proof(reason: impl Into<String>) -> Refusal {
    Refusal { error: "invalid_dpop_proof", reason: reason.into() }
}

impl Secure {
    pub(super) fn new(verifier: Verifier, addr: SocketAddr) -> Self {
        Secure { verifier, origin: format!("http://{addr}"), replay: ReplayCache::new(10_000), last: Mutex::new(None) }
    }

    /// The last request accepted.
    pub(super) fn last_seen(&self) -> Option<Seen> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn check(&self, req: &Request<Incoming>) -> Result<Value, Refusal> {
        let mut authorizations = req.headers().get_all(AUTHORIZATION).iter();
        let (Some(authorization), None) = (authorizations.next(), authorizations.next()) else {
            return Err(invalid_token("not exactly one Authorization header"));
        };
        let authorization = authorization.to_str().map_err(|_| invalid_token("Authorization is not text"))?;
        let (scheme, token) = authorization.split_once(' ').unwrap_or((authorization, ""));
        let token = token.trim();
        let claims = self.verifier.claims(token);
        if !scheme.eq_ignore_ascii_case(dpop::SCHEME) {
            // RFC 9449 §7.2: a DPoP-bound token is no bearer token.
            let bound = claims.as_ref().is_some_and(|c| c.get("cnf").is_some());
            return Err(invalid_token(if bound {
                "a DPoP-bound token (cnf.jkt) sent as a Bearer token"
            } else {
                "only DPoP tokens are accepted here"
            }));
        }
        let claims = claims.ok_or_else(|| invalid_token("not a valid token of the dev authorization server"))?;
        let jkt = claims.pointer("/cnf/jkt").and_then(Value::as_str).ok_or_else(|| invalid_token("no cnf.jkt"))?;

        let mut proofs = req.headers().get_all(dpop::HEADER).iter();
        let (Some(proof), None) = (proofs.next(), proofs.next()) else {
            return Err(invalid_proof("not exactly one DPoP header"));
        };
        let proof = proof.to_str().map_err(|_| invalid_proof("the DPoP proof is not text"))?;
        // The URI as this request addressed it: its `Host` (the gateway
        // passes the caller's on), else this server's own address.
        let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok());
        let htu = match host {
            Some(host) => format!("http://{host}{}", req.uri().path()),
            None => format!("{}{}", self.origin, req.uri().path()),
        };
        let htm = req.method().as_str();
        let want = Expect {
            algorithms: &ALGORITHMS,
            htm,
            htu: &htu,
            origins: &[],
            token: Some(token),
            nonce: None,
            max_age: MAX_AGE,
            leeway: LEEWAY,
        };
        let verified = dpop::verify(proof, &want).map_err(|e| invalid_proof(e.to_string()))?;
        if verified.jkt != jkt {
            return Err(invalid_token("cnf.jkt is not the key that signed the proof"));
        }
        // Last: only a request that passed everything uses up its proof.
        self.replay.first_use(&verified, MAX_AGE).map_err(|e| invalid_proof(e.to_string()))?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Seen { token: token.to_owned(), proof: proof.to_owned() });
        Ok(json!({
            "path": req.uri().path(),
            "scheme": dpop::SCHEME,
            "signature_verified": true,
            "claims": claims,
            "proof": { "jkt": verified.jkt, "jti": verified.jti, "iat": verified.iat, "htm": htm, "htu": htu },
        }))
    }
}

impl Handler for Secure {
    type Body = crate::proxy::Body;

    fn handle(
        &self,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        let (status, body, challenge) = match self.check(&req) {
            Ok(body) => (StatusCode::OK, body, None),
            Err(r) => {
                let challenge = HeaderValue::try_from(format!("DPoP error=\"{}\"", r.error)).ok();
                (StatusCode::UNAUTHORIZED, json!({ "error": r.error, "reason": r.reason }), challenge)
            }
        };
        async move {
            let mut resp = Response::new(Body::Right(http_body_util::Full::new(Bytes::from(body.to_string()))));
            *resp.status_mut() = status;
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(c) = challenge {
                resp.headers_mut().insert(WWW_AUTHENTICATE, c);
            }
            resp
        }
    }
}

/// One of the thief's calls, straight at the backend: status,
/// `WWW-Authenticate`, and the reason the backend gave.
async fn direct(
    client: &reqwest::Client,
    (url, host): (&str, &str),
    authorization: String,
    proof: Option<String>,
) -> Result<(u16, String, String), DemoError> {
    let mut req = client.get(url).header(http::header::HOST, host).header(AUTHORIZATION, authorization);
    if let Some(p) = proof {
        req = req.header(dpop::HEADER, p);
    }
    let resp = req.send().await.map_err(|e| DemoError::Step(format!("GET {url}: {e}")))?;
    let status = resp.status().as_u16();
    let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    let text = resp.text().await.map_err(|e| DemoError::Step(format!("GET {url}: {e}")))?;
    let reason = serde_json::from_str::<Value>(&text).ok().and_then(|b| b["reason"].as_str().map(str::to_owned));
    Ok((status, challenge, reason.unwrap_or_else(|| "-".into())))
}

/// The DPoP step: alice's call on `/secure` (tokex asks dev-sts for a token
/// bound to its own key and sends it with a fresh proof), then the token
/// the backend received, stolen and replayed straight at the backend.
pub(super) async fn walkthrough_step(w: &Walk<'_>, step: usize, out: &mut String) -> Result<(), DemoError> {
    let Walk { demo, client, gw, broad } = *w;
    let path = "/secure/42";
    let nonces_before = demo.sts.dpop_nonce_challenges();
    let (status, _, body) = call(client, &format!("{gw}{path}"), Some(broad)).await?;
    if status != 200 {
        return Err(DemoError::Step(format!("GET {path} answered {status}: {body}")));
    }
    let nonces = demo.sts.dpop_nonce_challenges().saturating_sub(nonces_before);
    let gateway_key = demo.gateway.gateway.runtime().servers.get(DPOP_SERVER).and_then(|s| s.dpop_key());
    let gateway_jkt = gateway_key.as_ref().map_or("-", |k| k.jkt()).to_owned();
    let claims = &body["claims"];
    let bound_jkt = claims.pointer("/cnf/jkt").and_then(Value::as_str).unwrap_or("-");
    let proof = &body["proof"];
    let yes = |b: bool| if b { "yes" } else { "NO" };
    out.push_str(&format!(
        "{step}. GET {path} with alice's broad token (DPoP: the exchanged token is bound to tokex's key) -> {status}\n"
    ));
    out.push_str(&format!("     tokex's DPoP key   jkt {gateway_jkt} (generated at start)\n"));
    // tokex sends `Authorization: DPoP` only with a token_type DPoP answer.
    let scheme = body["scheme"].as_str().unwrap_or("-");
    out.push_str(&format!(
        "     token request      with a DPoP proof{} -> token_type {scheme}\n",
        if nonces > 0 { "; dev-sts asked for a nonce (use_dpop_nonce), tokex retried with it" } else { "" }
    ));
    out.push_str(&format!("     backend received   Authorization: {scheme} <token>, and a DPoP proof\n"));
    out.push_str(&format!(
        "     token              sub {}, aud {}, scope {}; signature verified against dev-sts JWKS: {}\n",
        show(claims, "sub"),
        show(claims, "aud"),
        show(claims, "scope"),
        yes(body["signature_verified"] == true),
    ));
    out.push_str(&format!(
        "                        cnf.jkt {bound_jkt} (tokex's key: {})\n",
        yes(bound_jkt == gateway_jkt)
    ));
    out.push_str(&format!(
        "     proof              {} {}, ath = hash of that token, jti {} (not seen before)\n",
        proof["htm"].as_str().unwrap_or("-"),
        proof["htu"].as_str().unwrap_or("-"),
        proof["jti"].as_str().unwrap_or("-"),
    ));
    out.push_str(&format!(
        "                        signed by {} (the token's cnf.jkt: {})\n",
        proof["jkt"].as_str().unwrap_or("-"),
        yes(proof["jkt"].as_str() == Some(bound_jkt)),
    ));

    let seen = demo.secure.last_seen().ok_or_else(|| DemoError::Step("the DPoP backend saw no request".into()))?;
    // The request replayed as the backend got it: the same URL (tokex
    // names the upstream as Host when it sends a DPoP-bound token).
    let host = demo.secure_backend.to_string();
    let url = format!("http://{host}{path}");
    let host = host.as_str();
    let thief = ProofKey::generate(Algorithm::ES256).map_err(DemoError::Setup)?;
    let htu = format!("http://{host}{path}");
    let own_proof = thief.proof("GET", &htu, Some(&dpop::ath(&seen.token)), None).map_err(DemoError::Setup)?;
    out.push_str("     a stolen copy: the token the backend received, replayed directly at the backend\n");
    for (what, scheme, proof) in [
        ("as Bearer", "Bearer", None),
        ("as DPoP with the proof the backend saw", dpop::SCHEME, Some(seen.proof.clone())),
        ("as DPoP with a fresh proof of another key", dpop::SCHEME, Some(own_proof)),
    ] {
        let (status, challenge, reason) =
            direct(client, (&url, host), format!("{scheme} {}", seen.token), proof).await?;
        out.push_str(&format!("       {what:<42} -> {status}  WWW-Authenticate: {challenge}\n"));
        out.push_str(&format!("       {:<42}          {reason}\n", ""));
    }
    out.push('\n');
    Ok(())
}
