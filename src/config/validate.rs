//! Validation of the raw schema into runtime types. Every problem is
//! collected with its YAML path; nothing stops at the first one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use url::Url;

use super::interp::Text;
use super::matcher::{HostMatch, Matcher, PathMatch};
use super::raw::*;
use super::*;

mod agents;
mod authz;
mod client_auth;
mod dpop;
mod inbound;
mod ops;
mod profile;
mod revocation;
mod routes;

#[derive(Default)]
struct Ctx {
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// `check --offline`: files are not read.
    offline: bool,
    /// Offline: paths of values that name an unset variable; their errors
    /// are left out (the warning names the variable).
    unresolved: BTreeSet<String>,
    /// Every `authorization_servers` name, valid or not.
    declared_servers: BTreeSet<String>,
    /// `listen:` is set: routes need an upstream.
    proxy_listener: bool,
}

impl Ctx {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        if self.unresolved.contains(&path) {
            return;
        }
        self.errors.push(Diagnostic { path, line: None, message: message.into() });
    }
    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Diagnostic { path: path.into(), line: None, message: message.into() });
    }
    /// A reference to a server that did not validate. One mistake, one
    /// error: a server that is declared already has its own.
    fn unknown_server(&mut self, path: impl Into<String>, name: &str) {
        if self.declared_servers.contains(name) {
            return;
        }
        let defined = match self.declared_servers.len() {
            0 => "none is defined under authorization_servers".to_owned(),
            _ => {
                format!("defined: {}", self.declared_servers.iter().map(String::as_str).collect::<Vec<_>>().join(", "))
            }
        };
        self.err(path, format!("unknown authorization server {name:?} ({defined})"));
    }
}

fn strict() -> bool {
    matches!(std::env::var("TOKEX_STRICT").as_deref(), Ok("1") | Ok("true"))
}

/// `offline`: the paths of values that name an unset variable.
pub(super) fn validate(raw: RawConfig, offline: Option<BTreeSet<String>>) -> Result<Config, Vec<Diagnostic>> {
    let mut cx = Ctx { offline: offline.is_some(), unresolved: offline.unwrap_or_default(), ..Ctx::default() };

    cx.proxy_listener = raw.listen.is_some();
    if raw.listen.is_none() && raw.authz.is_none() {
        cx.err("listen", "required (or authz:, for a deployment that only answers another proxy's checks)");
    }
    // Outer None: no proxy listener; inner None: an error was recorded.
    let listen = raw.listen.map(|l| listen(&mut cx, l));
    let admin_token =
        raw.admin.as_ref().and_then(|a| a.token_file.as_ref()).map(|f| existing_file(&mut cx, "admin.token_file", f));
    let admin = raw.admin.and_then(|a| socket_addr(&mut cx, "admin.address", &a.address));
    let authz = raw.authz.and_then(|a| authz::authz(&mut cx, a));
    let (workers, shutdown_grace, shutdown_delay) = match raw.runtime {
        Some(rt) => {
            if rt.workers == Some(0) {
                cx.err("runtime.workers", "must be at least 1 (omit it to use one worker per core)");
            }
            (
                rt.workers,
                rt.shutdown_grace.map_or(DEFAULT_GRACE, |d| d.0),
                rt.shutdown_delay.map_or(Duration::ZERO, |d| d.0),
            )
        }
        None => (None, DEFAULT_GRACE, Duration::ZERO),
    };
    let proxy = listen.as_ref().and_then(|l| l.as_ref()).map(|l| ("listen.address", l.address));
    authz::no_shared_ports(&mut cx, proxy, admin, authz.as_ref());
    cx.declared_servers = raw.authorization_servers.keys().cloned().collect();
    let mut servers = BTreeMap::new();
    for (name, s) in raw.authorization_servers {
        if let Some(server) = auth_server(&mut cx, &name, s) {
            servers.insert(name, server);
        }
    }
    if authz.is_some() {
        for name in servers.iter().filter(|(_, s)| s.dpop.is_some()).map(|(n, _)| n) {
            cx.warn(
                format!("authorization_servers.{name}.dpop"),
                "the check listener (authz:) refuses DPoP-bound tokens with 502: a front proxy signs no proofs; serve such routes on the proxy listener",
            );
        }
    }
    let has_inbound = raw.inbound.as_ref().is_some_and(|i| i.jwt.is_some() || i.introspection.is_some());
    let (inbound, dpop) = match raw.inbound {
        Some(mut i) => {
            let only_dpop = i.jwt.is_none() && i.introspection.is_none() && i.dpop.is_some();
            let dpop = dpop::inbound(&mut cx, i.dpop.take(), i.dpop_proof.take());
            (if only_dpop { None } else { inbound::inbound(&mut cx, i, &servers) }, dpop)
        }
        None => (None, DpopInboundConfig::default()),
    };

    let ssf = raw.revocation.and_then(|r| r.ssf).and_then(|s| revocation::ssf(&mut cx, s, &servers));
    let cache = cache(&mut cx, raw.cache);
    let pool = ops::pool(&mut cx, raw.upstream_pool);
    let otlp = ops::tracing(&mut cx, raw.tracing);

    let mut routes: Vec<RouteConfig> = Vec::new();
    let mut names = BTreeSet::new();
    let mut used_servers = BTreeSet::new();
    if raw.routes.is_empty() {
        cx.err("routes", "at least one route is required");
    }
    for (i, r) in raw.routes.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        if !names.insert(r.name.value.clone()) {
            cx.err(format!("{path}.name"), format!("duplicate route name {:?}", r.name.value));
        }
        if r.require_scopes.is_some() && !has_inbound {
            cx.err(
                format!("{path}.require_scopes"),
                "needs inbound: (jwt or introspection) to read the caller's scopes",
            );
        }
        if let Some(route) = routes::route(&mut cx, &path, r, &servers) {
            if let Some(t) = &route.transaction_token {
                used_servers.insert(t.authorization_server.clone());
                if !has_inbound {
                    cx.warn(
                        format!("{path}.auth"),
                        "without inbound: (jwt or introspection), every request, valid token or not, costs a request to the Txn-Token service (transaction_token.max_rate bounds them)",
                    );
                }
            }
            if let Some(c) = route.exchange.as_ref().and_then(|x| x.chain.as_ref()) {
                used_servers.insert(c.authorization_server.clone());
            }
            if let Some(x) = &route.exchange {
                used_servers.insert(x.authorization_server.clone());
                for (name, value) in &x.extra_params {
                    if !matches!(value, ParamValue::Claim { .. }) {
                        continue;
                    }
                    let at = format!("{path}.exchange.extra_params.{name}");
                    match &inbound {
                        _ if !has_inbound => cx.err(at, "a claim value needs inbound: (jwt or introspection): claims are read only from a verified token"),
                        Some(InboundConfig::Introspection(_)) => cx.warn(at, "claims are read from the caller's token when it is a JWT: an opaque token has none (the introspection answer's members are not used)"),
                        _ => {}
                    }
                }
            }
            if let Some((j, earlier)) = routes.iter().enumerate().find(|(_, e)| e.matcher.shadows(&route.matcher)) {
                cx.warn(
                    format!("{path}.match"),
                    format!(
                        "route {:?} can never match: routes[{j}] ({:?}) matches every request it would",
                        route.name, earlier.name
                    ),
                );
            }
            routes.push(route);
        }
    }
    agents::unique_metadata(&mut cx, &routes);
    for name in servers.keys() {
        if !used_servers.contains(name) {
            cx.warn(format!("authorization_servers.{name}"), "not used by any route");
        }
    }

    revocation::warnings(&mut cx, admin.is_some(), admin_token.is_some(), ssf.as_ref(), &routes);
    if !cx.errors.is_empty() {
        return Err(cx.errors);
    }
    // `Some(None)` only when an error was recorded above.
    let listen = match listen {
        Some(None) => return Err(cx.errors),
        Some(l) => l,
        None => None,
    };
    Ok(Config {
        listen,
        authz,
        admin,
        admin_token,
        ssf,
        workers,
        shutdown_grace,
        shutdown_delay,
        servers,
        inbound,
        dpop,
        cache,
        pool,
        otlp,
        routes,
        warnings: cx.warnings,
        offline: cx.offline,
    })
}

const DEFAULT_GRACE: Duration = Duration::from_secs(30);

fn socket_addr(cx: &mut Ctx, path: &str, t: &Text) -> Option<SocketAddr> {
    if t.unresolved {
        return Some(SocketAddr::from(([0, 0, 0, 0], 0)));
    }
    match t.as_str().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(path, format!("invalid address {:?}: expected IP:PORT, e.g. 0.0.0.0:8080", t.value));
            None
        }
    }
}

fn listen(cx: &mut Ctx, l: RawListen) -> Option<ListenConfig> {
    let tls = l.tls.map(|t| ListenTls {
        cert_file: existing_file(cx, "listen.tls.cert_file", &t.cert_file),
        key_file: existing_file(cx, "listen.tls.key_file", &t.key_file),
        client_ca_file: t.client_ca_file.as_ref().map(|f| existing_file(cx, "listen.tls.client_ca_file", f)),
    });
    let mut c = ListenConfig::with_defaults(SocketAddr::from(([0, 0, 0, 0], 0)));
    c.tls = tls;
    c.max_header_bytes = l.max_header_bytes.unwrap_or(c.max_header_bytes);
    if !(8192..=1024 * 1024).contains(&c.max_header_bytes) {
        cx.err("listen.max_header_bytes", "must be between 8192 and 1048576");
    }
    c.max_connections = l.max_connections.unwrap_or(c.max_connections);
    if !(1..=1_000_000).contains(&c.max_connections) {
        cx.err("listen.max_connections", "must be between 1 and 1000000");
    }
    c.http2_max_concurrent_streams = l.http2_max_concurrent_streams.unwrap_or(c.http2_max_concurrent_streams);
    if !(1..=65_536).contains(&c.http2_max_concurrent_streams) {
        cx.err("listen.http2_max_concurrent_streams", "must be between 1 and 65536");
    }
    c.header_read_timeout = l.header_read_timeout.map_or(c.header_read_timeout, |d| d.0);
    c.idle_timeout = l.idle_timeout.map_or(c.idle_timeout, |d| d.0);
    for (path, d) in [("listen.header_read_timeout", c.header_read_timeout), ("listen.idle_timeout", c.idle_timeout)] {
        if d < Duration::from_millis(100) {
            cx.err(path, "must be at least 100ms");
        }
    }
    c.address = socket_addr(cx, "listen.address", &l.address)?;
    Some(c)
}

fn http_url(cx: &mut Ctx, path: &str, t: &Text) -> Option<Url> {
    http_url_as(cx, path, t, "an http:// or https:// URL with a host, e.g. https://as.example.com/token")
}

/// An http(s) URL; `expected` says what one looks like when it is not.
fn http_url_as(cx: &mut Ctx, path: &str, t: &Text, expected: &str) -> Option<Url> {
    if t.unresolved {
        return Url::parse("https://unresolved.invalid/").ok();
    }
    match Url::parse(t.as_str()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            if u.fragment().is_some() {
                cx.err(path, format!("URL {:?} must not have a fragment", t.value));
            }
            Some(u)
        }
        Ok(_) => {
            cx.err(path, format!("invalid URL {:?}: expected {expected}", t.value));
            None
        }
        Err(e) => {
            cx.err(path, format!("invalid URL {:?} ({e}): expected {expected}", t.value));
            None
        }
    }
}

/// A secret given inline (usually `${VAR}`) or as a file, not both: `Err`
/// when both are set (reported). Inline, it is trimmed as a secret file is
/// (a Secret made `--from-file` often ends in a newline, and reaches
/// `${VAR}` as is), and refused in clear under `TOKEX_STRICT=1`.
fn secret_source(
    cx: &mut Ctx,
    base: &str,
    (inline_key, inline): (&str, Option<&Text>),
    (file_key, file): (&str, Option<&Text>),
) -> Result<Option<SecretSource>, ()> {
    match (inline, file) {
        (Some(t), None) => {
            if t.literal && strict() {
                cx.err(
                    format!("{base}.{inline_key}"),
                    format!(
                        "{inline_key} is written in clear in the file (TOKEX_STRICT=1): use ${{VAR}} or {file_key}"
                    ),
                );
            }
            Ok(Some(SecretSource::Inline(t.value.trim().to_owned())))
        }
        (None, Some(f)) => Ok(Some(SecretSource::File(existing_file(cx, &format!("{base}.{file_key}"), f)))),
        (Some(_), Some(_)) => {
            cx.err(base, format!("set either {inline_key} or {file_key}, not both"));
            Err(())
        }
        (None, None) => Ok(None),
    }
}

/// A file the gateway reads; it must exist, except offline (it may be one
/// that exists only where tokex runs, such as a projected token).
fn existing_file(cx: &mut Ctx, path: &str, t: &Text) -> PathBuf {
    let p = PathBuf::from(t.as_str());
    if cx.offline {
        if p.as_os_str().is_empty() {
            cx.err(path, "must not be empty");
        }
        return p;
    }
    if let Err(e) = std::fs::metadata(&p) {
        cx.err(path, format!("cannot read {}: {e}", p.display()));
    }
    p
}

fn auth_server(cx: &mut Ctx, name: &str, s: RawAuthServer) -> Option<AuthServerConfig> {
    let base = format!("authorization_servers.{name}");
    let location = match (&s.token_endpoint, &s.issuer) {
        (Some(t), None) => http_url(cx, &format!("{base}.token_endpoint"), t).map(AsLocation::TokenEndpoint),
        (None, Some(i)) => issuer(cx, &format!("{base}.issuer"), i).map(AsLocation::Issuer),
        (Some(_), Some(_)) => {
            cx.err(&base, "set either token_endpoint or issuer, not both");
            None
        }
        (None, None) => {
            cx.err(&base, "token_endpoint (or issuer, for RFC 8414 discovery) is required");
            None
        }
    };
    let client_auth = match s.client_auth {
        Some(ca) => client_auth::client_auth(cx, &format!("{base}.client_auth"), ca),
        None => Some(ClientAuthConfig::None { client_id: None }),
    };
    match (&client_auth, &location) {
        (
            Some(
                ClientAuthConfig::PrivateKeyJwt { assertion_audience: AssertionAudience::Issuer, .. }
                | ClientAuthConfig::SecretJwt { assertion_audience: AssertionAudience::Issuer, .. },
            ),
            Some(AsLocation::TokenEndpoint(_)),
        ) => cx.err(
            format!("{base}.client_auth.assertion_audience"),
            "issuer needs the server configured with issuer: (or use token_endpoint)",
        ),
        (Some(ClientAuthConfig::TlsClientAuth { .. }), Some(AsLocation::TokenEndpoint(u))) if u.scheme() != "https" => {
            cx.err(format!("{base}.token_endpoint"), "tls_client_auth needs an https:// token endpoint")
        }
        _ => {}
    }
    let ca_file = s.ca_file.as_ref().map(|f| existing_file(cx, &format!("{base}.ca_file"), f));
    let retries = s.retries.unwrap_or(2);
    if retries > 10 {
        cx.err(format!("{base}.retries"), "at most 10");
    }
    let timeout = s.timeout.map_or(Duration::from_secs(2), |d| d.0);
    if timeout.is_zero() || timeout > Duration::from_secs(600) {
        cx.err(format!("{base}.timeout"), "must be more than 0s and at most 10m");
    }
    let max_concurrent = s.max_concurrent.unwrap_or(64);
    if !(1..=100_000).contains(&max_concurrent) {
        cx.err(format!("{base}.max_concurrent"), "must be between 1 and 100000");
    }
    let circuit_breaker = BreakerConfig {
        consecutive_failures: s.circuit_breaker.as_ref().and_then(|b| b.consecutive_failures).unwrap_or(5),
        open_for: s.circuit_breaker.as_ref().and_then(|b| b.open_for.as_ref()).map_or(Duration::from_secs(5), |d| d.0),
    };
    if circuit_breaker.consecutive_failures > 0
        && (circuit_breaker.open_for.is_zero() || circuit_breaker.open_for > Duration::from_secs(3600))
    {
        cx.err(format!("{base}.circuit_breaker.open_for"), "must be more than 0s and at most 1h");
    }
    let revocation_endpoint =
        s.revocation_endpoint.as_ref().and_then(|u| http_url(cx, &format!("{base}.revocation_endpoint"), u));
    let dpop = s.dpop.and_then(|d| dpop::server_key(cx, &base, d));
    let (profile, error_map) = profile::server(cx, &base, s.profile.as_ref(), &s.error_map)?;
    if let Some(auth) = &client_auth {
        profile::server_checks(cx, &base, profile, auth);
    }
    Some(AuthServerConfig {
        name: name.to_owned(),
        location: location?,
        client_auth: client_auth?,
        ca_file,
        timeout,
        retries,
        max_concurrent,
        circuit_breaker,
        revocation_endpoint,
        profile,
        error_map,
        dpop,
    })
}

/// An RFC 8414 issuer: an http(s) URL without query or fragment, kept as written.
fn issuer(cx: &mut Ctx, path: &str, t: &Text) -> Option<String> {
    let url = http_url(cx, path, t)?;
    if url.query().is_some() {
        cx.err(path, "an issuer has no query (RFC 8414 §2)");
        return None;
    }
    Some(t.value.clone())
}

fn cache(cx: &mut Ctx, c: Option<RawCache>) -> CacheConfig {
    let c = c.unwrap_or(RawCache {
        max_entries: None,
        expiry_skew: None,
        refresh_ahead: None,
        negative_ttl: None,
        shared: None,
    });
    let max_entries = c.max_entries.unwrap_or(100_000);
    if max_entries == 0 {
        cx.err("cache.max_entries", "must be at least 1");
    }
    CacheConfig {
        max_entries,
        expiry_skew: c.expiry_skew.map_or(Duration::from_secs(5), |d| d.0),
        refresh_ahead: c.refresh_ahead.map_or(Duration::ZERO, |d| d.0),
        negative_ttl: c.negative_ttl.map_or(Duration::from_secs(5), |d| d.0),
        shared: c.shared.and_then(|s| ops::shared_cache(cx, s)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const BASE: &str = r#"
listen: { address: "127.0.0.1:8080" }
authorization_servers:
  corp:
    token_endpoint: https://as.example.com/token
    client_auth: { method: client_secret_basic, client_id: tokex, client_secret: "${TOKEX_TEST_SECRET_FOR_UNIT:-s3cret}" }
routes:
  - name: orders
    match: { path_prefix: /orders, methods: [GET] }
    upstream: http://127.0.0.1:8081
    exchange: { authorization_server: corp, audience: [orders-api], scope: [orders:read] }
"#;

    fn errors(yaml: &str) -> Vec<String> {
        match parse(yaml) {
            Ok(_) => vec![],
            Err(e) => e.errors.iter().map(|d| d.unlined()).collect(),
        }
    }

    #[test]
    fn accepts_a_valid_config_with_defaults() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.routes.len(), 1);
        let x = c.routes[0].exchange.as_ref().unwrap();
        assert_eq!(x.subject_token_type, super::ACCESS_TOKEN_TYPE);
        assert_eq!(c.cache.max_entries, 100_000);
        assert_eq!(c.servers["corp"].retries, 2);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors_with_path_and_line() {
        let yaml = BASE.replace("upstream: http://127.0.0.1:8081", "upstream: http://127.0.0.1:8081\n    upstreem: x");
        let errs = parse(&yaml).unwrap_err().errors;
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = errs[0].to_string();
        assert!(e.contains("routes[0]") && e.contains("upstreem") && e.contains("line"), "{e}");
    }

    #[test]
    fn collects_every_semantic_error() {
        let yaml = r#"
listen: { address: "nope" }
authorization_servers:
  corp: { token_endpoint: "ftp://x" }
routes:
  - name: a
    upstream: "not a url"
    exchange: { authorization_server: missing }
  - name: a
    upstream: http://127.0.0.1:1
  - name: b
    auth: none
    match: { path: relative }
    upstream: http://127.0.0.1:1
"#;
        let errs = errors(yaml).join("\n");
        for needle in [
            "listen.address",
            "authorization_servers.corp.token_endpoint",
            "routes[0].upstream",
            "routes[0].exchange.authorization_server: unknown authorization server \"missing\"",
            "routes[1].name: duplicate route name",
            "routes[1]: auth: exchange needs an exchange: section",
            "routes[2].match.path",
        ] {
            assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
        }
    }

    #[test]
    fn listener_tls_needs_readable_files() {
        let yaml = BASE.replace(
            "listen: { address: \"127.0.0.1:8080\" }",
            "listen: { address: \"127.0.0.1:8080\", tls: { cert_file: x } }",
        );
        let errs = errors(&yaml).join("\n");
        assert!(errs.contains("listen.tls") && errs.contains("missing field `key_file`"), "{errs}");
        let yaml = BASE.replace(
            "listen: { address: \"127.0.0.1:8080\" }",
            "listen: { address: \"127.0.0.1:8080\", tls: { cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem } }",
        );
        let errs = errors(&yaml).join("\n");
        assert!(errs.contains("listen.tls.cert_file: cannot read /nonexistent/c.pem"), "{errs}");
        assert!(errs.contains("listen.tls.key_file: cannot read /nonexistent/k.pem"), "{errs}");
    }

    #[test]
    fn warns_about_shadowed_routes() {
        let yaml = format!(
            "{BASE}  - name: never\n    match: {{ path: /orders/1, methods: [GET] }}\n    upstream: http://127.0.0.1:8081\n    auth: none\n"
        );
        let c = parse(&yaml).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].message.contains("can never match"), "{:?}", c.warnings);
    }

    #[test]
    fn bad_durations_name_their_path() {
        let yaml = BASE.replace("client_auth:", "timeout: fast\n    client_auth:");
        let errs = errors(&yaml).join("\n");
        assert!(errs.contains("authorization_servers.corp.timeout") && errs.contains("invalid duration"), "{errs}");
    }
}
