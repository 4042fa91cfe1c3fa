//! RFC 8414 discovery. An authorization server configured with `issuer:`
//! has its `token_endpoint`, `jwks_uri`, `introspection_endpoint` and
//! `revocation_endpoint` read from its metadata document, in the background
//! from start, retried with jittered backoff until it succeeds. Until then the gateway is not ready
//! and its exchanges answer 503 (`Retry-After`). The document must name
//! exactly the configured issuer (RFC 8414 §3.3).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::header::ACCEPT;
use serde::Deserialize;
use url::Url;

use super::client::AsClient;
use crate::readiness::{Gate, Readiness};
use crate::telemetry::error_chain;

/// Largest metadata document read.
const MAX_METADATA_BYTES: usize = 256 * 1024;
/// First retry pause; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where an authorization server's endpoints are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub token_endpoint: Url,
    pub jwks_uri: Option<Url>,
    pub introspection_endpoint: Option<Url>,
    /// RFC 7009 (RFC 8414 `revocation_endpoint`).
    pub revocation_endpoint: Option<Url>,
    /// The issuer, when the endpoints were discovered from it.
    pub issuer: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Network errors, timeouts, non-200 answers: a later try may succeed.
    #[error("{url}: {why}")]
    Unavailable { url: String, why: String },
    #[error("{url}: the document names issuer {found:?}, not the configured {expected:?} (RFC 8414 §3.3)")]
    IssuerMismatch { url: String, found: String, expected: String },
    #[error("{url}: {why}")]
    Invalid { url: String, why: String },
}

/// An authorization server's endpoints: given in the config, or pending
/// until discovery fills them in (once).
pub struct EndpointSlot {
    /// `Some` when the endpoints are discovered from this issuer.
    issuer: Option<String>,
    /// Use RFC 8705 `mtls_endpoint_aliases` (the client authenticates with TLS).
    mtls: bool,
    resolved: OnceLock<Endpoints>,
    /// Held while unresolved at start: the gateway is not ready until then.
    gate: Mutex<Option<Gate>>,
}

impl EndpointSlot {
    pub fn fixed(token_endpoint: Url) -> Self {
        let endpoints = Endpoints {
            token_endpoint,
            jwks_uri: None,
            introspection_endpoint: None,
            revocation_endpoint: None,
            issuer: None,
        };
        EndpointSlot { issuer: None, mtls: false, resolved: OnceLock::from(endpoints), gate: Mutex::new(None) }
    }

    pub fn discovered(issuer: String, mtls: bool) -> Self {
        EndpointSlot { issuer: Some(issuer), mtls, resolved: OnceLock::new(), gate: Mutex::new(None) }
    }

    /// The endpoints, once known.
    pub fn get(&self) -> Option<&Endpoints> {
        self.resolved.get()
    }

    /// The configured issuer (discovery only).
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    fn pending(&self) -> bool {
        self.issuer.is_some() && self.resolved.get().is_none()
    }

    /// Fetches the metadata once and, when it is valid, fills the slot.
    async fn resolve(&self, http: &reqwest::Client, timeout: Duration) -> Result<&Endpoints, DiscoveryError> {
        let Some(issuer) = &self.issuer else {
            return self.resolved.get().ok_or_else(|| unreachable_state("no issuer and no endpoints"));
        };
        let endpoints = fetch(http, issuer, timeout, self.mtls).await?;
        let endpoints = self.resolved.get_or_init(|| endpoints);
        self.open_gate();
        Ok(endpoints)
    }

    /// Takes over what a previous configuration's slot for the same server
    /// knows: its endpoints, or its readiness gate while still pending.
    fn adopt(&self, previous: &EndpointSlot) {
        if self.issuer != previous.issuer || self.mtls != previous.mtls {
            return;
        }
        if let Some(e) = previous.resolved.get() {
            let _ = self.resolved.set(e.clone());
        } else if let Some(gate) = previous.gate.lock().unwrap_or_else(|p| p.into_inner()).take() {
            *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(gate);
        }
    }

    fn open_gate(&self) {
        if let Some(gate) = self.gate.lock().unwrap_or_else(|p| p.into_inner()).take() {
            gate.open();
        }
    }
}

impl Drop for EndpointSlot {
    /// A server dropped by a reload no longer holds readiness back.
    fn drop(&mut self) {
        self.open_gate();
    }
}

impl std::fmt::Debug for EndpointSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSlot").field("issuer", &self.issuer).field("resolved", &self.resolved.get()).finish()
    }
}

fn unreachable_state(why: &str) -> DiscoveryError {
    DiscoveryError::Invalid { url: String::new(), why: why.into() }
}

/// Starts discovery for every server configured with `issuer:` that has no
/// endpoints yet. At start (`readiness` given) each holds a readiness gate
/// until it resolves. On reload (`previous` given) a server keeps what the
/// running configuration's server of the same name and issuer knows, and a
/// newly added issuer resolves without withdrawing readiness (as Envoy's
/// init manager gates only the first start).
pub fn start(
    servers: &BTreeMap<String, Arc<AsClient>>,
    previous: Option<&BTreeMap<String, Arc<AsClient>>>,
    readiness: Option<&Arc<Readiness>>,
) {
    for (name, client) in servers {
        let slot = client.endpoint_slot();
        if let Some(old) = previous.and_then(|p| p.get(name)) {
            slot.adopt(old.endpoint_slot());
        }
        if !slot.pending() {
            continue;
        }
        if let Some(r) = readiness {
            *slot.gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.gate());
        }
        spawn(client);
    }
}

/// Resolves `client`'s endpoints in the background until it succeeds or the
/// client is dropped (a reload replaced it).
fn spawn(client: &Arc<AsClient>) {
    let weak = Arc::downgrade(client);
    tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            let Some(client) = weak.upgrade() else { return };
            let slot = client.endpoint_slot();
            let issuer = slot.issuer().unwrap_or_default().to_owned();
            match slot.resolve(client.http(), client.timeout()).await {
                Ok(e) => {
                    tracing::info!(
                        server = %client.name,
                        %issuer,
                        token_endpoint = %e.token_endpoint,
                        jwks_uri = e.jwks_uri.as_ref().map(Url::as_str),
                        introspection_endpoint = e.introspection_endpoint.as_ref().map(Url::as_str),
                        revocation_endpoint = e.revocation_endpoint.as_ref().map(Url::as_str),
                        "authorization server metadata discovered"
                    );
                    return;
                }
                Err(e) => {
                    let pause = backoff(attempt);
                    match &e {
                        DiscoveryError::Unavailable { .. } => {
                            tracing::warn!(server = %client.name, %issuer, error = %e, retry_in_ms = pause.as_millis() as u64, "authorization server metadata discovery failed")
                        }
                        DiscoveryError::IssuerMismatch { .. } | DiscoveryError::Invalid { .. } => {
                            tracing::error!(server = %client.name, %issuer, error = %e, retry_in_ms = pause.as_millis() as u64, "authorization server metadata refused")
                        }
                    }
                    drop(client);
                    tokio::time::sleep(pause).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    });
}

/// 250 ms doubling to 30 s, with equal jitter (half fixed, half random).
fn backoff(attempt: u32) -> Duration {
    let step = FIRST_BACKOFF.saturating_mul(1u32 << attempt.min(10)).min(MAX_BACKOFF);
    step / 2 + (step / 2).mul_f64(fastrand::f64())
}

/// The metadata URLs tried in order: RFC 8414 §3.1 (the well-known segment
/// inserted before the issuer's path), the same appended after a path (as
/// some servers publish it), then OpenID Connect Discovery 1.0 §4.
pub fn metadata_urls(issuer: &str) -> Result<Vec<Url>, String> {
    let url = Url::parse(issuer).map_err(|e| format!("issuer {issuer:?}: {e}"))?;
    let path = url.path().trim_end_matches('/').to_owned();
    let at = |p: &str| {
        let mut u = url.clone();
        u.set_path(p);
        u
    };
    let mut urls = vec![at(&format!("/.well-known/oauth-authorization-server{path}"))];
    if !path.is_empty() {
        urls.push(at(&format!("{path}/.well-known/oauth-authorization-server")));
    }
    urls.push(at(&format!("{path}/.well-known/openid-configuration")));
    Ok(urls)
}

/// Fetches and checks the metadata of `issuer`. A well-known URL answering
/// other than 200 moves on to the next; a document that is served but
/// wrong is refused outright.
pub async fn fetch(
    http: &reqwest::Client,
    issuer: &str,
    timeout: Duration,
    mtls: bool,
) -> Result<Endpoints, DiscoveryError> {
    let urls = metadata_urls(issuer).map_err(|why| DiscoveryError::Invalid { url: issuer.to_owned(), why })?;
    let mut statuses = Vec::new();
    for url in &urls {
        let unavailable = |why: String| DiscoveryError::Unavailable { url: url.to_string(), why };
        let attempt = async {
            let mut resp = http
                .get(url.clone())
                .header(ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| unavailable(error_chain(&e.without_url())))?;
            if resp.status() != reqwest::StatusCode::OK {
                return Ok(Err(resp.status().as_u16()));
            }
            if resp.content_length().is_some_and(|n| n > MAX_METADATA_BYTES as u64) {
                return Err(DiscoveryError::Invalid {
                    url: url.to_string(),
                    why: format!("larger than {MAX_METADATA_BYTES} bytes"),
                });
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(error_chain(&e.without_url())))? {
                if body.len() + chunk.len() > MAX_METADATA_BYTES {
                    return Err(DiscoveryError::Invalid {
                        url: url.to_string(),
                        why: format!("larger than {MAX_METADATA_BYTES} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Ok(body))
        };
        let body = match tokio::time::timeout(timeout, attempt).await {
            Err(_) => return Err(unavailable(format!("no answer within {timeout:?}"))),
            Ok(result) => result?,
        };
        match body {
            Ok(body) => return parse(url, &body, issuer, mtls),
            Err(status) => statuses.push(format!("HTTP {status} from {url}")),
        }
    }
    Err(DiscoveryError::Unavailable { url: issuer.to_owned(), why: format!("no metadata: {}", statuses.join(", ")) })
}

#[derive(Deserialize)]
struct Metadata {
    issuer: Option<String>,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    introspection_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    mtls_endpoint_aliases: Option<Aliases>,
}

/// RFC 8705 §5.
#[derive(Deserialize)]
struct Aliases {
    token_endpoint: Option<String>,
    introspection_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
}

/// Checks a metadata document: the issuer, and http(s) endpoint URLs (https
/// only when the issuer is https). With `mtls`, RFC 8705 aliases win.
pub fn parse(url: &Url, body: &[u8], issuer: &str, mtls: bool) -> Result<Endpoints, DiscoveryError> {
    let invalid = |why: String| DiscoveryError::Invalid { url: url.to_string(), why };
    let doc: Metadata =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not an RFC 8414 metadata document: {e}")))?;
    let found = doc.issuer.ok_or_else(|| invalid("no issuer".into()))?;
    if found != issuer {
        return Err(DiscoveryError::IssuerMismatch {
            url: url.to_string(),
            found: found.chars().take(200).collect(),
            expected: issuer.to_owned(),
        });
    }
    let secure = issuer.starts_with("https:");
    let endpoint = |name: &str, value: Option<String>| -> Result<Option<Url>, DiscoveryError> {
        let Some(value) = value else { return Ok(None) };
        match Url::parse(&value) {
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && !secure) => match u.host_str() {
                Some(_) if u.fragment().is_none() => Ok(Some(u)),
                _ => Err(invalid(format!("{name} {value:?} needs a host and no fragment"))),
            },
            Ok(_) => {
                Err(invalid(format!("{name} {value:?} must be an {} URL", if secure { "https" } else { "http(s)" })))
            }
            Err(e) => Err(invalid(format!("{name} {value:?}: {e}"))),
        }
    };
    let (alias_token, alias_introspection, alias_revocation) = match doc.mtls_endpoint_aliases {
        Some(a) if mtls => (a.token_endpoint, a.introspection_endpoint, a.revocation_endpoint),
        _ => (None, None, None),
    };
    let token_endpoint = endpoint("token_endpoint", alias_token.or(doc.token_endpoint))?
        .ok_or_else(|| invalid("no token_endpoint".into()))?;
    if mtls && token_endpoint.scheme() != "https" {
        return Err(invalid(format!("tls_client_auth needs an https token_endpoint, not {token_endpoint}")));
    }
    Ok(Endpoints {
        token_endpoint,
        jwks_uri: endpoint("jwks_uri", doc.jwks_uri)?,
        introspection_endpoint: endpoint("introspection_endpoint", alias_introspection.or(doc.introspection_endpoint))?,
        revocation_endpoint: endpoint("revocation_endpoint", alias_revocation.or(doc.revocation_endpoint))?,
        issuer: Some(found),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls() {
        let s = |v: Vec<Url>| v.into_iter().map(|u| u.to_string()).collect::<Vec<_>>();
        assert_eq!(
            s(metadata_urls("https://as.example.com").unwrap()),
            [
                "https://as.example.com/.well-known/oauth-authorization-server",
                "https://as.example.com/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            s(metadata_urls("https://as.example.com/realms/corp/").unwrap()),
            [
                "https://as.example.com/.well-known/oauth-authorization-server/realms/corp",
                "https://as.example.com/realms/corp/.well-known/oauth-authorization-server",
                "https://as.example.com/realms/corp/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn checks_the_document() {
        let url = Url::parse("https://as/.well-known/oauth-authorization-server").unwrap();
        let doc = br#"{"issuer":"https://as","token_endpoint":"https://as/token","jwks_uri":"https://as/jwks","introspection_endpoint":"https://as/introspect","revocation_endpoint":"https://as/revoke","mtls_endpoint_aliases":{"token_endpoint":"https://mtls.as/token","revocation_endpoint":"https://mtls.as/revoke"}}"#;
        let e = parse(&url, doc, "https://as", false).unwrap();
        assert_eq!(e.revocation_endpoint.as_ref().unwrap().as_str(), "https://as/revoke");
        let m = parse(&url, doc, "https://as", true).unwrap();
        assert_eq!(m.revocation_endpoint.unwrap().as_str(), "https://mtls.as/revoke");
        assert_eq!(e.token_endpoint.as_str(), "https://as/token");
        assert_eq!(e.jwks_uri.unwrap().as_str(), "https://as/jwks");
        assert_eq!(e.introspection_endpoint.unwrap().as_str(), "https://as/introspect");
        assert_eq!(e.issuer.as_deref(), Some("https://as"));
        assert_eq!(parse(&url, doc, "https://as", true).unwrap().token_endpoint.as_str(), "https://mtls.as/token");
        // RFC 8414 §3.3: identical, not merely equivalent.
        assert!(matches!(parse(&url, doc, "https://as/", false), Err(DiscoveryError::IssuerMismatch { .. })));
        for bad in [
            &br#"{"issuer":"https://as"}"#[..],
            br#"{"issuer":"https://as","token_endpoint":"http://as/token"}"#,
            br#"{"issuer":"https://as","token_endpoint":"https://as/token","jwks_uri":"ftp://x"}"#,
            br#"{"token_endpoint":"https://as/token"}"#,
            b"<html>",
        ] {
            assert!(matches!(parse(&url, bad, "https://as", false), Err(DiscoveryError::Invalid { .. })));
        }
        let http = br#"{"issuer":"http://as","token_endpoint":"http://as/token"}"#;
        assert!(parse(&url, http, "http://as", false).is_ok());
        assert!(parse(&url, http, "http://as", true).is_err(), "tls_client_auth over http");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) >= Duration::from_millis(125) && backoff(0) <= FIRST_BACKOFF);
        assert!(backoff(3) >= Duration::from_secs(1));
        assert!(backoff(40) <= MAX_BACKOFF && backoff(40) >= MAX_BACKOFF / 2);
    }
}
