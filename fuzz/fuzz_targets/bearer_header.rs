//! Request-head parsers: `Authorization` extraction, the backend's
//! `WWW-Authenticate`, hop-by-hop removal, the request target's authority and
//! `access_token` URL parameters.
//!
//! Input: byte 0 picks the method, byte 1 the version; then lines split on
//! `\n`: the first is the request target, each other is `name: value`, or
//! an `Authorization` value when it has no `: `.
#![no_main]

use http::header::{AUTHORIZATION, CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use libfuzzer_sys::fuzz_target;
use tokex::proxy::bearer;
use tokex::proxy::{credentials, headers, target};

const METHODS: [&str; 6] = ["GET", "POST", "CONNECT", "OPTIONS", "PURGE", "AVERYLONGMETHODNAMEOVERTHIRTYTWOBYTES"];
const VERSIONS: [Version; 4] = [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2, Version::HTTP_3];

fuzz_target!(|data: &[u8]| {
    let [m, v, rest @ ..] = data else { return };
    let method = Method::from_bytes(METHODS[usize::from(*m) % METHODS.len()].as_bytes()).expect("valid method");
    let version = VERSIONS[usize::from(*v) % VERSIONS.len()];
    let mut lines = rest.split(|&b| b == b'\n');
    let target = lines.next().unwrap_or_default();
    let mut map = HeaderMap::new();
    for line in lines {
        let (name, value) = match line.windows(2).position(|w| w == b": ") {
            Some(i) => (HeaderName::from_bytes(&line[..i]).ok(), &line[i + 2..]),
            None => (Some(AUTHORIZATION), line),
        };
        if let (Some(name), Ok(value)) = (name, HeaderValue::from_bytes(value)) {
            map.append(name, value);
        }
    }

    if let Ok(token) = bearer::extract(&map) {
        assert_eq!(map.get_all(AUTHORIZATION).iter().count(), 1);
        assert!(!token.is_empty() && token.len() <= bearer::MAX_TOKEN_BYTES);
        assert!(token.trim_end_matches('=').bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)));
    }
    let _ = headers::says_invalid_token(&map);

    let upgrade = headers::upgrade_request(&map);
    let mut stripped = map.clone();
    strip_and_check(&map, &mut stripped, upgrade);

    if let Ok(uri) = Uri::try_from(target) {
        if let Ok(Some(authority)) = target::authority(&method, version, &uri, &map) {
            let host = authority.host();
            assert!(!host.is_empty());
            assert!(authority.value().to_str().is_ok_and(|v| v.contains(host)));
        }
        let _ = credentials::url_names_token(&uri);
    }
});

/// After `strip_hop_by_hop`, no hop-by-hop header and nothing named in
/// `Connection` is left, besides the upgrade handshake when asked.
fn strip_and_check(before: &HeaderMap, after: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    let asked = upgrade.is_some();
    headers::strip_hop_by_hop(after, upgrade);
    let named: Vec<Vec<u8>> = before
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .collect();
    for name in after.keys() {
        if asked && (name == CONNECTION || name == UPGRADE) {
            continue;
        }
        assert!(!headers::is_hop_by_hop(name), "{name} kept");
        assert!(!named.iter().any(|n| n == name.as_str().as_bytes()), "{name} named in Connection but kept");
    }
    for name in before.keys() {
        if !headers::is_hop_by_hop(name) && !named.iter().any(|n| n == name.as_str().as_bytes()) {
            assert!(before.get_all(name).iter().eq(after.get_all(name).iter()), "{name} changed");
        }
    }
}
