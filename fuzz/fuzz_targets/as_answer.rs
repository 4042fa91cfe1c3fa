//! `tokex::exchange::client::parse_answer`: the authorization server's token
//! answer. The status is the first two bytes (big-endian), the body the rest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokex::exchange::client::{parse_answer, MAX_ANSWER_BYTES};

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [a, b, body @ ..] => (u16::from_be_bytes([*a, *b]), body),
        _ => return,
    };
    if let Ok(issued) = parse_answer(status, body) {
        // Only a 200 with a usable token is a success.
        assert_eq!(status, 200);
        let token = issued.access_token.expose();
        assert!(!token.is_empty() && token.len() <= MAX_ANSWER_BYTES / 2);
        assert!(http::HeaderValue::from_str(token).is_ok());
        if let Some(d) = issued.expires_in {
            assert!(d.as_secs() <= 1_000_000_000);
        }
    }
});
