//! The routes of a running configuration and request matching (SPEC §3.1):
//! first match wins. The rules are `config::matcher`'s.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};

use super::forward::Upstream;
use crate::auth::scopes::RequiredScopes;
use crate::config::matcher::{prefix_matches, HostMatch, Matcher, PathMatch};
use crate::exchange::{MachinePolicy, Policy, TxnPolicy};
use crate::metrics::RouteMetrics;

/// What a route does with credentials.
pub enum RouteAuth {
    /// Strip `Authorization`, forward.
    None,
    /// Exchange the caller's bearer token under this policy.
    Exchange(Arc<Policy>),
    /// Egress: attach tokex's own token, whatever the caller sent.
    ClientCredentials(Arc<MachinePolicy>),
    /// One Txn-Token per request for the caller's token, never cached.
    Transaction(Arc<TxnPolicy>),
}

impl RouteAuth {
    /// The scope this route asks for (named in `insufficient_scope` answers).
    pub fn scope(&self) -> &str {
        match self {
            RouteAuth::None => "",
            RouteAuth::Exchange(p) => &p.scope,
            RouteAuth::ClientCredentials(m) => &m.scope,
            RouteAuth::Transaction(t) => &t.scope,
        }
    }
}

/// A route ready to serve: its matcher and everything the request path needs.
pub struct Route {
    pub name: String,
    pub matcher: Matcher,
    pub auth: RouteAuth,
    /// Scopes the caller's token must hold (checked by the inbound phase).
    pub require_scopes: RequiredScopes,
    /// Where the proxy listener forwards (none in a check-only deployment).
    pub upstream: Option<Upstream>,
    pub forward_header: HeaderName,
    /// Inbound headers removed before forwarding (`forward.remove_headers`).
    pub remove_headers: Arc<[HeaderName]>,
    pub timeout: Duration,
    /// A backend `401 invalid_token` to a bodiless idempotent request: retry once with a fresh token.
    pub retry_on_invalid_token: bool,
    /// Longer request bodies get `413` (`None`: no limit).
    pub max_body_bytes: Option<u64>,
    pub metrics: RouteMetrics,
    /// RFC 9728: what this route's challenges name (`resource_metadata`).
    pub challenge: Option<super::metadata::Challenge>,
}

impl HostMatch {
    pub fn matches(&self, host: Option<&str>) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host.is_some_and(|x| x.eq_ignore_ascii_case(h)),
            HostMatch::Suffix(s) => host.is_some_and(|x| {
                x.len() > s.len()
                    && x.is_char_boundary(x.len() - s.len())
                    && x[x.len() - s.len()..].eq_ignore_ascii_case(s)
            }),
        }
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => prefix_matches(p, path),
        }
    }
}

impl Matcher {
    pub fn matches(&self, method: &Method, path: &str, host: Option<&str>, headers: &HeaderMap) -> bool {
        self.path.matches(path)
            && self.host.matches(host)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|(name, want)| headers.get_all(name).iter().any(|v| v == want))
    }
}

/// The routes of one configuration, in order.
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        RouteTable { routes }
    }

    /// The first route for a request; `host` is its checked authority's
    /// host, without port (see `proxy::target`).
    pub fn find(&self, method: &Method, path: &str, host: Option<&str>, headers: &HeaderMap) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matcher.matches(method, path, host, headers))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn m(host: HostMatch, path: PathMatch, methods: &[Method]) -> Matcher {
        Matcher { host, path, methods: methods.to_vec(), headers: vec![] }
    }

    #[test]
    fn prefix_is_segment_aware() {
        let p = PathMatch::Prefix("/orders".into());
        assert!(p.matches("/orders"));
        assert!(p.matches("/orders/"));
        assert!(p.matches("/orders/1"));
        assert!(!p.matches("/ordersx"));
        assert!(!p.matches("/order"));
        let root = PathMatch::Prefix("/".into());
        assert!(root.matches("/anything"));
        let slash = PathMatch::Prefix("/api/".into());
        assert!(slash.matches("/api/x"));
        assert!(!slash.matches("/api"));
    }

    #[test]
    fn hosts_exact_and_suffix_match() {
        let e = HostMatch::parse("API.example.com").unwrap();
        assert!(e.matches(Some("api.example.com")));
        assert!(e.matches(Some("Api.Example.Com")));
        assert!(!e.matches(Some("x.api.example.com")));
        assert!(!e.matches(None));
        let s = HostMatch::parse("*.example.com").unwrap();
        assert!(s.matches(Some("a.example.com")));
        assert!(s.matches(Some("a.b.example.com")));
        assert!(!s.matches(Some("example.com")));
        assert!(!s.matches(Some("badexample.com")));
        assert!(HostMatch::parse("a.*.com").is_err());
        assert!(HostMatch::parse("host:80").is_err());
        assert!(HostMatch::parse("").is_err());
    }

    #[test]
    fn methods_and_headers() {
        let mut matcher = m(HostMatch::Any, PathMatch::Any, &[Method::GET]);
        matcher.headers.push((HeaderName::from_static("x-tenant"), HeaderValue::from_static("acme")));
        let mut h = HeaderMap::new();
        assert!(!matcher.matches(&Method::GET, "/", None, &h));
        h.insert("x-tenant", HeaderValue::from_static("acme"));
        assert!(matcher.matches(&Method::GET, "/", None, &h));
        assert!(!matcher.matches(&Method::POST, "/", None, &h));
    }
}
