//! What a reload does not change: listeners, workers, shutdown timers, the
//! cache, tracing and the Shared Signals receiver are set up once, at start. A reload that changes one
//! is applied without it, and the running gateway says so.

use std::net::SocketAddr;
use std::time::Duration;

use super::{AuthzConfig, CacheConfig, Config, ListenConfig, OtlpConfig, SsfConfig};

/// The settings a running gateway keeps until it restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct StartSettings {
    listen: Option<ListenConfig>,
    authz: Option<AuthzConfig>,
    admin: Option<SocketAddr>,
    workers: Option<usize>,
    shutdown_grace: Duration,
    shutdown_delay: Duration,
    cache: CacheConfig,
    otlp: Option<OtlpConfig>,
    ssf: Option<SsfConfig>,
}

impl Config {
    pub fn start_settings(&self) -> StartSettings {
        StartSettings {
            listen: self.listen.clone(),
            authz: self.authz.clone(),
            admin: self.admin,
            workers: self.workers,
            shutdown_grace: self.shutdown_grace,
            shutdown_delay: self.shutdown_delay,
            cache: self.cache.clone(),
            otlp: self.otlp.clone(),
            ssf: self.ssf.clone(),
        }
    }
}

impl StartSettings {
    /// The YAML names of the settings that differ in `new`.
    pub fn changed(&self, new: &StartSettings) -> Vec<&'static str> {
        let (a, b) = (self.listen.as_ref(), new.listen.as_ref());
        let listen = |f: fn(&ListenConfig, &ListenConfig) -> bool| match (a, b) {
            (Some(a), Some(b)) => f(a, b),
            (a, b) => a.is_some() != b.is_some(),
        };
        let (c, d) = (&self.cache, &new.cache);
        [
            ("listen.address", listen(|a, b| a.address != b.address)),
            ("listen.tls", listen(|a, b| a.tls != b.tls)),
            ("listen.header_read_timeout", listen(|a, b| a.header_read_timeout != b.header_read_timeout)),
            ("listen.max_header_bytes", listen(|a, b| a.max_header_bytes != b.max_header_bytes)),
            ("listen.max_connections", listen(|a, b| a.max_connections != b.max_connections)),
            ("listen.idle_timeout", listen(|a, b| a.idle_timeout != b.idle_timeout)),
            (
                "listen.http2_max_concurrent_streams",
                listen(|a, b| a.http2_max_concurrent_streams != b.http2_max_concurrent_streams),
            ),
            ("authz", self.authz != new.authz),
            ("admin.address", self.admin != new.admin),
            ("runtime.workers", self.workers != new.workers),
            ("runtime.shutdown_grace", self.shutdown_grace != new.shutdown_grace),
            ("runtime.shutdown_delay", self.shutdown_delay != new.shutdown_delay),
            ("cache.max_entries", c.max_entries != d.max_entries),
            ("cache.expiry_skew", c.expiry_skew != d.expiry_skew),
            ("cache.refresh_ahead", c.refresh_ahead != d.refresh_ahead),
            ("cache.negative_ttl", c.negative_ttl != d.negative_ttl),
            ("cache.shared", c.shared != d.shared),
            ("tracing.otlp", self.otlp != new.otlp),
            ("revocation.ssf", self.ssf != new.ssf),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    #[test]
    fn names_each_changed_setting() {
        let base = "listen: { address: \"127.0.0.1:8080\" }\nroutes: [{ name: r, auth: none, upstream: \"http://127.0.0.1:1\" }]\n";
        let a = parse(base).unwrap().start_settings();
        assert!(a.changed(&parse(base).unwrap().start_settings()).is_empty());
        let other = base.replace("8080", "8081") + "runtime: { workers: 2 }\ncache: { max_entries: 10 }\n";
        assert_eq!(
            a.changed(&parse(&other).unwrap().start_settings()),
            ["listen.address", "runtime.workers", "cache.max_entries"]
        );
    }
}
