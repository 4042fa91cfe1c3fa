//! Protection of one authorization server: a bound on the requests in
//! flight at it (`max_concurrent`) and a circuit breaker. Only requests that
//! reach the server pass here: cached traffic never waits on either.
//!
//! The breaker counts consecutive failed requests — network errors,
//! timeouts, 429 and 5xx; any other answer (a 4xx is a healthy server
//! saying no) resets the count. At `consecutive_failures` it opens: for
//! `open_for`, requests are refused at once without a call. Then exactly one
//! request is let through as a probe; its success closes the breaker, its
//! failure opens it again for another `open_for`. A probe that never
//! finishes (its caller went away) hands the probe on to the next request.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::ExchangeError;
use crate::config::{AsLocation, AuthServerConfig, BreakerConfig};
use crate::metrics::ServerMetrics;

/// Guards one authorization server; shared across reloads while its
/// settings are unchanged.
pub struct AsGuard {
    server: String,
    settings: Settings,
    slots: Semaphore,
    state: Mutex<Breaker>,
    metrics: ServerMetrics,
}

/// What a reload compares: the server's location too, so a server moved to
/// another endpoint starts with a fresh breaker and its own slots.
type Settings = (AsLocation, usize, BreakerConfig);

/// The breaker's state and its period: `epoch` changes whenever it opens or
/// a probe closes it, so the outcome of a request admitted in an earlier
/// period (one slower than `open_for`) does not count in a later one.
#[derive(Debug, Clone, Copy)]
struct Breaker {
    state: State,
    epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else is refused until it ends.
    Probing,
}

/// A place among the requests in flight at the server.
pub struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
    guard: &'a AsGuard,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.guard.metrics.in_flight.dec();
    }
}

/// Leave to make one request; report how it went with [`Pass::record`].
pub struct Pass<'a> {
    guard: &'a AsGuard,
    probe: bool,
    epoch: u64,
    recorded: bool,
}

/// How one request to the server went, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// An answer that is not a 429 or a 5xx.
    Answered,
    /// A network error, a timeout, a 429 or a 5xx.
    Failed,
}

impl AsGuard {
    /// The breaker gauge is left alone: a guard built for a reload that is
    /// then rejected must not reset the running one's (see [`AsGuard::publish`]).
    pub fn new(cfg: &AuthServerConfig, metrics: ServerMetrics) -> Self {
        AsGuard {
            server: cfg.name.clone(),
            settings: (cfg.location.clone(), cfg.max_concurrent, cfg.circuit_breaker),
            slots: Semaphore::new(cfg.max_concurrent.clamp(1, Semaphore::MAX_PERMITS)),
            state: Mutex::new(Breaker { state: State::Closed { failures: 0 }, epoch: 0 }),
            metrics,
        }
    }

    /// True when a guard built from `cfg` would behave alike and guard the
    /// same endpoint, so a reload keeps this one (its state and the
    /// requests in flight).
    pub fn same_settings(&self, cfg: &AuthServerConfig) -> bool {
        self.settings == (cfg.location.clone(), cfg.max_concurrent, cfg.circuit_breaker)
    }

    /// Shows this guard's breaker state in the metrics (once it is the one in use).
    pub fn publish(&self) {
        self.metrics.breaker_open.set(i64::from(self.is_open()));
    }

    fn breaker(&self) -> &BreakerConfig {
        &self.settings.2
    }

    /// Waits for a place among the requests in flight, until `deadline`.
    pub async fn slot(&self, deadline: Instant) -> Result<Slot<'_>, ExchangeError> {
        let permit = match self.slots.try_acquire() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout_at(deadline, self.slots.acquire()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) | Err(_) => return Err(ExchangeError::Busy),
            },
        };
        self.metrics.in_flight.inc();
        Ok(Slot { _permit: permit, guard: self })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leave for one request, or `CircuitOpen` while the breaker is open
    /// (or another request is the probe).
    pub fn admit(&self) -> Result<Pass<'_>, ExchangeError> {
        let pass = |probe, epoch| Pass { guard: self, probe, epoch, recorded: false };
        if self.breaker().consecutive_failures == 0 {
            return Ok(pass(false, 0));
        }
        let mut b = self.lock();
        if let Some(refusal) = b.state.refusal(Instant::now()) {
            return Err(refusal);
        }
        if !matches!(b.state, State::Open { .. }) {
            return Ok(pass(false, b.epoch));
        }
        // Open, and `open_for` is over: this request is the probe.
        b.state = State::Probing;
        let epoch = b.epoch;
        drop(b);
        tracing::warn!(server = %self.server, "circuit breaker half-open: one probe request");
        Ok(pass(true, epoch))
    }

    /// `CircuitOpen` when [`AsGuard::admit`] would refuse now, without
    /// taking the probe: lets a caller refuse before spending anything else
    /// (a rate-limit token) on a request that cannot be made.
    pub fn check(&self) -> Result<(), ExchangeError> {
        if self.breaker().consecutive_failures == 0 {
            return Ok(());
        }
        self.lock().state.refusal(Instant::now()).map_or(Ok(()), Err)
    }

    fn record(&self, probe: bool, epoch: u64, health: Health) {
        let cfg = *self.breaker();
        let mut b = self.lock();
        if !probe && epoch != b.epoch {
            // Admitted in an earlier period: that period is over.
            return;
        }
        let reopen = || State::Open { until: far(cfg.open_for) };
        let (next, change) = match (b.state, health) {
            (State::Probing, Health::Answered) if probe => (State::Closed { failures: 0 }, Some(Change::Closed)),
            (State::Probing, Health::Failed) if probe => (reopen(), Some(Change::Reopened)),
            (State::Closed { .. }, Health::Answered) => (State::Closed { failures: 0 }, None),
            (State::Closed { failures }, Health::Failed) if failures + 1 >= cfg.consecutive_failures => {
                (reopen(), Some(Change::Opened(failures + 1)))
            }
            (State::Closed { failures }, Health::Failed) => (State::Closed { failures: failures + 1 }, None),
            // A request admitted before the breaker opened: already counted.
            (s, _) => (s, None),
        };
        b.state = next;
        if change.is_some() {
            b.epoch += 1;
        }
        drop(b);
        self.metrics.breaker_open.set(i64::from(!matches!(next, State::Closed { .. })));
        let server = &self.server;
        match change {
            Some(Change::Opened(failures)) => tracing::warn!(
                server,
                failures,
                open_for_ms = cfg.open_for.as_millis() as u64,
                "circuit breaker opened: uncached requests answer 503 without calling the server"
            ),
            Some(Change::Reopened) => {
                tracing::warn!(
                    server,
                    open_for_ms = cfg.open_for.as_millis() as u64,
                    "circuit breaker re-opened: the probe failed"
                )
            }
            Some(Change::Closed) => tracing::warn!(server, "circuit breaker closed: the probe was answered"),
            None => {}
        }
    }

    /// Whether the breaker lets requests through now (tests, metrics).
    pub fn is_open(&self) -> bool {
        !matches!(self.lock().state, State::Closed { .. })
    }
}

impl State {
    /// Why a request is refused at `now`: open with time left, or a probe out.
    fn refusal(&self, now: Instant) -> Option<ExchangeError> {
        match *self {
            State::Open { until } if now < until => {
                Some(ExchangeError::CircuitOpen { retry_after: whole_seconds(until - now) })
            }
            State::Probing => Some(ExchangeError::CircuitOpen { retry_after: 1 }),
            State::Open { .. } | State::Closed { .. } => None,
        }
    }
}

/// A transition worth a warning.
enum Change {
    Opened(u32),
    Reopened,
    Closed,
}

/// `open_for` from now (validated to at most an hour; no overflow anyway).
fn far(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or(now + Duration::from_secs(3600))
}

impl Pass<'_> {
    pub fn record(mut self, health: Health) {
        self.recorded = true;
        if self.guard.breaker().consecutive_failures > 0 {
            self.guard.record(self.probe, self.epoch, health);
        }
    }

    /// True for the one request let through after `open_for`: it is not retried.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        // A probe whose caller went away: the next request probes instead.
        if self.probe && !self.recorded {
            let mut b = self.guard.lock();
            if b.state == State::Probing {
                b.state = State::Open { until: Instant::now() };
            }
        }
    }
}

/// A wait in whole seconds for `Retry-After`: at least 1.
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(failures: u32, open_for: Duration) -> AsGuard {
        let yaml = "listen: { address: \"127.0.0.1:0\" }\nauthorization_servers:\n  corp: { token_endpoint: \"http://127.0.0.1:1/token\", max_concurrent: 2 }\nroutes:\n  - { name: r, upstream: \"http://127.0.0.1:2\", auth: none }\n";
        let mut cfg = crate::config::parse(yaml).unwrap().servers.remove("corp").unwrap();
        cfg.circuit_breaker = BreakerConfig { consecutive_failures: failures, open_for };
        AsGuard::new(&cfg, ServerMetrics::default())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_once() {
        let g = guard(3, Duration::from_secs(5));
        for _ in 0..2 {
            g.admit().unwrap().record(Health::Failed);
        }
        // An answer (even a 4xx) resets the count.
        g.admit().unwrap().record(Health::Answered);
        for _ in 0..3 {
            g.admit().unwrap().record(Health::Failed);
        }
        assert!(g.is_open());
        assert!(matches!(g.check(), Err(ExchangeError::CircuitOpen { retry_after: 5 })));
        assert!(matches!(g.admit(), Err(ExchangeError::CircuitOpen { retry_after: 5 })));
        tokio::time::advance(Duration::from_millis(4500)).await;
        assert!(matches!(g.admit(), Err(ExchangeError::CircuitOpen { retry_after: 1 })));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(g.check().is_ok(), "checking does not take the probe");
        let probe = g.admit().unwrap();
        assert!(probe.is_probe());
        // Exactly one probe.
        assert!(g.admit().is_err());
        probe.record(Health::Failed);
        assert!(matches!(g.admit(), Err(ExchangeError::CircuitOpen { retry_after: 5 })));
        tokio::time::advance(Duration::from_secs(5)).await;
        g.admit().unwrap().record(Health::Answered);
        assert!(!g.is_open());
        assert!(!g.admit().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_hands_over() {
        let g = guard(1, Duration::from_secs(1));
        g.admit().unwrap().record(Health::Failed);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(g.admit().unwrap());
        let next = g.admit().unwrap();
        assert!(next.is_probe());
        next.record(Health::Answered);
        assert!(!g.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_from_an_earlier_period_does_not_count() {
        let g = guard(1, Duration::from_secs(1));
        let stale = g.admit().unwrap();
        g.admit().unwrap().record(Health::Failed);
        tokio::time::advance(Duration::from_secs(1)).await;
        g.admit().unwrap().record(Health::Answered);
        stale.record(Health::Failed);
        assert!(!g.is_open(), "a failure from before the breaker opened does not re-open it");
    }

    #[tokio::test(start_paused = true)]
    async fn off_when_no_failure_count() {
        let g = guard(0, Duration::ZERO);
        for _ in 0..100 {
            g.admit().unwrap().record(Health::Failed);
        }
        assert!(!g.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn slots_bound_requests_in_flight() {
        let g = guard(0, Duration::ZERO);
        let a = g.slot(Instant::now()).await.unwrap();
        let _b = g.slot(Instant::now()).await.unwrap();
        assert_eq!(g.metrics.in_flight.get(), 2);
        let waited = Instant::now();
        assert!(matches!(g.slot(Instant::now() + Duration::from_millis(100)).await, Err(ExchangeError::Busy)));
        assert_eq!(waited.elapsed(), Duration::from_millis(100));
        drop(a);
        assert!(g.slot(Instant::now()).await.is_ok());
        assert_eq!(g.metrics.in_flight.get(), 1);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(5)), 5);
        assert_eq!(whole_seconds(Duration::from_millis(5001)), 6);
    }
}
