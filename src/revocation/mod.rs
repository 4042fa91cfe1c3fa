//! Revocation that reaches the cache (SPEC §5): a purge removes cached
//! exchanged tokens (and introspection answers) by subject, route, subject
//! token or all, on this replica, in the shared store, and — through the
//! store's purge log — on every other replica; the tokens removed are
//! revoked at their authorization server (RFC 7009, `exchange::revoke`).
//! Purges come from the admin listener (`POST /cache/purge`, `tokex purge`)
//! and from Shared Signals (`ssf`, `push`).

pub mod cli;
pub mod push;
pub mod ssf;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::introspection::IntrospectionPurge;
use crate::exchange::index::{self, Id};
use crate::exchange::shared::SharedStore;
use crate::exchange::{Exchanger, Target};
use crate::metrics::Metrics;
use crate::proxy::handler::Gateway;
use crate::proxy::routes::RouteAuth;

/// How often a replica reads the purge log.
const POLL: Duration = Duration::from_millis(200);
/// A replica that wrote a value to the store this shortly before it read a
/// purge may have written it after the purge deleted the store's entries
/// (its exchange ran meanwhile): it runs the purge's store part again.
const RACE_WINDOW: Duration = Duration::from_secs(2);
/// Subjects one purge log message names at most.
const MAX_IDS_PER_MESSAGE: usize = 16;
/// Longest route name a purge log message carries.
const MAX_ROUTE_NAME: usize = 256;

/// What a purge names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Everything cached.
    All,
    /// The entries exchanged for these subjects (hashed `sub` or `email`).
    Subject(Vec<Id>),
    /// One route's entries.
    Route(String),
    /// The entries of one subject token, by its SHA-256.
    Token([u8; 32]),
}

impl Selector {
    pub fn sub(sub: &str) -> Self {
        Selector::Subject(vec![index::id("sub", sub)])
    }

    pub fn email(email: &str) -> Self {
        Selector::Subject(vec![index::id("email", email)])
    }

    /// A subject token named by its SHA-256 in hex (64 digits, any case).
    pub fn token_hex(hex: &str) -> Option<Self> {
        unhex(hex).map(Selector::Token)
    }

    /// As purge log messages from replica `from`: `v1 <from> <kind> <value>`
    /// (subjects 16 to a message).
    fn messages(&self, from: u64) -> Vec<String> {
        let one = |kind: &str, value: &str| format!("v1 {from:016x} {kind} {value}");
        match self {
            Selector::All => vec![one("all", "-")],
            Selector::Subject(ids) => ids
                .chunks(MAX_IDS_PER_MESSAGE)
                .map(|c| one("subject", &c.iter().map(|i| hex(i)).collect::<Vec<_>>().join(",")))
                .collect(),
            Selector::Route(name) => vec![one("route", name)],
            Selector::Token(hash) => vec![one("token", &hex(hash))],
        }
    }

    /// A purge log message read back, and the replica it came from; `None`
    /// for anything else (another version, a malformed or oversized one).
    fn parse(message: &str) -> Option<(u64, Self)> {
        let mut parts = message.splitn(4, ' ');
        let (Some("v1"), Some(from), Some(kind), Some(value)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let from = u64::from_be_bytes(unhex(from)?);
        let selector = match kind {
            "all" => Some(Selector::All),
            "subject" => {
                let ids: Option<Vec<Id>> = value.split(',').take(MAX_IDS_PER_MESSAGE).map(unhex).collect();
                ids.filter(|i| !i.is_empty()).map(Selector::Subject)
            }
            "route" if !value.is_empty() && value.len() <= MAX_ROUTE_NAME => Some(Selector::Route(value.to_owned())),
            "token" => unhex(value).map(Selector::Token),
            _ => None,
        };
        selector.map(|s| (from, s))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What one purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Token cache entries on this replica.
    pub local: u64,
    /// Cached introspection answers on this replica.
    pub introspection: u64,
    /// Keys deleted in the shared store; `None` without one, or when it did
    /// not answer.
    pub shared: Option<u64>,
    /// Whether the purge log took the purge (the other replicas apply it);
    /// `None` without a shared store.
    pub announced: Option<bool>,
}

impl Purged {
    /// Without a shared store, always; with one, once the store's entries
    /// are deleted and the other replicas told.
    pub fn complete(&self) -> bool {
        match self.announced {
            None => true,
            Some(announced) => announced && self.shared.is_some(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PurgeError {
    #[error("no route named {0:?}")]
    UnknownRoute(String),
}

/// Applies purges: shared by the admin listener and the SSF receiver.
pub struct Purger {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    /// This replica, in the purge log (random per process).
    replica: u64,
}

impl Purger {
    pub fn new(gateway: Arc<Gateway>, metrics: Arc<Metrics>) -> Self {
        Purger { gateway, metrics, replica: fastrand::u64(..) }
    }

    fn exchanger(&self) -> &Exchanger {
        &self.gateway.exchanger
    }

    /// Purges what `selector` names here and in the shared store, and
    /// announces it to the other replicas. `source` labels the metrics.
    pub async fn purge(&self, selector: &Selector, source: &'static str) -> Result<Purged, PurgeError> {
        let (local, introspection) = self.local(selector).await?;
        self.metrics.purged(source, local);
        let (shared, announced) = match self.exchanger().shared() {
            Some(store) => {
                let deleted = self.shared(store, selector).await;
                let mut announced = true;
                for message in selector.messages(self.replica) {
                    announced &= store.announce(&message).await;
                }
                if !announced {
                    tracing::warn!("cache.shared: the purge could not be announced to the other replicas");
                }
                (deleted, Some(announced))
            }
            None => (None, None),
        };
        Ok(Purged { local, introspection, shared, announced })
    }

    /// This replica's token cache and introspection answers.
    async fn local(&self, selector: &Selector) -> Result<(u64, u64), PurgeError> {
        let runtime = self.gateway.runtime();
        let exchanger = self.exchanger();
        let (target, answers) = match selector {
            Selector::All => (Target::All, Some(IntrospectionPurge::All)),
            Selector::Subject(ids) => (Target::Subject(ids.clone()), Some(IntrospectionPurge::Subject(ids))),
            Selector::Route(name) => {
                let route = runtime.routes.iter().find(|r| &r.name == name);
                let target = match route.map(|r| &r.auth) {
                    None => return Err(PurgeError::UnknownRoute(name.clone())),
                    Some(RouteAuth::Exchange(policy)) => Target::Policy(policy.tag()),
                    Some(RouteAuth::ClientCredentials(m)) => Target::Keys(m.keys()),
                    Some(RouteAuth::None | RouteAuth::Transaction(_)) => Target::Keys(Vec::new()),
                };
                (target, None)
            }
            Selector::Token(hash) => {
                let mut keys: Vec<_> = runtime
                    .routes
                    .iter()
                    .flat_map(|r| match &r.auth {
                        RouteAuth::Exchange(p) => p.keys(hash),
                        _ => Vec::new(),
                    })
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                (Target::Keys(keys), Some(IntrospectionPurge::Token(hash)))
            }
        };
        let local = exchanger.purge(&target).await;
        let introspection = match (answers, &runtime.inbound) {
            (Some(a), Some(inbound)) => inbound.purge(a).await,
            _ => 0,
        };
        Ok((local, introspection))
    }

    /// Whether some route's server binds tokens to a DPoP key here.
    fn dpop_in_use(&self) -> bool {
        self.gateway.runtime().servers.values().any(|s| s.dpop_key().is_some())
    }

    /// The shared store's entries.
    async fn shared(&self, store: &SharedStore, selector: &Selector) -> Option<u64> {
        let runtime = self.gateway.runtime();
        let policies = || {
            runtime.routes.iter().filter_map(|r| match &r.auth {
                RouteAuth::Exchange(p) => Some(p.clone()),
                _ => None,
            })
        };
        match selector {
            Selector::All => store.purge_matching(&store.all_pattern()).await,
            Selector::Subject(ids) => {
                let mut n = 0;
                for id in ids {
                    n += store.purge_subject(id).await?;
                }
                Some(n)
            }
            Selector::Route(name) => {
                let mut patterns: Vec<String> = policies()
                    .filter(|p| &p.route == name)
                    .filter_map(|p| store.policy_pattern(p.shared_digest()))
                    .collect();
                patterns.dedup();
                let mut n = 0;
                for p in patterns {
                    n += store.purge_matching(&p).await?;
                }
                Some(n)
            }
            Selector::Token(hash) => {
                let mut keys: Vec<String> = policies()
                    .flat_map(|p| p.store_subjects(hash).into_iter().map(move |s| (s, p.clone())))
                    .filter_map(|(s, p)| store.key(&s, p.shared_digest()))
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                store.purge_keys(&keys).await
            }
        }
    }

    /// Reads the purge log and applies other replicas' purges here, until
    /// shutdown (only with a shared store).
    pub fn follow(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        let store = self.exchanger().shared()?.clone();
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut after: Option<String> = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.changed() => return,
                }
                let Some(from) = after.clone() else {
                    after = store.log_end().await;
                    continue;
                };
                let Some(entries) = store.announced(&from).await else { continue };
                for (id, message) in entries {
                    // Past every entry, readable or not.
                    after = Some(id);
                    let Some((from, selector)) = message.as_deref().and_then(Selector::parse) else {
                        tracing::debug!("purge log: an entry this version does not read");
                        continue;
                    };
                    if from != this.replica {
                        match this.local(&selector).await {
                            Ok((n, _)) => this.metrics.purged("replica", n),
                            Err(e) => tracing::debug!(error = %e, "purge log: not applied here"),
                        }
                    }
                    // A token's store keys depend on each replica's DPoP key:
                    // every replica deletes its own (a few keys, no scan).
                    let own_keys = matches!(selector, Selector::Token(_)) && this.dpop_in_use();
                    if own_keys || store.wrote_within(RACE_WINDOW) {
                        this.shared(&store, &selector).await;
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_messages_round_trip_and_garbage_is_ignored() {
        for s in [
            Selector::All,
            Selector::sub("alice"),
            Selector::Subject(vec![index::id("sub", "a"), index::id("email", "b@c")]),
            Selector::Route("orders api".into()),
            Selector::Token([7; 32]),
        ] {
            assert_eq!(Selector::parse(&s.messages(u64::MAX - 1)[0]), Some((u64::MAX - 1, s)));
        }
        let r = "0000000000000001";
        for bad in [
            "".to_owned(),
            "v1".to_owned(),
            format!("v2 {r} all -"),
            format!("v1 {r} subject zz"),
            format!("v1 {r} token 00"),
            format!("v1 {r} route "),
            format!("v1 {r} nope x"),
            format!("v1 {r} subject "),
            "v1 xyz all -".to_owned(),
        ] {
            assert_eq!(Selector::parse(&bad), None, "{bad:?}");
        }
        assert!(!Selector::sub("alice").messages(1)[0].contains("alice"), "a subject travels hashed");
        let many: Vec<Id> = (0..40).map(|i| index::id("sub", &i.to_string())).collect();
        let messages = Selector::Subject(many.clone()).messages(1);
        assert_eq!(messages.len(), 3);
        let back: Vec<Id> = messages
            .iter()
            .flat_map(|m| match Selector::parse(m) {
                Some((_, Selector::Subject(ids))) => ids,
                _ => panic!("{m}"),
            })
            .collect();
        assert_eq!(back, many);
        assert!(messages.iter().all(|m| m.len() <= 1024));
    }
}
