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
    breaker_open: Family<ServerLabels, Gauge>,
    in_flight: Family<ServerLabels, Gauge>,
    rate_limited: Family<LimitLabels, Counter>,
    token_retries: Family<CacheLabels, Counter>,
}

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
        let breaker_open = Family::<ServerLabels, Gauge>::default();
        let in_flight = Family::<ServerLabels, Gauge>::default();
        let rate_limited = Family::<LimitLabels, Counter>::default();
        let token_retries = Family::<CacheLabels, Counter>::default();
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
            breaker_open,
            in_flight,
            rate_limited,
            token_retries,
        }
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
        RouteMetrics {
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
