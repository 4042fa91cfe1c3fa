//! Key material for client authentication at an authorization server:
//! `private_key_jwt` assertions (RFC 7523 §2.2, signed with a PKCS#8 key
//! file that is re-read when it changes), `client_secret_jwt` ones (HS256
//! over the client secret) and the `tls_client_auth` client
//! certificate (RFC 8705 §2). `client::ClientAuth` applies them to requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

use crate::config::AssertionAudience;
use crate::secret::{pkcs8_der, WatchedFile};

/// `client_assertion_type` of RFC 7523 client authentication.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of a client assertion, in seconds: one request's worth.
pub const ASSERTION_LIFETIME_SECS: u64 = 60;

/// Largest key or certificate file read.
const MAX_KEY_FILE: u64 = 64 * 1024;

pub use crate::config::limits::ASSERTION_ALGORITHMS;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("cannot sign the client assertion: {0}")]
    Sign(String),
}

/// A key file that could not be loaded; `AssertionSigner::key` adds the path.
enum LoadError {
    Io(std::io::Error),
    Invalid(String),
}

impl From<std::io::Error> for LoadError {
    fn from(e: std::io::Error) -> Self {
        LoadError::Io(e)
    }
}

/// A parsed signing key. Never printed.
struct SigningKey {
    alg: Algorithm,
    encoding: EncodingKey,
}

/// Signs `private_key_jwt` client assertions for one client.
pub struct AssertionSigner {
    client_id: String,
    key_id: Option<String>,
    algorithm: Option<Algorithm>,
    audience: AssertionAudience,
    key: WatchedFile<Arc<SigningKey>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("client_id", &self.client_id)
            .field("key_file", &self.key.path())
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl AssertionSigner {
    /// Reads and checks the key now, so a missing or unusable key fails at
    /// start (and in `tokex check`).
    pub fn new(
        client_id: &str,
        key_file: &Path,
        key_id: Option<&str>,
        algorithm: Option<Algorithm>,
        audience: AssertionAudience,
    ) -> Result<Self, KeyError> {
        let signer = AssertionSigner {
            client_id: client_id.to_owned(),
            key_id: key_id.map(str::to_owned),
            algorithm,
            audience,
            key: WatchedFile::new(key_file.to_owned()),
            rng: SystemRandom::new(),
        };
        signer.key()?;
        Ok(signer)
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The current key; re-read when the file changed.
    fn key(&self) -> Result<Arc<SigningKey>, KeyError> {
        let path = self.key.path();
        let load = |p: &Path, len| load_signing_key(p, len, self.algorithm).map(Arc::new).map_err(LoadError::Invalid);
        self.key.get(load).map_err(|e| match e {
            LoadError::Io(source) => KeyError::Io { path: path.to_owned(), source },
            LoadError::Invalid(why) => KeyError::Invalid { path: path.to_owned(), why },
        })
    }

    /// A fresh assertion for a request to `endpoint` of the authorization
    /// server `issuer` (when known): `iss` = `sub` = client_id, `aud` per
    /// config, a random `jti`, `iat`, `exp` 60 s later, `kid` when set.
    pub fn assertion(&self, endpoint: &str, issuer: Option<&str>) -> Result<String, KeyError> {
        let key = self.key()?;
        let claims = assertion_claims(&self.client_id, self.audience, endpoint, issuer, &self.rng)?;
        let mut header = Header::new(key.alg);
        header.typ = Some("JWT".into());
        header.kid = self.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// The claims of an RFC 7523 client assertion: `iss` = `sub` = client_id,
/// `aud` per `audience` (the request's endpoint, or the AS `issuer`), a
/// random `jti`, `iat`, `exp` 60 s later.
fn assertion_claims(
    client_id: &str,
    audience: AssertionAudience,
    endpoint: &str,
    issuer: Option<&str>,
    rng: &SystemRandom,
) -> Result<serde_json::Value, KeyError> {
    let aud = match (audience, issuer) {
        (AssertionAudience::TokenEndpoint, _) => endpoint,
        (AssertionAudience::Issuer, Some(issuer)) => issuer,
        (AssertionAudience::Issuer, None) => {
            return Err(KeyError::Sign("assertion_audience: issuer needs the issuer (configure issuer:)".into()))
        }
    };
    let mut jti = [0u8; 16];
    rng.fill(&mut jti).map_err(|_| KeyError::Sign("no randomness for jti".into()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(json!({
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    }))
}

/// A `client_secret_jwt` assertion (RFC 7523 §2.2, OpenID Connect Core
/// §9): the claims of [`assertion_claims`], HS256 over the client secret.
pub fn secret_assertion(
    client_id: &str,
    secret: &[u8],
    audience: AssertionAudience,
    endpoint: &str,
    issuer: Option<&str>,
) -> Result<String, KeyError> {
    let claims = assertion_claims(client_id, audience, endpoint, issuer, &SystemRandom::new())?;
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).map_err(|e| KeyError::Sign(e.to_string()))
}

/// Reads a PKCS#8 PEM private key: RSA of at least 2048 bits (RS256 by
/// default; RS384/512, PS256/384/512 allowed), EC P-256 (ES256), EC P-384
/// (ES384) or Ed25519 (EdDSA). `algorithm` must suit the key.
fn load_signing_key(path: &Path, len: u64, algorithm: Option<Algorithm>) -> Result<SigningKey, String> {
    if len > MAX_KEY_FILE {
        return Err(format!("larger than {MAX_KEY_FILE} bytes"));
    }
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let der = pkcs8_der(&pem)?;
    let rng = SystemRandom::new();
    let (allowed, encoding): (&[Algorithm], EncodingKey) =
        if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).is_ok() {
            (&[Algorithm::ES256], EncodingKey::from_ec_der(&der))
        } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der, &rng).is_ok() {
            (&[Algorithm::ES384], EncodingKey::from_ec_der(&der))
        } else if Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).is_ok() {
            (&[Algorithm::EdDSA], EncodingKey::from_ed_der(&der))
        } else if let Ok(kp) = RsaKeyPair::from_pkcs8(&der) {
            if kp.public().modulus_len() < 256 {
                return Err("RSA keys must have at least 2048 bits".into());
            }
            // jsonwebtoken signs with the PKCS#1 key it finds inside a PKCS#8 PEM block.
            let block = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(&der));
            let encoding = EncodingKey::from_rsa_pem(block.as_bytes()).map_err(|e| format!("unusable RSA key: {e}"))?;
            use Algorithm::*;
            (&[RS256, RS384, RS512, PS256, PS384, PS512], encoding)
        } else {
            return Err("unsupported key: use an RSA (2048+ bits), EC P-256, EC P-384 or Ed25519 PKCS#8 key".into());
        };
    let alg = match algorithm {
        None => allowed[0],
        Some(a) if allowed.contains(&a) => a,
        Some(a) => return Err(format!("algorithm {a:?} does not suit this key (it signs with {allowed:?})")),
    };
    // Sign once so a key that cannot sign fails here, not on a request.
    jsonwebtoken::encode(&Header::new(alg), &json!({"self_test": true}), &encoding)
        .map_err(|e| format!("key self-test failed: {e}"))?;
    Ok(SigningKey { alg, encoding })
}

/// A `tls_client_auth` identity: the certificate chain (leaf first) from
/// `cert_file` and the private key (PKCS#8, SEC1 or PKCS#1 PEM) from `key_file`.
pub fn client_certificate(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KeyError> {
    let read = |path: &Path| -> Result<Vec<u8>, KeyError> {
        let io = |source| KeyError::Io { path: path.to_owned(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_KEY_FILE {
            return Err(KeyError::Invalid { path: path.to_owned(), why: format!("larger than {MAX_KEY_FILE} bytes") });
        }
        std::fs::read(path).map_err(io)
    };
    let invalid = |path: &Path, why: String| KeyError::Invalid { path: path.to_owned(), why };
    let pem = read(cert_file)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_file, format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(cert_file, "holds no PEM certificate".into()));
    }
    let pem = read(key_file)?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| invalid(key_file, format!("not a PEM file: {e}")))?
        .ok_or_else(|| invalid(key_file, "holds no PEM private key".into()))?;
    Ok((certs, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use ring::signature::KeyPair;
    use serde_json::Value;

    fn pem(der: &[u8]) -> String {
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(der))
    }

    fn temp(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tokex-client-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn signs_es256_and_eddsa_with_default_algorithms() {
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec_pub = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref(), &rng)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed_pub = Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap().public_key().as_ref().to_vec();
        for (name, der, alg, key) in [
            ("ec.pem", ec.as_ref(), Algorithm::ES256, DecodingKey::from_ec_der(&ec_pub)),
            ("ed.pem", ed.as_ref(), Algorithm::EdDSA, DecodingKey::from_ed_der(&ed_pub)),
        ] {
            let path = temp(name, &pem(der));
            let s = AssertionSigner::new("gw", &path, Some("k1"), None, AssertionAudience::TokenEndpoint).unwrap();
            let jwt = s.assertion("https://as/token", None).unwrap();
            let header = jsonwebtoken::decode_header(&jwt).unwrap();
            assert_eq!((header.alg, header.kid.as_deref()), (alg, Some("k1")));
            let mut v = Validation::new(alg);
            v.set_audience(&["https://as/token"]);
            let c = jsonwebtoken::decode::<Value>(&jwt, &key, &v).unwrap().claims;
            assert_eq!((c["iss"].as_str(), c["sub"].as_str()), (Some("gw"), Some("gw")));
            assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
            assert_ne!(
                c["jti"],
                jsonwebtoken::decode::<Value>(&s.assertion("https://as/token", None).unwrap(), &key, &v)
                    .unwrap()
                    .claims["jti"]
            );
            // A configured algorithm must suit the key.
            assert!(AssertionSigner::new("gw", &path, None, Some(Algorithm::RS256), AssertionAudience::TokenEndpoint)
                .is_err());
        }
    }

    #[test]
    fn audience_can_be_the_issuer() {
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let path = temp("iss.pem", &pem(ec.as_ref()));
        let s = AssertionSigner::new("gw", &path, None, None, AssertionAudience::Issuer).unwrap();
        let jwt = s.assertion("https://as/token", Some("https://as")).unwrap();
        let payload = jwt.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://as");
        assert!(jsonwebtoken::decode_header(&jwt).unwrap().kid.is_none());
        assert!(s.assertion("https://as/token", None).is_err());
    }

    #[test]
    fn refuses_unusable_key_files_without_printing_them() {
        let sec1 = temp("sec1.pem", "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n");
        let e = AssertionSigner::new("gw", &sec1, None, None, AssertionAudience::TokenEndpoint).unwrap_err();
        assert!(e.to_string().contains("PKCS#8") || e.to_string().contains("PEM"), "{e}");
        let junk = temp("junk.pem", &pem(b"not a key"));
        let e = AssertionSigner::new("gw", &junk, None, None, AssertionAudience::TokenEndpoint).unwrap_err();
        assert!(e.to_string().contains("unsupported key") && !e.to_string().contains("bm90"), "{e}");
        let missing = std::env::temp_dir().join("tokex-no-such-key.pem");
        assert!(matches!(
            AssertionSigner::new("gw", &missing, None, None, AssertionAudience::TokenEndpoint),
            Err(KeyError::Io { .. })
        ));
    }
}
