//! The request target and the authority it names (RFC 9112 §3.2, RFC 9110
//! §7.2, RFC 9113 §8.3.1): exactly one valid `Host` (or `:authority`), no
//! userinfo anywhere, and an absolute-form target's authority wins over
//! `Host`. Anything else is refused with `400` before a route is chosen, so
//! the host a route matched is the host the backend is told.

use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Uri, Version};

/// Longest authority accepted: a 253-byte DNS name (and its final dot) and a port.
const MAX_AUTHORITY: usize = 254 + 6;
/// Longest method accepted (the registered ones have at most 17 letters).
const MAX_METHOD: usize = 32;

/// The authority of a request, checked: `host[:port]`, no userinfo.
#[derive(Debug, Clone)]
pub struct Authority {
    /// As received (the case kept): forwarded as `Host` and `X-Forwarded-Host`.
    value: HeaderValue,
    /// The host without port (and without the brackets of an IPv6 literal).
    host: std::ops::Range<usize>,
}

impl Authority {
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }

    /// The host without port (nor the final dot of a fully qualified name):
    /// what routes match on.
    pub fn host(&self) -> &str {
        // `parse` checked the bytes are ASCII.
        std::str::from_utf8(&self.value.as_bytes()[self.host.clone()]).unwrap_or_default()
    }

    /// An authority a front proxy reports (`X-Forwarded-Host`, Envoy's
    /// `host`), checked as a `Host` header is.
    pub fn reported(value: HeaderValue) -> Result<Self, &'static str> {
        Self::parse(value)
    }

    fn parse(value: HeaderValue) -> Result<Self, &'static str> {
        let host = host_range(value.as_bytes())?;
        Ok(Authority { value, host })
    }
}

/// The request's authority, or why the request is refused. `None` only for
/// an HTTP/1.0 request without `Host` (RFC 9112 §3.2 requires it of 1.1).
pub fn authority(
    method: &Method,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Authority>, &'static str> {
    if method == Method::CONNECT {
        return Err("CONNECT is not supported by this reverse proxy");
    }
    if method.as_str().len() > MAX_METHOD {
        return Err("the method is too long");
    }
    if uri.path() == "*" {
        return Err("the asterisk-form request target is not supported");
    }
    let mut lines = headers.get_all(HOST).iter();
    let host = lines.next();
    if lines.next().is_some() {
        return Err("more than one Host header");
    }
    let host = host.map(|h| Authority::parse(h.clone()).map_err(|_| "invalid Host header")).transpose()?;
    let target = match uri.authority() {
        None => None,
        Some(a) => {
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err("the request target's scheme must be http or https");
            }
            let value = HeaderValue::from_str(a.as_str()).map_err(|_| "invalid request target authority")?;
            Some(Authority::parse(value).map_err(|why| {
                if why == USERINFO {
                    why
                } else {
                    "invalid request target authority"
                }
            })?)
        }
    };
    match (version, target, host) {
        // HTTP/2: `:authority`; a `Host` beside it must name the same.
        (Version::HTTP_2 | Version::HTTP_3, Some(t), h) => match h {
            Some(h) if !h.value.as_bytes().eq_ignore_ascii_case(t.value.as_bytes()) => {
                Err("Host differs from :authority")
            }
            _ => Ok(Some(t)),
        },
        (Version::HTTP_2 | Version::HTTP_3, None, Some(h)) => Ok(Some(h)),
        (Version::HTTP_2 | Version::HTTP_3, None, None) => Err("no :authority and no Host"),
        // HTTP/1.1 must carry Host, even with an absolute-form target,
        // whose authority then replaces it (RFC 9112 §3.2.2).
        (Version::HTTP_11, _, None) => Err("HTTP/1.1 request without Host"),
        (_, Some(t), _) => Ok(Some(t)),
        (_, None, h) => Ok(h),
    }
}

/// Bytes of a DNS name or IPv4 address: letters, digits, `-._~`.
const HOST_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        c += 1;
    }
    t
};

const USERINFO: &str = "userinfo (user:password@) in the authority is refused";

/// `host[:port]` (RFC 3986 §3.2.2): a DNS name or IPv4 address (letters,
/// digits, `-`, `.`, `_`, `~`; no empty label, one final dot allowed), or a
/// bracketed IPv6 literal; a port of one to five digits, 1 to 65535. The
/// range of the host, without a final dot.
fn host_range(b: &[u8]) -> Result<std::ops::Range<usize>, &'static str> {
    if b.contains(&b'@') {
        return Err(USERINFO);
    }
    if b.is_empty() || b.len() > MAX_AUTHORITY {
        return Err("empty or overlong authority");
    }
    let (range, rest) = if b[0] == b'[' {
        let end = b.iter().position(|&c| c == b']').ok_or("unclosed IPv6 literal")?;
        let literal = std::str::from_utf8(&b[1..end]).map_err(|_| "invalid IPv6 literal")?;
        literal.parse::<std::net::Ipv6Addr>().map_err(|_| "invalid IPv6 literal")?;
        (1..end, &b[end + 1..])
    } else {
        let end = b.iter().position(|&c| c == b':').unwrap_or(b.len());
        // `api.example.com.` is `api.example.com`, fully qualified.
        let name = b[..end].strip_suffix(b".").unwrap_or(&b[..end]);
        // One pass: allowed bytes, and no empty label (`..`, or a dot first).
        let mut valid = !name.is_empty();
        let mut previous = b'.';
        for &c in name {
            valid &= HOST_BYTE[usize::from(c)] && !(c == b'.' && previous == b'.');
            previous = c;
        }
        valid &= previous != b'.';
        if !valid {
            return Err("invalid host name");
        }
        (0..name.len(), &b[end..])
    };
    match rest {
        [] => Ok(range),
        [b':', port @ ..] if (1..=5).contains(&port.len()) && port.iter().all(u8::is_ascii_digit) => {
            let n: u32 = port.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'));
            if (1..=65535).contains(&n) {
                Ok(range)
            } else {
                Err("invalid port")
            }
        }
        _ => Err("invalid port"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(version: Version, target: &str, hosts: &[&str]) -> Result<Option<String>, &'static str> {
        let uri: Uri = target.parse().unwrap();
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(HOST, HeaderValue::from_str(v).unwrap());
        }
        authority(&Method::GET, version, &uri, &h).map(|a| a.map(|a| a.value().to_str().unwrap().to_owned()))
    }

    #[test]
    fn origin_form_uses_the_one_host() {
        assert_eq!(check(Version::HTTP_11, "/x", &["api.example.com:8443"]), Ok(Some("api.example.com:8443".into())));
        assert_eq!(check(Version::HTTP_11, "/x", &["API.example.com"]), Ok(Some("API.example.com".into())));
        assert_eq!(check(Version::HTTP_11, "/x", &["[::1]:80"]), Ok(Some("[::1]:80".into())));
        assert_eq!(check(Version::HTTP_11, "/x", &["10.0.0.1"]), Ok(Some("10.0.0.1".into())));
        assert_eq!(check(Version::HTTP_10, "/x", &[]), Ok(None), "HTTP/1.0 may omit Host");
        assert!(check(Version::HTTP_11, "/x", &[]).is_err(), "HTTP/1.1 must send Host");
        assert!(check(Version::HTTP_11, "/x", &["a.example", "b.example"]).is_err());
        assert!(check(Version::HTTP_11, "/x", &["a.example", "a.example"]).is_err());
    }

    #[test]
    fn invalid_hosts_are_refused() {
        for bad in [
            "",
            "a:0",
            ".",
            "..a",
            ".a",
            "a..b",
            "a..",
            "[fe80::1%25eth0]",
            "a b",
            "a/b",
            "a\\b",
            "user@a",
            "user:pw@a",
            "a:",
            "a:0x1",
            "a:123456",
            "a:65536",
            "[::1",
            "[zz]:80",
            "a?b",
            "a#b",
            "a%2fb",
            "a:80:80",
            "\"a\"",
        ] {
            assert!(check(Version::HTTP_11, "/x", &[bad]).is_err(), "{bad:?}");
        }
        assert!(check(Version::HTTP_11, "/x", &[&"a".repeat(300)]).is_err());
    }

    #[test]
    fn absolute_form_authority_wins_and_userinfo_is_refused() {
        assert_eq!(
            check(Version::HTTP_11, "http://b.example/x", &["a.example"]),
            Ok(Some("b.example".into())),
            "RFC 9112 §3.2.2: the target's authority, not Host"
        );
        assert_eq!(check(Version::HTTP_11, "http://user:secret@a.example/x", &["a.example"]), Err(USERINFO));
        assert!(check(Version::HTTP_11, "http://b.example/x", &[]).is_err(), "HTTP/1.1 still needs Host");
        assert!(check(Version::HTTP_11, "ftp://b.example/x", &["b.example"]).is_err());
    }

    #[test]
    fn h2_authority_and_host_must_agree() {
        assert_eq!(check(Version::HTTP_2, "http://a.example/x", &[]), Ok(Some("a.example".into())));
        assert_eq!(check(Version::HTTP_2, "http://a.example/x", &["A.example"]), Ok(Some("a.example".into())));
        assert!(check(Version::HTTP_2, "http://a.example/x", &["b.example"]).is_err());
        assert_eq!(check(Version::HTTP_2, "http://u:p@a.example/x", &[]), Err(USERINFO));
        assert_eq!(check(Version::HTTP_2, "/x", &["a.example"]), Ok(Some("a.example".into())));
        assert!(check(Version::HTTP_2, "/x", &[]).is_err());
    }

    #[test]
    fn host_is_without_port_or_brackets() {
        let a = Authority::parse(HeaderValue::from_static("Api.Example.com:8080")).unwrap();
        assert_eq!(a.host(), "Api.Example.com");
        let a = Authority::parse(HeaderValue::from_static("[2001:db8::1]:443")).unwrap();
        assert_eq!(a.host(), "2001:db8::1");
        let a = Authority::parse(HeaderValue::from_static("api.example.com.:8080")).unwrap();
        assert_eq!((a.host(), a.value().to_str().unwrap()), ("api.example.com", "api.example.com.:8080"));
    }

    #[test]
    fn connect_and_asterisk_form_are_refused() {
        let h = {
            let mut h = HeaderMap::new();
            h.insert(HOST, HeaderValue::from_static("a.example"));
            h
        };
        let uri: Uri = "a.example:443".parse().unwrap();
        assert!(authority(&Method::CONNECT, Version::HTTP_11, &uri, &h).is_err());
        let star: Uri = "*".parse().unwrap();
        assert!(authority(&Method::OPTIONS, Version::HTTP_11, &star, &h).is_err());
    }
}
