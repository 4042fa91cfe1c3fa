//! The HTTP client shared by the JWKS fetcher and the introspection client:
//! rustls (webpki roots plus an optional CA file), no redirects, a total
//! timeout, and answers read up to a size cap.

use std::path::Path;
use std::time::Duration;

use crate::exchange::client::tls_config;
use crate::telemetry::error_chain;

pub(crate) fn client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, String> {
    let tls = tls_config(ca_file)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tokex/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// An endpoint: a configured URL, or one an authorization server published
/// in its discovered metadata (absent until discovery succeeds).
pub enum Remote {
    Fixed(url::Url),
    Discovered(
        std::sync::Arc<crate::exchange::client::AsClient>,
        fn(&crate::exchange::client::AsClient) -> Option<&url::Url>,
    ),
}

impl Remote {
    /// The configured `source`, with discovered servers taken from `servers`.
    pub fn new(
        source: &crate::config::EndpointSource,
        servers: &std::collections::BTreeMap<String, std::sync::Arc<crate::exchange::client::AsClient>>,
        pick: fn(&crate::exchange::client::AsClient) -> Option<&url::Url>,
    ) -> Result<Self, String> {
        match source {
            crate::config::EndpointSource::Url(u) => Ok(Remote::Fixed(u.clone())),
            crate::config::EndpointSource::Discovered(name) => servers
                .get(name)
                .cloned()
                .map(|c| Remote::Discovered(c, pick))
                .ok_or_else(|| format!("unknown authorization server {name}")),
        }
    }

    pub fn resolve(&self) -> Option<url::Url> {
        match self {
            Remote::Fixed(u) => Some(u.clone()),
            Remote::Discovered(c, pick) => pick(c).cloned(),
        }
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.resolve() {
            Some(u) => u.fmt(f),
            None => match self {
                Remote::Discovered(c, _) => write!(f, "(endpoint of {}, not discovered yet)", c.name),
                Remote::Fixed(u) => u.fmt(f),
            },
        }
    }
}

pub(crate) enum ReadError {
    TooLarge,
    Network(String),
}

/// The answer's body, refused beyond `max` bytes.
pub(crate) async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ReadError::Network(error_chain(&e)))? {
        if buf.len() + chunk.len() > max {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}
