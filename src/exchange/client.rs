//! The RFC 8693 client: one pooled reqwest client per authorization server,
//! client authentication, a capped and strictly parsed answer, and retries
//! (network errors, 429 and 5xx only) inside one total time budget.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::HeaderValue;
use tokio::time::Instant;
use url::Url;

use super::answer::parse_answer;
use super::client_auth::{client_certificate, AssertionSigner, JWT_BEARER_ASSERTION};
use super::discovery::{EndpointSlot, Endpoints};
use super::dpop::AsDpop;
use super::guard::{whole_seconds, AsGuard, Health};
use super::ExchangeError;
use crate::config::{AsLocation, AssertionAudience, AuthServerConfig, ClientAuthConfig, ErrorMap};
use crate::dpop::ProofKey;
use crate::secret::{Secret, SecretString};
use crate::telemetry::error_chain;

/// Largest answer read from an authorization server.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Client authentication at an authorization server endpoint (token
/// endpoint, introspection endpoint): one implementation for both.
/// `PrivateKeyJwt` signs a fresh assertion per request (RFC 7523); with
/// `Tls` the certificate is on the connection and `client_id` in the form
/// (RFC 8705 §2).
pub(crate) enum ClientAuth {
    Basic { client_id: String, secret: Secret },
    Post { client_id: String, secret: Secret },
    PrivateKeyJwt(AssertionSigner),
    SecretJwt { client_id: String, secret: Secret, audience: AssertionAudience },
    Tls { client_id: String },
    None { client_id: Option<String> },
}

pub struct AsClient {
    pub name: String,
    /// The configured token endpoint, or the issuer when discovered.
    location: Url,
    endpoints: EndpointSlot,
    auth: ClientAuth,
    http: reqwest::Client,
    timeout: Duration,
    retries: u32,
    /// The concurrency bound and circuit breaker of this server.
    guard: Arc<AsGuard>,
    /// How this server's refusals reach the caller (profile and `error_map`).
    errors: ErrorMap,
    /// `revocation_endpoint:` as configured (else the discovered one).
    revocation: Option<Url>,
    /// `dpop:`: proofs with every token request (RFC 9449).
    dpop: Option<Arc<AsDpop>>,
}

/// A token issued by the authorization server.
pub struct Issued {
    pub access_token: SecretString,
    /// `token_type: DPoP` (RFC 9449 §5).
    pub dpop: bool,
    /// A DPoP-bound token: the key it is bound to.
    pub bound: Option<Arc<ProofKey>>,
    pub issued_token_type: Option<String>,
    pub expires_in: Option<Duration>,
    pub scope: Option<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_token", &self.access_token)
            .field("issued_token_type", &self.issued_token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// rustls client settings shared by the exchange client and the forwarder:
/// webpki roots plus an optional extra CA file.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    Ok(tls_roots(ca_file)?.with_no_client_auth())
}

/// rustls client settings for requests authenticated with `client_auth`:
/// with `tls_client_auth` the client certificate is presented on every
/// connection (RFC 8705 §2).
pub fn tls_config_for(
    ca_file: Option<&std::path::Path>,
    client_auth: &ClientAuthConfig,
) -> Result<rustls::ClientConfig, String> {
    match client_auth {
        ClientAuthConfig::TlsClientAuth { cert_file, key_file, .. } => {
            let (chain, key) =
                client_certificate(cert_file, key_file).map_err(|e| format!("client certificate: {e}"))?;
            tls_roots(ca_file)?.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))
        }
        _ => tls_config(ca_file),
    }
}

fn tls_roots(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots))
}

impl AsClient {
    /// `guard` protects the server (see [`AsGuard`]); a reload passes the
    /// previous one on when the settings have not changed.
    pub fn new(cfg: &AuthServerConfig, guard: Arc<AsGuard>) -> Result<Self, String> {
        let tls = tls_config_for(cfg.ca_file.as_deref(), &cfg.client_auth)
            .map_err(|e| format!("authorization server {}: {e}", cfg.name))?;
        let (location, endpoints) = match &cfg.location {
            AsLocation::TokenEndpoint(u) => (u.clone(), EndpointSlot::fixed(u.clone())),
            AsLocation::Issuer(i) => {
                let url = Url::parse(i).map_err(|e| format!("authorization server {}: issuer: {e}", cfg.name))?;
                let mtls = matches!(cfg.client_auth, ClientAuthConfig::TlsClientAuth { .. });
                (url, EndpointSlot::discovered(i.clone(), mtls))
            }
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokex/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("authorization server {}: {e}", cfg.name))?;
        let auth = ClientAuth::new(&cfg.client_auth).map_err(|e| format!("authorization server {}: {e}", cfg.name))?;
        let dpop = cfg
            .dpop
            .as_ref()
            .map(AsDpop::new)
            .transpose()
            .map_err(|e| format!("authorization server {}: {e}", cfg.name))?
            .map(Arc::new);
        Ok(AsClient {
            name: cfg.name.clone(),
            location,
            endpoints,
            auth,
            http,
            timeout: cfg.timeout,
            retries: cfg.retries,
            guard,
            errors: cfg.error_map.clone(),
            revocation: cfg.revocation_endpoint.clone(),
            dpop,
        })
    }

    /// What identifies this server in cache keys: the configured token
    /// endpoint, or the issuer when the endpoints are discovered.
    /// Who tokex is at this server: the authentication method and
    /// `client_id` (part of what shapes an issued token).
    pub fn client_identity(&self) -> String {
        match &self.auth {
            ClientAuth::Basic { client_id, .. } => format!("basic:{client_id}"),
            ClientAuth::Post { client_id, .. } => format!("post:{client_id}"),
            ClientAuth::PrivateKeyJwt(s) => format!("private_key_jwt:{}", s.client_id()),
            ClientAuth::SecretJwt { client_id, .. } => format!("client_secret_jwt:{client_id}"),
            ClientAuth::Tls { client_id } => format!("tls:{client_id}"),
            ClientAuth::None { client_id } => format!("none:{}", client_id.as_deref().unwrap_or("")),
        }
    }

    pub fn endpoint(&self) -> &Url {
        &self.location
    }

    /// The token endpoint, JWKS URI and introspection endpoint, once known
    /// (at once for `token_endpoint:`, after discovery for `issuer:`).
    pub fn endpoints(&self) -> Option<&Endpoints> {
        self.endpoints.get()
    }

    /// `jwks_uri` from the discovered metadata.
    pub fn jwks_uri(&self) -> Option<&Url> {
        self.endpoints().and_then(|e| e.jwks_uri.as_ref())
    }

    /// `introspection_endpoint` from the discovered metadata (the RFC 8705
    /// alias with `tls_client_auth`).
    pub fn introspection_endpoint(&self) -> Option<&Url> {
        self.endpoints().and_then(|e| e.introspection_endpoint.as_ref())
    }

    /// Where tokens are revoked (RFC 7009): configured, or discovered.
    pub fn revocation_endpoint(&self) -> Option<&Url> {
        self.revocation.as_ref().or_else(|| self.endpoints().and_then(|e| e.revocation_endpoint.as_ref()))
    }

    /// How tokex authenticates at this server.
    pub(crate) fn auth(&self) -> &ClientAuth {
        &self.auth
    }

    /// The configured issuer (`issuer:` servers only).
    pub fn issuer(&self) -> Option<&str> {
        self.endpoints.issuer()
    }

    pub(crate) fn endpoint_slot(&self) -> &EndpointSlot {
        &self.endpoints
    }

    /// The pooled HTTP client for this server (its CA file and client certificate).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn guard(&self) -> &Arc<AsGuard> {
        &self.guard
    }

    /// The key this server's tokens are bound to now (`dpop:` servers
    /// only): its thumbprint is part of their cache keys.
    pub fn dpop_key(&self) -> Option<Arc<ProofKey>> {
        self.dpop.as_ref().map(|d| d.key())
    }

    /// The thumbprints of every DPoP key this server's tokens were bound
    /// to here, newest first (empty without `dpop:`).
    pub fn dpop_thumbprints(&self) -> Vec<String> {
        self.dpop.as_ref().map(|d| d.thumbprints()).unwrap_or_default()
    }

    /// Takes over `before`'s DPoP key and nonce when `dpop:` is unchanged
    /// (a reload must not make a new key: every cached token would miss).
    pub fn keep_dpop(&mut self, before: &AsClient) {
        if let (Some(now), Some(then)) = (&self.dpop, &before.dpop) {
            if now.config() == then.config() {
                self.dpop = Some(then.clone());
            }
        }
    }

    /// POSTs a token request (`form`: the encoded grant parameters, without
    /// client credentials) and parses the answer. The whole call, retries
    /// included, ends by `deadline` (at most this server's `timeout` away).
    /// Until discovery has found the token endpoint, the server is unavailable.
    pub async fn request(&self, form: String, deadline: Instant) -> Result<Issued, ExchangeError> {
        let Some(endpoints) = self.endpoints.get() else {
            return Err(ExchangeError::Unavailable(format!(
                "metadata of {} not discovered yet",
                self.endpoints.issuer().unwrap_or_default()
            )));
        };
        let endpoint = &endpoints.token_endpoint;
        let deadline = deadline.min(Instant::now() + self.timeout);
        let mut attempt = 0u32;
        let mut last = None;
        loop {
            // While the breaker is open nobody waits for a slot; admission
            // (the probe, if it is one) is decided once the slot is held, so
            // requests queued before it opened do not call the server after.
            self.guard.check().map_err(|e| refused(e, last.take()))?;
            let slot = self.guard.slot(deadline).await.map_err(|e| refused(e, last.take()))?;
            let pass = self.guard.admit().map_err(|e| refused(e, last.take()))?;
            let started = Instant::now();
            let result =
                tokio::time::timeout_at(deadline, self.attempt(endpoint, endpoints.issuer.as_deref(), &form)).await;
            let probe = pass.is_probe();
            let (err, asked) = match result {
                Ok(Ok(issued)) => {
                    pass.record(Health::Answered);
                    return Ok(issued);
                }
                Ok(Err(Attempt::Final(e))) => {
                    pass.record(Health::Answered);
                    return Err(e);
                }
                Ok(Err(Attempt::Retryable { why, retry_after })) => {
                    pass.record(Health::Failed);
                    (why, retry_after)
                }
                Err(_) => {
                    // Out of budget. It says the server is slow only if it
                    // had a fair share of the budget: a caller that spent
                    // most of its own waiting for a slot proves nothing.
                    if deadline.saturating_duration_since(started) >= self.timeout / 2 {
                        pass.record(Health::Failed);
                    }
                    return Err(ExchangeError::Unavailable(format!("no answer within {:?}", self.timeout)));
                }
            };
            let throttled = |wait: Duration| ExchangeError::Throttled { retry_after: whole_seconds(wait) };
            // The probe after an open breaker is one request, not a series.
            if attempt >= self.retries || probe {
                return Err(match asked {
                    Some(wait) if wait > Duration::from_secs(1) => throttled(wait),
                    _ => ExchangeError::Unavailable(err),
                });
            }
            // Full jitter over an exponential step: 25ms, 50ms, 100ms, ... capped
            // at 1s; never sooner than a 429/503's Retry-After asks.
            let step = Duration::from_millis(25u64 << attempt.min(6)).min(Duration::from_secs(1));
            let pause = step.mul_f64(fastrand::f64()).max(asked.unwrap_or_default());
            if Instant::now() + pause >= deadline {
                return Err(asked.map_or(ExchangeError::Unavailable(err), throttled));
            }
            // Nothing is in flight at the server while this one waits.
            drop(slot);
            tokio::time::sleep(pause).await;
            attempt += 1;
            tracing::debug!(server = %self.name, attempt, error = %err, "retrying token request");
            last = Some(err);
        }
    }

    /// One token request: a fresh client assertion (a `private_key_jwt`
    /// one is never sent twice: `jti`) and DPoP proof each time, and with
    /// DPoP one more at once when the server asks for a nonce.
    async fn attempt(&self, endpoint: &Url, issuer: Option<&str>, form: &str) -> Result<Issued, Attempt> {
        let key = self.dpop.as_ref().map(|d| d.key());
        let mut nonce_retry = self.dpop.is_some();
        loop {
            let (body, basic) = self.auth.apply(form.to_owned(), endpoint.as_str(), issuer).map_err(Attempt::Final)?;
            let mut req = self
                .http
                .post(endpoint.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(ACCEPT, "application/json")
                .body(body);
            if let Some(b) = basic {
                req = req.header(AUTHORIZATION, b);
            }
            if let (Some(dpop), Some(key)) = (&self.dpop, &key) {
                req = req.header(crate::dpop::HEADER, dpop.proof(key, endpoint).map_err(Attempt::Final)?);
            }
            let resp = req.send().await.map_err(|e| Attempt::Retryable { why: error_chain(&e), retry_after: None })?;
            let fresh_nonce = self.dpop.as_ref().is_some_and(|d| d.remember_nonce(resp.headers()));
            let (status, body) = self.read(resp).await?;
            if nonce_retry && fresh_nonce && super::dpop::asks_for_nonce(status, &body) {
                nonce_retry = false;
                continue;
            }
            let mut issued = parse_answer(status, &body, &self.errors).map_err(|e| match e {
                // A refusal the server's error map calls unavailable (e.g.
                // `temporarily_unavailable`): a failure like a 5xx, retried
                // within the budget and counted by the circuit breaker.
                ExchangeError::Unavailable(why) => Attempt::Retryable { why, retry_after: None },
                e => Attempt::Final(e),
            })?;
            if issued.dpop {
                issued.bound = Some(key.ok_or_else(|| {
                    Attempt::Final(ExchangeError::BadAnswer("token_type DPoP, but no DPoP proof was sent".into()))
                })?);
            }
            return Ok(issued);
        }
    }

    /// The answer's status and body (capped); a 5xx or 429 is retryable.
    async fn read(&self, mut resp: reqwest::Response) -> Result<(u16, Vec<u8>), Attempt> {
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            let retry_after = match status.as_u16() {
                429 | 503 => resp.headers().get(RETRY_AFTER).and_then(retry_after),
                _ => None,
            };
            return Err(Attempt::Retryable { why: format!("HTTP {}", status.as_u16()), retry_after });
        }
        if resp.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
            return Err(Attempt::Final(ExchangeError::BadAnswer(format!(
                "answer larger than {MAX_ANSWER_BYTES} bytes"
            ))));
        }
        let mut buf = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(Attempt::Final(ExchangeError::BadAnswer(format!(
                            "answer larger than {MAX_ANSWER_BYTES} bytes"
                        ))));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(Attempt::Retryable { why: error_chain(&e), retry_after: None }),
            }
        }
        Ok((status.as_u16(), buf))
    }
}

/// A breaker refusal: for a request that already called the server (a
/// retry refused because the breaker has opened since), the failure that
/// call met, so it is reported — and audited — as the call it was.
fn refused(e: ExchangeError, last: Option<String>) -> ExchangeError {
    match last {
        Some(why) => ExchangeError::Unavailable(why),
        None => e,
    }
}

enum Attempt {
    /// A network error, a 429 or a 5xx; with the wait a 429/503 asked for.
    Retryable {
        why: String,
        retry_after: Option<Duration>,
    },
    Final(ExchangeError),
}

/// Longest `Retry-After` taken from an authorization server.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// `Retry-After` as delta-seconds (RFC 9110 §10.2.3), capped; an HTTP-date
/// is not read (the retry then follows the usual backoff).
fn retry_after(v: &HeaderValue) -> Option<Duration> {
    let v = v.to_str().ok()?.trim();
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

impl ClientAuth {
    /// Built from config; a secret file is read once here so a missing one
    /// fails at start (and in `tokex check`).
    pub(crate) fn new(cfg: &ClientAuthConfig) -> Result<Self, String> {
        let auth = match cfg {
            ClientAuthConfig::SecretBasic { client_id, secret } => {
                ClientAuth::Basic { client_id: client_id.clone(), secret: Secret::from_source(secret) }
            }
            ClientAuthConfig::SecretPost { client_id, secret } => {
                ClientAuth::Post { client_id: client_id.clone(), secret: Secret::from_source(secret) }
            }
            ClientAuthConfig::PrivateKeyJwt { client_id, private_key_file, key_id, algorithm, assertion_audience } => {
                ClientAuth::PrivateKeyJwt(
                    AssertionSigner::new(
                        client_id,
                        private_key_file,
                        key_id.as_deref(),
                        *algorithm,
                        *assertion_audience,
                    )
                    .map_err(|e| format!("private key: {e}"))?,
                )
            }
            ClientAuthConfig::SecretJwt { client_id, secret, assertion_audience } => ClientAuth::SecretJwt {
                client_id: client_id.clone(),
                secret: Secret::from_source(secret),
                audience: *assertion_audience,
            },
            ClientAuthConfig::TlsClientAuth { client_id, .. } => ClientAuth::Tls { client_id: client_id.clone() },
            ClientAuthConfig::None { client_id } => ClientAuth::None { client_id: client_id.clone() },
        };
        if let ClientAuth::Basic { secret, .. }
        | ClientAuth::Post { secret, .. }
        | ClientAuth::SecretJwt { secret, .. } = &auth
        {
            secret.preload().map_err(|e| format!("client secret: {e}"))?;
        }
        Ok(auth)
    }

    /// Adds client authentication to a form-encoded request to `endpoint`
    /// (of the AS `issuer`, when known: a `private_key_jwt` audience): the
    /// new form, and the `Authorization` header to send with it (Basic).
    pub(crate) fn apply(
        &self,
        form: String,
        endpoint: &str,
        issuer: Option<&str>,
    ) -> Result<(String, Option<HeaderValue>), ExchangeError> {
        // Start position 0: the existing parameters are part of this form,
        // so appended pairs get their `&` separator.
        let mut form = form_urlencoded::Serializer::for_suffix(form, 0);
        let mut basic = None;
        match self {
            ClientAuth::Basic { client_id, secret } => {
                let secret = secret.get().map_err(|e| ExchangeError::Config(format!("client secret: {e}")))?;
                basic = Some(basic_header(client_id, secret.expose())?);
            }
            ClientAuth::Post { client_id, secret } => {
                let secret = secret.get().map_err(|e| ExchangeError::Config(format!("client secret: {e}")))?;
                form.append_pair("client_id", client_id).append_pair("client_secret", secret.expose());
            }
            ClientAuth::PrivateKeyJwt(signer) => {
                let assertion = signer
                    .assertion(endpoint, issuer)
                    .map_err(|e| ExchangeError::Config(format!("client assertion: {e}")))?;
                form.append_pair("client_id", signer.client_id())
                    .append_pair("client_assertion_type", JWT_BEARER_ASSERTION)
                    .append_pair("client_assertion", &assertion);
            }
            ClientAuth::SecretJwt { client_id, secret, audience } => {
                let secret = secret.get().map_err(|e| ExchangeError::Config(format!("client secret: {e}")))?;
                let assertion = super::client_auth::secret_assertion(
                    client_id,
                    secret.expose().as_bytes(),
                    *audience,
                    endpoint,
                    issuer,
                )
                .map_err(|e| ExchangeError::Config(format!("client assertion: {e}")))?;
                form.append_pair("client_id", client_id)
                    .append_pair("client_assertion_type", JWT_BEARER_ASSERTION)
                    .append_pair("client_assertion", &assertion);
            }
            ClientAuth::Tls { client_id } => {
                form.append_pair("client_id", client_id);
            }
            ClientAuth::None { client_id } => {
                if let Some(id) = client_id {
                    form.append_pair("client_id", id);
                }
            }
        }
        Ok((form.finish(), basic))
    }
}

/// RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
fn basic_header(client_id: &str, secret: &str) -> Result<HeaderValue, ExchangeError> {
    let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let secret: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let mut v = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))))
        .map_err(|_| ExchangeError::Config("client credentials do not fit a header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_delta_seconds() {
        let v = |s: &'static str| retry_after(&HeaderValue::from_static(s));
        assert_eq!(v("3"), Some(Duration::from_secs(3)));
        assert_eq!(v(" 0 "), Some(Duration::ZERO));
        assert_eq!(v("999999"), Some(MAX_RETRY_AFTER));
        for bad in ["", "-1", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT", "99999999999999999999"] {
            assert_eq!(v(bad), None, "{bad}");
        }
    }

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        let h = basic_header("my client", "p@ss:word").unwrap();
        let decoded = STANDARD.decode(&h.to_str().unwrap()[6..]).unwrap();
        assert_eq!(decoded, b"my+client:p%40ss%3Aword");
    }
}
