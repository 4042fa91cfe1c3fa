//! A route's exchange policy and tokex's own client_credentials policy:
//! what shapes an issued token (its digests) and the cache keys.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::cache::{self, Key};
use super::client::AsClient;
use super::fields::Fields;
use super::index::{self, Meta};
use super::rate::RateLimit;
use super::request::Template;
use super::{hex8, unverified};
use crate::config::{ActorSource, ExchangeConfig, Grant, MachineConfig, ParamValue, RateConfig, SecretSource};
use crate::secret::Secret;

/// A route's exchange policy, built once per configuration.
pub struct Policy {
    pub route: String,
    pub client: Arc<AsClient>,
    pub cfg: ExchangeConfig,
    /// `scope` space-joined, as sent and as named in 403 challenges.
    pub scope: String,
    /// SHA-256 over the process's secret salt and `shared_digest`: local keys.
    pub(super) digest: [u8; 32],
    /// SHA-256 over everything that shapes the issued token: the same on
    /// every replica, for the shared store's keys and sealing.
    pub(super) shared_digest: [u8; 32],
    pub(super) actor: Option<Actor>,
    /// `max_rate`, when set.
    pub(super) limit: Option<Arc<RateLimit>>,
    /// The token request's parameters.
    pub template: Template,
    /// Identity chaining: the first leg, whose token (a JWT authorization
    /// grant) is this policy's `assertion`.
    pub(super) first: Option<Arc<Policy>>,
}

/// Where a policy's actor token comes from.
pub(super) enum Actor {
    Token(Secret),
    Machine(Arc<MachinePolicy>),
}

/// tokex's own client_credentials token for one audience/scope: the actor
/// of a delegation, or the credential of an egress route.
pub struct MachinePolicy {
    pub client: Arc<AsClient>,
    pub cfg: MachineConfig,
    pub scope: String,
    /// The cache key of this token (with no DPoP key in it).
    pub(super) key: Key,
    pub template: Template,
}

impl MachinePolicy {
    /// The cache key of this token (with a DPoP server, of the token bound
    /// to tokex's key of the moment).
    pub fn key(&self) -> Key {
        let key = self.client.dpop_key();
        self.key_with(key.as_ref().map(|k| k.jkt()))
    }

    /// Every cache key this token may have here (one per DPoP key used).
    pub fn keys(&self) -> Vec<Key> {
        let used = self.client.dpop_thumbprints();
        match used.is_empty() {
            true => vec![self.key],
            false => used.iter().map(|j| self.key_with(Some(j))).collect(),
        }
    }

    fn key_with(&self, jkt: Option<&str>) -> Key {
        match jkt {
            None => self.key,
            Some(jkt) => Sha256::new().chain_update(self.key).chain_update(jkt.as_bytes()).finalize().into(),
        }
    }

    pub fn new(cfg: MachineConfig, client: Arc<AsClient>) -> Self {
        let mut f = Fields::new();
        f.field("grant", "client_credentials");
        f.field("server", &cfg.authorization_server);
        f.field("endpoint", client.endpoint().as_str());
        f.list("audience", &cfg.audience);
        f.list("resource", &cfg.resource);
        f.list("scope", &cfg.scope);
        MachinePolicy { scope: cfg.scope.join(" "), key: f.finish(), template: Template::machine(&cfg), client, cfg }
    }
}

impl Policy {
    /// `machine` resolves an `actor.client_credentials` section to its policy;
    /// `previous` is the route's policy before a reload (its rate limit
    /// carries over when unchanged).
    pub fn new(
        route: &str,
        cfg: ExchangeConfig,
        client: Arc<AsClient>,
        machine: impl FnOnce(&MachineConfig) -> Result<Arc<MachinePolicy>, String>,
        previous: Option<&Policy>,
    ) -> Result<Self, String> {
        Self::build(route, cfg, client, machine, previous, None)
    }

    /// A route with `exchange.chain` (draft-ietf-oauth-identity-chaining):
    /// an RFC 8693 exchange at `home` for a JWT whose audience is `next`
    /// (then the route's own audiences), then the RFC 7523 `jwt-bearer`
    /// grant at `next` for the chain's audience and scope. Each leg has
    /// its own cache entry; the second's key depends on the first's policy.
    /// `next_id` names the next server (`AsLocation::identifier`).
    pub fn chained(
        route: &str,
        cfg: ExchangeConfig,
        (home, next, next_id): (Arc<AsClient>, Arc<AsClient>, &str),
        machine: impl FnOnce(&MachineConfig) -> Result<Arc<MachinePolicy>, String>,
        previous: Option<&Policy>,
    ) -> Result<Self, String> {
        let Some(chain) = cfg.chain.clone() else { return Self::new(route, cfg, home, machine, previous) };
        let first_cfg = first_leg(&cfg, next_id);
        let before = previous.and_then(|p| p.first.as_deref());
        let first = Arc::new(Self::build(route, first_cfg, home, machine, before, None)?);
        let second = ExchangeConfig {
            authorization_server: chain.authorization_server,
            audience: chain.audience,
            resource: chain.resource,
            scope: chain.scope,
            subject_token_type: crate::config::JWT_TOKEN_TYPE.to_owned(),
            requested_token_type: None,
            actor: None,
            grant: Grant::JwtBearer,
            extra_params: Vec::new(),
            chain: None,
            enforce_may_act: false,
            ..cfg
        };
        Self::build(route, second, next, |_| Err("no actor on the second leg".into()), previous, Some(first))
    }

    fn build(
        route: &str,
        cfg: ExchangeConfig,
        client: Arc<AsClient>,
        machine: impl FnOnce(&MachineConfig) -> Result<Arc<MachinePolicy>, String>,
        previous: Option<&Policy>,
        first: Option<Arc<Policy>>,
    ) -> Result<Self, String> {
        let limit = RateLimit::carried(cfg.max_rate, previous.and_then(|p| p.limit.as_ref()));
        let actor = match cfg.actor.as_ref().map(|a| &a.source) {
            None => None,
            Some(ActorSource::Token(source)) => {
                let secret = Secret::from_source(source);
                secret.preload().map_err(|e| format!("route {route}: actor token: {e}"))?;
                Some(Actor::Token(secret))
            }
            Some(ActorSource::ClientCredentials(m)) => Some(Actor::Machine(machine(m)?)),
        };
        let mut f = Fields::new();
        f.field("server", &cfg.authorization_server);
        f.field("endpoint", client.endpoint().as_str());
        // Who asks, and how long the answer may be kept: two routes (or two
        // deployments on one store) that differ in either never share.
        f.field("client", &client.client_identity());
        f.field("max_ttl", &cfg.max_ttl.as_millis().to_string());
        f.field("default_ttl", &cfg.default_ttl.as_millis().to_string());
        f.list("audience", &cfg.audience);
        f.list("resource", &cfg.resource);
        f.list("scope", &cfg.scope);
        f.field("subject_token_type", &cfg.subject_token_type);
        f.field("requested_token_type", cfg.requested_token_type.as_deref().unwrap_or(""));
        // Only when set: the keys of configurations written before these
        // existed stay the same (a rolling upgrade keeps the shared store).
        if cfg.grant != Grant::TokenExchange {
            f.field("grant", cfg.grant.name());
        }
        // A route that refuses some subjects never shares their entries with
        // one that does not (the check runs on a miss only).
        if cfg.enforce_may_act {
            f.field("enforce_may_act", "1");
        }
        for (name, value) in &cfg.extra_params {
            match value {
                ParamValue::Static { value, .. } => f.field(&format!("param:{name}"), value),
                ParamValue::Claim { name: claim, required } => {
                    f.field(&format!("claim:{name}"), &format!("{claim}:{required}"))
                }
            }
        }
        // The actor's identity, not its current value: a rotated actor token
        // does not invalidate tokens exchanged with the previous one.
        match (&actor, cfg.actor.as_ref().map(|a| (&a.source, &a.token_type))) {
            (Some(Actor::Machine(m)), Some((_, t))) => {
                f.bytes("actor_client_credentials", &m.key);
                f.field("actor_type", t);
            }
            (Some(Actor::Token(secret)), Some((ActorSource::Token(SecretSource::File(_)), t))) => {
                // Who the actor is, as its token says (the same path holds
                // another service account's token in another pod): `iss`
                // and `sub` of a JWT, else the token's hash.
                let token = secret.get().map(|s| s.expose().to_owned()).unwrap_or_default();
                match unverified::peek_identity(&token) {
                    Some((iss, sub)) => {
                        f.field("actor_iss", &iss);
                        f.field("actor_sub", &sub);
                    }
                    None => f.bytes("actor_token", &Sha256::digest(token.as_bytes())),
                }
                f.field("actor_type", t);
            }
            (_, Some((ActorSource::Token(SecretSource::Inline(tok)), t))) => {
                f.field("actor_inline", &hex8(&Sha256::digest(tok.as_bytes())));
                f.field("actor_type", t);
            }
            // (an actor file always makes an `Actor::Token`; the rest has no actor)
            (_, Some((ActorSource::ClientCredentials(_) | ActorSource::Token(SecretSource::File(_)), _)))
            | (_, None) => f.field("actor", "none"),
        }
        // A chain's second leg: whatever shapes the first leg's grant.
        if let Some(first) = &first {
            f.bytes("chained_from", &first.shared_digest);
        }
        let shared_digest = f.finish();
        let mut salted = Fields::new();
        salted.bytes("salt", cache::salt());
        salted.bytes("policy", &shared_digest);
        let digest = salted.finish();
        Ok(Policy {
            route: route.to_owned(),
            scope: cfg.scope.join(" "),
            template: Template::exchange(&cfg),
            client,
            cfg,
            digest,
            shared_digest,
            actor,
            limit,
            first,
        })
    }

    /// The tag its entries carry (a purge by route finds them by it).
    pub fn tag(&self) -> u64 {
        // A chain's two legs share one: a purge of the route finds both.
        match &self.first {
            Some(first) => first.tag(),
            None => index::tag(&self.digest),
        }
    }

    /// The digest its shared-store keys are made from.
    pub fn shared_digest(&self) -> &[u8; 32] {
        &self.shared_digest
    }

    /// What an entry exchanged under this policy is indexed by: the
    /// subject token's own `sub` and `email` (a JWT), else `known` (the
    /// introspection answer's `sub`), else the issued token's claims.
    pub(crate) fn meta(
        &self,
        peeked: Option<&unverified::PeekedClaims>,
        known: Option<index::Id>,
        issued: Option<&str>,
    ) -> Meta {
        let from = |c: Option<&unverified::PeekedClaims>| {
            (index::id_of("sub", c.and_then(|c| c.sub.as_deref())), index::id_of("email", c.and_then(|c| c.email())))
        };
        let (mut sub, mut email) = from(peeked);
        sub = sub.or(known);
        if sub.is_none() && email.is_none() {
            (sub, email) = from(issued.and_then(unverified::peek).as_ref());
        }
        Meta::new(self.tag(), sub, email, Some(self.client.clone()))
    }

    /// The cache key of `subject` (given as its SHA-256) under this policy:
    /// SHA-256 over 128 bits of the policy digest (which includes the
    /// process's secret [`cache::salt`]) and the subject's hash — 48 bytes,
    /// one compression block on the request path.
    pub fn key(&self, subject_hash: &[u8; 32]) -> Key {
        // A DPoP server's tokens are bound to tokex's key of the moment:
        // another key (rotated) is another entry.
        let key = self.client.dpop_key();
        self.key_with(subject_hash, key.as_ref().map(|k| k.jkt()))
    }

    fn key_with(&self, subject_hash: &[u8; 32], jkt: Option<&str>) -> Key {
        let mut h = Sha256::new();
        h.update(&self.digest[..16]);
        h.update(subject_hash);
        if let Some(jkt) = jkt {
            h.update(jkt.as_bytes());
        }
        h.finalize().into()
    }

    /// Every cache key `subject` may have here: with DPoP, one per key
    /// tokens were bound to (a purge must find those of a rotated key too).
    pub fn keys(&self, subject_hash: &[u8; 32]) -> Vec<Key> {
        let used = self.client.dpop_thumbprints();
        let mut keys: Vec<Key> = match used.is_empty() {
            true => vec![self.key_with(subject_hash, None)],
            false => used.iter().map(|j| self.key_with(subject_hash, Some(j))).collect(),
        };
        // A chain's first leg: its grant for this subject goes too.
        if let Some(first) = &self.first {
            keys.extend(first.keys(subject_hash));
        }
        keys
    }

    /// What the shared store keys a subject by: its token's SHA-256, and
    /// for a DPoP server with the key's thumbprint (replicas share a
    /// DPoP-bound token only when they share the key file).
    pub fn store_subject(&self, subject_hash: &[u8; 32]) -> [u8; 32] {
        let key = self.client.dpop_key();
        store_subject(subject_hash, key.as_ref().map(|k| k.jkt()))
    }

    /// Every store subject `subject` may have (see [`Policy::keys`]).
    pub fn store_subjects(&self, subject_hash: &[u8; 32]) -> Vec<[u8; 32]> {
        let used = self.client.dpop_thumbprints();
        match used.is_empty() {
            true => vec![*subject_hash],
            false => used.iter().map(|j| store_subject(subject_hash, Some(j))).collect(),
        }
    }
}

/// A chain's first leg (`cfg` has `chain:`): an RFC 8693 exchange for a
/// JWT grant whose audience is `next` (the chain server's issuer, or its
/// token endpoint), then the route's own audiences.
pub fn first_leg(cfg: &ExchangeConfig, next: &str) -> ExchangeConfig {
    let mut audience = vec![next.to_owned()];
    audience.extend(cfg.audience.iter().filter(|a| *a != next).cloned());
    ExchangeConfig {
        audience,
        requested_token_type: Some(crate::config::JWT_TOKEN_TYPE.to_owned()),
        grant: Grant::TokenExchange,
        chain: None,
        // The route's rate limit counts the second leg only.
        max_rate: RateConfig::default(),
        ..cfg.clone()
    }
}

fn store_subject(subject_hash: &[u8; 32], jkt: Option<&str>) -> [u8; 32] {
    match jkt {
        None => *subject_hash,
        Some(jkt) => Sha256::new().chain_update(subject_hash).chain_update(jkt.as_bytes()).finalize().into(),
    }
}
