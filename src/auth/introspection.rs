//! RFC 7662 token introspection as the inbound check: `POST token=…` to the
//! introspection endpoint with tokex's client authentication (the same code
//! as the token endpoint's). Answers are cached by the token's SHA-256 (never
//! the token): `active: true` no longer than `cache_ttl` nor the token's
//! `exp`; `active: false` for `negative_ttl`. Concurrent checks of one token
//! share one request. An unreachable endpoint is `503`, like the exchange.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use moka::Expiry;
use serde::Deserialize;
use serde_json::Value;

use super::fetch::Remote;
use super::fetch::{read_capped, ReadError};
use super::scopes::Granted;
use super::{InboundError, Invalid};
use crate::config::IntrospectionConfig;
use crate::exchange::client::{ClientAuth, MAX_ANSWER_BYTES};
use crate::metrics::{Counters, Metrics};
use crate::telemetry::error_chain;

/// `tokex_introspections_total` outcomes.
const OUTCOMES: [&str; 4] = ["active", "inactive", "unavailable", "failed"];

type Key = [u8; 32];

/// A cached answer and how long it may be used.
struct Answer {
    verdict: Result<Granted, Invalid>,
    /// The answer's `sub` (RFC 7662 §2.2): an opaque token's subject.
    sub: Option<Arc<str>>,
    /// `cnf.jkt` (RFC 9449 §6.2): the DPoP key the token is bound to.
    jkt: Option<Arc<str>>,
    ttl: Duration,
}

struct PerAnswer;

impl Expiry<Key, Arc<Answer>> for PerAnswer {
    fn expire_after_create(&self, _: &Key, v: &Arc<Answer>, _: std::time::Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// What [`Introspector::purge`] forgets.
pub enum IntrospectionPurge<'a> {
    Token(&'a Key),
    /// Answers whose `sub` has one of these identifiers (`exchange::index::id`).
    Subject(&'a [crate::exchange::index::Id]),
    All,
}

pub struct Introspector {
    endpoint: Remote,
    auth: ClientAuth,
    http: reqwest::Client,
    cache_ttl: Duration,
    negative_ttl: Duration,
    max_entries: u64,
    cache: moka::future::Cache<Key, Arc<Answer>>,
    outcomes: Counters,
    /// Bumped by every purge (an answer in flight meanwhile is not kept).
    purges: AtomicU64,
}

/// The members of an introspection answer we use (RFC 7662 §2.2).
#[derive(Deserialize)]
struct Introspected {
    active: bool,
    #[serde(default)]
    scope: Option<Value>,
    #[serde(default)]
    scp: Option<Value>,
    #[serde(default)]
    exp: Option<f64>,
    /// Any JSON: only a string is used.
    #[serde(default)]
    sub: Option<Value>,
    /// Any JSON: only `{"jkt": "<string>"}` is used.
    #[serde(default)]
    cnf: Option<Value>,
}

impl Introspector {
    /// `servers` resolves `inbound.introspection.authorization_server`.
    pub fn new(
        cfg: &IntrospectionConfig,
        metrics: &Metrics,
        servers: &std::collections::BTreeMap<String, Arc<crate::exchange::client::AsClient>>,
    ) -> Result<Self, String> {
        let endpoint = Remote::new(&cfg.endpoint, servers, |c| c.introspection_endpoint())
            .map_err(|e| format!("inbound.introspection: {e}"))?;
        let http = super::fetch::client(cfg.ca_file.as_deref(), cfg.timeout)
            .map_err(|e| format!("inbound.introspection: {e}"))?;
        let auth = ClientAuth::new(&cfg.client_auth).map_err(|e| format!("inbound.introspection: {e}"))?;
        Ok(Introspector {
            endpoint,
            auth,
            http,
            cache_ttl: cfg.cache_ttl,
            negative_ttl: cfg.negative_ttl,
            max_entries: cfg.max_entries,
            cache: moka::future::Cache::builder().max_capacity(cfg.max_entries).expire_after(PerAnswer).build(),
            outcomes: metrics.introspections(&OUTCOMES),
            purges: AtomicU64::new(0),
        })
    }

    /// After a reload: keep the answers `old` holds when they came from the
    /// same endpoint, so a reload neither floods the endpoint nor fails
    /// while it is down. (They keep the lifetimes they were given.)
    pub fn adopt_cache(&mut self, old: &Introspector) {
        let same = self.endpoint.resolve().is_some() && self.endpoint.resolve() == old.endpoint.resolve();
        if same && self.max_entries == old.max_entries {
            self.cache = old.cache.clone();
        }
    }

    /// The scopes of an active `token` (`hash`: its SHA-256), its subject
    /// (`sub`) and DPoP key (`cnf.jkt`), when the answer names them.
    pub async fn check(&self, token: &str, hash: &Key) -> Result<(Granted, super::Checked), InboundError> {
        let since = self.purges.load(Ordering::Acquire);
        let entry =
            self.cache.entry(*hash).or_try_insert_with(self.introspect(token)).await.map_err(|e| (*e).clone())?;
        // An answer asked for before a purge and cached after it is not kept.
        if entry.is_fresh() && self.purges.load(Ordering::Acquire) != since {
            self.cache.invalidate(hash).await;
        }
        let answer = entry.into_value();
        let granted = answer.verdict.clone().map_err(InboundError::Invalid)?;
        Ok((granted, super::Checked { sub: answer.sub.clone(), jkt: answer.jkt.clone() }))
    }

    /// Forgets cached answers: the one for a token's SHA-256, those for a
    /// subject (`sub_id`: its hashed `sub`), or all. How many.
    pub async fn purge(&self, target: IntrospectionPurge<'_>) -> u64 {
        self.purges.fetch_add(1, Ordering::AcqRel);
        let keys: Vec<Key> = match target {
            IntrospectionPurge::Token(hash) => vec![*hash],
            IntrospectionPurge::Subject(ids) => self
                .cache
                .iter()
                .filter(|(_, a)| a.sub.as_deref().is_some_and(|s| ids.contains(&crate::exchange::index::id("sub", s))))
                .map(|(k, _)| *k)
                .collect(),
            IntrospectionPurge::All => self.cache.iter().map(|(k, _)| *k).collect(),
        };
        let mut n = 0;
        for k in keys {
            if self.cache.remove(&k).await.is_some() {
                n += 1;
            }
        }
        n
    }

    async fn introspect(&self, token: &str) -> Result<Arc<Answer>, InboundError> {
        let result = self.request(token).await;
        let outcome = match &result {
            Ok(a) if a.verdict.is_ok() => "active",
            Ok(_) => "inactive",
            Err(InboundError::Unavailable(_)) => "unavailable",
            Err(_) => "failed",
        };
        self.outcomes.inc(outcome);
        match &result {
            Err(e @ InboundError::Unavailable(_)) => {
                tracing::warn!(endpoint = %self.endpoint, error = %e, "token introspection failed")
            }
            Err(e) => {
                tracing::error!(endpoint = %self.endpoint, error = %e, "token introspection failed: gateway misconfigured or AS misbehaving")
            }
            Ok(_) => {}
        }
        result
    }

    async fn request(&self, token: &str) -> Result<Arc<Answer>, InboundError> {
        let form = form_urlencoded::Serializer::new(String::with_capacity(token.len() + 64))
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let endpoint = self.endpoint.resolve().ok_or_else(|| {
            InboundError::Unavailable("the authorization server's metadata has not been discovered yet".into())
        })?;
        let (body, basic) =
            self.auth.apply(form, endpoint.as_str(), None).map_err(|e| InboundError::Introspection(e.to_string()))?;
        let mut req = self
            .http
            .post(endpoint)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body);
        if let Some(b) = basic {
            req = req.header(AUTHORIZATION, b);
        }
        let resp = req.send().await.map_err(|e| InboundError::Unavailable(error_chain(&e)))?;
        let status = resp.status().as_u16();
        if status == 429 || status >= 500 {
            return Err(InboundError::Unavailable(format!("HTTP {status}")));
        }
        let body = read_capped(resp, MAX_ANSWER_BYTES).await.map_err(|e| match e {
            ReadError::TooLarge => InboundError::Introspection(format!("answer larger than {MAX_ANSWER_BYTES} bytes")),
            ReadError::Network(why) => InboundError::Unavailable(why),
        })?;
        match status {
            200 => self.answer(&body),
            401 | 403 => Err(InboundError::Introspection(format!("HTTP {status}: tokex's client credentials refused"))),
            _ => Err(InboundError::Introspection(format!("HTTP {status}"))),
        }
    }

    fn answer(&self, body: &[u8]) -> Result<Arc<Answer>, InboundError> {
        let a: Introspected = serde_json::from_slice(body)
            .map_err(|_| InboundError::Introspection("the answer is not an introspection response".into()))?;
        let refused = |why| Arc::new(Answer { verdict: Err(why), sub: None, jkt: None, ttl: self.negative_ttl });
        if !a.active {
            return Ok(refused(Invalid::Inactive));
        }
        let mut ttl = self.cache_ttl;
        if let Some(exp) = a.exp {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            if !exp.is_finite() || exp <= now {
                return Ok(refused(Invalid::Expired));
            }
            ttl = ttl.min(Duration::from_secs_f64((exp - now).min(1e9)));
        }
        let granted = Granted::from_claims(a.scope.as_ref(), a.scp.as_ref());
        let sub = a.sub.as_ref().and_then(Value::as_str).filter(|s| !s.is_empty()).map(Arc::from);
        let jkt = super::dpop::cnf_jkt(a.cnf.as_ref()).map(Arc::from);
        Ok(Arc::new(Answer { verdict: Ok(granted), sub, jkt, ttl }))
    }
}
