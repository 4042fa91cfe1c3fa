//! `exchange.max_rate`: token buckets over the exchanges a route starts, for
//! the whole route and per client address. Only a request that would call
//! the authorization server is counted (a cache hit, a remembered refusal or
//! a request that joins an exchange already in flight is not), so a flood of
//! new or garbage subject tokens cannot take every exchange from everyone
//! else. Beyond the limit: `429` with `Retry-After`.
//!
//! Clients are told apart by their address, an IPv6 address by its /64 (one
//! host usually holds a whole /64), at most [`MAX_PER_48`] /64s of one /48
//! (a site's allocation) apart — the rest of that /48 shares one bucket. At
//! most [`MAX_CLIENTS`] clients are tracked; beyond that, clients not
//! tracked share one bucket, so spraying addresses buys no more than one
//! client's share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::guard::whole_seconds;
use super::ExchangeError;
use crate::config::{Bucket, RateConfig};

/// Clients tracked at once.
pub const MAX_CLIENTS: usize = 65_536;

/// One token bucket's state.
#[derive(Debug, Clone, Copy)]
struct Level {
    tokens: f64,
    at: Instant,
}

impl Level {
    fn full(b: &Bucket, now: Instant) -> Self {
        Level { tokens: b.burst, at: now }
    }

    /// Tokens now, after refilling since the last look.
    fn refill(&mut self, b: &Bucket, now: Instant) {
        let add = now.saturating_duration_since(self.at).as_secs_f64() * b.per_second;
        self.tokens = (self.tokens + add).min(b.burst);
        self.at = now;
    }

    /// Refills, then refuses when less than one token is there (taking nothing).
    fn check(&mut self, b: &Bucket, now: Instant, per_client: bool) -> Result<(), ExchangeError> {
        self.refill(b, now);
        if self.tokens >= 1.0 {
            return Ok(());
        }
        let wait = Duration::from_secs_f64(((1.0 - self.tokens) / b.per_second).clamp(0.0, 86_400.0));
        Err(ExchangeError::RateLimited { retry_after: whole_seconds(wait), per_client })
    }
}

pub struct RateLimit {
    cfg: RateConfig,
    route: Mutex<Option<Level>>,
    clients: Mutex<Clients>,
}

#[derive(Default)]
struct Clients {
    levels: HashMap<u128, Level>,
    /// IPv6 /64s tracked per /48: beyond [`MAX_PER_48`] the rest of a /48
    /// shares one bucket, so one site's allocation cannot fill the table.
    per_48: HashMap<u128, u32>,
    /// Shared by every client not tracked while the table is full.
    overflow: Option<Level>,
    /// The last sweep of refilled buckets: at most one a second, so a spray
    /// of new addresses cannot make every exchange walk the whole table.
    swept: Option<Instant>,
}

/// IPv6 /64s of one /48 tracked apart; the others of that /48 share a bucket.
pub const MAX_PER_48: u32 = 256;

/// The address that identifies a client — IPv4 (or IPv4-mapped) whole, IPv6
/// by its /64 — and, for IPv6, its /48 (both tagged in the low bits, which a
/// prefix never uses, so no two kinds of key collide).
fn client_key(ip: IpAddr) -> (u128, Option<u128>) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), None),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), None),
            None => {
                let v6 = u128::from(v6);
                ((v6 >> 64) << 64 | 1, Some((v6 >> 80) << 80 | 2))
            }
        },
    }
}

/// The /48 key of a tracked /64 key.
fn site_of(key: u128) -> Option<u128> {
    (key & 3 == 1).then_some((key >> 80) << 80 | 2)
}

impl RateLimit {
    pub fn new(cfg: RateConfig) -> Self {
        RateLimit { cfg, route: Mutex::new(None), clients: Mutex::new(Clients::default()) }
    }

    /// True when a limit built from `cfg` would behave alike (a reload keeps this one).
    pub fn same_settings(&self, cfg: &RateConfig) -> bool {
        self.cfg == *cfg
    }

    /// The limit of a route's `max_rate` (none when unset): `previous`, the
    /// route's before a reload, when its settings are unchanged (its buckets
    /// carry over), else a new one.
    pub fn carried(cfg: RateConfig, previous: Option<&Arc<RateLimit>>) -> Option<Arc<RateLimit>> {
        (cfg != RateConfig::default()).then(|| match previous.filter(|l| l.same_settings(&cfg)) {
            Some(l) => l.clone(),
            None => Arc::new(RateLimit::new(cfg)),
        })
    }

    /// Takes one exchange from the client's bucket and the route's, or says
    /// how long to wait. Nothing is taken from either when one refuses.
    pub fn admit(&self, client: IpAddr) -> Result<(), ExchangeError> {
        let now = Instant::now();
        // Lock order: clients, then the route.
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut client_level = self.cfg.per_client.as_ref().map(|b| (b, clients.level(client_key(client), b, now)));
        if let Some((b, level)) = &mut client_level {
            level.check(b, now, true)?;
        }
        let mut route = self.route.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = &self.cfg.route {
            let level = route.get_or_insert_with(|| Level::full(b, now));
            level.check(b, now, false)?;
            level.tokens -= 1.0;
        }
        if let Some((_, level)) = client_level {
            level.tokens -= 1.0;
        }
        Ok(())
    }
}

impl Clients {
    /// The bucket of client `key`: tracked, newly tracked (full), or the
    /// shared overflow bucket when the table is full even of clients that
    /// are still spending.
    fn level(&mut self, (key, site): (u128, Option<u128>), b: &Bucket, now: Instant) -> &mut Level {
        let due = self.swept.map_or(true, |t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if due && self.levels.len() >= MAX_CLIENTS && !self.levels.contains_key(&key) {
            self.swept = Some(now);
            // A bucket that has refilled is the same as no bucket: forget those.
            let per_48 = &mut self.per_48;
            self.levels.retain(|k, l| {
                l.refill(b, now);
                let keep = l.tokens < b.burst;
                if let (false, Some(site)) = (keep, site_of(*k)) {
                    if let Some(n) = per_48.get_mut(&site) {
                        *n = n.saturating_sub(1);
                    }
                }
                keep
            });
            per_48.retain(|_, n| *n > 0);
        }
        // A /64 beyond its /48's share uses the /48's bucket.
        let key = match site {
            Some(site)
                if !self.levels.contains_key(&key) && self.per_48.get(&site).is_some_and(|n| *n >= MAX_PER_48) =>
            {
                site
            }
            _ => key,
        };
        if !self.levels.contains_key(&key) {
            if self.levels.len() >= MAX_CLIENTS {
                return self.overflow.get_or_insert_with(|| Level::full(b, now));
            }
            if let Some(site) = site_of(key) {
                *self.per_48.entry(site).or_insert(0) += 1;
            }
        }
        self.levels.entry(key).or_insert_with(|| Level::full(b, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(route: Option<(f64, f64)>, client: Option<(f64, f64)>) -> RateLimit {
        let b = |(per_second, burst)| Bucket { per_second, burst };
        RateLimit::new(RateConfig { route: route.map(b), per_client: client.map(b) })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn route_bucket_refills_at_its_rate() {
        let l = limit(Some((2.0, 3.0)), None);
        for _ in 0..3 {
            l.admit(ip("10.0.0.1")).unwrap();
        }
        let Err(ExchangeError::RateLimited { retry_after: 1, per_client: false }) = l.admit(ip("10.0.0.2")) else {
            panic!("the fourth exchange within the burst must wait");
        };
        tokio::time::advance(Duration::from_millis(500)).await;
        l.admit(ip("10.0.0.3")).unwrap();
        assert!(l.admit(ip("10.0.0.3")).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn one_client_cannot_take_the_route_share() {
        let l = limit(Some((100.0, 100.0)), Some((1.0, 2.0)));
        l.admit(ip("10.0.0.1")).unwrap();
        l.admit(ip("10.0.0.1")).unwrap();
        for _ in 0..50 {
            let Err(ExchangeError::RateLimited { per_client: true, .. }) = l.admit(ip("10.0.0.1")) else {
                panic!("the flooding client is limited");
            };
        }
        // Refused attempts took nothing from the route: others still get in.
        for i in 0..49 {
            l.admit(ip(&format!("10.0.1.{i}"))).unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_clients_are_their_64() {
        let l = limit(None, Some((1.0, 1.0)));
        l.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(l.admit(ip("2001:db8:1:2:ffff::9")).is_err());
        l.admit(ip("2001:db8:1:3::1")).unwrap();
        // IPv4-mapped is the IPv4 client.
        l.admit(ip("192.0.2.7")).unwrap();
        assert!(l.admit(ip("::ffff:192.0.2.7")).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn one_48_cannot_fill_the_table() {
        let l = limit(None, Some((0.001, 1.0)));
        for i in 0..MAX_PER_48 {
            l.admit(ip(&format!("2001:db8:0:{i:x}::1"))).unwrap();
        }
        // The rest of that /48 shares one bucket: one more gets in, then none.
        l.admit(ip("2001:db8:0:ffff::1")).unwrap();
        assert!(l.admit(ip("2001:db8:0:fffe::1")).is_err());
        // Another /48 is not affected.
        l.admit(ip("2001:db8:1:1::1")).unwrap();
        assert!(l.clients.lock().unwrap().levels.len() <= MAX_PER_48 as usize + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn untracked_clients_share_one_bucket_when_the_table_is_full() {
        let l = limit(None, Some((0.001, 1.0)));
        for i in 0..MAX_CLIENTS as u32 {
            l.admit(IpAddr::V4(i.into())).unwrap();
        }
        // The table is full of clients still spending: newcomers share one bucket.
        l.admit(ip("2001:db8::1")).unwrap();
        assert!(l.admit(ip("2001:db8:0:1::1")).is_err());
        // Once tracked clients have refilled they are forgotten.
        tokio::time::advance(Duration::from_secs(1000)).await;
        l.admit(ip("2001:db8:0:2::1")).unwrap();
        assert!(l.clients.lock().unwrap().levels.len() <= 1);
    }
}
