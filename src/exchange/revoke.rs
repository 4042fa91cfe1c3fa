//! RFC 7009 revocation of exchanged tokens that tokex stops using: purged
//! ones, and ones a backend refused. Always in the background, never on the
//! request path: at most `CONCURRENCY` requests in flight and `MAX_PENDING`
//! waiting (more are dropped and counted), each with the server's client
//! authentication and within its `timeout`. Only to servers with a
//! revocation endpoint (configured, or discovered from RFC 8414 metadata).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use tokio::sync::Semaphore;

use super::client::AsClient;
use crate::metrics::Metrics;
use crate::secret::SecretString;
use crate::telemetry::error_chain;

/// Revocation requests in flight at once (all servers together).
const CONCURRENCY: usize = 8;
/// Revocations waiting for a slot; beyond, they are dropped (`dropped`).
const MAX_PENDING: usize = 10_000;

pub struct Revoker {
    slots: Arc<Semaphore>,
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Revoker {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Revoker { slots: Arc::new(Semaphore::new(CONCURRENCY)), pending: Arc::new(AtomicUsize::new(0)), metrics }
    }

    /// Revokes `token` at `server` in the background, when it has a
    /// revocation endpoint (outside a tokio runtime: not at all).
    pub fn revoke(&self, server: &Arc<AsClient>, token: &str) {
        if server.revocation_endpoint().is_none() || token.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.metrics.revocation(&server.name, "dropped");
            return;
        }
        let (slots, pending, metrics) = (self.slots.clone(), self.pending.clone(), self.metrics.clone());
        let (server, token) = (server.clone(), SecretString::new(token));
        rt.spawn(async move {
            let permit = slots.acquire_owned().await;
            let outcome = match permit {
                Ok(_permit) => send(&server, &token).await,
                Err(_) => Err(Failure::Failed("closed".into())),
            };
            pending.fetch_sub(1, Ordering::AcqRel);
            let label = match &outcome {
                Ok(()) => "revoked",
                Err(Failure::Refused(_)) => "refused",
                Err(Failure::Failed(_)) => "failed",
            };
            metrics.revocation(&server.name, label);
            if let Err(Failure::Refused(why) | Failure::Failed(why)) = &outcome {
                tracing::warn!(server = %server.name, error = %why, "token revocation (RFC 7009) failed");
            }
        });
    }
}

enum Failure {
    /// The server answered with an error (RFC 7009 §2.2.1).
    Refused(String),
    /// No answer in time, or none at all.
    Failed(String),
}

/// One revocation request: `token`, `token_type_hint=access_token`, and
/// the server's client authentication.
async fn send(server: &AsClient, token: &SecretString) -> Result<(), Failure> {
    let Some(endpoint) = server.revocation_endpoint() else { return Ok(()) };
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token.expose())
        .append_pair("token_type_hint", "access_token")
        .finish();
    let issuer = server.endpoints().and_then(|e| e.issuer.as_deref());
    let (body, basic) =
        server.auth().apply(form, endpoint.as_str(), issuer).map_err(|e| Failure::Failed(e.to_string()))?;
    let mut req = server
        .http()
        .post(endpoint.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .timeout(server.timeout())
        .body(body);
    if let Some(b) = basic {
        req = req.header(AUTHORIZATION, b);
    }
    let resp = req.send().await.map_err(|e| Failure::Failed(error_chain(&e)))?;
    // The answer's body is not read: 200 is the whole answer (§2.2).
    match resp.status().as_u16() {
        200 => Ok(()),
        s @ (429 | 500..=599) => Err(Failure::Failed(format!("HTTP {s}"))),
        s => Err(Failure::Refused(format!("HTTP {s}"))),
    }
}
