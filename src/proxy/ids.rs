//! Request identity: `x-request-id` (kept when the caller's is a sane one,
//! else generated; forwarded to the backend and returned to the caller) and
//! the W3C Trace Context trace id of `traceparent`, for the access line.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller `x-request-id` kept.
pub const MAX_REQUEST_ID: usize = 128;

/// The caller's `x-request-id` when there is exactly one and it is 1 to
/// [`MAX_REQUEST_ID`] characters of `A-Z a-z 0-9 - _ . : / + = @` (so it can
/// neither forge a log field nor smuggle anything to the backend); a new
/// random UUID (v4) otherwise.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut ids = headers.get_all(X_REQUEST_ID).iter();
    match (ids.next(), ids.next()) {
        (Some(id), None) if valid_request_id(id.as_bytes()) => id.clone(),
        _ => generate(),
    }
}

fn valid_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id.iter().all(|&b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

/// A random UUID, version 4, in its usual text form.
pub fn generate() -> HeaderValue {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut text = [0u8; 36];
    let mut i = 0;
    for (n, byte) in b.iter().enumerate() {
        if matches!(n, 4 | 6 | 8 | 10) {
            text[i] = b'-';
            i += 1;
        }
        text[i] = HEX[usize::from(byte >> 4)];
        text[i + 1] = HEX[usize::from(byte & 0x0f)];
        i += 2;
    }
    // Hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::headers_with as with;

    #[test]
    fn a_sane_request_id_is_kept_and_anything_else_replaced() {
        let keep = "req-1:abc/DEF+9=@_.";
        assert_eq!(request_id(&with(&X_REQUEST_ID, &[keep])), keep);
        for bad in ["", "a b", "a\"b", "x;y", &"a".repeat(129), "é"] {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(bad.as_bytes()) {
                h.insert(X_REQUEST_ID, v);
            }
            let id = request_id(&h);
            assert_ne!(id.as_bytes(), bad.as_bytes());
            assert_eq!(id.len(), 36, "{id:?}");
        }
        let twice = request_id(&with(&X_REQUEST_ID, &["a", "b"]));
        assert_eq!(twice.len(), 36, "two ids: a new one");
        let id = generate();
        let s = id.to_str().unwrap();
        assert_eq!(&s[14..15], "4", "version 4: {s}");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "variant: {s}");
        assert_ne!(generate(), generate());
    }
}
