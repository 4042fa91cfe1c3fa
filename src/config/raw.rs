//! The YAML schema of SPEC §2, as written by users. Every struct refuses
//! unknown keys; strings are interpolated while they are read (`Text`).
//! Nothing here is validated beyond shape: see `validate.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::interp::{Dur, Text};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: Option<RawListen>,
    #[serde(default)]
    pub authz: Option<RawAuthz>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub runtime: Option<RawRuntime>,
    #[serde(default)]
    pub authorization_servers: BTreeMap<String, RawAuthServer>,
    #[serde(default)]
    pub inbound: Option<RawInbound>,
    #[serde(default)]
    pub cache: Option<RawCache>,
    #[serde(default)]
    pub upstream_pool: Option<RawPool>,
    #[serde(default)]
    pub tracing: Option<RawTracing>,
    #[serde(default)]
    pub revocation: Option<RawRevocation>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `revocation:` how revocation reaches the cache (SPEC §5).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    #[serde(default)]
    pub ssf: Option<RawSsf>,
}

/// `revocation.ssf:` the RFC 8935 push endpoint for Security Event Tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsf {
    #[serde(default)]
    pub path: Option<Text>,
    #[serde(default)]
    pub issuer: Option<Text>,
    #[serde(default)]
    pub jwks_uri: Option<Text>,
    #[serde(default)]
    pub authorization_server: Option<Text>,
    #[serde(default)]
    pub audience: Option<Text>,
    #[serde(default)]
    pub algorithms: Option<Vec<Text>>,
    #[serde(default)]
    pub max_age: Option<Dur>,
    #[serde(default)]
    pub leeway: Option<Dur>,
    #[serde(default)]
    pub max_per_second: Option<u32>,
    #[serde(default)]
    pub ca_file: Option<Text>,
    #[serde(default)]
    pub timeout: Option<Dur>,
}

/// `upstream_pool:` the connections tokex keeps to backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default)]
    pub max_idle_per_host: Option<usize>,
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
}

/// `tracing:` span export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    #[serde(default)]
    pub otlp: Option<RawOtlp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    pub endpoint: Text,
    #[serde(default)]
    pub service_name: Option<Text>,
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub ca_file: Option<Text>,
}

/// `routes[].upstream_tls:` trust and client certificate toward an https backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    #[serde(default)]
    pub ca_file: Option<Text>,
    #[serde(default)]
    pub cert_file: Option<Text>,
    #[serde(default)]
    pub key_file: Option<Text>,
    #[serde(default)]
    pub server_name: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub address: Text,
    #[serde(default)]
    pub tls: Option<RawListenTls>,
    #[serde(default)]
    pub header_read_timeout: Option<Dur>,
    #[serde(default)]
    pub max_header_bytes: Option<usize>,
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    #[serde(default)]
    pub http2_max_concurrent_streams: Option<u32>,
}

/// `authz:` answers another proxy's checks (SPEC §8).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthz {
    #[serde(default)]
    pub address: Option<Text>,
    #[serde(default)]
    pub dialect: Option<Text>,
    #[serde(default)]
    pub grpc_address: Option<Text>,
    #[serde(default)]
    pub path_prefix: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenTls {
    pub cert_file: Text,
    pub key_file: Text,
    #[serde(default)]
    pub client_ca_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Text,
    #[serde(default)]
    pub token_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    #[serde(default)]
    pub workers: Option<usize>,
    #[serde(default)]
    pub shutdown_grace: Option<Dur>,
    #[serde(default)]
    pub shutdown_delay: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthServer {
    #[serde(default)]
    pub token_endpoint: Option<Text>,
    #[serde(default)]
    pub issuer: Option<Text>,
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
    #[serde(default)]
    pub ca_file: Option<Text>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    #[serde(default)]
    pub circuit_breaker: Option<RawBreaker>,
    #[serde(default)]
    pub revocation_endpoint: Option<Text>,
    #[serde(default)]
    pub profile: Option<Text>,
    /// AS error code (or provider code, e.g. `AADSTS50076`) → caller outcome.
    #[serde(default)]
    pub error_map: BTreeMap<String, Text>,
    #[serde(default)]
    pub dpop: Option<RawDpopKey>,
}

/// `authorization_servers.NAME.dpop:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDpopKey {
    #[serde(default)]
    pub key_file: Option<Text>,
    #[serde(default)]
    pub algorithm: Option<Text>,
}

/// `inbound.dpop_proof:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDpopProof {
    #[serde(default)]
    pub algorithms: Option<Vec<Text>>,
    #[serde(default)]
    pub max_age: Option<Dur>,
    #[serde(default)]
    pub leeway: Option<Dur>,
    #[serde(default)]
    pub trust_forwarded: Option<bool>,
    #[serde(default)]
    pub origins: Option<Vec<Text>>,
    #[serde(default)]
    pub replay_cache_entries: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    #[serde(default)]
    pub open_for: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    pub method: Text,
    #[serde(default)]
    pub client_id: Option<Text>,
    #[serde(default)]
    pub client_secret: Option<Text>,
    #[serde(default)]
    pub client_secret_file: Option<Text>,
    #[serde(default)]
    pub private_key_file: Option<Text>,
    #[serde(default)]
    pub key_id: Option<Text>,
    #[serde(default)]
    pub algorithm: Option<Text>,
    #[serde(default)]
    pub assertion_audience: Option<Text>,
    #[serde(default)]
    pub cert_file: Option<Text>,
    #[serde(default)]
    pub key_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    #[serde(default)]
    pub max_entries: Option<u64>,
    #[serde(default)]
    pub expiry_skew: Option<Dur>,
    #[serde(default)]
    pub refresh_ahead: Option<Dur>,
    #[serde(default)]
    pub negative_ttl: Option<Dur>,
    #[serde(default)]
    pub shared: Option<RawShared>,
}

/// `cache.shared`: the L2 shared by every replica (Redis protocol).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShared {
    pub url: Text,
    #[serde(default)]
    pub username: Option<Text>,
    #[serde(default)]
    pub password: Option<Text>,
    #[serde(default)]
    pub password_file: Option<Text>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub key_prefix: Option<Text>,
    #[serde(default)]
    pub ca_file: Option<Text>,
    #[serde(default)]
    pub key_secret_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Text,
    #[serde(default, rename = "match")]
    pub matcher: Option<RawMatch>,
    #[serde(default)]
    pub upstream: Option<Text>,
    #[serde(default)]
    pub auth: Option<Text>,
    #[serde(default)]
    pub require_scopes: Option<Vec<Text>>,
    #[serde(default)]
    pub exchange: Option<RawExchange>,
    #[serde(default)]
    pub forward: Option<RawForward>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub retry_on_invalid_token: Option<bool>,
    #[serde(default)]
    pub upstream_tls: Option<RawUpstreamTls>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub transaction_token: Option<RawTransactionToken>,
    #[serde(default)]
    pub resource_metadata: Option<RawResourceMetadata>,
}

/// `routes[].transaction_token`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransactionToken {
    pub authorization_server: Text,
    #[serde(default)]
    pub audience: Option<Text>,
    #[serde(default)]
    pub scope: Vec<Text>,
    #[serde(default)]
    pub subject_token_type: Option<Text>,
    #[serde(default)]
    pub header: Option<Text>,
    #[serde(default)]
    pub max_rate: Option<RawRate>,
}

/// `routes[].resource_metadata` (RFC 9728).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResourceMetadata {
    pub resource: Text,
    #[serde(default)]
    pub authorization_servers: Vec<Text>,
    #[serde(default)]
    pub scopes_supported: Option<Vec<Text>>,
    #[serde(default)]
    pub resource_name: Option<Text>,
    #[serde(default)]
    pub resource_documentation: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub host: Option<Text>,
    #[serde(default)]
    pub path: Option<Text>,
    #[serde(default)]
    pub path_prefix: Option<Text>,
    #[serde(default)]
    pub methods: Option<Vec<Text>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchange {
    pub authorization_server: Text,
    #[serde(default)]
    pub audience: Vec<Text>,
    #[serde(default)]
    pub resource: Vec<Text>,
    #[serde(default)]
    pub scope: Vec<Text>,
    #[serde(default)]
    pub subject_token_type: Option<Text>,
    #[serde(default)]
    pub requested_token_type: Option<Text>,
    #[serde(default)]
    pub actor: Option<RawActor>,
    #[serde(default)]
    pub max_ttl: Option<Dur>,
    #[serde(default)]
    pub default_ttl: Option<Dur>,
    #[serde(default)]
    pub max_rate: Option<RawRate>,
    #[serde(default)]
    pub grant: Option<Text>,
    #[serde(default)]
    pub extra_params: BTreeMap<String, RawParam>,
    #[serde(default)]
    pub chain: Option<RawMachine>,
    #[serde(default)]
    pub enforce_may_act: Option<bool>,
}

/// `exchange.extra_params.NAME`: a static string (a number or boolean
/// is taken as its text), or `{ claim: NAME }` of the caller's verified token.
#[derive(Debug)]
pub enum RawParam {
    Static(Text),
    Claim(RawClaimParam),
}

impl<'de> Deserialize<'de> for RawParam {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, IntoDeserializer};
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = RawParam;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, or { claim: NAME } (optionally required: true)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawParam, E> {
                Text::deserialize(v.into_deserializer()).map(RawParam::Static)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawParam, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawParam, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawParam, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawParam, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawParam, A::Error> {
                RawClaimParam::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawParam::Claim)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimParam {
    pub claim: Text,
    #[serde(default)]
    pub required: Option<bool>,
}

/// `exchange.max_rate`: token buckets over the exchanges a route starts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    #[serde(default)]
    pub per_second: Option<f64>,
    #[serde(default)]
    pub burst: Option<f64>,
    #[serde(default)]
    pub per_client: Option<f64>,
    #[serde(default)]
    pub per_client_burst: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActor {
    #[serde(default)]
    pub token_file: Option<Text>,
    #[serde(default)]
    pub token: Option<Text>,
    #[serde(default)]
    pub token_type: Option<Text>,
    #[serde(default)]
    pub client_credentials: Option<RawMachine>,
}

/// tokex's own token, obtained with the client_credentials grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMachine {
    pub authorization_server: Text,
    #[serde(default)]
    pub audience: Vec<Text>,
    #[serde(default)]
    pub resource: Vec<Text>,
    #[serde(default)]
    pub scope: Vec<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    #[serde(default)]
    pub header: Option<Text>,
    #[serde(default)]
    pub remove_headers: Option<Vec<Text>>,
}

/// `inbound:`: local validation of the caller's token (exactly one of the two).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    #[serde(default)]
    pub jwt: Option<RawJwt>,
    #[serde(default)]
    pub introspection: Option<RawIntrospection>,
    /// `allow | require | off`: callers' DPoP proofs (RFC 9449).
    #[serde(default)]
    pub dpop: Option<Text>,
    #[serde(default)]
    pub dpop_proof: Option<RawDpopProof>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    #[serde(default)]
    pub issuer: Option<Text>,
    #[serde(default)]
    pub jwks_uri: Option<Text>,
    #[serde(default)]
    pub authorization_server: Option<Text>,
    #[serde(default)]
    pub audiences: Vec<Text>,
    #[serde(default)]
    pub algorithms: Option<Vec<Text>>,
    #[serde(default)]
    pub leeway: Option<Dur>,
    #[serde(default)]
    pub require_typ: Option<Text>,
    #[serde(default)]
    pub max_token_bytes: Option<usize>,
    #[serde(default)]
    pub jwks_refresh_min: Option<Dur>,
    #[serde(default)]
    pub jwks_refresh_max: Option<Dur>,
    #[serde(default)]
    pub unknown_kid_cooldown: Option<Dur>,
    #[serde(default)]
    pub ca_file: Option<Text>,
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    #[serde(default)]
    pub endpoint: Option<Text>,
    #[serde(default)]
    pub authorization_server: Option<Text>,
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
    #[serde(default)]
    pub cache_ttl: Option<Dur>,
    #[serde(default)]
    pub negative_ttl: Option<Dur>,
    #[serde(default)]
    pub max_entries: Option<u64>,
    #[serde(default)]
    pub ca_file: Option<Text>,
    #[serde(default)]
    pub timeout: Option<Dur>,
}
