//! Keys of the development authorization server: its own signing key (a
//! fresh P-256 key per start, or a PKCS#8 PEM file) published as a JWK, and
//! the public keys clients sign their `private_key_jwt` assertions with.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::rsa::PublicKeyComponents;
use ring::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::DevStsError;

/// `typ` of the access tokens this server issues (RFC 9068 §2.1).
const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The server's signing key: signs the access tokens it issues and verifies
/// the subject and actor tokens presented back to it.
pub(crate) struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public JWK, with `kid`, `alg` and `use`.
    pub jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("alg", &self.alg).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh P-256 key (ES256).
    pub fn generate() -> Result<Self, DevStsError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| DevStsError::Key("cannot generate a P-256 key".into()))?;
        Self::from_pkcs8(pkcs8.as_ref(), None)
    }

    /// A PKCS#8 PEM private key file: EC P-256 (ES256), EC P-384 (ES384) or
    /// RSA of at least 2048 bits (RS256).
    pub fn from_pem_file(path: &Path) -> Result<Self, DevStsError> {
        let pem = std::fs::read(path).map_err(|source| DevStsError::KeyFile { path: path.to_owned(), source })?;
        Self::from_pem(&pem).map_err(|e| match e {
            DevStsError::Key(why) => DevStsError::Key(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, DevStsError> {
        use rustls_pemfile::Item;
        let mut reader = pem;
        for item in rustls_pemfile::read_all(&mut reader) {
            match item.map_err(|e| DevStsError::Key(format!("not a PEM file: {e}")))? {
                Item::Pkcs8Key(der) => return Self::from_pkcs8(der.secret_pkcs8_der(), Some(pem)),
                Item::Sec1Key(_) | Item::Pkcs1Key(_) => return Err(DevStsError::Key(
                    "the key is not PKCS#8; convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8.pem`"
                        .into(),
                )),
                _ => continue,
            }
        }
        Err(DevStsError::Key("no `PRIVATE KEY` (PKCS#8) block found".into()))
    }

    /// `pem` is the whole PEM file, needed for RSA keys (jsonwebtoken signs
    /// with PKCS#1 DER, which it extracts from the PEM).
    fn from_pkcs8(der: &[u8], pem: Option<&[u8]>) -> Result<Self, DevStsError> {
        let rng = SystemRandom::new();
        let key = if let Ok(kp) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng) {
            Self::ec(Algorithm::ES256, "P-256", kp.public_key().as_ref(), EncodingKey::from_ec_der(der))?
        } else if let Ok(kp) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng) {
            Self::ec(Algorithm::ES384, "P-384", kp.public_key().as_ref(), EncodingKey::from_ec_der(der))?
        } else if let Ok(kp) = RsaKeyPair::from_pkcs8(der) {
            if kp.public().modulus_len() < 256 {
                return Err(DevStsError::Key("RSA keys must have at least 2048 bits".into()));
            }
            let pem = pem.ok_or_else(|| DevStsError::Key("RSA keys are read from PEM files only".into()))?;
            let encoding =
                EncodingKey::from_rsa_pem(pem).map_err(|e| DevStsError::Key(format!("unusable RSA key: {e}")))?;
            let c: PublicKeyComponents<Vec<u8>> = kp.public().into();
            let (n, e) = (URL_SAFE_NO_PAD.encode(&c.n), URL_SAFE_NO_PAD.encode(&c.e));
            let decoding =
                DecodingKey::from_rsa_components(&n, &e).map_err(|e| DevStsError::Key(format!("RSA key: {e}")))?;
            let kid = thumbprint(&json!({"e": e, "kty": "RSA", "n": n}));
            let jwk = json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "alg": "RS256", "use": "sig"});
            SigningKey { alg: Algorithm::RS256, kid, encoding, decoding, jwk }
        } else {
            return Err(DevStsError::Key("unsupported key: use an EC P-256, EC P-384 or RSA PKCS#8 key".into()));
        };
        key.self_test()?;
        Ok(key)
    }

    /// `point`: the uncompressed public point `04 || X || Y`.
    fn ec(alg: Algorithm, crv: &str, point: &[u8], encoding: EncodingKey) -> Result<Self, DevStsError> {
        let coord = (point.len().saturating_sub(1)) / 2;
        if point.first() != Some(&4) || point.len() != 1 + 2 * coord || coord == 0 {
            return Err(DevStsError::Key("unexpected EC public key encoding".into()));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..1 + coord]);
        let y = URL_SAFE_NO_PAD.encode(&point[1 + coord..]);
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| DevStsError::Key(format!("EC key: {e}")))?;
        let kid = thumbprint(&json!({"crv": crv, "kty": "EC", "x": x, "y": y}));
        let alg_name = if alg == Algorithm::ES384 { "ES384" } else { "ES256" };
        let jwk = json!({"kty": "EC", "crv": crv, "x": x, "y": y, "kid": kid, "alg": alg_name, "use": "sig"});
        Ok(SigningKey { alg, kid, encoding, decoding, jwk })
    }

    /// Signs and verifies once, so a key that cannot do both fails at start.
    fn self_test(&self) -> Result<(), DevStsError> {
        let token = self.sign(&json!({"sub": "self-test", "exp": u64::MAX / 2}))?;
        let mut v = Validation::new(self.alg);
        v.validate_aud = false;
        jsonwebtoken::decode::<Value>(&token, &self.decoding, &v)
            .map(|_| ())
            .map_err(|e| DevStsError::Key(format!("key self-test failed: {e}")))
    }

    /// A compact JWS with `typ: at+jwt` (RFC 9068) and this key's `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String, DevStsError> {
        self.sign_typed(claims, ACCESS_TOKEN_TYP)
    }

    /// A compact JWS with the given `typ` (e.g. `secevent+jwt`, RFC 8417
    /// §2.3) and this key's `kid`.
    pub fn sign_typed(&self, claims: &Value, typ: &str) -> Result<String, DevStsError> {
        let mut header = Header::new(self.alg);
        header.typ = Some(typ.into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| DevStsError::Sign(e.to_string()))
    }

    /// Verifies one of this server's own access tokens: `typ: at+jwt` (not
    /// a Txn-Token or a SET it signed), signature, `iss`, and an `exp`
    /// strictly in the future (no leeway). Returns the claims.
    pub fn verify_own(&self, token: &str, issuer: &str, now: u64) -> Option<Value> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.validate_aud = false;
        v.set_issuer(&[issuer]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, &self.decoding, &v).ok()?;
        if data.header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return None;
        }
        let exp = data.claims.get("exp").and_then(Value::as_u64)?;
        (exp > now).then_some(data.claims)
    }
}

/// RFC 7638 JWK thumbprint of the required members (serde_json keeps object
/// keys sorted, which is the canonical order).
fn thumbprint(required: &Value) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(required.to_string().as_bytes()))
}

/// A client's public key for `private_key_jwt`, with the algorithms it may
/// sign with (always one key family: `alg: none` and HMAC never pass).
pub(crate) struct ClientKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

impl ClientKey {
    /// A `PUBLIC KEY` (SPKI) PEM: EC (ES256/ES384), RSA (RS*/PS*) or Ed25519 (EdDSA).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let pem = pem.as_bytes();
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(ClientKey { key, algorithms: vec![Algorithm::ES256, Algorithm::ES384] });
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            use Algorithm::*;
            return Ok(ClientKey { key, algorithms: vec![RS256, RS384, RS512, PS256, PS384, PS512] });
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(ClientKey { key, algorithms: vec![Algorithm::EdDSA] });
        }
        Err("public key is not an EC, RSA or Ed25519 `PUBLIC KEY` PEM".into())
    }
}

/// Algorithms accepted for client assertions (discovery metadata).
pub(crate) const ASSERTION_ALGS: &[&str] =
    &["ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_signs_verifies_and_publishes_a_jwk() {
        let key = SigningKey::generate().unwrap();
        assert_eq!(key.alg, Algorithm::ES256);
        assert_eq!(key.jwk["kty"], "EC");
        assert_eq!(key.jwk["crv"], "P-256");
        assert_eq!(key.jwk["kid"], key.kid.as_str());
        assert_eq!(key.jwk["use"], "sig");
        assert_eq!(key.jwk["alg"], "ES256");
        assert_eq!(key.kid.len(), 43, "SHA-256 thumbprint, base64url");
        let token = key.sign(&json!({"iss": "http://as", "sub": "alice", "exp": 4_000_000_000u64})).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
        assert!(key.verify_own(&token, "http://as", 1).is_some());
        assert!(key.verify_own(&token, "http://other", 1).is_none(), "issuer is checked");
        assert!(key.verify_own(&token, "http://as", 4_000_000_000).is_none(), "exp must be in the future");
        let other = SigningKey::generate().unwrap();
        assert!(other.verify_own(&token, "http://as", 1).is_none(), "foreign signature");
        let claims = json!({"iss": "http://as", "sub": "alice", "exp": 4_000_000_000u64});
        let txn = key.sign_typed(&claims, "txntoken+jwt").unwrap();
        assert!(key.verify_own(&txn, "http://as", 1).is_none(), "only access tokens");
    }

    #[test]
    fn pkcs8_pem_keys_load() {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der.as_ref())
        );
        let key = SigningKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(key.alg, Algorithm::ES384);
        assert_eq!(key.jwk["crv"], "P-384");
        assert!(SigningKey::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        assert!(SigningKey::from_pem(b"garbage").is_err());
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 §3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let t = thumbprint(&json!({"e": "AQAB", "kty": "RSA", "n": n}));
        assert_eq!(t, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }
}
