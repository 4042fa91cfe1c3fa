//! DPoP toward an authorization server (RFC 9449 §5, §8): a fresh proof
//! with every token request, the server's latest nonce remembered and sent,
//! and one immediate retry when the server answers `use_dpop_nonce`.

use std::sync::Arc;

use http::HeaderValue;
use url::Url;

use super::ExchangeError;
use crate::config::DpopKeyConfig;
use crate::dpop::{KeySource, Nonce, ProofKey};

pub struct AsDpop {
    cfg: DpopKeyConfig,
    keys: KeySource,
    /// The server's latest `DPoP-Nonce`.
    nonce: Nonce,
}

impl std::fmt::Debug for AsDpop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsDpop").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl AsDpop {
    pub fn new(cfg: &DpopKeyConfig) -> Result<Self, String> {
        let keys = KeySource::new(cfg.key_file.as_deref(), cfg.algorithm).map_err(|e| format!("dpop key: {e}"))?;
        Ok(AsDpop { cfg: cfg.clone(), keys, nonce: Nonce::default() })
    }

    pub fn config(&self) -> &DpopKeyConfig {
        &self.cfg
    }

    /// The thumbprints of every key tokens were bound to here, newest first.
    pub fn thumbprints(&self) -> Vec<String> {
        self.keys.thumbprints()
    }

    /// The key new tokens are bound to now.
    pub fn key(&self) -> Arc<ProofKey> {
        self.keys.current()
    }

    /// A proof for a token request to `endpoint` with `key`: `htm` POST,
    /// `htu` the endpoint without query and fragment, the latest nonce.
    pub fn proof(&self, key: &ProofKey, endpoint: &Url) -> Result<HeaderValue, ExchangeError> {
        let mut htu = endpoint.clone();
        htu.set_query(None);
        htu.set_fragment(None);
        let nonce = self.nonce.get();
        let proof = key.proof("POST", htu.as_str(), None, nonce.as_deref()).map_err(ExchangeError::Config)?;
        HeaderValue::try_from(proof).map_err(|_| ExchangeError::Config("DPoP proof is not a header value".into()))
    }

    /// Takes the server's `DPoP-Nonce`, when it sent a usable one; true if so.
    pub fn remember_nonce(&self, headers: &http::HeaderMap) -> bool {
        self.nonce.remember(headers)
    }
}

/// A `400` token answer that asks for a nonce (`error: use_dpop_nonce`).
pub fn asks_for_nonce(status: u16, body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Error<'a> {
        #[serde(borrow)]
        error: Option<std::borrow::Cow<'a, str>>,
    }
    status == 400
        && serde_json::from_slice::<Error<'_>>(body).is_ok_and(|e| e.error.as_deref() == Some("use_dpop_nonce"))
}
