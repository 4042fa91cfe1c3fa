//! Requests made on the dev-sts side: the commands' form posts to a
//! running dev-sts (`tokex dev-sts mint` / `revoke`) and `/ssf/emit`'s push
//! to a receiver. Answers are read up to a cap, and text from the other
//! side is made safe for a terminal before it is shown.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use serde_json::Value;

/// A client with the crate's TLS roots, no redirects, and `timeout` for
/// the whole exchange (connect to the last byte of the answer).
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    let tls = crate::exchange::client::tls_config(None)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tokex/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// The answer body, at most `max` bytes.
pub(crate) async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| crate::telemetry::error_chain(&e))? {
        if body.len() + chunk.len() > max {
            return Err("answer too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Text from the other side, safe for a terminal: no control characters,
/// at most 300 characters.
pub(crate) fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

/// Largest answer read from the dev-sts.
const MAX_STS_ANSWER_BYTES: usize = 64 * 1024;

/// A dev-sts answer: the status and the body, if JSON.
pub(crate) struct StsAnswer {
    pub status: StatusCode,
    pub json: Option<Value>,
}

impl StsAnswer {
    /// A string member of the JSON answer.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.json.as_ref().and_then(|v| v.get(name)).and_then(Value::as_str)
    }

    /// What to tell the user about a non-2xx answer from `endpoint`,
    /// which the user gave with `flag`.
    pub fn refusal(&self, endpoint: &url::Url, flag: &str) -> String {
        if self.status == StatusCode::NOT_FOUND {
            return format!("{endpoint} answered 404: is {flag} the issuer URL of a tokex dev-sts?");
        }
        match self.field("error") {
            Some(code) => format!(
                "the dev-sts refused (HTTP {}): {}: {}",
                self.status.as_u16(),
                printable(code),
                printable(self.field("error_description").unwrap_or("-"))
            ),
            None => format!("{endpoint} answered HTTP {}", self.status.as_u16()),
        }
    }
}

/// Posts `form` to a dev-sts endpoint with client_secret_basic (id and
/// secret form-encoded, RFC 6749 §2.3.1); an error only when there is no
/// answer to read.
pub(crate) async fn post_form(
    endpoint: &url::Url,
    id: &str,
    secret: &str,
    form: String,
    timeout: Duration,
) -> Result<StsAnswer, String> {
    let http = http_client(timeout)?;
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let credentials = STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
    let mut basic = HeaderValue::from_str(&format!("Basic {credentials}")).map_err(|e| e.to_string())?;
    basic.set_sensitive(true);
    let resp = http
        .post(endpoint.clone())
        .header(AUTHORIZATION, basic)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .body(form)
        .send()
        .await
        .map_err(|e| format!("cannot reach the dev-sts at {endpoint}: {}", crate::telemetry::error_chain(&e)))?;
    let status = resp.status();
    let body = read_capped(resp, MAX_STS_ANSWER_BYTES).await.map_err(|e| format!("{endpoint}: {e}"))?;
    Ok(StsAnswer { status, json: serde_json::from_slice(&body).ok() })
}

/// `--url` / `--sts` (named `flag`): the issuer URL, or one of its
/// endpoints (`/token`, `/mint`, `/revoke`, `/ssf/emit`); the URL of
/// `leaf` (e.g. `/mint`) under that issuer.
pub(crate) fn sts_endpoint(flag: &str, url: &str, leaf: &str) -> Result<url::Url, String> {
    let bad = |why: &str| format!("{flag} {url}: {why}");
    let mut u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") || u.query().is_some() || u.fragment().is_some() {
        return Err(bad("must be an http(s) URL without query or fragment"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("give the credentials with --client-id and --client-secret"));
    }
    let path = u.path().trim_end_matches('/');
    let base = ["/mint", "/token", "/revoke", "/ssf/emit"].iter().find_map(|s| path.strip_suffix(s)).unwrap_or(path);
    let path = format!("{base}{leaf}");
    u.set_path(&path);
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_under_the_issuer() {
        for (given, want) in [
            ("http://127.0.0.1:9400", "http://127.0.0.1:9400/ssf/emit"),
            ("http://127.0.0.1:9400/ssf/emit", "http://127.0.0.1:9400/ssf/emit"),
            ("http://127.0.0.1:9400/revoke", "http://127.0.0.1:9400/ssf/emit"),
            ("https://sts.example/dev/token", "https://sts.example/dev/ssf/emit"),
        ] {
            assert_eq!(sts_endpoint("--sts", given, "/ssf/emit").unwrap().as_str(), want, "{given}");
        }
        let e = sts_endpoint("--sts", "ftp://x", "/ssf/emit").unwrap_err();
        assert!(e.starts_with("--sts ftp://x"), "{e}");
    }

    #[test]
    fn printable_drops_control_characters() {
        assert_eq!(printable("a\u{1b}[31mb\nc"), "a[31mbc");
        assert_eq!(printable(&"x".repeat(400)).len(), 300);
    }
}
