//! Prometheus metrics, one registry passed down explicitly. Per-route
//! handles are created when routes are built, so the request path never
//! allocates label sets.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    route: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExchangeLabels {
    server: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100µs .. ~6.5s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    cache_lookups: Family<CacheLabels, Counter>,
    exchanges: Family<ExchangeLabels, Counter>,
    exchange_duration: HistogramFamily<ServerLabels>,
    cache_entries: Gauge,
    config_reloads: Family<ReloadLabels, Counter>,
    inbound_rejections: Family<ReasonLabels, Counter>,
    jwks_fetches: Family<OutcomeLabels, Counter>,
    introspections: Family<OutcomeLabels, Counter>,
    inbound_cache: Family<ReloadLabels, Counter>,
    breaker_open: Family<ServerLabels, Gauge>,
    in_flight: Family<ServerLabels, Gauge>,
    rate_limited: Family<LimitLabels, Counter>,
    token_retries: Family<CacheLabels, Counter>,
    cache_evictions: Family<ReasonLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
    upstream_duration: HistogramFamily<RouteLabels>,
    last_reload_success: Gauge,
    last_reload_timestamp: Gauge,
    tls_reloads: Family<TlsLabels, Counter>,
    shared_ops: Family<SharedLabels, Counter>,
    shared_duration: HistogramFamily<OpLabels>,
    connections_open: Gauge,
    connections: Counter,
    revocations: Family<ExchangeLabels, Counter>,
    purged: Family<SourceLabels, Counter>,
    security_events: Family<ReloadLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    route: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SharedLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    source: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// `tokex_upstream_errors_total{kind}` values.
pub const UPSTREAM_ERROR_KINDS: [&str; 6] = ["connect", "tls", "reset", "protocol", "timeout", "at_capacity"];

/// `tokex_cache_evictions_total{reason}` values.
pub const EVICTION_REASONS: [&str; 4] = ["expired", "size", "invalidated", "replaced"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    route: String,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// A `result` label (config reloads, the verified-token cache).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokex");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        let exchange_duration: HistogramFamily<ServerLabels> = Family::new_with_constructor(latency_histogram);
        let cache_entries = Gauge::default();
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        let inbound_rejections = Family::<ReasonLabels, Counter>::default();
        let jwks_fetches = Family::<OutcomeLabels, Counter>::default();
        let introspections = Family::<OutcomeLabels, Counter>::default();
        let inbound_cache = Family::<ReloadLabels, Counter>::default();
        let breaker_open = Family::<ServerLabels, Gauge>::default();
        let in_flight = Family::<ServerLabels, Gauge>::default();
        let rate_limited = Family::<LimitLabels, Counter>::default();
        let token_retries = Family::<CacheLabels, Counter>::default();
        let cache_evictions = Family::<ReasonLabels, Counter>::default();
        let upstream_errors = Family::<KindLabels, Counter>::default();
        let upstream_duration: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        let last_reload_success = Gauge::default();
        let last_reload_timestamp = Gauge::default();
        let tls_reloads = Family::<TlsLabels, Counter>::default();
        let shared_ops = Family::<SharedLabels, Counter>::default();
        let shared_duration: HistogramFamily<OpLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "shared_cache_operations",
            "Operations on the shared store (cache.shared), by op (get, put, lease, release, delete, key) and result (hit, miss, rejected: a value that did not open, ok, held: another replica's lease, renewed, shortened, error, timeout, skipped: backing off after a failure)",
            shared_ops.clone(),
        );
        registry.register(
            "shared_cache_duration_seconds",
            "Time of one shared-store operation, by op",
            shared_duration.clone(),
        );
        let connections_open = Gauge::default();
        let connections = Counter::default();
        let revocations = Family::<ExchangeLabels, Counter>::default();
        registry.register(
            "revocations",
            "RFC 7009 revocations of exchanged tokens tokex stopped using (purged, or refused by the backend), by authorization server and outcome (revoked, refused: the server answered an error, failed: no answer, dropped: too many waiting)",
            revocations.clone(),
        );
        let purged = Family::<SourceLabels, Counter>::default();
        registry.register(
            "cache_purged",
            "Token cache entries removed by a purge, by source (admin: POST /cache/purge, ssf: a Security Event Token, replica: a purge announced by another replica through the shared store)",
            purged.clone(),
        );
        let security_events = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "security_events",
            "Security Event Tokens pushed to revocation.ssf, by result (accepted, or the RFC 8935 error code: invalid_request, invalid_key, invalid_issuer, invalid_audience; rate_limited)",
            security_events.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "1, labelled with the running tokex version", build_info);
        registry.register(
            "cache_evictions",
            "Entries leaving the token cache, by reason: expired (lifetime over), size (max_entries), invalidated (a backend refused the token, or a purge), replaced (a fresh token took its place)",
            cache_evictions.clone(),
        );
        registry.register(
            "upstream_errors",
            "Requests the backend did not answer, by route and kind: connect, tls, reset (the connection failed mid-request), protocol, timeout (no answer within the route timeout), at_capacity (no upstream slot)",
            upstream_errors.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request to the backend to its answer's head, by route",
            upstream_duration.clone(),
        );
        registry.register(
            "config_last_reload_success",
            "1 when the last configuration reload (or the start) succeeded, 0 when it was rejected",
            last_reload_success.clone(),
        );
        registry.register(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last configuration reload attempt (or the start)",
            last_reload_timestamp.clone(),
        );
        registry.register(
            "tls_reloads",
            "Certificate files that changed and were re-read, by source (listener, upstream) and result (ok, rejected: the old ones are kept)",
            tls_reloads.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open on the proxy listener",
            connections_open.clone(),
        );
        registry.register("connections", "Client connections accepted on the proxy listener", connections.clone());
        registry.register(
            "circuit_breaker_open",
            "1 while the authorization server's circuit breaker is open (or probing), else 0",
            breaker_open.clone(),
        );
        registry.register(
            "exchanges_in_flight",
            "Requests in flight at the authorization server (bounded by max_concurrent)",
            in_flight.clone(),
        );
        registry.register(
            "exchanges_rate_limited",
            "Exchanges refused with 429 by exchange.max_rate, by route and limit (route or client)",
            rate_limited.clone(),
        );
        registry.register(
            "invalid_token_retries",
            "Requests retried with a fresh token after the backend answered 401 invalid_token, by route and result (the second answer: ok or refused)",
            token_retries.clone(),
        );
        registry.register("requests", "Requests answered, by route and status", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time to answer a request (headers), by route",
            request_duration.clone(),
        );
        registry.register(
            "cache_lookups",
            "Token cache lookups, by route and result (hit or miss)",
            cache_lookups.clone(),
        );
        registry.register("exchanges", "Token exchanges, by authorization server and outcome", exchanges.clone());
        registry.register(
            "exchange_duration_seconds",
            "Token exchange latency, by authorization server",
            exchange_duration.clone(),
        );
        registry.register("cache_entries", "Entries in the token cache", cache_entries.clone());
        registry.register("config_reloads", "Configuration reloads, by result", config_reloads.clone());
        registry.register(
            "inbound_rejections",
            "Caller tokens refused by the inbound check, by reason",
            inbound_rejections.clone(),
        );
        registry.register("jwks_fetches", "JWKS fetches, by outcome", jwks_fetches.clone());
        registry.register("introspections", "Token introspection requests, by outcome", introspections.clone());
        registry.register(
            "inbound_cache",
            "inbound.jwt verified-token cache lookups, by result (hit: no signature check; miss: the token was verified)",
            inbound_cache.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            cache_lookups,
            exchanges,
            exchange_duration,
            cache_entries,
            config_reloads,
            inbound_rejections,
            jwks_fetches,
            introspections,
            inbound_cache,
            breaker_open,
            in_flight,
            rate_limited,
            token_retries,
            cache_evictions,
            upstream_errors,
            upstream_duration,
            last_reload_success,
            last_reload_timestamp,
            tls_reloads,
            shared_ops,
            shared_duration,
            connections_open,
            connections,
            revocations,
            purged,
            security_events,
        }
    }

    /// One RFC 7009 revocation's outcome.
    pub fn revocation(&self, server: &str, outcome: &'static str) {
        self.revocations.get_or_create(&ExchangeLabels { server: server.to_owned(), outcome }).inc();
    }

    /// `n` entries purged on behalf of `source`.
    pub fn purged(&self, source: &'static str, n: u64) {
        self.purged.get_or_create(&SourceLabels { source }).inc_by(n);
    }

    /// One pushed Security Event Token's result.
    pub fn security_event(&self, result: &'static str) {
        self.security_events.get_or_create(&ReloadLabels { result }).inc();
    }

    /// The configuration was loaded at start (`ok`), or a reload was tried.
    fn reload_state(&self, ok: bool) {
        self.last_reload_success.set(i64::from(ok));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_reload_timestamp.set(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
    }

    /// The configuration loaded at start.
    pub fn started(&self) {
        self.reload_state(true);
    }

    /// Handles for `tokex_tls_reloads_total{source}` (`ok`, `rejected`).
    pub fn tls_reloads(&self, source: &'static str) -> Counters {
        let c = |result| (result, self.tls_reloads.get_or_create(&TlsLabels { source, result }).clone());
        Counters(std::sync::Arc::new([c("ok"), c("rejected")]))
    }

    /// One shared-store operation that sent nothing (`skipped`, a value that
    /// did not open): counted, not timed.
    pub fn shared_count(&self, op: &'static str, result: &'static str) {
        self.shared_ops.get_or_create(&SharedLabels { op, result }).inc();
    }

    /// One shared-store operation: its result and how long it took.
    pub fn shared_op(&self, op: &'static str, result: &'static str, took: std::time::Duration) {
        self.shared_ops.get_or_create(&SharedLabels { op, result }).inc();
        self.shared_duration.get_or_create(&OpLabels { op }).observe(took.as_secs_f64());
    }

    /// Handles for `tokex_cache_evictions_total`, one per reason.
    pub fn cache_evictions(&self) -> Counters {
        Counters(
            EVICTION_REASONS
                .iter()
                .map(|&reason| (reason, self.cache_evictions.get_or_create(&ReasonLabels { reason }).clone()))
                .collect(),
        )
    }

    /// The open-connections gauge and the accepted-connections counter.
    pub fn connections(&self) -> (Gauge, Counter) {
        (self.connections_open.clone(), self.connections.clone())
    }

    /// Handles for one authorization server.
    pub fn server(&self, server: &str) -> ServerMetrics {
        let breaker_open = self.breaker_open.get_or_create(&ServerLabels { server: server.to_owned() }).clone();
        let in_flight = self.in_flight.get_or_create(&ServerLabels { server: server.to_owned() }).clone();
        ServerMetrics { breaker_open, in_flight }
    }

    /// Handles for `tokex_inbound_rejections_total`, one per reason.
    pub fn inbound_rejections(&self, reasons: &[&'static str]) -> Counters {
        Counters(
            reasons
                .iter()
                .map(|&reason| (reason, self.inbound_rejections.get_or_create(&ReasonLabels { reason }).clone()))
                .collect(),
        )
    }

    /// Handles for `tokex_jwks_fetches_total`, one per outcome.
    pub fn jwks_fetches(&self, outcomes: &[&'static str]) -> Counters {
        Counters(
            outcomes
                .iter()
                .map(|&outcome| (outcome, self.jwks_fetches.get_or_create(&OutcomeLabels { outcome }).clone()))
                .collect(),
        )
    }

    /// Handles for `tokex_introspections_total`, one per outcome.
    pub fn introspections(&self, outcomes: &[&'static str]) -> Counters {
        Counters(
            outcomes
                .iter()
                .map(|&outcome| (outcome, self.introspections.get_or_create(&OutcomeLabels { outcome }).clone()))
                .collect(),
        )
    }

    /// Handles for `tokex_inbound_cache_total`, one per result.
    pub fn inbound_cache(&self, results: &[&'static str]) -> Counters {
        Counters(
            results
                .iter()
                .map(|&result| (result, self.inbound_cache.get_or_create(&ReloadLabels { result }).clone()))
                .collect(),
        )
    }

    /// Handles for one route (or `-` for requests that matched none).
    pub fn route(&self, route: &str) -> RouteMetrics {
        // Each handle in its own statement: `get_or_create` returns a read
        // guard, and a second insert while one is alive would deadlock.
        let duration = self.request_duration.get_or_create(&RouteLabels { route: route.to_owned() }).clone();
        let hits = self.cache_lookups.get_or_create(&CacheLabels { route: route.to_owned(), result: "hit" }).clone();
        let misses = self.cache_lookups.get_or_create(&CacheLabels { route: route.to_owned(), result: "miss" }).clone();
        let limited = |limit| self.rate_limited.get_or_create(&LimitLabels { route: route.to_owned(), limit }).clone();
        let (limited_route, limited_client) = (limited("route"), limited("client"));
        let retried =
            |result| self.token_retries.get_or_create(&CacheLabels { route: route.to_owned(), result }).clone();
        let (retried_ok, retried_refused) = (retried("ok"), retried("refused"));
        let upstream_duration = self.upstream_duration.get_or_create(&RouteLabels { route: route.to_owned() }).clone();
        let upstream_errors = Counters(
            UPSTREAM_ERROR_KINDS
                .iter()
                .map(|&kind| {
                    (kind, self.upstream_errors.get_or_create(&KindLabels { route: route.to_owned(), kind }).clone())
                })
                .collect(),
        );
        RouteMetrics {
            upstream_duration,
            upstream_errors,
            route: route.to_owned(),
            requests: self.requests.clone(),
            by_status: (0..500).map(|_| OnceLock::new()).collect(),
            duration,
            hits,
            misses,
            limited_route,
            limited_client,
            retried_ok,
            retried_refused,
        }
    }

    pub fn exchange(&self, server: &str, outcome: &'static str, elapsed: Duration) {
        self.exchanges.get_or_create(&ExchangeLabels { server: server.to_owned(), outcome }).inc();
        self.exchange_duration
            .get_or_create(&ServerLabels { server: server.to_owned() })
            .observe(elapsed.as_secs_f64());
    }

    pub fn reload(&self, ok: bool) {
        self.reload_state(ok);
        self.config_reloads.get_or_create(&ReloadLabels { result: if ok { "ok" } else { "rejected" } }).inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self, cache_entries: u64) -> String {
        self.cache_entries.set(i64::try_from(cache_entries).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub struct RouteMetrics {
    route: String,
    requests: Family<RequestLabels, Counter>,
    /// Counters by status code (100..=599), created on first use.
    by_status: Box<[OnceLock<Counter>]>,
    duration: Histogram,
    hits: Counter,
    misses: Counter,
    limited_route: Counter,
    limited_client: Counter,
    retried_ok: Counter,
    retried_refused: Counter,
    upstream_duration: Histogram,
    upstream_errors: Counters,
}

/// Per authorization server: the breaker state and requests in flight.
#[derive(Clone, Default)]
pub struct ServerMetrics {
    pub breaker_open: Gauge,
    pub in_flight: Gauge,
}

impl RouteMetrics {
    pub fn request(&self, status: u16, elapsed: Duration) {
        let idx = usize::from(status.clamp(100, 599) - 100);
        self.by_status[idx]
            .get_or_init(|| self.requests.get_or_create(&RequestLabels { route: self.route.clone(), status }).clone())
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn cache(&self, hit: bool) {
        if hit { &self.hits } else { &self.misses }.inc();
    }

    /// An exchange refused by the route's (`per_client: false`) or a
    /// client's rate limit.
    pub fn rate_limited(&self, per_client: bool) {
        if per_client { &self.limited_client } else { &self.limited_route }.inc();
    }

    /// The backend answered (a head) after `elapsed`.
    pub fn upstream_answered(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    /// The backend did not answer: `kind` is one of [`UPSTREAM_ERROR_KINDS`].
    pub fn upstream_failed(&self, kind: &str) {
        self.upstream_errors.inc(kind);
    }

    /// A retry after a backend `invalid_token`; `refused`: the fresh token was refused too.
    pub fn token_retry(&self, refused: bool) {
        if refused { &self.retried_refused } else { &self.retried_ok }.inc();
    }
}

/// Pre-created counters of one family, by a fixed label value: counting
/// neither allocates nor locks.
#[derive(Clone, Default)]
pub struct Counters(std::sync::Arc<[(&'static str, Counter)]>);

impl Counters {
    /// Counts one `label`; labels not created up front are ignored.
    pub fn inc(&self, label: &str) {
        if let Some((_, c)) = self.0.iter().find(|(l, _)| *l == label) {
            c.inc();
        }
    }
}
