//! Route match rules as configured (SPEC §3.1): host exact or `*.suffix`,
//! exact path or segment-aware prefix, methods, headers. Plain data, parsed
//! and analysed (shadowing) here; requests are matched in `proxy::routes`.

use http::{HeaderName, HeaderValue, Method};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-case host without port.
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any subdomain, not the apex.
    Suffix(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    Exact(String),
    /// Segment-aware: `/orders` matches `/orders` and `/orders/1`, not `/ordersx`.
    Prefix(String),
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pub host: HostMatch,
    pub path: PathMatch,
    /// Empty means any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl HostMatch {
    pub fn parse(pattern: &str) -> Result<HostMatch, String> {
        let p = pattern.trim().to_ascii_lowercase();
        if p.is_empty() {
            return Err("host must not be empty".into());
        }
        let (suffix, name) = match p.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, p.clone()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            return Err(format!(
                "invalid host {pattern:?}: expected a host name or *.suffix (no port, no other wildcards)"
            ));
        }
        Ok(if suffix { HostMatch::Suffix(format!(".{name}")) } else { HostMatch::Exact(name) })
    }

    /// True when every host `other` accepts is accepted by `self`.
    pub(crate) fn covers(&self, other: &HostMatch) -> bool {
        match (self, other) {
            (HostMatch::Any, _) => true,
            (_, HostMatch::Any) => false,
            (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
            (HostMatch::Exact(_), HostMatch::Suffix(_)) => false,
            (HostMatch::Suffix(s), HostMatch::Exact(h)) => h.len() > s.len() && h.ends_with(s.as_str()),
            (HostMatch::Suffix(a), HostMatch::Suffix(b)) => b.ends_with(a.as_str()),
        }
    }
}

impl PathMatch {
    pub(crate) fn covers(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Any, _) => true,
            (_, PathMatch::Any) => false,
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
            (PathMatch::Prefix(a), PathMatch::Exact(b)) => prefix_matches(a, b),
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => prefix_matches(a, b),
        }
    }
}

/// Segment-aware prefix: `/orders` matches `/orders` and `/orders/1`, not `/ordersx`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
}

impl Matcher {
    /// True when `self` matches every request `other` matches: a route after
    /// `self` with matcher `other` can never be reached.
    pub fn shadows(&self, other: &Matcher) -> bool {
        self.host.covers(&other.host)
            && self.path.covers(&other.path)
            && (self.methods.is_empty()
                || (!other.methods.is_empty() && other.methods.iter().all(|m| self.methods.contains(m))))
            && self.headers.iter().all(|h| other.headers.contains(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: HostMatch, path: PathMatch, methods: &[Method]) -> Matcher {
        Matcher { host, path, methods: methods.to_vec(), headers: vec![] }
    }

    #[test]
    fn hosts_parse() {
        assert!(HostMatch::parse("API.example.com").unwrap() == HostMatch::Exact("api.example.com".into()));
        assert!(HostMatch::parse("*.example.com").unwrap() == HostMatch::Suffix(".example.com".into()));
        assert!(HostMatch::parse("a.*.com").is_err());
        assert!(HostMatch::parse("host:80").is_err());
        assert!(HostMatch::parse("").is_err());
    }

    #[test]
    fn shadowing() {
        let all = m(HostMatch::Any, PathMatch::Prefix("/".into()), &[]);
        let orders = m(HostMatch::Any, PathMatch::Prefix("/orders".into()), &[Method::GET]);
        assert!(all.shadows(&orders));
        assert!(!orders.shadows(&all));
        let exact = m(HostMatch::Any, PathMatch::Exact("/orders/1".into()), &[Method::GET]);
        assert!(orders.shadows(&exact));
        let post = m(HostMatch::Any, PathMatch::Exact("/orders/1".into()), &[Method::POST]);
        assert!(!orders.shadows(&post));
        let wild = m(HostMatch::parse("*.example.com").unwrap(), PathMatch::Any, &[]);
        let api = m(HostMatch::parse("api.example.com").unwrap(), PathMatch::Any, &[]);
        assert!(wild.shadows(&api));
        assert!(!api.shadows(&wild));
    }
}
