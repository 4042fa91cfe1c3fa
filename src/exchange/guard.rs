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
use crate::config::BreakerConfig;
use crate::metrics::ServerMetrics;

/// Guards one authorization server; shared across reloads while its
/// settings are unchanged.
pub struct AsGuard {
    server: String,
    settings: (usize, BreakerConfig),
    slots: Semaphore,
    state: Mutex<State>,
    metrics: ServerMetrics,
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
    pub fn new(server: &str, max_concurrent: usize, breaker: BreakerConfig, metrics: ServerMetrics) -> Self {
        metrics.breaker_open.set(0);
        AsGuard {
            server: server.to_owned(),
            settings: (max_concurrent, breaker),
            slots: Semaphore::new(max_concurrent.clamp(1, Semaphore::MAX_PERMITS)),
            state: Mutex::new(State::Closed { failures: 0 }),
            metrics,
        }
    }

    /// True when a guard built from these settings would behave alike, so a
    /// reload keeps this one (its state and the requests in flight).
    pub fn same_settings(&self, max_concurrent: usize, breaker: BreakerConfig) -> bool {
        self.settings == (max_concurrent, breaker)
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leave for one request, or `CircuitOpen` while the breaker is open
    /// (or another request is the probe).
    pub fn admit(&self) -> Result<Pass<'_>, ExchangeError> {
        if self.settings.1.consecutive_failures == 0 {
            return Ok(Pass { guard: self, probe: false, recorded: false });
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(Pass { guard: self, probe: false, recorded: false }),
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(ExchangeError::CircuitOpen { retry_after: whole_seconds(until - now) });
                }
                *state = State::Probing;
                tracing::warn!(server = %self.server, "circuit breaker half-open: one probe request");
                Ok(Pass { guard: self, probe: true, recorded: false })
            }
            State::Probing => Err(ExchangeError::CircuitOpen { retry_after: 1 }),
        }
    }

    /// `CircuitOpen` when [`AsGuard::admit`] would refuse now, without
    /// taking the probe: lets a caller refuse before spending anything else
    /// (a rate-limit token) on a request that cannot be made.
    pub fn check(&self) -> Result<(), ExchangeError> {
        if self.settings.1.consecutive_failures == 0 {
            return Ok(());
        }
        match *self.lock() {
            State::Open { until } if Instant::now() < until => {
                Err(ExchangeError::CircuitOpen { retry_after: whole_seconds(until - Instant::now()) })
            }
            State::Probing => Err(ExchangeError::CircuitOpen { retry_after: 1 }),
            _ => Ok(()),
        }
    }

    fn record(&self, probe: bool, health: Health) {
        let cfg = self.settings.1;
        let mut state = self.lock();
        let next = match (*state, health) {
            (State::Probing, Health::Answered) if probe => {
                tracing::warn!(server = %self.server, "circuit breaker closed: the probe was answered");
                State::Closed { failures: 0 }
            }
            (State::Probing, Health::Failed) if probe => {
                tracing::warn!(server = %self.server, open_for = ?cfg.open_for, "circuit breaker re-opened: the probe failed");
                State::Open { until: Instant::now() + cfg.open_for }
            }
            (State::Closed { .. }, Health::Answered) => State::Closed { failures: 0 },
            (State::Closed { failures }, Health::Failed) if failures + 1 >= cfg.consecutive_failures => {
                tracing::warn!(
                    server = %self.server,
                    failures = failures + 1,
                    open_for = ?cfg.open_for,
                    "circuit breaker opened: uncached requests answer 503 without calling the server"
                );
                State::Open { until: Instant::now() + cfg.open_for }
            }
            (State::Closed { failures }, Health::Failed) => State::Closed { failures: failures + 1 },
            // A request admitted before the breaker opened: already counted.
            (s, _) => s,
        };
        *state = next;
        self.metrics.breaker_open.set(i64::from(!matches!(next, State::Closed { .. })));
    }

    /// Whether the breaker lets requests through now (tests, metrics).
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }
}

impl Pass<'_> {
    pub fn record(mut self, health: Health) {
        self.recorded = true;
        if self.guard.settings.1.consecutive_failures > 0 {
            self.guard.record(self.probe, health);
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
            let mut state = self.guard.lock();
            if *state == State::Probing {
                *state = State::Open { until: Instant::now() };
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
        AsGuard::new("corp", 2, BreakerConfig { consecutive_failures: failures, open_for }, ServerMetrics::default())
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
