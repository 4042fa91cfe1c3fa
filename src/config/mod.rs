//! Configuration: the YAML schema (`raw`), interpolation (`interp`), and
//! validation into the runtime types below (`validate`). `load` is the only
//! entry point that reads YAML.

mod agents;
mod dpop;
mod interp;
pub mod limits;
mod lines;
mod listeners;
pub mod matcher;
pub mod profile;
mod raw;
mod restart;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use url::Url;

use matcher::Matcher;

pub use agents::{ChainConfig, ResourceMetadataConfig, TransactionTokenConfig, METADATA_PREFIX, TXN_TOKEN_TYPE};
pub use dpop::{DpopInboundConfig, DpopKeyConfig, DpopMode};
pub use interp::interpolate;
pub use lines::line_of;
pub use listeners::{AuthzConfig, Dialect, ListenConfig, ListenTls};
pub use profile::{ErrorMap, Grant, Outcome, ParamValue, Profile, IETF_TOKEN_TYPE};
pub use restart::StartSettings;

pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The proxy listener; absent only in a check-only deployment (`authz:`).
    pub listen: Option<ListenConfig>,
    /// Answers another proxy's checks (SPEC §8).
    pub authz: Option<AuthzConfig>,
    pub admin: Option<SocketAddr>,
    /// `admin.token_file`: the Bearer token of the admin's mutating
    /// endpoints (`POST /cache/purge`), re-read when it changes.
    pub admin_token: Option<PathBuf>,
    /// `revocation.ssf`: the Shared Signals push endpoint on the main listener.
    pub ssf: Option<SsfConfig>,
    pub workers: Option<usize>,
    pub shutdown_grace: Duration,
    /// After SIGTERM: not ready, still accepting, for this long (lets load
    /// balancers and endpoints drop the pod first).
    pub shutdown_delay: Duration,
    pub servers: BTreeMap<String, AuthServerConfig>,
    /// Local validation of the caller's token on `auth: exchange` routes.
    pub inbound: Option<InboundConfig>,
    /// `inbound.dpop`: callers' DPoP proofs (RFC 9449).
    pub dpop: DpopInboundConfig,
    pub cache: CacheConfig,
    /// Connections to backends.
    pub pool: PoolConfig,
    /// OpenTelemetry span export (`tracing.otlp`), off when absent.
    pub otlp: Option<OtlpConfig>,
    pub routes: Vec<RouteConfig>,
    /// Problems that do not stop the gateway (e.g. a shadowed route).
    pub warnings: Vec<Diagnostic>,
    /// Checked `--offline`: files unread, variables maybe unset. Only for
    /// reporting; the gateway refuses to run it.
    pub offline: bool,
}

/// `upstream_pool:` the pooled connections to backends (every route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections kept per backend (scheme, host and port) at most.
    pub max_idle_per_host: usize,
    /// An idle pooled connection is closed after this.
    pub idle_timeout: Duration,
    /// Time allowed to open a connection (TCP, then TLS) to a backend.
    pub connect_timeout: Duration,
}

/// `routes[].upstream_tls:` how tokex checks an https backend and which
/// certificate it presents. Files are re-read when they change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTlsConfig {
    /// Trust only these CAs (PEM) for the backend, instead of the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM, leaf first) and key: mTLS to the backend.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name sent (SNI) and checked against the backend's certificate,
    /// instead of the upstream URL's host.
    pub server_name: Option<String>,
}

/// `tracing.otlp:` OTLP/HTTP (protobuf) export of one span per request.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// The traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: Url,
    pub service_name: String,
    /// Share of new traces recorded (0..=1); a caller's sampled `traceparent` is followed.
    pub sample_ratio: f64,
    /// Budget for one export request.
    pub timeout: Duration,
    /// Extra trust for an https collector.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AuthServerConfig {
    pub name: String,
    pub location: AsLocation,
    pub client_auth: ClientAuthConfig,
    pub ca_file: Option<PathBuf>,
    /// Total budget for one exchange, retries included.
    pub timeout: Duration,
    pub retries: u32,
    /// Requests in flight at this server at most; more wait within their budget.
    pub max_concurrent: usize,
    pub circuit_breaker: BreakerConfig,
    /// RFC 7009 revocation endpoint (else the discovered one, if any).
    pub revocation_endpoint: Option<Url>,
    /// The provider whose defaults apply (`generic`: RFC 8693 as written).
    pub profile: Profile,
    /// The profile's error mapping with `error_map:` applied over it.
    pub error_map: ErrorMap,
    /// `dpop:` ask for DPoP-bound tokens (RFC 9449), with this key.
    pub dpop: Option<DpopKeyConfig>,
}

/// `circuit_breaker:` of an authorization server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed requests (network error, timeout, 429, 5xx) that
    /// open it; 0 turns the breaker off.
    pub consecutive_failures: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
}

/// `exchange.max_rate`: token buckets over the exchanges (cache misses that
/// reach the authorization server) a route starts.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateConfig {
    /// The whole route.
    pub route: Option<Bucket>,
    /// Each client address (an IPv6 address by its /64).
    pub per_client: Option<Bucket>,
}

/// A token bucket: `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone)]
pub enum ClientAuthConfig {
    /// RFC 6749 §2.3.1: id and secret form-encoded, then HTTP Basic.
    SecretBasic {
        client_id: String,
        secret: SecretSource,
    },
    SecretPost {
        client_id: String,
        secret: SecretSource,
    },
    /// RFC 7523 §2.2: a JWT signed with the client's key (PKCS#8 PEM file,
    /// re-read when it changes).
    PrivateKeyJwt {
        client_id: String,
        private_key_file: PathBuf,
        key_id: Option<String>,
        /// Default: from the key type (RS256, ES256, ES384, EdDSA).
        algorithm: Option<jsonwebtoken::Algorithm>,
        assertion_audience: AssertionAudience,
    },
    /// RFC 7523 §2.2 with a MAC: a JWT signed HS256 with the client secret
    /// (OpenID Connect's `client_secret_jwt`; Okta, PingOne, Keycloak).
    SecretJwt {
        client_id: String,
        secret: SecretSource,
        assertion_audience: AssertionAudience,
    },
    /// RFC 8705 §2: a client certificate on the TLS connection to the AS.
    TlsClientAuth {
        client_id: String,
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// Public client: `client_id` in the form when given.
    None {
        client_id: Option<String>,
    },
}

/// Where an authorization server's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsLocation {
    TokenEndpoint(Url),
    /// RFC 8414 discovery from this issuer, exactly as written (§3.3
    /// compares it verbatim with the metadata's `issuer`).
    Issuer(String),
}

impl AsLocation {
    /// How another party names this server (an audience, identity
    /// chaining's first leg): its issuer, else its token endpoint.
    pub fn identifier(&self) -> String {
        match self {
            AsLocation::TokenEndpoint(u) => u.to_string(),
            AsLocation::Issuer(i) => i.clone(),
        }
    }
}

/// Where an inbound endpoint (JWKS, introspection) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSource {
    Url(Url),
    /// Published in this (`issuer:`) authorization server's discovered metadata.
    Discovered(String),
}

/// The `aud` of a `private_key_jwt` assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAudience {
    /// The URL the request is sent to (RFC 7523 §3).
    TokenEndpoint,
    /// The issuer identifier (needs `issuer:`).
    Issuer,
}

/// Where a secret comes from. A file is re-read when it changes.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(String),
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline([redacted])"),
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub max_entries: u64,
    pub expiry_skew: Duration,
    pub refresh_ahead: Duration,
    pub negative_ttl: Duration,
    /// The L2 shared by every replica, when configured.
    pub shared: Option<SharedCacheConfig>,
}

/// `cache.shared:` a store (Redis 7, Valkey 8) shared by every replica:
/// local cache, then the store, then the AS. It holds keyed hashes and
/// sealed values only (see `exchange::seal`).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedCacheConfig {
    /// `redis://host:port/db` or `rediss://` (TLS); no credentials in it.
    pub url: Url,
    pub username: Option<String>,
    /// Inline (`${VAR}`) or a file re-read when it changes.
    pub password: Option<SecretSource>,
    /// Budget of one store operation: slower is a miss.
    pub timeout: Duration,
    pub key_prefix: String,
    /// Trust only these CAs (PEM) for `rediss://`, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// A deployment secret (the same on every replica) that keys the store keys.
    pub key_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Exchange,
    None,
    /// Egress for a local workload: tokex's own client_credentials token.
    ClientCredentials,
    /// One Txn-Token per request (`transaction_token:`), never cached.
    TransactionToken,
}

#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: Matcher,
    /// Where requests go; absent only when there is no proxy listener.
    pub upstream: Option<Url>,
    pub auth: AuthMode,
    /// Present exactly when `auth` is `exchange`.
    pub exchange: Option<ExchangeConfig>,
    /// Present exactly when `auth` is `client_credentials`.
    pub machine: Option<MachineConfig>,
    /// Present exactly when `auth` is `transaction_token`.
    pub transaction_token: Option<TransactionTokenConfig>,
    /// RFC 9728 metadata served for this route.
    pub resource_metadata: Option<ResourceMetadataConfig>,
    /// Scopes the caller's token must hold (needs `inbound`); may be empty.
    pub require_scopes: Vec<String>,
    pub forward_header: HeaderName,
    /// Inbound headers removed before forwarding, besides `Authorization`
    /// and `Proxy-Authorization` (default: `Cookie`, `Forwarded`).
    pub remove_headers: Vec<HeaderName>,
    /// Time allowed for the upstream to answer with headers.
    pub timeout: Duration,
    /// A backend `401 invalid_token` to a bodiless idempotent request:
    /// evict, exchange again and retry once.
    pub retry_on_invalid_token: bool,
    /// TLS toward an https upstream (default: web PKI, SNI = the URL's host).
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// Larger request bodies get `413` (`None`: no limit).
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    pub authorization_server: String,
    pub audience: Vec<String>,
    pub resource: Vec<String>,
    pub scope: Vec<String>,
    pub subject_token_type: String,
    pub requested_token_type: Option<String>,
    pub actor: Option<ActorConfig>,
    pub max_ttl: Duration,
    pub default_ttl: Duration,
    pub max_rate: RateConfig,
    /// The request shape (the server's profile decides when not set).
    pub grant: Grant,
    /// More form parameters, in name order.
    pub extra_params: Vec<(String, ParamValue)>,
    /// Identity chaining: a `jwt-bearer` grant at a second server.
    pub chain: Option<ChainConfig>,
    /// A subject JWT's `may_act` must name the actor (checked before the exchange).
    pub enforce_may_act: bool,
}

#[derive(Debug, Clone)]
pub struct ActorConfig {
    pub source: ActorSource,
    pub token_type: String,
}

#[derive(Debug, Clone)]
pub enum ActorSource {
    /// A token from a file or the config (e.g. a projected service-account token).
    Token(SecretSource),
    /// tokex's own token from the client_credentials grant.
    ClientCredentials(MachineConfig),
}

/// A client_credentials token request for tokex's own identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    pub authorization_server: String,
    pub audience: Vec<String>,
    pub resource: Vec<String>,
    pub scope: Vec<String>,
    pub max_ttl: Duration,
    pub default_ttl: Duration,
}

/// `inbound:`: how the caller's token is checked before any exchange.
#[derive(Debug, Clone)]
pub enum InboundConfig {
    Jwt(JwtConfig),
    Introspection(IntrospectionConfig),
}

/// Local JWT validation (RFC 9068 access tokens, RFC 8725 practices).
#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    pub issuer: String,
    pub jwks: EndpointSource,
    /// The token's `aud` must name at least one.
    pub audiences: Vec<String>,
    /// Asymmetric algorithms only: `none` and HMAC are refused by `check`.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    /// Required `typ` header (e.g. `at+jwt`), compared without `application/`.
    pub require_typ: Option<String>,
    pub max_token_bytes: usize,
    /// Bounds of the periodic JWKS refresh (`Cache-Control: max-age` clamped).
    pub jwks_refresh_min: Duration,
    pub jwks_refresh_max: Duration,
    /// At most one JWKS refetch per this long for tokens with an unknown `kid`.
    pub unknown_kid_cooldown: Duration,
    pub ca_file: Option<PathBuf>,
    /// Budget for one JWKS fetch.
    pub timeout: Duration,
}

/// `revocation.ssf`: an RFC 8935 push endpoint receiving RFC 8417 Security
/// Event Tokens (CAEP / RISC) signed by one issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct SsfConfig {
    /// On the main listener; answered before any route.
    pub path: String,
    /// The transmitter's issuer, JWKS, the receiver's audience (one), the
    /// algorithms, the leeway and `typ: secevent+jwt`.
    pub jwt: JwtConfig,
    /// A SET issued (`iat`) longer ago than this is refused.
    pub max_age: Duration,
    /// SETs accepted per second (burst: as many), more get `429`.
    pub max_per_second: u32,
}

/// RFC 7662 token introspection.
#[derive(Debug, Clone)]
pub struct IntrospectionConfig {
    pub endpoint: EndpointSource,
    pub client_auth: ClientAuthConfig,
    /// Active answers are cached no longer than this nor the token's `exp`.
    pub cache_ttl: Duration,
    /// `active: false` answers are remembered this long (0 = not at all).
    pub negative_ttl: Duration,
    pub max_entries: u64,
    pub ca_file: Option<PathBuf>,
    /// Budget for one introspection request.
    pub timeout: Duration,
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// YAML path, e.g. `routes[1].exchange.authorization_server`.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "<root>" } else { &self.path };
        match self.line {
            Some(line) => write!(f, "{path} (line {line}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

impl Diagnostic {
    /// `path: message`, without the line (tests pin messages this way).
    pub fn unlined(&self) -> String {
        Diagnostic { line: None, ..self.clone() }.to_string()
    }
}

/// Every error found in a configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(path: &str, message: impl Into<String>) -> Self {
        ConfigError { errors: vec![Diagnostic { path: path.into(), line: None, message: message.into() }] }
    }
}

/// serde_yaml's text without the path and location we already report.
fn plain_message(text: &str) -> String {
    let text = text.split(" at line ").next().unwrap_or(text);
    // "a.b.c: message" → "message" when the prefix is a path.
    match text.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') => rest.to_owned(),
        _ => text.to_owned(),
    }
}

/// How a configuration is checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Check structure and references only: files (secrets, keys, actor
    /// tokens, certificates) are not read and `${VAR}`s need not be set, so
    /// a pod's config can be checked where those exist only in the pod.
    pub offline: bool,
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, Options::default())
}

/// `load` with options.
pub fn load_with(path: &Path, options: Options) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::single("", format!("cannot read {}: {e}", path.display())))?;
    parse_with(&text, options)
}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, Options::default())
}

/// `parse` with options. Offline, every variable that is not set is named
/// in a warning.
pub fn parse_with(text: &str, options: Options) -> Result<Config, ConfigError> {
    if !options.offline {
        return parse_checked(text, None);
    }
    let unresolved = interp::unresolved_paths(text);
    let paths = unresolved.keys().cloned().collect();
    let (result, unset) = interp::offline(|| parse_checked(text, Some(paths)));
    result.map(|mut config| {
        for (i, name) in unset.into_iter().enumerate() {
            // Named where it is first used.
            let used = |v: &String| v.contains(&format!("${{{name}}}")) || v.contains(&format!("${{{name}:-"));
            let path = unresolved.iter().find(|(_, v)| used(v)).map(|(p, _)| p.clone()).unwrap_or_default();
            config.warnings.push(Diagnostic {
                line: if i < MAX_LINE_LOOKUPS { lines::line_of(text, &path) } else { None },
                path,
                message: format!(
                    "environment variable {name} is not set: values that use it were not checked (--offline)"
                ),
            });
        }
        config
    })
}

/// Diagnostics that get their line looked up, at most: each lookup parses
/// the text again, so thousands of them would make `check` quadratic.
const MAX_LINE_LOOKUPS: usize = 64;

/// `offline`: the paths of values that name an unset variable.
fn parse_checked(text: &str, offline: Option<BTreeSet<String>>) -> Result<Config, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line());
        ConfigError {
            errors: vec![Diagnostic {
                path: if path == "." { String::new() } else { path },
                line,
                message: plain_message(&inner.to_string()),
            }],
        }
    })?;
    // Validation knows paths; the lines are looked up in the text.
    let budget = std::cell::Cell::new(MAX_LINE_LOOKUPS);
    let with_lines = |mut found: Vec<Diagnostic>| {
        for d in found.iter_mut().filter(|d| d.line.is_none()) {
            let Some(left) = budget.get().checked_sub(1) else { break };
            budget.set(left);
            d.line = lines::line_of(text, &d.path);
        }
        found
    };
    match validate::validate(raw, offline) {
        Ok(mut config) => {
            config.warnings = with_lines(std::mem::take(&mut config.warnings));
            Ok(config)
        }
        Err(errors) => Err(ConfigError { errors: with_lines(errors) }),
    }
}
