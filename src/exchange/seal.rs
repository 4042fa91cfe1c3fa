//! What the shared store holds, and why a reader of it learns nothing
//! usable (SPEC §5):
//!
//! - **Key**: HMAC-SHA-256 over a domain tag, the subject token's SHA-256 and
//!   the route policy's digest, keyed with the deployment's secret when one
//!   is configured, after a 64-bit keyed tag of the policy (so a route's
//!   entries can be purged). The same on every replica, never the token
//!   nor a reversible form of it.
//! - **Subject sets**: per subject (a keyed hash of its hashed `sub` or
//!   `email`), the store keys exchanged for it, living as long as they do:
//!   what a purge by subject deletes.
//! - **Value**: the exchanged token and its expiry, sealed with AES-256-GCM
//!   under a key derived (HKDF-SHA-256) from the *subject token itself* and
//!   the policy digest, with the store key as associated data. Without the
//!   caller's broad token the value cannot be opened; one caller's value
//!   cannot be opened with another's token; a value copied under another
//!   key, or altered, fails to open and is a miss.

use std::fmt::Write;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

/// Format version, first byte of every value: a bearer token's, and a
/// DPoP-bound token's (whose associated data starts with it, so neither
/// can pass for the other).
const VERSION: u8 = 1;
const VERSION_DPOP: u8 = 2;
const KEY_TAG: &[u8] = b"tokex/shared-cache/key/v1";
const POLICY_TAG: &[u8] = b"tokex/shared-cache/policy/v1";
const SUBJECT_TAG: &[u8] = b"tokex/shared-cache/subject/v1";
const SEAL_INFO: &[u8] = b"tokex/shared-cache/aead/v1";
/// Longest token a value may carry (larger answers are not shared).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The store key of a subject under a policy:
/// `prefix` + `t:` + 16 hex (the policy's tag, so a route's entries can be
/// found) + `:` + 64 hex (the keyed hash of subject and policy).
pub fn store_key(prefix: &str, secret: Option<&[u8]>, subject_sha256: &[u8; 32], policy_digest: &[u8; 32]) -> String {
    let mut out = policy_prefix(prefix, secret, policy_digest);
    hex(&mut out, mac(secret, &[KEY_TAG, subject_sha256, policy_digest]).as_ref());
    out
}

/// What every store key of a policy starts with: `prefix` + `t:` + tag + `:`.
pub fn policy_prefix(prefix: &str, secret: Option<&[u8]>, policy_digest: &[u8; 32]) -> String {
    let mut out = String::with_capacity(prefix.len() + 2 + 17 + 64);
    out.push_str(prefix);
    out.push_str("t:");
    hex(&mut out, &mac(secret, &[POLICY_TAG, policy_digest]).as_ref()[..8]);
    out.push(':');
    out
}

/// The store key of the set of store keys exchanged for one subject
/// (`id`: its hashed `sub` or `email`): `prefix` + `s:` + 32 hex.
pub fn subject_set(prefix: &str, secret: Option<&[u8]>, id: &[u8; 16]) -> String {
    let mut out = String::with_capacity(prefix.len() + 2 + 32);
    out.push_str(prefix);
    out.push_str("s:");
    hex(&mut out, &mac(secret, &[SUBJECT_TAG, id]).as_ref()[..16]);
    out
}

/// HMAC-SHA-256 over `parts`, keyed with the deployment secret (or, without
/// one, the public key tag).
fn mac(secret: Option<&[u8]>, parts: &[&[u8]]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.unwrap_or(KEY_TAG));
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign()
}

fn hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
}

/// An exchanged token as stored: its text and when it expires (Unix milliseconds).
#[derive(Debug, PartialEq, Eq)]
pub struct Sealed {
    pub token: String,
    pub expires_at_unix_ms: u64,
    /// DPoP-bound (to the key whose thumbprint is in the store key).
    pub dpop: bool,
}

/// The associated data of a value under `store_key`.
fn aad(version: u8, store_key: &str) -> Vec<u8> {
    match version {
        VERSION_DPOP => [&[VERSION_DPOP][..], store_key.as_bytes()].concat(),
        _ => store_key.as_bytes().to_vec(),
    }
}

struct Len;

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        32
    }
}

fn aead_key(subject: &str, policy_digest: &[u8; 32]) -> Option<LessSafeKey> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, policy_digest).extract(subject.as_bytes());
    let okm = prk.expand(&[SEAL_INFO], Len).ok()?;
    let mut bytes = [0u8; 32];
    okm.fill(&mut bytes).ok()?;
    Some(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).ok()?))
}

/// `VERSION ‖ nonce ‖ AES-256-GCM(expires_at_unix_ms (8, BE) ‖ token)`, bound to `store_key`
/// (a DPoP-bound token: `VERSION_DPOP`, bound to it and `store_key`).
pub fn seal(subject: &str, policy_digest: &[u8; 32], store_key: &str, value: &Sealed) -> Option<Vec<u8>> {
    if value.token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let key = aead_key(subject, policy_digest)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).ok()?;
    let mut body = Vec::with_capacity(8 + value.token.len() + AES_256_GCM.tag_len());
    body.extend_from_slice(&value.expires_at_unix_ms.to_be_bytes());
    body.extend_from_slice(value.token.as_bytes());
    let version = if value.dpop { VERSION_DPOP } else { VERSION };
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(version, store_key)), &mut body)
        .ok()?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
    out.push(version);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Some(out)
}

/// The value under `store_key`, or `None` for anything that does not open:
/// another version, another key's value, another subject, altered bytes.
pub fn open(subject: &str, policy_digest: &[u8; 32], store_key: &str, stored: &[u8]) -> Option<Sealed> {
    let (&version, rest) = stored.split_first()?;
    if version != VERSION && version != VERSION_DPOP {
        return None;
    }
    if rest.len() < NONCE_LEN + 8 + AES_256_GCM.tag_len() || rest.len() > NONCE_LEN + 8 + MAX_TOKEN_BYTES + 16 {
        return None;
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let key = aead_key(subject, policy_digest)?;
    let mut body = body.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(aad(version, store_key)), &mut body).ok()?;
    let (exp, token) = plain.split_at(8);
    let expires_at_unix_ms = u64::from_be_bytes(exp.try_into().ok()?);
    let token = std::str::from_utf8(token).ok()?.to_owned();
    Some(Sealed { token, expires_at_unix_ms, dpop: version == VERSION_DPOP })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: [u8; 32] = [7; 32];

    fn sha(s: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(s.as_bytes()).into()
    }

    #[test]
    fn keys_are_stable_keyed_and_reveal_nothing() {
        let a = store_key("tokex:", None, &sha("alice-token"), &DIGEST);
        assert_eq!(a, store_key("tokex:", None, &sha("alice-token"), &DIGEST), "same on every replica");
        assert!(a.starts_with(&policy_prefix("tokex:", None, &DIGEST)));
        assert!(a.starts_with("tokex:t:") && a.len() == "tokex:t:".len() + 17 + 64);
        assert_ne!(policy_prefix("tokex:", None, &DIGEST), policy_prefix("tokex:", None, &[8; 32]));
        assert_ne!(subject_set("tokex:", None, &[1; 16]), subject_set("tokex:", Some(b"s"), &[1; 16]));
        assert_ne!(a, store_key("tokex:", None, &sha("bob-token"), &DIGEST));
        assert_ne!(a, store_key("tokex:", None, &sha("alice-token"), &[8; 32]), "another policy");
        assert_ne!(a, store_key("tokex:", Some(b"deployment secret"), &sha("alice-token"), &DIGEST));
        let h = sha("alice-token").iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert!(!a.contains(&h[..16]), "not the token's hash");
    }

    #[test]
    fn a_value_opens_only_with_its_subject_policy_and_key() {
        let key = store_key("p:", None, &sha("alice"), &DIGEST);
        let v = Sealed { token: "exchanged-token".into(), expires_at_unix_ms: 1_900_000_000, dpop: false };
        let sealed = seal("alice", &DIGEST, &key, &v).unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"exchanged"), "the token is not in clear");
        assert_eq!(open("alice", &DIGEST, &key, &sealed), Some(v));
        assert_eq!(open("bob", &DIGEST, &key, &sealed), None, "another caller's token");
        assert_eq!(open("alice", &[8; 32], &key, &sealed), None, "another policy");
        let other = store_key("p:", None, &sha("bob"), &DIGEST);
        assert_eq!(open("alice", &DIGEST, &other, &sealed), None, "copied under another key");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open("alice", &DIGEST, &key, &bad), None, "byte {i} altered");
        }
        assert_eq!(open("alice", &DIGEST, &key, &sealed[..sealed.len() - 1]), None);
        assert_eq!(open("alice", &DIGEST, &key, b""), None);
        assert_eq!(open("alice", &DIGEST, &key, &[1; 5000]), None);
    }

    #[test]
    fn a_dpop_bound_value_says_so_and_cannot_pass_for_a_bearer_one() {
        let key = store_key("p:", None, &sha("alice"), &DIGEST);
        let v = Sealed { token: "bound".into(), expires_at_unix_ms: 1_900_000_000, dpop: true };
        let sealed = seal("alice", &DIGEST, &key, &v).unwrap();
        assert_eq!(sealed[0], VERSION_DPOP);
        assert_eq!(open("alice", &DIGEST, &key, &sealed), Some(v));
        let mut relabelled = sealed.clone();
        relabelled[0] = VERSION;
        assert_eq!(open("alice", &DIGEST, &key, &relabelled), None);
        let bearer = Sealed { token: "b".into(), expires_at_unix_ms: 1, dpop: false };
        let mut relabelled = seal("alice", &DIGEST, &key, &bearer).unwrap();
        relabelled[0] = VERSION_DPOP;
        assert_eq!(open("alice", &DIGEST, &key, &relabelled), None);
    }

    #[test]
    fn nonces_differ() {
        let v = Sealed { token: "t".into(), expires_at_unix_ms: 1, dpop: false };
        assert_ne!(seal("a", &DIGEST, "k", &v), seal("a", &DIGEST, "k", &v));
    }
}
