//! The JWT parsers that run before (or without) a signature check: the JOSE
//! header, the claims and their checks, and the unverified peek.
//!
//! Input: byte 0 even: the rest is the token text. Odd: the rest is the
//! header JSON, a NUL, the payload JSON, a NUL, the signature bytes, each
//! base64url-encoded here, so that the fuzzer mutates the JSON itself.
#![no_main]

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use tokex::auth::claims::{Claims, Expected};
use tokex::auth::jwt;
use tokex::exchange::unverified;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let mut parts = rest.splitn(3, |&b| b == 0).map(|p| URL_SAFE_NO_PAD.encode(p));
        let mut next = || parts.next().unwrap_or_default();
        format!("{}.{}.{}", next(), next(), next())
    };

    if let Ok(header) = jwt::parse_header(&token) {
        // Exactly three segments were seen.
        assert_eq!(token.split('.').count(), 3);
        let _ = (header.alg, header.typ, header.kid);
    }
    // The payload segment, as `JwtValidator::validate` reads it (or the whole
    // text when it has no dot).
    let payload = token.split('.').nth(1).unwrap_or(&token);
    if let Ok(claims) = Claims::parse(payload) {
        let audiences = ["edge".to_owned(), "other".to_owned()];
        let want = Expected { issuer: "https://iss.example", audiences: &audiences, leeway: Duration::from_secs(30) };
        let _ = claims.check(&want);
    }
    let _ = unverified::peek(&token);
    let _ = unverified::claims_json(&token);
});
