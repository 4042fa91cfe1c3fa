//! The HTTP client shared by the JWKS fetcher and the introspection client:
//! rustls (webpki roots plus an optional CA file), no redirects, a total
//! timeout, and answers read up to a size cap.

use std::path::Path;
use std::time::Duration;

use crate::error::error_chain;
use crate::exchange::client::tls_config;

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
