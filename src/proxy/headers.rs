//! Header rules: hop-by-hop removal (RFC 9110 §7.6.1), upgrade detection,
//! `X-Forwarded-*`, and path checks.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

pub use crate::config::limits::is_hop_by_hop;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The `Upgrade` value of an HTTP/1.1 upgrade request (`Connection: upgrade`).
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers.get_all(CONNECTION).iter().any(|v| list_contains(v, "upgrade"));
    if asks {
        headers.get(UPGRADE).cloned()
    } else {
        None
    }
}

fn list_contains(v: &HeaderValue, token: &str) -> bool {
    v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Removes hop-by-hop headers, including those named in `Connection`. With
/// `upgrade`, the upgrade handshake headers are put back.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    // One pass over the names finds the hop-by-hop ones present (most
    // messages carry none, or only `Connection: keep-alive`): only those are
    // removed, instead of nine hashed removals per message.
    let mut present: [Option<HeaderName>; 9] = Default::default();
    let mut n = 0;
    for name in headers.keys().filter(|k| is_hop_by_hop(k)) {
        if let Some(slot) = present.get_mut(n) {
            *slot = Some(name.clone());
            n += 1;
        }
    }
    if n == 0 && upgrade.is_none() {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            // As bytes: an item that is not ASCII does not hide the others.
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            // Hop-by-hop names are removed below anyway.
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"upgrade"))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in present.into_iter().flatten() {
        headers.remove(name);
    }
    if let Some(u) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, u);
    }
}

/// Appends the peer to `X-Forwarded-For`; sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (the host the caller asked for).
pub fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, proto: &'static str, host: Option<HeaderValue>) {
    // Repeated lines form one list (RFC 9110 §5.3): keep every hop, in order.
    let mut chain = Vec::with_capacity(48);
    for v in headers.get_all(X_FORWARDED_FOR) {
        // Visible ASCII only (what `to_str` accepts): other hops are dropped.
        let Ok(hop) = v.to_str() else { continue };
        let hop = hop.trim().as_bytes();
        if !hop.is_empty() {
            chain.extend_from_slice(hop);
            chain.extend_from_slice(b", ");
        }
    }
    crate::telemetry::access::ip(&mut chain, peer);
    headers.remove(X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// True for paths with `.` or `..` segments, plain or percent-encoded, with
/// parameters or not (`..;`), an encoded `/`, or a backslash, plain or
/// encoded (which some servers take for `/`): such paths could match one
/// route here and mean another path at the backend.
pub fn has_dot_segments(path: &str) -> bool {
    if !path.contains('.') && !path.contains('%') && !path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    lower.split('/').any(|seg| {
        let decoded = bare(seg).replace("%2e", ".");
        decoded == "." || decoded == ".."
    }) || lower.contains("%2f")
        || lower.contains("%5c")
        || path.contains('\\')
}

/// The path routes match on: each segment without its parameters (`;...`,
/// RFC 3986 §3.3), which servers such as Tomcat and Spring strip before
/// they route. `/orders;jsessionid=1/1` is `/orders/1`.
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(bare(seg));
    }
    Cow::Owned(out)
}

/// A path segment without its parameters.
fn bare(seg: &str) -> &str {
    seg.find(';').map_or(seg, |end| &seg[..end])
}

/// A header that some backends read as `name` (CGI and its heirs map `-`
/// and `_` alike to `HTTP_X_TOKEN`) without being it.
pub fn aliases(name: &HeaderName, headers: &HeaderMap) -> bool {
    let want = name.as_str().as_bytes();
    want.contains(&b'-')
        && headers.keys().any(|k| {
            let k = k.as_str().as_bytes();
            k != want && k.len() == want.len() && k.iter().zip(want).all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
        })
}

/// True when a backend challenge says the token is invalid (RFC 6750 §3.1).
pub fn says_invalid_token(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("error=\"invalid_token\"") || s.contains("error=invalid_token")))
}

/// True when a backend's `401` challenge asks for a DPoP nonce
/// (RFC 9449 §9: `DPoP error="use_dpop_nonce"`).
pub fn asks_for_dpop_nonce(status: http::StatusCode, headers: &HeaderMap) -> bool {
    status == http::StatusCode::UNAUTHORIZED
        && headers.get_all(http::header::WWW_AUTHENTICATE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.trim_start().get(..5).is_some_and(|scheme| scheme.eq_ignore_ascii_case("dpop "))
                    && (s.contains("error=\"use_dpop_nonce\"") || s.contains("error=use_dpop_nonce"))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{TE, TRAILER, TRANSFER_ENCODING};

    #[test]
    fn strips_every_hop_by_hop_kind_and_what_connection_names() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("close, X-A ,keep-alive"));
        h.append(CONNECTION, HeaderValue::from_static("upgrade,x-b"));
        for name in ["x-a", "x-b", "keep-alive", "proxy-connection", "proxy-authenticate", "upgrade"] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(TRAILER, HeaderValue::from_static("x-sum"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("close", HeaderValue::from_static("named by Connection"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"]);
        // Nothing hop-by-hop: left as it is.
        let mut plain = HeaderMap::new();
        plain.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut plain, None);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn connection_names_beside_non_ascii_items_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_bytes(b"caf\xc3\xa9, x-secret").unwrap());
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn upgrade_is_kept_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let up = upgrade_request(&h);
        assert_eq!(up.as_ref().unwrap(), "websocket");
        strip_hop_by_hop(&mut h, up);
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        set_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "http", Some(HeaderValue::from_static("api.example.com")));
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "http");
        assert_eq!(h.get(X_FORWARDED_HOST).unwrap(), "api.example.com");
        // IPv6 peers; a hop that is not visible ASCII, or blank, is dropped.
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_bytes(b"10.0.0.1\xff").unwrap());
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("  "));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static(" 10.0.0.3 "));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        set_forwarded(&mut h, "2001:db8::1".parse().unwrap(), "https", None);
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["10.0.0.3, 2001:db8::1"]);
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "https");
        assert!(h.get(X_FORWARDED_HOST).is_none());
        for name in ["connection", "te", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "trailer"] {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["accept", "tea", "x-connection", "content-length", "proxy-authorization-x"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn dot_segments() {
        assert!(has_dot_segments("/a/../b"));
        assert!(has_dot_segments("/a/./b"));
        assert!(has_dot_segments("/a/%2E%2e/b"));
        assert!(has_dot_segments("/a/.."));
        assert!(has_dot_segments("/a%2fb"));
        assert!(!has_dot_segments("/a/b.json"));
        assert!(!has_dot_segments("/a/...b"));
        assert!(!has_dot_segments("/orders/1"));
        assert!(has_dot_segments("/a/%5c..%5cb"));
        assert!(has_dot_segments("/a\\b"));
        assert!(has_dot_segments("/orders/..;/billing"));
        assert!(has_dot_segments("/orders/%2e%2e;x=1/billing"));
        assert_eq!(without_params("/orders;jsessionid=1/1;v=2"), "/orders/1");
        assert_eq!(without_params("/orders/1"), "/orders/1");
        let mut h = HeaderMap::new();
        h.insert("x_token", HeaderValue::from_static("mine"));
        assert!(aliases(&HeaderName::from_static("x-token"), &h));
        assert!(!aliases(&HeaderName::from_static("x-other"), &h));
        assert!(!aliases(&http::header::AUTHORIZATION, &h));
    }

    #[test]
    fn invalid_token_challenge() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"x\", error=\"invalid_token\""),
        );
        assert!(says_invalid_token(&h));
        h.insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"x\""));
        assert!(!says_invalid_token(&h));
    }
}
