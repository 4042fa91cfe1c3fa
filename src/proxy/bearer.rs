//! `Authorization: Bearer <b64token>` extraction (RFC 6750 §2.1). Only the
//! header is used: tokens in the query string or body never are.

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::GatewayError;

pub use crate::config::limits::MAX_TOKEN_BYTES;

/// The bearer token of a request: exactly one `Authorization` header with the
/// `Bearer` scheme (any case) and a b64token.
pub fn extract(headers: &HeaderMap) -> Result<&str, GatewayError> {
    extract_with_dpop(headers, false).map(|(token, _)| token)
}

/// The caller's token, and whether it came with the `DPoP` scheme (RFC 9449
/// §7.1; only when `dpop` is accepted, else such a request has no token).
pub fn extract_with_dpop(headers: &HeaderMap, dpop: bool) -> Result<(&str, bool), GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(GatewayError::MissingToken);
    };
    if values.next().is_some() {
        return Err(GatewayError::InvalidRequest("more than one Authorization header"));
    }
    // A field value has no surrounding whitespace (RFC 9110 §5.5): HTTP/1.1
    // parsers drop it, but an HTTP/2 peer can still send it.
    let bytes = trim(value.as_bytes(), |c| c == b' ' || c == b'\t');
    let scheme = |s: &[u8]| s.eq_ignore_ascii_case(b"bearer") || (dpop && s.eq_ignore_ascii_case(b"dpop"));
    let Some(space) = bytes.iter().position(|&b| b == b' ') else {
        return if scheme(bytes) {
            Err(GatewayError::InvalidRequest("empty bearer token"))
        } else {
            Err(GatewayError::MissingToken)
        };
    };
    if !scheme(&bytes[..space]) {
        // Another scheme (Basic, DPoP when not accepted, ...): no token was presented.
        return Err(GatewayError::MissingToken);
    }
    let is_dpop = !bytes[..space].eq_ignore_ascii_case(b"bearer");
    // `Bearer 1*SP b64token` (RFC 6750 §2.1; the same for DPoP): only spaces before the token.
    let token = trim(&bytes[space..], |c| c == b' ');
    if token.is_empty() {
        return Err(GatewayError::InvalidRequest("empty bearer token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(GatewayError::InvalidRequest("bearer token too large"));
    }
    if !is_b64token(token) {
        return Err(GatewayError::InvalidRequest("bearer token has characters outside b64token"));
    }
    // b64token is ASCII, so this cannot fail.
    let token = std::str::from_utf8(token).map_err(|_| GatewayError::InvalidRequest("bearer token is not ASCII"))?;
    Ok((token, is_dpop))
}

fn trim(b: &[u8], space: impl Fn(u8) -> bool) -> &[u8] {
    let start = b.iter().position(|&c| !space(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| !space(c)).map_or(start, |e| e + 1);
    &b[start..end]
}

/// The b64token characters, as a table (tokens are long; this runs per request).
const B64TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        c += 1;
    }
    t
};

/// b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
fn is_b64token(t: &[u8]) -> bool {
    let body_end = t.iter().rposition(|&c| c != b'=').map_or(0, |i| i + 1);
    // No early exit: a branch-free fold the compiler unrolls (tokens are
    // valid almost always, and checked on every request).
    body_end > 0 && t[..body_end].iter().fold(true, |ok, &c| ok & B64TOKEN[usize::from(c)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn extracts_bearer_any_case() {
        assert_eq!(extract(&h(&["Bearer abc.def-_~+/=="])).unwrap(), "abc.def-_~+/==");
        assert_eq!(extract(&h(&["bEaReR   tok"])).unwrap(), "tok");
    }

    #[test]
    fn whitespace_around_the_value_is_not_part_of_it() {
        assert_eq!(extract(&h(&["\t Bearer tok \t"])).unwrap(), "tok");
        assert!(matches!(extract(&h(&[" bearer\t"])), Err(GatewayError::InvalidRequest("empty bearer token"))));
        // Between the scheme and the token: spaces only.
        assert!(matches!(extract(&h(&["Bearer \ttok"])), Err(GatewayError::InvalidRequest(_))));
        assert!(extract(&h(&["Bearer\ttok"])).is_err());
    }

    #[test]
    fn missing_or_other_scheme_is_401() {
        assert!(matches!(extract(&h(&[])), Err(GatewayError::MissingToken)));
        assert!(matches!(extract(&h(&["Basic dXNlcjpwYXNz"])), Err(GatewayError::MissingToken)));
    }

    #[test]
    fn the_dpop_scheme_only_when_accepted() {
        assert_eq!(extract_with_dpop(&h(&["DPoP tok"]), true).unwrap(), ("tok", true));
        assert_eq!(extract_with_dpop(&h(&["dpop  tok"]), true).unwrap(), ("tok", true));
        assert_eq!(extract_with_dpop(&h(&["Bearer tok"]), true).unwrap(), ("tok", false));
        assert!(matches!(extract_with_dpop(&h(&["DPoP tok"]), false), Err(GatewayError::MissingToken)));
        assert!(matches!(extract(&h(&["DPoP tok"])), Err(GatewayError::MissingToken)));
        assert!(matches!(extract_with_dpop(&h(&["DPoP"]), true), Err(GatewayError::InvalidRequest(_))));
    }

    #[test]
    fn malformed_is_400() {
        for bad in [
            &["Bearer"][..],
            &["Bearer "],
            &["Bearer a b"],
            &["Bearer a,b"],
            &["Bearer ==="],
            &["Bearer a", "Bearer b"],
        ] {
            assert!(matches!(extract(&h(bad)), Err(GatewayError::InvalidRequest(_))), "{bad:?}");
        }
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(matches!(extract(&h(&[&huge])), Err(GatewayError::InvalidRequest(_))));
    }
}
