//! Token exchange: per-route policy, the cache in front of the AS, and the
//! RFC 8693 request. `Exchanger::token` is the one entry point of the
//! request path.

mod answer;
pub mod audit;
pub mod cache;
pub mod client;
pub mod client_auth;
pub mod discovery;
mod dpop;
mod error;
pub mod explain;
mod fields;
pub mod guard;
pub mod index;
mod l2;
mod outcome;
mod policy;
mod purge;
pub mod rate;
pub mod request;
pub mod revoke;
pub mod seal;
pub mod shared;
mod txn;
pub mod unverified;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::secret::SecretString;
use audit::Audit;
use cache::{Entry, EntryKind, Key, TokenCache};
use index::{Meta, SubjectIndex};
use outcome::blames_actor;
use revoke::Revoker;

pub use error::{ExchangeError, Refusal, StepUpHint};
use policy::Actor;
pub use policy::{MachinePolicy, Policy};
pub use purge::Target;
pub use txn::{TxnPolicy, TxnRequest};

/// Who asked for an exchange: the client address (for `max_rate`), the
/// request id (for the audit event) and the subject's `sub` as the
/// introspection answer gave it (an opaque token's subject, for revocation).
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    pub client: IpAddr,
    pub request_id: &'a str,
    pub sub: Option<&'a str>,
    /// The caller proved possession of the token's DPoP key (RFC 9449); a
    /// bound token (`cnf`) from a caller that did not is never exchanged.
    pub proven: bool,
}

/// An entry exchanged for a DPoP-bound subject token is for callers that
/// proved possession only (whatever `inbound.dpop` says now, on this
/// replica or the one that stored it).
fn unproven(entry: &Entry, origin: Origin<'_>) -> Result<(), ExchangeError> {
    match entry.meta.as_ref().is_some_and(|m| m.bound) && !origin.proven {
        true => Err(ExchangeError::BoundAsBearer),
        false => Ok(()),
    }
}

/// First 8 hex characters of a digest: the only form of a token that logs carry.
pub fn hex8(digest: &[u8]) -> String {
    Fingerprint::of(digest).to_string()
}

/// The first 4 bytes of a token's SHA-256, shown as 8 hex characters.
/// Copy, no allocation: the access log formats it in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 4]);

impl Fingerprint {
    pub fn of(digest: &[u8]) -> Self {
        let mut b = [0u8; 4];
        for (dst, src) in b.iter_mut().zip(digest) {
            *dst = *src;
        }
        Fingerprint(b)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a:02x}{b:02x}{c:02x}{d:02x}")
    }
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
    /// The store shared with the other replicas (`cache.shared`).
    shared: Option<Arc<shared::SharedStore>>,
    /// The cache's entries by subject (revocation).
    index: Arc<SubjectIndex>,
    /// The last purges: an exchange that was running when one named its
    /// entry does not keep (nor share) its token.
    purges: Arc<purge::Purges>,
    /// RFC 7009 revocation of purged and refused tokens, in the background.
    revoker: Arc<Revoker>,
}

impl Exchanger {
    pub fn new(settings: CacheConfig, metrics: Arc<Metrics>) -> Self {
        let index = Arc::new(SubjectIndex::default());
        Exchanger {
            cache: TokenCache::new(settings.max_entries, metrics.cache_evictions(), index.clone()),
            revoker: Arc::new(Revoker::new(metrics.clone())),
            settings,
            metrics,
            shared: None,
            index,
            purges: Arc::default(),
        }
    }

    /// Records which subject each entry was exchanged for (on by default),
    /// so that a purge by `sub` or `email` finds it.
    pub fn index_subjects(self, on: bool) -> Self {
        self.index.set_enabled(on);
        self
    }

    /// Puts the shared store behind the local cache.
    pub fn with_shared(mut self, store: Arc<shared::SharedStore>) -> Self {
        self.shared = Some(store);
        self
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The store shared with the other replicas, when configured.
    pub fn shared(&self) -> Option<&Arc<shared::SharedStore>> {
        self.shared.as_ref()
    }

    /// The exchanged token for `subject` (whose SHA-256 is `subject_hash`
    /// and local cache key `key`) under `policy`: from the cache, or
    /// from one exchange shared by every concurrent request for the same key.
    /// The request that starts the exchange (from `client`) is counted by
    /// the route's rate limit; the others join it.
    pub async fn token(
        &self,
        policy: &Arc<Policy>,
        subject: &str,
        subject_hash: &[u8; 32],
        key: Key,
        origin: Origin<'_>,
    ) -> Result<Lookup, ExchangeError> {
        if let Some(entry) = self.cache.get(&key).await {
            unproven(&entry, origin)?;
            self.maybe_refresh(policy, subject, key, &entry);
            return Self::hit(entry, true, None);
        }
        let started = Instant::now();
        let since = self.purges.now();
        let fill = async {
            let entry = self.fill(policy, subject, subject_hash, Some(origin)).await?;
            // Indexed before it is in the cache: the eviction listener
            // takes it out again, whenever it leaves.
            if let Some(meta) = &entry.meta {
                self.index.add(&key, meta);
            }
            Ok::<_, ExchangeError>(entry)
        };
        let (entry, hit) = self.cache.get_or_try_insert(key, fill).await.map_err(|e| (*e).clone())?;
        if !hit {
            self.purged_meanwhile(since, &key, &entry).await;
        }
        // From the shared store, or another caller's exchange: the same rule.
        unproven(&entry, origin)?;
        let exchange_time = (!hit).then(|| started.elapsed());
        Self::hit(entry, hit, exchange_time)
    }

    fn hit(entry: Arc<Entry>, hit: bool, exchange_time: Option<Duration>) -> Result<Lookup, ExchangeError> {
        match entry.kind {
            EntryKind::Token(_) => Ok(Lookup { entry, hit, exchange_time }),
            EntryKind::Rejected => Err(ExchangeError::InvalidGrant(Refusal::new("invalid_grant", None))),
        }
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
        // What the entry was indexed under carries over (an introspected `sub`).
        let sub = entry.meta.as_ref().and_then(|m| m.sub);
        tokio::spawn(async move {
            let since = this.purges.now();
            let fresh = this.exchange(&policy, &subject, None, Instant::now() + policy.client.timeout(), sub).await;
            this.share(&policy, &subject, &fresh, (since, key));
            if let Ok(fresh) = fresh {
                if matches!(fresh.kind, EntryKind::Token(_)) {
                    if let Some(meta) = &fresh.meta {
                        this.index.add(&key, meta);
                    }
                    this.cache.insert(key, fresh.clone()).await;
                    this.purged_meanwhile(since, &key, &fresh).await;
                }
            }
        });
    }

    /// One RFC 8693 exchange, turned into a cache entry. `invalid_grant`
    /// becomes a short negative entry; other errors are not cached.
    /// The whole of it — tokex's own actor token when it needs one, then the
    /// exchange — stays within the exchange server's budget.
    /// `origin` started it (a background refresh has none): the route's
    /// rate limit counts it. `deadline` ends the budget (a request that
    /// waited for another replica's exchange has less of it left).
    /// `known`: the subject's `sub` from outside the token (introspection).
    async fn exchange(
        &self,
        policy: &Policy,
        subject: &str,
        origin: Option<Origin<'_>>,
        deadline: Instant,
        known: Option<index::Id>,
    ) -> Result<Arc<Entry>, ExchangeError> {
        let started = Instant::now();
        let peeked = unverified::peek(subject);
        let known = known.or_else(|| index::id_of("sub", origin.and_then(|o| o.sub)));
        let bound = unverified::dpop_bound(subject);
        let meta = |issued: Option<&str>| Meta { bound, ..policy.meta(peeked.as_ref(), known, issued) };
        // Refusals that cost the AS nothing come first: an open breaker (so
        // the route's rate limit spends no token on it), then the rate limit.
        // A required claim the caller's token lacks costs nothing at all.
        let bearer = origin.is_some_and(|o| !o.proven);
        let admitted = match (policy.template.missing_claim(subject), origin, &policy.limit) {
            // Sender-constrained, and no proof: a stolen copy, whatever
            // `inbound.dpop` says (with it on, the binding was checked before).
            _ if bearer && bound => Err(ExchangeError::BoundAsBearer),
            (Some(claim), _, _) => Err(ExchangeError::MissingClaim(claim)),
            (None, Some(origin), Some(limit)) => {
                policy.client.guard().check().and_then(|()| limit.admit(origin.client))
            }
            _ => Ok(()),
        };
        let actor = match (admitted, &policy.actor) {
            (Err(e), _) => Err(e),
            (Ok(()), None) => Ok(None),
            (Ok(()), Some(Actor::Token(secret))) => {
                secret.get().map(Some).map_err(|e| ExchangeError::Config(format!("actor token: {e}")))
            }
            (Ok(()), Some(Actor::Machine(m))) => {
                let request_id = origin.map(|o| o.request_id);
                match tokio::time::timeout_at(deadline.into(), self.machine_token(m, request_id)).await {
                    Ok(lookup) => lookup,
                    Err(_) => {
                        Err(ExchangeError::Unavailable("tokex's own actor token did not come within the budget".into()))
                    }
                }
                .and_then(|l| match &l.entry.kind {
                    EntryKind::Token(t) => t
                        .raw
                        .to_str()
                        .map(|s| Some(SecretString::new(s)))
                        .map_err(|_| ExchangeError::BadAnswer("actor token is not text".into())),
                    EntryKind::Rejected => Err(ExchangeError::Config("tokex's own token was refused".into())),
                })
            }
        };
        let actor_claims = actor.as_ref().ok().and_then(|a| a.as_ref()).and_then(|a| unverified::peek(a.expose()));
        let actor_sub = actor_claims.as_ref().and_then(|c| c.sub.clone());
        // RFC 8693 §4.4, when the route enforces it: refused here, not at the AS.
        let actor = actor.and_then(|actor| match policy.cfg.enforce_may_act && policy.actor.is_some() {
            true => unverified::may_act_names(subject, actor.as_ref().map(|a| a.expose()))
                .map(|()| actor)
                .map_err(ExchangeError::ActorNotNamed),
            false => Ok(actor),
        });
        let result = match (actor, &policy.first) {
            (Err(e), _) => Err(e),
            // A chain's second leg; a first leg that failed is that leg's
            // answer (mapped and audited there), not this server's.
            (Ok(_), Some(first)) => match self.second_leg(policy, first, subject, origin).await {
                Ok(result) => result,
                Err(first_leg) => return Err(first_leg),
            },
            (Ok(actor), None) => match policy.template.form(subject, actor.as_ref().map(|a| a.expose())) {
                Ok(form) => policy.client.request(form, deadline.into()).await,
                Err(e) => Err(e),
            },
        };
        // An `invalid_grant` that is about the actor token is the gateway's
        // problem, not the caller's: no negative entry for the caller's
        // token, and tokex's own actor token is fetched anew next time.
        let result = match result {
            Err(ExchangeError::InvalidGrant(r))
                if policy.actor.is_some() && blames_actor(&r, actor_claims.as_ref()) =>
            {
                if let Some(Actor::Machine(m)) = &policy.actor {
                    self.cache.remove(&m.key()).await;
                }
                Err(ExchangeError::ActorRejected(r))
            }
            other => other,
        };
        let ttls = (policy.cfg.default_ttl, policy.cfg.max_ttl);
        let subject_exp = peeked.as_ref().and_then(|c| c.exp);
        let audit = Audit {
            grant: policy.cfg.grant.audit_name(),
            route: &policy.route,
            server: &policy.client.name,
            sub: peeked.as_ref().and_then(|c| c.sub.as_deref()),
            actor: actor_sub.as_deref(),
            audience: &policy.cfg.audience,
            scope: &policy.scope,
            token: Some(Fingerprint::of(&Sha256::digest(subject.as_bytes()))),
            request_id: origin.map(|o| o.request_id),
        };
        self.finish(audit, started, result, ttls, subject_exp, meta)
    }

    /// A chain's second leg: the `jwt-bearer` request at `policy`'s server
    /// with the first leg's grant, within this server's own budget from
    /// when the grant is there. A refused grant is dropped (here and from
    /// the shared store) and replaced once by a fresh one: a grant read
    /// from a cache may have been used already (a server may take each
    /// grant once, RFC 7523 §3 `jti`). The outer error is the first leg's.
    async fn second_leg(
        &self,
        policy: &Policy,
        first: &Arc<Policy>,
        subject: &str,
        origin: Option<Origin<'_>>,
    ) -> Result<Result<client::Issued, ExchangeError>, ExchangeError> {
        let hash: [u8; 32] = Sha256::digest(subject.as_bytes()).into();
        let mut replaced = false;
        loop {
            let (grant, entry) = self.first_leg(first, subject, &hash, origin).await?;
            let started = Instant::now();
            let result = match policy.template.form(grant.expose(), None) {
                Ok(form) => policy.client.request(form, (started + policy.client.timeout()).into()).await,
                Err(e) => Err(e),
            };
            let Err(refused @ ExchangeError::InvalidGrant(_)) = &result else { return Ok(result) };
            // This grant only: one another request stored meanwhile stays.
            self.cache.invalidate_entry(&first.key(&hash), &entry).await;
            self.forget_shared(first, &hash).await;
            if replaced {
                return Ok(result);
            }
            // The refusal that makes tokex ask again is a call like any other.
            let elapsed = started.elapsed();
            self.metrics.exchange(&policy.client.name, refused.reason(), elapsed);
            let peeked = unverified::peek(subject);
            Audit {
                grant: policy.cfg.grant.audit_name(),
                route: &policy.route,
                server: &policy.client.name,
                sub: peeked.as_ref().and_then(|c| c.sub.as_deref()),
                actor: None,
                audience: &policy.cfg.audience,
                scope: &policy.scope,
                token: Some(Fingerprint::of(&hash)),
                request_id: origin.map(|o| o.request_id),
            }
            .record(refused.reason(), elapsed, Some(refused));
            replaced = true;
        }
    }

    /// The first leg of a chain: the JWT authorization grant for `subject`
    /// (whose SHA-256 is `hash`) from the home server (cached, audited and
    /// mapped as its own exchange), and its cache entry. A background
    /// refresh (no `origin`) stands for the caller whose entry it refreshes.
    async fn first_leg(
        &self,
        first: &Arc<Policy>,
        subject: &str,
        hash: &[u8; 32],
        origin: Option<Origin<'_>>,
    ) -> Result<(SecretString, Arc<Entry>), ExchangeError> {
        let origin = origin.unwrap_or(Origin {
            client: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            request_id: "-",
            sub: None,
            proven: true,
        });
        let lookup = Box::pin(self.token(first, subject, hash, first.key(hash), origin)).await?;
        match &lookup.entry.kind {
            EntryKind::Token(t) if t.bound.is_none() => t
                .raw
                .to_str()
                .map(|g| (SecretString::new(g), lookup.entry.clone()))
                .map_err(|_| ExchangeError::BadAnswer("the JWT authorization grant is not text".into())),
            EntryKind::Token(_) => Err(ExchangeError::Config(
                "the home server bound the JWT authorization grant to tokex's DPoP key: a chain needs a bearer grant"
                    .into(),
            )),
            EntryKind::Rejected => Err(ExchangeError::InvalidGrant(Refusal::new("invalid_grant", None))),
        }
    }

    /// tokex's own token for `m`, from the cache or one client_credentials
    /// request (audited with `request_id`, the request that needed it).
    pub async fn machine_token(
        &self,
        m: &Arc<MachinePolicy>,
        request_id: Option<&str>,
    ) -> Result<Lookup, ExchangeError> {
        let key = m.key();
        if let Some(entry) = self.cache.get(&key).await {
            return Self::hit(entry, true, None);
        }
        let started = Instant::now();
        let fetch = async {
            let result = match m.template.form("", None) {
                Ok(form) => m.client.request(form, (started + m.client.timeout()).into()).await,
                Err(e) => Err(e),
            };
            // No user can act on tokex's own credential: a step-up answer
            // to it is the gateway's problem.
            let result = result.map_err(|e| match e {
                ExchangeError::StepUp(r, _) => ExchangeError::ClientRejected(r),
                e => e,
            });
            let audit = Audit {
                grant: "client_credentials",
                route: "-",
                server: &m.client.name,
                sub: None,
                actor: None,
                audience: &m.cfg.audience,
                scope: &m.scope,
                token: None,
                request_id,
            };
            // Found by a purge of everything, or of the route, only.
            let meta = |_: Option<&str>| Meta::new(index::tag(&m.key), None, None, None);
            self.finish(audit, started, result, (m.cfg.default_ttl, m.cfg.max_ttl), None, meta)
        };
        let (entry, hit) = self.cache.get_or_try_insert(key, fetch).await.map_err(|e| (*e).clone())?;
        Self::hit(entry, hit, (!hit).then(|| started.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::client::AsClient;
    use super::fields::Fields;
    use super::*;

    /// The policy of the only route of a parsed configuration.
    fn policy(yaml: &str) -> Policy {
        let cfg = crate::config::parse(yaml).unwrap();
        let server = cfg.servers.values().next().unwrap();
        let guard = guard::AsGuard::new(server, Default::default());
        let client = Arc::new(AsClient::new(server, Arc::new(guard)).unwrap());
        let x = cfg.routes[0].exchange.clone().unwrap();
        Policy::new("r", x, client, |_| Err("no machine".into()), None).unwrap()
    }

    const YAML: &str = "listen: { address: \"127.0.0.1:0\" }\nauthorization_servers:\n  corp: { token_endpoint: \"http://127.0.0.1:1/token\" }\nroutes:\n  - name: r\n    upstream: http://127.0.0.1:2\n    exchange: { authorization_server: corp, audience: [a], scope: [s] }\n";

    #[test]
    fn cache_keys_are_salted_per_process() {
        let p = policy(YAML);
        let subject: [u8; 32] = Sha256::digest(b"subject-token").into();
        // Stable within the process (reloads keep their entries)...
        assert_eq!(p.key(&subject), policy(YAML).key(&subject));
        // ...but not the public function of configuration and token it would
        // be without the salt: nobody outside the process can compute a key.
        let mut f = Fields::new();
        f.field("server", "corp");
        f.field("endpoint", "http://127.0.0.1:1/token");
        f.list("audience", &["a".to_owned()]);
        f.list("resource", &[]);
        f.list("scope", &["s".to_owned()]);
        f.field("subject_token_type", crate::config::ACCESS_TOKEN_TYPE);
        f.field("requested_token_type", "");
        f.field("actor", "none");
        let unsalted = f.finish();
        let mut h = Sha256::new();
        h.update(&unsalted[..16]);
        h.update(subject);
        let predictable: Key = h.finalize().into();
        assert_ne!(p.key(&subject), predictable);
        assert_ne!(cache::salt(), &[0u8; 16]);
    }
}
