//! Token exchange: per-route policy, the cache in front of the AS, and the
//! RFC 8693 request. `Exchanger::token` is the one entry point of the
//! request path.

pub mod cache;
pub mod client;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::auth::unverified;
use crate::config::{CacheConfig, ExchangeConfig, SecretSource, TOKEN_EXCHANGE_GRANT};
use crate::metrics::Metrics;
use crate::secret::Secret;
use cache::{CachedToken, Entry, EntryKind, Key, TokenCache};
use client::{AsClient, Issued};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    #[error("the authorization server refused the subject token (invalid_grant)")]
    InvalidGrant,
    #[error("the authorization server refused the scope or audience ({0})")]
    InsufficientScope(String),
    #[error("the authorization server refused tokex's client credentials ({0})")]
    ClientRejected(String),
    #[error("unusable answer from the authorization server: {0}")]
    BadAnswer(String),
    #[error("exchange set-up problem: {0}")]
    Config(String),
    #[error("authorization server unavailable: {0}")]
    Unavailable(String),
}

impl ExchangeError {
    /// Outcome label for metrics, logs and audit events.
    pub fn reason(&self) -> &'static str {
        match self {
            ExchangeError::InvalidGrant => "invalid_grant",
            ExchangeError::InsufficientScope(_) => "insufficient_scope",
            ExchangeError::ClientRejected(_) => "client_rejected",
            ExchangeError::BadAnswer(_) => "bad_answer",
            ExchangeError::Config(_) => "config",
            ExchangeError::Unavailable(_) => "unavailable",
        }
    }
}

/// A route's exchange policy, built once per configuration.
pub struct Policy {
    pub route: String,
    pub client: Arc<AsClient>,
    pub cfg: ExchangeConfig,
    /// `scope` space-joined, as sent and as named in 403 challenges.
    pub scope: String,
    /// SHA-256 over everything that shapes the issued token.
    digest: [u8; 32],
    actor: Option<Secret>,
}

impl Policy {
    pub fn new(route: &str, cfg: ExchangeConfig, client: Arc<AsClient>) -> Result<Self, String> {
        let actor = cfg.actor.as_ref().map(|a| Secret::from_source(&a.source));
        if let Some(a) = &actor {
            a.preload().map_err(|e| format!("route {route}: actor token: {e}"))?;
        }
        let mut h = Sha256::new();
        // Length-prefixed fields so no two policies hash alike.
        let mut field = |tag: &str, v: &str| {
            h.update((tag.len() as u32).to_be_bytes());
            h.update(tag.as_bytes());
            h.update((v.len() as u32).to_be_bytes());
            h.update(v.as_bytes());
        };
        field("server", &cfg.authorization_server);
        field("endpoint", client.endpoint().as_str());
        for a in &cfg.audience {
            field("audience", a);
        }
        for r in &cfg.resource {
            field("resource", r);
        }
        for s in &cfg.scope {
            field("scope", s);
        }
        field("subject_token_type", &cfg.subject_token_type);
        field("requested_token_type", cfg.requested_token_type.as_deref().unwrap_or(""));
        match cfg.actor.as_ref().map(|a| (&a.source, &a.token_type)) {
            None => field("actor", "none"),
            Some((SecretSource::File(p), t)) => {
                field("actor_file", &p.to_string_lossy());
                field("actor_type", t);
            }
            Some((SecretSource::Inline(tok), t)) => {
                field("actor_inline", &hex8(&Sha256::digest(tok.as_bytes())));
                field("actor_type", t);
            }
        }
        let digest = h.finalize().into();
        Ok(Policy { route: route.to_owned(), scope: cfg.scope.join(" "), client, cfg, digest, actor })
    }

    /// The cache key of `subject` (given as its SHA-256) under this policy.
    pub fn key(&self, subject_hash: &[u8; 32]) -> Key {
        let mut h = Sha256::new();
        h.update(self.digest);
        h.update(subject_hash);
        h.finalize().into()
    }

    /// The RFC 8693 §2.1 request parameters, form-encoded, and the actor's
    /// `sub` (unverified, for the audit event).
    fn form(&self, subject: &str) -> Result<(String, Option<String>), ExchangeError> {
        let mut f = form_urlencoded::Serializer::new(String::with_capacity(subject.len() + 512));
        f.append_pair("grant_type", TOKEN_EXCHANGE_GRANT)
            .append_pair("subject_token", subject)
            .append_pair("subject_token_type", &self.cfg.subject_token_type);
        for a in &self.cfg.audience {
            f.append_pair("audience", a);
        }
        for r in &self.cfg.resource {
            f.append_pair("resource", r);
        }
        if !self.scope.is_empty() {
            f.append_pair("scope", &self.scope);
        }
        if let Some(t) = &self.cfg.requested_token_type {
            f.append_pair("requested_token_type", t);
        }
        let mut actor_sub = None;
        if let (Some(secret), Some(actor)) = (&self.actor, &self.cfg.actor) {
            let token = secret.get().map_err(|e| ExchangeError::Config(format!("actor token: {e}")))?;
            actor_sub = unverified::peek(token.expose()).and_then(|c| c.sub);
            f.append_pair("actor_token", token.expose()).append_pair("actor_token_type", &actor.token_type);
        }
        Ok((f.finish(), actor_sub))
    }
}

/// First 8 hex characters of a digest: the only form of a token that logs carry.
pub fn hex8(digest: &[u8]) -> String {
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// How a request's token was obtained.
pub struct Lookup {
    pub entry: Arc<Entry>,
    pub hit: bool,
    /// Time spent in the exchange when this request made it.
    pub exchange_time: Option<Duration>,
}

#[derive(Clone)]
pub struct Exchanger {
    cache: TokenCache,
    settings: CacheConfig,
    metrics: Arc<Metrics>,
}

impl Exchanger {
    pub fn new(settings: CacheConfig, metrics: Arc<Metrics>) -> Self {
        Exchanger { cache: TokenCache::new(settings.max_entries), settings, metrics }
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The exchanged token for `subject` under `policy`: from the cache, or
    /// from one exchange shared by every concurrent request for the same key.
    pub async fn token(&self, policy: &Arc<Policy>, subject: &str, key: Key) -> Result<Lookup, ExchangeError> {
        if let Some(entry) = self.cache.get(&key).await {
            self.maybe_refresh(policy, subject, key, &entry);
            return Self::hit(entry, true, None);
        }
        let started = Instant::now();
        let (entry, hit) =
            self.cache.get_or_try_insert(key, self.exchange(policy, subject)).await.map_err(|e| (*e).clone())?;
        let exchange_time = (!hit).then(|| started.elapsed());
        Self::hit(entry, hit, exchange_time)
    }

    fn hit(entry: Arc<Entry>, hit: bool, exchange_time: Option<Duration>) -> Result<Lookup, ExchangeError> {
        match entry.kind {
            EntryKind::Token(_) => Ok(Lookup { entry, hit, exchange_time }),
            EntryKind::Rejected => Err(ExchangeError::InvalidGrant),
        }
    }

    pub async fn evict(&self, key: &Key) {
        self.cache.invalidate(key).await;
    }

    /// A hit within `refresh_ahead` of expiry starts one background exchange.
    fn maybe_refresh(&self, policy: &Arc<Policy>, subject: &str, key: Key, entry: &Entry) {
        if self.settings.refresh_ahead.is_zero() || !matches!(entry.kind, EntryKind::Token(_)) {
            return;
        }
        let now = Instant::now();
        if entry.expires_at.saturating_duration_since(now) > self.settings.refresh_ahead || !entry.claim_refresh() {
            return;
        }
        let this = self.clone();
        let policy = policy.clone();
        let subject = subject.to_owned();
        tokio::spawn(async move {
            if let Ok(fresh) = this.exchange(&policy, &subject).await {
                if matches!(fresh.kind, EntryKind::Token(_)) {
                    this.cache.insert(key, fresh).await;
                }
            }
        });
    }

    /// One RFC 8693 exchange, turned into a cache entry. `invalid_grant`
    /// becomes a short negative entry; other errors are not cached.
    async fn exchange(&self, policy: &Policy, subject: &str) -> Result<Arc<Entry>, ExchangeError> {
        let started = Instant::now();
        let peeked = unverified::peek(subject);
        let result = match policy.form(subject) {
            Ok((form, actor_sub)) => (policy.client.request(form).await, actor_sub),
            Err(e) => (Err(e), None),
        };
        let (result, actor_sub) = result;
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        };
        self.metrics.exchange(&policy.client.name, outcome, elapsed);
        tracing::info!(
            target: "tokex::audit",
            route = %policy.route,
            server = %policy.client.name,
            sub = peeked.as_ref().and_then(|c| c.sub.as_deref()).unwrap_or("-"),
            actor = actor_sub.as_deref().unwrap_or("-"),
            audience = %policy.cfg.audience.join(" "),
            scope = %policy.scope,
            outcome,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "token exchange"
        );
        match result {
            Ok(issued) => Ok(self.entry_for(policy, issued, peeked.and_then(|c| c.exp))),
            Err(ExchangeError::InvalidGrant) => Ok(Entry::new(EntryKind::Rejected, self.settings.negative_ttl)),
            Err(e) => {
                match &e {
                    ExchangeError::ClientRejected(_) | ExchangeError::BadAnswer(_) | ExchangeError::Config(_) => {
                        tracing::error!(route = %policy.route, server = %policy.client.name, error = %e, "token exchange failed: gateway misconfigured or AS misbehaving")
                    }
                    ExchangeError::Unavailable(_) => {
                        tracing::warn!(route = %policy.route, server = %policy.client.name, error = %e, "token exchange failed")
                    }
                    ExchangeError::InvalidGrant | ExchangeError::InsufficientScope(_) => {}
                }
                Err(e)
            }
        }
    }

    /// Lifetime = min(expires_in or default_ttl, max_ttl, subject exp) − skew.
    fn entry_for(&self, policy: &Policy, issued: Issued, subject_exp: Option<f64>) -> Arc<Entry> {
        let mut ttl = issued.expires_in.unwrap_or(policy.cfg.default_ttl).min(policy.cfg.max_ttl);
        if let Some(exp) = subject_exp {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            ttl = ttl.min(Duration::from_secs_f64((exp - now).clamp(0.0, 1e9)));
        }
        let ttl = ttl.saturating_sub(self.settings.expiry_skew);
        let token = issued.access_token.expose();
        // `parse_answer` checked the token is a valid header value.
        let mut raw = HeaderValue::from_str(token).unwrap_or_else(|_| HeaderValue::from_static(""));
        let mut bearer =
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|_| HeaderValue::from_static(""));
        raw.set_sensitive(true);
        bearer.set_sensitive(true);
        Entry::new(EntryKind::Token(CachedToken { bearer, raw }), ttl)
    }
}
