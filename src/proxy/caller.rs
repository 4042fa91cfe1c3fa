//! Phases 2 and 3 of a route that takes the caller's token (`exchange`,
//! `transaction_token`): extract it (Bearer, or DPoP with a proof), make
//! sure it rides nowhere else, check the proof, validate the token (inbound
//! check, required scopes) and its DPoP binding. A refused token never
//! reaches an authorization server.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderName;
use sha2::{Digest, Sha256};

use super::bearer;
use super::handler::{Original, Trace, Via};
use super::routes::Route;
use super::{credentials, ids};
use crate::auth::dpop::ProofRequest;
use crate::auth::{Checked, DpopInbound};
use crate::dpop::Verified;
use crate::error::GatewayError;
use crate::exchange::Fingerprint;

/// The caller's token, validated.
pub(super) struct Caller<'a> {
    pub subject: &'a str,
    /// The token's SHA-256.
    pub hash: [u8; 32],
    /// The caller's DPoP proof for this request, checked (not yet remembered).
    pub proof: Option<Verified>,
    /// The subject's `sub` from the introspection answer (revocation index).
    pub sub: Option<Arc<str>>,
}

impl Caller<'_> {
    /// The request was accepted: its proof may not be used again.
    pub fn accept(&self, dpop: Option<&Arc<DpopInbound>>) -> Result<(), GatewayError> {
        if let (Some(d), Some(proof)) = (dpop, &self.proof) {
            d.accept(proof)?;
        }
        Ok(())
    }
}

/// Extracts and validates the caller's token for `route`.
pub(super) async fn caller<'a>(
    runtime: &super::handler::Runtime,
    route: &Route,
    req: &Original<'a>,
    trace: &mut Trace,
) -> Result<Caller<'a>, GatewayError> {
    let dpop = runtime.dpop.as_ref();
    trace.dpop = dpop.map(|d| (d.clone(), false));
    let (subject, used_dpop) = bearer::extract_with_dpop(req.headers, dpop.is_some())?;
    if let Some((_, used)) = &mut trace.dpop {
        *used = used_dpop;
    }
    // A request id that holds the token would carry it to the log, the
    // backend and the answer (even past a `remove_headers` entry that
    // skips the check below): a new one instead.
    if subject.len() >= credentials::MIN_SCANNED
        && credentials::contains(trace.request_id.as_bytes(), subject.as_bytes())
    {
        trace.request_id = ids::generate();
    }
    // The broad token must not ride along anywhere else: in a header that
    // will be removed or replaced, unless it is a front proxy that may not
    // remove or replace it.
    let head = (req.method, req.uri, req.authority.map(|a| a.value().as_bytes()));
    let (removed, replaced): (&[HeaderName], _) = match req.via {
        Via::Proxy => (&route.remove_headers, &route.forward_header),
        Via::Removing => (&route.remove_headers, &AUTHORIZATION),
        Via::Front => (&[], &AUTHORIZATION),
    };
    let dropped = credentials::Dropped { removed, replaced, proxy_authorization: req.via != Via::Front };
    if let Some(leak) = credentials::token_elsewhere(head, req.headers, dropped, subject) {
        trace.redact |= leak == credentials::Leak::Target;
        return Err(GatewayError::InvalidRequest(leak.message()));
    }
    let hash: [u8; 32] = Sha256::digest(subject.as_bytes()).into();
    trace.fingerprint = Some(Fingerprint::of(&hash));
    // The caller's DPoP proof for this request (RFC 9449 §4.3), then the
    // token, then the token's binding to the proof's key.
    let proof = match dpop.filter(|_| used_dpop) {
        Some(d) => {
            let authority = req.authority.map(|a| a.value().to_str().unwrap_or_default());
            let at = ProofRequest { method: req.method, path: req.uri.path(), authority, headers: req.headers };
            Some(d.check_proof(&at, subject)?)
        }
        None => None,
    };
    let checked = match &runtime.inbound {
        Some(inbound) => inbound.check(subject, &hash, &route.require_scopes, dpop.is_some()).await?,
        None => Checked::default(),
    };
    let unchecked = runtime.inbound.is_none();
    crate::auth::dpop::binding(dpop.map(|d| &**d), proof.as_ref(), checked.jkt.as_deref(), unchecked, subject)?;
    Ok(Caller { subject, hash, proof, sub: checked.sub })
}
