//! The RFC 8693 client: one pooled reqwest client per authorization server,
//! client authentication, a capped and strictly parsed answer, and retries
//! (network errors, 429 and 5xx only) inside one total time budget.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::HeaderValue;
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::ExchangeError;
use crate::config::{AuthServerConfig, ClientAuthConfig};
use crate::error::error_chain;
use crate::secret::{Secret, SecretString};

/// Largest answer read from an authorization server.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

enum ClientAuth {
    Basic { client_id: String, secret: Secret },
    Post { client_id: String, secret: Secret },
    None { client_id: Option<String> },
}

pub struct AsClient {
    pub name: String,
    endpoint: Url,
    auth: ClientAuth,
    http: reqwest::Client,
    timeout: Duration,
    retries: u32,
}

/// A token issued by the authorization server.
pub struct Issued {
    pub access_token: SecretString,
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
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl AsClient {
    pub fn new(cfg: &AuthServerConfig) -> Result<Self, String> {
        let tls = tls_config(cfg.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokex/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("authorization server {}: {e}", cfg.name))?;
        let auth = match &cfg.client_auth {
            ClientAuthConfig::SecretBasic { client_id, secret } => {
                ClientAuth::Basic { client_id: client_id.clone(), secret: Secret::from_source(secret) }
            }
            ClientAuthConfig::SecretPost { client_id, secret } => {
                ClientAuth::Post { client_id: client_id.clone(), secret: Secret::from_source(secret) }
            }
            ClientAuthConfig::None { client_id } => ClientAuth::None { client_id: client_id.clone() },
        };
        if let ClientAuth::Basic { secret, .. } | ClientAuth::Post { secret, .. } = &auth {
            secret.preload().map_err(|e| format!("authorization server {}: client secret: {e}", cfg.name))?;
        }
        Ok(AsClient {
            name: cfg.name.clone(),
            endpoint: cfg.token_endpoint.clone(),
            auth,
            http,
            timeout: cfg.timeout,
            retries: cfg.retries,
        })
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Adds client authentication to a form-encoded token request.
    fn authenticate(&self, form: String) -> Result<(String, Option<HeaderValue>), ExchangeError> {
        // Start position 0: the existing parameters are part of this form,
        // so appended pairs get their `&` separator.
        let mut form = form_urlencoded::Serializer::for_suffix(form, 0);
        let mut basic = None;
        match &self.auth {
            ClientAuth::Basic { client_id, secret } => {
                let secret = secret.get().map_err(|e| ExchangeError::Config(format!("client secret: {e}")))?;
                basic = Some(basic_header(client_id, secret.expose())?);
            }
            ClientAuth::Post { client_id, secret } => {
                let secret = secret.get().map_err(|e| ExchangeError::Config(format!("client secret: {e}")))?;
                form.append_pair("client_id", client_id).append_pair("client_secret", secret.expose());
            }
            ClientAuth::None { client_id } => {
                if let Some(id) = client_id {
                    form.append_pair("client_id", id);
                }
            }
        }
        Ok((form.finish(), basic))
    }

    /// POSTs a token request (`form`: the encoded grant parameters, without
    /// client credentials) and parses the answer. The whole call, retries
    /// included, stays within `timeout`.
    pub async fn request(&self, form: String) -> Result<Issued, ExchangeError> {
        let (body, basic) = self.authenticate(form)?;
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0u32;
        loop {
            let result = tokio::time::timeout_at(deadline, self.attempt(body.clone(), basic.clone())).await;
            let err = match result {
                Ok(Ok(issued)) => return Ok(issued),
                Ok(Err(Attempt::Final(e))) => return Err(e),
                Ok(Err(Attempt::Retryable(why))) => why,
                Err(_) => return Err(ExchangeError::Unavailable(format!("no answer within {:?}", self.timeout))),
            };
            if attempt >= self.retries {
                return Err(ExchangeError::Unavailable(err));
            }
            // Full jitter over an exponential step: 25ms, 50ms, 100ms, ... capped at 1s.
            let step = Duration::from_millis(25u64 << attempt.min(6)).min(Duration::from_secs(1));
            let pause = step.mul_f64(fastrand::f64());
            if Instant::now() + pause >= deadline {
                return Err(ExchangeError::Unavailable(err));
            }
            tokio::time::sleep(pause).await;
            attempt += 1;
            tracing::debug!(server = %self.name, attempt, error = %err, "retrying token request");
        }
    }

    async fn attempt(&self, body: String, basic: Option<HeaderValue>) -> Result<Issued, Attempt> {
        let mut req = self
            .http
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body);
        if let Some(b) = basic {
            req = req.header(AUTHORIZATION, b);
        }
        let mut resp = req.send().await.map_err(|e| Attempt::Retryable(error_chain(&e)))?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(Attempt::Retryable(format!("HTTP {}", status.as_u16())));
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
                Err(e) => return Err(Attempt::Retryable(error_chain(&e))),
            }
        }
        parse_answer(status.as_u16(), &buf).map_err(Attempt::Final)
    }
}

enum Attempt {
    Retryable(String),
    Final(ExchangeError),
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

#[derive(Deserialize)]
struct Answer {
    access_token: Option<String>,
    issued_token_type: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
    error: Option<String>,
}

/// Parses a token endpoint answer (RFC 6749 §5.1/§5.2, RFC 8693 §2.2).
fn parse_answer(status: u16, body: &[u8]) -> Result<Issued, ExchangeError> {
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| ExchangeError::BadAnswer(format!("HTTP {status} with a body that is not a JSON token answer")))?;
    if status != 200 {
        let code = answer.error.as_deref().map(sanitize_code).unwrap_or_default();
        return Err(match code.as_str() {
            "invalid_grant" => ExchangeError::InvalidGrant,
            "invalid_scope" | "invalid_target" => ExchangeError::InsufficientScope(code),
            "invalid_client" | "unauthorized_client" => ExchangeError::ClientRejected(code),
            "" => ExchangeError::BadAnswer(format!("HTTP {status} without an error code")),
            _ => ExchangeError::BadAnswer(format!("HTTP {status} error {code}")),
        });
    }
    let access_token = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ExchangeError::BadAnswer("no access_token".into()))?;
    if HeaderValue::from_str(&access_token).is_err() || access_token.len() > MAX_ANSWER_BYTES / 2 {
        return Err(ExchangeError::BadAnswer("access_token cannot be sent in a header".into()));
    }
    match answer.token_type.as_deref() {
        Some(t) if t.eq_ignore_ascii_case("bearer") || t.eq_ignore_ascii_case("n_a") => {}
        Some(t) => return Err(ExchangeError::BadAnswer(format!("unsupported token_type {}", sanitize_code(t)))),
        None => return Err(ExchangeError::BadAnswer("no token_type".into())),
    }
    let expires_in = match answer.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(n.as_f64().filter(|s| *s >= 0.0 && s.is_finite())),
        Some(serde_json::Value::String(s)) => Some(s.trim().parse::<f64>().ok().filter(|s| *s >= 0.0 && s.is_finite())),
        Some(_) => Some(None),
    };
    let expires_in = match expires_in {
        None => None,
        Some(Some(secs)) => Some(Duration::from_secs_f64(secs.min(1e9))),
        Some(None) => return Err(ExchangeError::BadAnswer("expires_in is not a non-negative number".into())),
    };
    Ok(Issued {
        access_token: SecretString::new(access_token),
        issued_token_type: answer.issued_token_type,
        expires_in,
        scope: answer.scope,
    })
}

/// Error codes are logged and labelled: keep them short and plain.
fn sanitize_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(48).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_success() {
        let ok = parse_answer(
            200,
            br#"{"access_token":"t","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":60,"scope":"a b"}"#,
        )
        .unwrap();
        assert_eq!(ok.access_token.expose(), "t");
        assert_eq!(ok.expires_in, Some(Duration::from_secs(60)));
        assert_eq!(ok.scope.as_deref(), Some("a b"));
        let na = parse_answer(200, br#"{"access_token":"t","token_type":"N_A","expires_in":"30"}"#).unwrap();
        assert_eq!(na.expires_in, Some(Duration::from_secs(30)));
    }

    #[test]
    fn maps_errors() {
        let e = |body: &[u8]| parse_answer(400, body).unwrap_err();
        assert!(matches!(e(br#"{"error":"invalid_grant"}"#), ExchangeError::InvalidGrant));
        assert!(matches!(e(br#"{"error":"invalid_scope"}"#), ExchangeError::InsufficientScope(_)));
        assert!(matches!(e(br#"{"error":"invalid_target"}"#), ExchangeError::InsufficientScope(_)));
        assert!(matches!(e(br#"{"error":"invalid_client"}"#), ExchangeError::ClientRejected(_)));
        assert!(matches!(e(br#"{"error":"unauthorized_client"}"#), ExchangeError::ClientRejected(_)));
        assert!(matches!(e(br#"{"error":"whatever"}"#), ExchangeError::BadAnswer(_)));
        assert!(matches!(e(b"<html>"), ExchangeError::BadAnswer(_)));
    }

    #[test]
    fn rejects_unusable_success() {
        for body in [
            &br#"{"token_type":"Bearer"}"#[..],
            br#"{"access_token":"t"}"#,
            br#"{"access_token":"t","token_type":"DPoP"}"#,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":-1}"#,
            br#"{"access_token":"t\n","token_type":"Bearer"}"#,
            b"[]",
        ] {
            assert!(
                matches!(parse_answer(200, body), Err(ExchangeError::BadAnswer(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        let h = basic_header("my client", "p@ss:word").unwrap();
        let decoded = STANDARD.decode(&h.to_str().unwrap()[6..]).unwrap();
        assert_eq!(decoded, b"my+client:p%40ss%3Aword");
    }
}
