//! The JWT parsers that run before (or without) a signature check: the JOSE
//! header, the claims and their checks, and the unverified peek.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokex::auth::claims::{Claims, Expected};
use tokex::auth::{jwt, unverified};

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    if let Ok(header) = jwt::parse_header(&token) {
        // Exactly three segments were seen; `none` and HMAC never parse as allowed.
        assert_eq!(token.split('.').count(), 3);
        let _ = (header.alg, header.typ, header.kid);
    }
    // The payload segment, as `JwtValidator::validate` reads it (or the whole
    // input, so claims JSON is reached without a JWS around it).
    let payload = token.split('.').nth(1).unwrap_or(&token);
    if let Ok(claims) = Claims::parse(payload) {
        let audiences = ["edge".to_owned(), "other".to_owned()];
        let want = Expected { issuer: "https://iss.example", audiences: &audiences, leeway: Duration::from_secs(30) };
        let _ = claims.check(&want);
    }
    let _ = unverified::peek(&token);
    let _ = unverified::claims_json(&token);
});
