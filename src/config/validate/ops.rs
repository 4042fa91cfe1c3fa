//! Operations settings: the backend connection pool (`upstream_pool`),
//! span export (`tracing.otlp`), and a route's `upstream_tls` and
//! `max_body_bytes`.

use super::*;

/// `routes[].max_body_bytes` when unset: 10 MiB.
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;

pub(super) fn pool(cx: &mut Ctx, raw: Option<RawPool>) -> PoolConfig {
    let raw = raw.unwrap_or(RawPool { max_idle_per_host: None, idle_timeout: None, connect_timeout: None });
    let max_idle_per_host = raw.max_idle_per_host.unwrap_or(1024);
    if max_idle_per_host > 1_000_000 {
        cx.err("upstream_pool.max_idle_per_host", "must be at most 1000000 (0 keeps no idle connection)");
    }
    let idle_timeout = raw.idle_timeout.map_or(Duration::from_secs(60), |d| d.0);
    let connect_timeout = raw.connect_timeout.map_or(Duration::from_secs(5), |d| d.0);
    if idle_timeout < Duration::from_millis(100) || idle_timeout > Duration::from_secs(3600) {
        cx.err("upstream_pool.idle_timeout", "must be between 100ms and 1h");
    }
    if connect_timeout < Duration::from_millis(10) || connect_timeout > Duration::from_secs(300) {
        cx.err("upstream_pool.connect_timeout", "must be between 10ms and 5m");
    }
    PoolConfig { max_idle_per_host, idle_timeout, connect_timeout }
}

/// `cache.shared`.
pub(super) fn shared_cache(cx: &mut Ctx, s: RawShared) -> Option<SharedCacheConfig> {
    const BASE: &str = "cache.shared";
    let url = match Url::parse(s.url.as_str()) {
        _ if s.url.unresolved => Url::parse("redis://unresolved.invalid:6379").ok(),
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                cx.err(
                    format!("{BASE}.url"),
                    "no credentials in the URL: use username and password_file (or password)",
                );
            }
            if u.query().is_some() || u.fragment().is_some() {
                cx.err(format!("{BASE}.url"), "no query or fragment: redis://host:port/db");
            }
            let db = u.path().trim_start_matches('/');
            if !db.is_empty() && db.parse::<u16>().is_err() {
                cx.err(format!("{BASE}.url"), format!("database {db:?} is not a number: redis://host:port/0"));
            }
            Some(u)
        }
        _ => {
            cx.err(
                format!("{BASE}.url"),
                format!(
                    "invalid store URL {:?}: expected redis://host:port/db or rediss://host:port/db (TLS)",
                    s.url.value
                ),
            );
            None
        }
    };
    let password =
        secret_source(cx, BASE, ("password", s.password.as_ref()), ("password_file", s.password_file.as_ref()));
    // (both set is reported as that; no second error for the user)
    if s.username.is_some() && matches!(password, Ok(None)) {
        cx.err(format!("{BASE}.username"), "needs password or password_file (a user is only sent with its password)");
    }
    let timeout = s.timeout.map_or(Duration::from_millis(50), |d| d.0);
    if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(5) {
        cx.err(format!("{BASE}.timeout"), "must be between 1ms and 5s (slower answers count as a miss)");
    }
    let key_prefix = s.key_prefix.map_or_else(|| "tokex:".to_owned(), |t| t.value);
    if key_prefix.len() > 64 || !key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        cx.err(format!("{BASE}.key_prefix"), "at most 64 visible ASCII characters, no spaces");
    }
    let ca_file = s.ca_file.as_ref().map(|f| existing_file(cx, &format!("{BASE}.ca_file"), f));
    if ca_file.is_some() && url.as_ref().is_some_and(|u| u.scheme() != "rediss") {
        cx.err(format!("{BASE}.ca_file"), "only used with a rediss:// URL");
    }
    let key_secret_file = s.key_secret_file.as_ref().map(|f| existing_file(cx, &format!("{BASE}.key_secret_file"), f));
    Some(SharedCacheConfig {
        url: url?,
        username: s.username.map(|t| t.value).filter(|u| !u.is_empty()),
        password: password.ok().flatten(),
        timeout,
        key_prefix,
        ca_file,
        key_secret_file,
    })
}

pub(super) fn tracing(cx: &mut Ctx, raw: Option<RawTracing>) -> Option<OtlpConfig> {
    let o = raw?.otlp?;
    let endpoint = http_url(cx, "tracing.otlp.endpoint", &o.endpoint);
    if endpoint.as_ref().is_some_and(|u| !u.username().is_empty() || u.password().is_some()) {
        cx.err("tracing.otlp.endpoint", "must not carry credentials");
    }
    let service_name = o.service_name.map_or_else(|| "tokex".to_owned(), |t| t.value);
    if service_name.is_empty() || service_name.len() > 128 || service_name.chars().any(char::is_control) {
        cx.err("tracing.otlp.service_name", "must be 1 to 128 characters, no control characters");
    }
    let sample_ratio = o.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        cx.err("tracing.otlp.sample_ratio", "must be between 0 and 1");
    }
    let timeout = o.timeout.map_or(Duration::from_secs(5), |d| d.0);
    if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(60) {
        cx.err("tracing.otlp.timeout", "must be between 100ms and 1m");
    }
    let ca_file = o.ca_file.as_ref().map(|f| existing_file(cx, "tracing.otlp.ca_file", f));
    Some(OtlpConfig { endpoint: endpoint?, service_name, sample_ratio, timeout, ca_file })
}

/// `upstream_tls` of a route whose upstream is `upstream` (None when invalid).
pub(super) fn upstream_tls(
    cx: &mut Ctx,
    base: &str,
    raw: Option<RawUpstreamTls>,
    upstream: Option<&Url>,
) -> Option<UpstreamTlsConfig> {
    let t = raw?;
    let path = format!("{base}.upstream_tls");
    if upstream.is_some_and(|u| u.scheme() != "https") {
        cx.err(&path, "needs an https:// upstream");
    }
    let file =
        |cx: &mut Ctx, key: &str, t: &Option<Text>| t.as_ref().map(|f| existing_file(cx, &format!("{path}.{key}"), f));
    let ca_file = file(cx, "ca_file", &t.ca_file);
    let cert_file = file(cx, "cert_file", &t.cert_file);
    let key_file = file(cx, "key_file", &t.key_file);
    if cert_file.is_some() != key_file.is_some() {
        cx.err(&path, "cert_file and key_file go together");
    }
    let server_name = t.server_name.map(|n| n.value);
    if let Some(name) = &server_name {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            cx.err(format!("{path}.server_name"), format!("{name:?} is not a DNS name or an IP address"));
        }
    }
    Some(UpstreamTlsConfig { ca_file, cert_file, key_file, server_name })
}

/// `routes[].max_body_bytes`: `0` means no limit.
pub(super) fn max_body(raw: Option<u64>) -> Option<u64> {
    match raw.unwrap_or(DEFAULT_MAX_BODY) {
        0 => None,
        n => Some(n),
    }
}
