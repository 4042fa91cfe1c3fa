//! tokex's DPoP key: a P-256 (ES256) or Ed25519 (EdDSA) key pair, from a
//! PKCS#8 file that is re-read when it changes, or made in memory at start.
//! The private key never leaves the process; the proof header (`typ`,
//! `alg`, the public `jwk`) is encoded once per key, so a proof costs one
//! small JSON object, one signature and two base64 encodings.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;

use super::{b64, thumbprint, PROOF_TYP};
use crate::secret::WatchedFile;

/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;
/// A key file is looked at (one `stat`) at most this often.
const RECHECK_MS: u64 = 1000;

enum Pair {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One DPoP key pair. Never printed; `jkt` is public.
pub struct ProofKey {
    pair: Pair,
    /// `base64url(header)` + `.`: the same for every proof of this key.
    header: String,
    jwk: serde_json::Value,
    jkt: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofKey").field("alg", &self.alg()).field("jkt", &self.jkt).finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct ProofClaims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

impl ProofKey {
    /// A PKCS#8 DER key: EC P-256 or Ed25519.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pair = if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng) {
            Pair::Es256(k)
        } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            Pair::Ed25519(k)
        } else {
            return Err("unsupported key: a DPoP key is an EC P-256 or Ed25519 PKCS#8 key".into());
        };
        Ok(Self::with(pair, rng))
    }

    /// A new key made in memory: `EdDSA` for Ed25519, else ES256.
    pub fn generate(alg: jsonwebtoken::Algorithm) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let failed = |_| "could not generate a DPoP key".to_owned();
        let pair = match alg {
            jsonwebtoken::Algorithm::EdDSA => {
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(failed)?;
                Pair::Ed25519(Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| "generated key unusable")?)
            }
            _ => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(failed)?;
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
                    .map_err(|_| "generated key unusable")?;
                Pair::Es256(pair)
            }
        };
        Ok(Self::with(pair, rng))
    }

    fn with(pair: Pair, rng: SystemRandom) -> Self {
        let (jwk, jkt) = match &pair {
            Pair::Es256(k) => {
                // Uncompressed point: 0x04 ‖ x ‖ y.
                let p = k.public_key().as_ref();
                let (x, y) = (b64(&p[1..33]), b64(&p[33..65]));
                let jkt = thumbprint(&[("crv", "P-256"), ("kty", "EC"), ("x", &x), ("y", &y)]);
                (serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}), jkt)
            }
            Pair::Ed25519(k) => {
                let x = b64(k.public_key().as_ref());
                let jkt = thumbprint(&[("crv", "Ed25519"), ("kty", "OKP"), ("x", &x)]);
                (serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x}), jkt)
            }
        };
        let alg = match pair {
            Pair::Es256(_) => "ES256",
            Pair::Ed25519(_) => "EdDSA",
        };
        let header = serde_json::json!({"typ": PROOF_TYP, "alg": alg, "jwk": jwk});
        let header = format!("{}.", b64(header.to_string().as_bytes()));
        ProofKey { pair, header, jwk, jkt, rng }
    }

    /// `ES256` or `EdDSA`.
    pub fn alg(&self) -> jsonwebtoken::Algorithm {
        match self.pair {
            Pair::Es256(_) => jsonwebtoken::Algorithm::ES256,
            Pair::Ed25519(_) => jsonwebtoken::Algorithm::EdDSA,
        }
    }

    /// The RFC 7638 thumbprint of the public key (base64url).
    pub fn jkt(&self) -> &str {
        &self.jkt
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// A fresh proof for a request (`htm`, `htu` without query and
    /// fragment): a random `jti`, `iat` now, `ath` when it goes with an
    /// access token (given as its `ath`), and the server's `nonce`.
    pub fn proof(&self, htm: &str, htu: &str, ath: Option<&str>, nonce: Option<&str>) -> Result<String, String> {
        let mut id = [0u8; 16];
        self.rng.fill(&mut id).map_err(|_| "no randomness for a DPoP jti")?;
        let jti = b64(&id);
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = ProofClaims { jti: &jti, htm, htu, iat, ath, nonce };
        let claims = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
        let mut jws = String::with_capacity(self.header.len() + claims.len() * 4 / 3 + 90);
        jws.push_str(&self.header);
        base64::Engine::encode_string(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &claims, &mut jws);
        let signature = match &self.pair {
            Pair::Es256(k) => k.sign(&self.rng, jws.as_bytes()).map_err(|_| "DPoP signing failed")?.as_ref().to_vec(),
            Pair::Ed25519(k) => k.sign(jws.as_bytes()).as_ref().to_vec(),
        };
        jws.push('.');
        base64::Engine::encode_string(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &signature, &mut jws);
        Ok(jws)
    }
}

#[cfg(test)]
impl ProofKey {
    /// A signature over any bytes (tests forge proofs with it).
    pub(crate) fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        match &self.pair {
            Pair::Es256(k) => k.sign(&self.rng, message).map(|s| s.as_ref().to_vec()).unwrap_or_default(),
            Pair::Ed25519(k) => k.sign(message).as_ref().to_vec(),
        }
    }
}

/// How many earlier keys' thumbprints are remembered (a purge finds the
/// tokens bound to them).
const HISTORY: usize = 8;

/// Where an authorization server's DPoP key comes from.
pub struct KeySource {
    current: ArcSwap<ProofKey>,
    file: Option<Watched>,
    /// The thumbprints of the keys used, newest first, at most `HISTORY`.
    used: std::sync::Mutex<Vec<String>>,
}

struct Watched {
    file: WatchedFile<Arc<ProofKey>>,
    /// Milliseconds since `epoch` of the last look at the file.
    checked: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("file", &self.file.as_ref().map(|w| w.file.path()))
            .field("jkt", &self.current.load().jkt)
            .finish()
    }
}

impl KeySource {
    /// The key of `key_file`, read now (so `check` and start fail on a bad
    /// one), or a key made in memory with `alg` when there is no file.
    pub fn new(key_file: Option<&Path>, alg: jsonwebtoken::Algorithm) -> Result<Self, String> {
        match key_file {
            None => {
                let key = ProofKey::generate(alg)?;
                let used = std::sync::Mutex::new(vec![key.jkt.clone()]);
                Ok(KeySource { current: ArcSwap::from_pointee(key), file: None, used })
            }
            Some(path) => {
                let file = WatchedFile::new(path.to_owned());
                let key = file.get(load).map_err(|e| format!("{}: {e}", path.display()))?;
                let watched = Watched { file, checked: AtomicU64::new(0), epoch: Instant::now() };
                let used = std::sync::Mutex::new(vec![key.jkt.clone()]);
                Ok(KeySource { current: ArcSwap::new(key), file: Some(watched), used })
            }
        }
    }

    /// The key to sign with now. A key file is looked at once a second at
    /// most; a changed file that cannot be read keeps the previous key (and
    /// says so in the log).
    pub fn current(&self) -> Arc<ProofKey> {
        if let Some(w) = &self.file {
            let now = u64::try_from(w.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            let last = w.checked.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= RECHECK_MS
                && w.checked.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                match w.file.get(load) {
                    Ok(key) if key.jkt != self.current.load().jkt => {
                        tracing::info!(file = %w.file.path().display(), jkt = %key.jkt, "DPoP key changed");
                        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
                        used.retain(|j| *j != key.jkt);
                        used.insert(0, key.jkt.clone());
                        used.truncate(HISTORY);
                        self.current.store(key);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(file = %w.file.path().display(), error = %e, "DPoP key file unusable; the previous key stays")
                    }
                }
            }
        }
        self.current.load_full()
    }

    /// The thumbprints of the keys this process has used, newest first.
    pub fn thumbprints(&self) -> Vec<String> {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A key file that could not be loaded.
#[derive(Debug)]
struct LoadError(String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for LoadError {
    fn from(e: std::io::Error) -> Self {
        LoadError(e.to_string())
    }
}

fn load(path: &Path, len: u64) -> Result<Arc<ProofKey>, LoadError> {
    if len > MAX_KEY_FILE {
        return Err(LoadError(format!("larger than {MAX_KEY_FILE} bytes")));
    }
    let pem = std::fs::read(path)?;
    let der = crate::secret::pkcs8_der(&pem).map_err(LoadError)?;
    ProofKey::from_pkcs8(&der).map(Arc::new).map_err(LoadError)
}

/// For tests and tools: a PKCS#8 PEM file of a new key (`EdDSA` or ES256).
pub fn write_new_key(path: &Path, alg: jsonwebtoken::Algorithm) -> Result<(), String> {
    let rng = SystemRandom::new();
    let der = match alg {
        jsonwebtoken::Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "keygen")?.as_ref().to_vec(),
        _ => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "keygen")?
            .as_ref()
            .to_vec(),
    };
    let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
    std::fs::write(path, pem).map_err(|e| e.to_string())
}
