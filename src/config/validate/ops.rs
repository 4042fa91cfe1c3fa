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
