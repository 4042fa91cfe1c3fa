//! `routes[]`: matching, auth mode, the exchange (or egress) section, and
//! forwarding (`forward.header`, `forward.remove_headers`).

use super::*;

pub(super) fn route(
    cx: &mut Ctx,
    base: &str,
    r: RawRoute,
    servers: &BTreeMap<String, AuthServerConfig>,
) -> Option<RouteConfig> {
    let name = r.name.value;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        cx.err(format!("{base}.name"), "route names use letters, digits, '-', '_' and '.' (they appear in metrics)");
    }
    let matcher = matcher(cx, &format!("{base}.match"), r.matcher.unwrap_or_default());
    let upstream = r.upstream.as_ref().and_then(|u| {
        http_url_as(
            cx,
            &format!("{base}.upstream"),
            u,
            "http://host:port or https://host:port, optionally with a path prefix (e.g. http://127.0.0.1:8081)",
        )
    });
    let upstream_ok = r.upstream.is_none() || upstream.is_some();
    if r.upstream.is_none() && cx.proxy_listener {
        cx.err(format!("{base}.upstream"), "required: the proxy listener (listen:) forwards to it");
    }
    if let Some(u) = &upstream {
        if u.query().is_some() {
            cx.err(format!("{base}.upstream"), "upstream URL must not have a query");
        }
    }
    let auth = match r.auth.as_ref().map(|t| t.as_str()) {
        None | Some("exchange") => Some(AuthMode::Exchange),
        Some("none") => Some(AuthMode::None),
        Some("client_credentials") => Some(AuthMode::ClientCredentials),
        Some("transaction_token") => Some(AuthMode::TransactionToken),
        Some(other) => {
            cx.err(
                format!("{base}.auth"),
                format!(
                    "unknown auth mode {other:?}: expected exchange, none, client_credentials or transaction_token"
                ),
            );
            None
        }
    };
    let require_scopes = inbound::require_scopes(cx, base, r.require_scopes, auth);
    let (exchange, machine) = match (auth, r.exchange) {
        (Some(AuthMode::Exchange), Some(x)) => (exchange(cx, &format!("{base}.exchange"), x, servers), None),
        (Some(AuthMode::Exchange), None) => {
            cx.err(base, "auth: exchange needs an exchange: section");
            (None, None)
        }
        (Some(AuthMode::ClientCredentials), Some(x)) => (None, egress(cx, &format!("{base}.exchange"), x, servers)),
        (Some(AuthMode::ClientCredentials), None) => {
            cx.err(base, "auth: client_credentials needs an exchange: section (authorization_server, audience, scope)");
            (None, None)
        }
        (Some(mode @ (AuthMode::None | AuthMode::TransactionToken)), Some(_)) => {
            let mode = if mode == AuthMode::None { "none" } else { "transaction_token" };
            cx.err(format!("{base}.exchange"), format!("exchange: is not used with auth: {mode}"));
            (None, None)
        }
        (Some(AuthMode::None | AuthMode::TransactionToken), None) | (None, _) => (None, None),
    };
    let transaction_token = match (auth, r.transaction_token) {
        (Some(AuthMode::TransactionToken), Some(t)) => agents::transaction_token(cx, base, t, servers),
        (Some(AuthMode::TransactionToken), None) => {
            cx.err(base, "auth: transaction_token needs a transaction_token: section (authorization_server, audience)");
            None
        }
        (_, Some(_)) => {
            cx.err(format!("{base}.transaction_token"), "only used with auth: transaction_token");
            None
        }
        (_, None) => None,
    };
    let resource_metadata = match r.resource_metadata {
        Some(m) => {
            agents::resource_metadata(cx, base, m, auth, require_scopes.as_deref().unwrap_or_default()).map(Some)
        }
        None => Some(None),
    };
    let (forward_header, remove_headers) = match r.forward {
        Some(f) => (f.header, f.remove_headers),
        None => (None, None),
    };
    let remove_headers = remove_headers.map_or_else(
        || super::super::limits::DEFAULT_REMOVED.to_vec(),
        |list| {
            let mut names = Vec::with_capacity(list.len());
            for (i, h) in list.iter().enumerate() {
                match HeaderName::from_bytes(h.as_str().as_bytes()) {
                    Ok(n) if n == http::header::HOST => {
                        cx.err(format!("{base}.forward.remove_headers[{i}]"), "host cannot be removed")
                    }
                    Ok(n) => names.push(n),
                    Err(_) => cx.err(
                        format!("{base}.forward.remove_headers[{i}]"),
                        format!("invalid header name {:?}", h.value),
                    ),
                }
            }
            names
        },
    );
    let forward_header = match (forward_header, &transaction_token) {
        (Some(_), Some(_)) => {
            cx.err(format!("{base}.forward.header"), "a Txn-Token goes in transaction_token.header");
            None
        }
        (None, Some(t)) => Some(t.header.clone()),
        (None, None) => Some(http::header::AUTHORIZATION),
        (Some(h), None) => header_name(
            cx,
            &format!("{base}.forward.header"),
            &h,
            &super::super::limits::SET_BY_TOKEX,
            "carry the token",
        ),
    };
    let timeout = r.timeout.map_or(Duration::from_secs(30), |d| d.0);
    let upstream_tls = super::ops::upstream_tls(cx, base, r.upstream_tls, upstream.as_ref());
    let auth = auth?;
    Some(RouteConfig {
        name,
        matcher: matcher?,
        upstream: upstream_ok.then_some(upstream)?,
        auth,
        exchange: if auth == AuthMode::Exchange { Some(exchange?) } else { None },
        machine: if auth == AuthMode::ClientCredentials { Some(machine?) } else { None },
        transaction_token: if auth == AuthMode::TransactionToken { Some(transaction_token?) } else { None },
        resource_metadata: resource_metadata?,
        require_scopes: require_scopes?,
        forward_header: forward_header?,
        remove_headers,
        timeout,
        retry_on_invalid_token: r.retry_on_invalid_token.unwrap_or(true),
        upstream_tls,
        max_body_bytes: super::ops::max_body(r.max_body_bytes),
    })
}

/// A header that carries a credential: a valid name, not hop-by-hop (it
/// would not reach the backend), and none of `forbidden`.
pub(super) fn header_name(
    cx: &mut Ctx,
    path: &str,
    h: &Text,
    forbidden: &[HeaderName],
    what: &str,
) -> Option<HeaderName> {
    match HeaderName::from_bytes(h.as_str().as_bytes()) {
        Ok(n) if super::super::limits::is_hop_by_hop(&n) => {
            cx.err(path, format!("{n} is a hop-by-hop header"));
            None
        }
        Ok(n) if forbidden.contains(&n) => {
            cx.err(path, format!("{n} cannot {what}"));
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            cx.err(path, format!("invalid header name {:?}", h.value));
            None
        }
    }
}

fn matcher(cx: &mut Ctx, base: &str, m: RawMatch) -> Option<Matcher> {
    let mut ok = true;
    let host = match &m.host {
        None => HostMatch::Any,
        Some(h) => HostMatch::parse(h.as_str()).unwrap_or_else(|e| {
            cx.err(format!("{base}.host"), e);
            ok = false;
            HostMatch::Any
        }),
    };
    let mut check_path = |cx: &mut Ctx, key: &str, p: &Text| {
        if !p.as_str().starts_with('/') || p.as_str().contains('?') || p.as_str().contains('#') {
            cx.err(format!("{base}.{key}"), format!("{:?} must start with '/' and hold no query or fragment", p.value));
            ok = false;
        }
    };
    let path = match (&m.path, &m.path_prefix) {
        (Some(p), None) => {
            check_path(cx, "path", p);
            PathMatch::Exact(p.value.clone())
        }
        (None, Some(p)) => {
            check_path(cx, "path_prefix", p);
            PathMatch::Prefix(p.value.clone())
        }
        (None, None) => PathMatch::Any,
        (Some(_), Some(_)) => {
            cx.err(base, "set either path or path_prefix, not both");
            ok = false;
            PathMatch::Any
        }
    };
    let mut methods = Vec::new();
    for (i, t) in m.methods.unwrap_or_default().iter().enumerate() {
        match Method::from_bytes(t.as_str().to_ascii_uppercase().as_bytes()) {
            Ok(mth) => methods.push(mth),
            Err(_) => {
                cx.err(
                    format!("{base}.methods[{i}]"),
                    format!(
                        "invalid method {:?}: expected an HTTP method such as GET or POST (a token, no spaces)",
                        t.value
                    ),
                );
                ok = false;
            }
        }
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value.as_str())) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => {
                cx.err(format!("{base}.headers.{name}"), "invalid header name or value");
                ok = false;
            }
        }
    }
    ok.then_some(Matcher { host, path, methods, headers })
}

fn exchange(
    cx: &mut Ctx,
    base: &str,
    x: RawExchange,
    servers: &BTreeMap<String, AuthServerConfig>,
) -> Option<ExchangeConfig> {
    let server = x.authorization_server.value;
    let mut ok = true;
    if !servers.contains_key(&server) {
        cx.unknown_server(format!("{base}.authorization_server"), &server);
        ok = false;
    }
    let target = targets(cx, base, x.audience, x.resource, x.scope);
    ok &= target.is_some();
    let Targets { audience, resource, scope } = target.unwrap_or_default();
    let actor = match x.actor {
        None => None,
        Some(a) => {
            let path = format!("{base}.actor");
            let default_type = if a.client_credentials.is_some() { ACCESS_TOKEN_TYPE } else { JWT_TOKEN_TYPE };
            let token_type = a.token_type.map_or_else(|| default_type.to_owned(), |t| t.value);
            match (a.token_file, a.token, a.client_credentials) {
                (Some(f), None, None) => Some(ActorConfig {
                    source: ActorSource::Token(SecretSource::File(existing_file(
                        cx,
                        &format!("{path}.token_file"),
                        &f,
                    ))),
                    token_type,
                }),
                (None, Some(t), None) => {
                    // Trimmed like a token file.
                    let token = t.value.trim().to_owned();
                    if token.is_empty() {
                        cx.err(format!("{path}.token"), "must not be empty");
                        ok = false;
                    }
                    Some(ActorConfig { source: ActorSource::Token(SecretSource::Inline(token)), token_type })
                }
                (None, None, Some(m)) => {
                    let RawMachine { authorization_server, audience, resource, scope } = m;
                    let raw = RawExchange {
                        authorization_server,
                        audience,
                        resource,
                        scope,
                        subject_token_type: None,
                        requested_token_type: None,
                        actor: None,
                        max_ttl: None,
                        default_ttl: None,
                        max_rate: None,
                        grant: None,
                        extra_params: BTreeMap::new(),
                        chain: None,
                        enforce_may_act: None,
                    };
                    match egress(cx, &format!("{path}.client_credentials"), raw, servers) {
                        Some(m) => Some(ActorConfig { source: ActorSource::ClientCredentials(m), token_type }),
                        None => {
                            ok = false;
                            None
                        }
                    }
                }
                _ => {
                    cx.err(&path, "set exactly one of token_file, token or client_credentials");
                    ok = false;
                    None
                }
            }
        }
    };
    let max_ttl = x.max_ttl.map_or(Duration::from_secs(300), |d| d.0);
    let default_ttl = x.default_ttl.map_or(Duration::from_secs(60), |d| d.0);
    if max_ttl.is_zero() {
        cx.err(format!("{base}.max_ttl"), "must be greater than zero");
        ok = false;
    }
    let max_rate = x.max_rate.map(|r| rate(cx, &format!("{base}.max_rate"), r, &mut ok)).unwrap_or_default();
    let profile = servers.get(&server).map_or(Profile::Generic, |s| s.profile);
    let grant = profile::grant(cx, base, x.grant.as_ref(), profile);
    let extra_params = profile::extra_params(cx, base, x.extra_params);
    let chain = agents::chain(cx, base, x.chain, servers);
    if chain.as_ref().is_ok_and(Option::is_some) {
        if grant.is_some_and(|g| g != Grant::TokenExchange) {
            cx.err(format!("{base}.grant"), "identity chaining starts with a token exchange (RFC 8693)");
            ok = false;
        }
        if x.requested_token_type.as_ref().is_some_and(|t| t.value != JWT_TOKEN_TYPE) {
            cx.err(
                format!("{base}.requested_token_type"),
                format!("with chain:, the first exchange asks for a JWT authorization grant ({JWT_TOKEN_TYPE})"),
            );
            ok = false;
        }
    }
    let enforce_may_act = x.enforce_may_act.unwrap_or(false);
    if enforce_may_act && actor.is_none() {
        cx.warn(
            format!("{base}.enforce_may_act"),
            "has no effect without exchange.actor: may_act names who may act for the subject",
        );
    }
    let explicit =
        (x.subject_token_type.is_some(), x.requested_token_type.as_ref().is_some_and(|t| !t.value.is_empty()));
    let subject_token_type = x.subject_token_type.map_or_else(|| profile.subject_token_type().to_owned(), |t| t.value);
    let cfg = ExchangeConfig {
        authorization_server: server,
        audience,
        resource,
        scope,
        // `""` leaves out the profile's default.
        requested_token_type: match x.requested_token_type {
            _ if matches!(chain, Ok(Some(_))) => Some(JWT_TOKEN_TYPE.to_owned()),
            Some(t) if t.value.is_empty() => None,
            Some(t) => Some(t.value),
            None => profile.requested_token_type(&subject_token_type).map(str::to_owned),
        },
        subject_token_type,
        actor,
        max_ttl,
        default_ttl,
        max_rate,
        grant: grant?,
        extra_params: extra_params?,
        chain: chain.ok()?,
        enforce_may_act,
    };
    if ok {
        profile::provider_checks(cx, base, &cfg, profile, explicit);
    }
    ok.then_some(cfg)
}

/// The `audience`, `resource` and `scope` of a token request.
#[derive(Default)]
pub(super) struct Targets {
    pub audience: Vec<String>,
    pub resource: Vec<String>,
    pub scope: Vec<String>,
}

/// `base.audience`, `base.resource` and `base.scope`: values without
/// spaces, and resources absolute URIs (RFC 8707). `None` after an error.
pub(super) fn targets(
    cx: &mut Ctx,
    base: &str,
    audience: Vec<Text>,
    resource: Vec<Text>,
    scope: Vec<Text>,
) -> Option<Targets> {
    let mut ok = true;
    let mut list = |cx: &mut Ctx, key: &str, items: Vec<Text>| -> Vec<String> {
        let mut out = Vec::with_capacity(items.len());
        for (i, t) in items.into_iter().enumerate() {
            if t.value.is_empty() || t.value.contains(char::is_whitespace) {
                cx.err(format!("{base}.{key}[{i}]"), "must be non-empty and hold no spaces");
                ok = false;
            }
            out.push(t.value);
        }
        out
    };
    let audience = list(cx, "audience", audience);
    let resource = list(cx, "resource", resource);
    let scope = list(cx, "scope", scope);
    for (i, r) in resource.iter().enumerate() {
        if Url::parse(r).is_err() {
            cx.err(format!("{base}.resource[{i}]"), "must be an absolute URI (RFC 8707)");
            ok = false;
        }
    }
    ok.then_some(Targets { audience, resource, scope })
}

/// `exchange.max_rate`: a route bucket and a per-client bucket, each
/// optional; a burst defaults to its rate (at least 1).
pub(super) fn rate(cx: &mut Ctx, base: &str, r: RawRate, ok: &mut bool) -> RateConfig {
    let mut bucket = |rate: Option<f64>, burst: Option<f64>, keys: (&str, &str)| -> Option<Bucket> {
        let valid = |v: f64| v.is_finite() && v > 0.0 && v <= 1e6;
        if let Some(v) = rate.filter(|v| !valid(*v)) {
            cx.err(format!("{base}.{}", keys.0), format!("{v} is not a rate: more than 0, at most 1000000"));
            *ok = false;
        }
        if let Some(v) = burst.filter(|v| !valid(*v) || *v < 1.0) {
            cx.err(format!("{base}.{}", keys.1), format!("{v} is not a burst: at least 1, at most 1000000"));
            *ok = false;
        }
        match (rate, burst) {
            (Some(per_second), burst) => Some(Bucket { per_second, burst: burst.unwrap_or(per_second.max(1.0)) }),
            (None, Some(_)) => {
                cx.err(format!("{base}.{}", keys.1), format!("needs {}", keys.0));
                *ok = false;
                None
            }
            (None, None) => None,
        }
    };
    let route = bucket(r.per_second, r.burst, ("per_second", "burst"));
    let per_client = bucket(r.per_client, r.per_client_burst, ("per_client", "per_client_burst"));
    if route.is_none() && per_client.is_none() {
        cx.err(base, "set per_second, per_client or both");
        *ok = false;
    }
    RateConfig { route, per_client }
}

/// A client_credentials request for tokex's own token, written as an
/// `exchange:`-shaped section (server, audience, resource, scope, TTLs).
fn egress(
    cx: &mut Ctx,
    base: &str,
    x: RawExchange,
    servers: &BTreeMap<String, AuthServerConfig>,
) -> Option<MachineConfig> {
    for (key, present) in [
        ("subject_token_type", x.subject_token_type.is_some()),
        ("requested_token_type", x.requested_token_type.is_some()),
        ("actor", x.actor.is_some()),
        ("max_rate", x.max_rate.is_some()),
        ("grant", x.grant.is_some()),
        ("extra_params", !x.extra_params.is_empty()),
        ("chain", x.chain.is_some()),
        ("enforce_may_act", x.enforce_may_act.is_some()),
    ] {
        if present {
            cx.err(format!("{base}.{key}"), "not used for a client_credentials token");
        }
    }
    // Reported above; validate the rest as an exchange section.
    let raw = RawExchange {
        subject_token_type: None,
        requested_token_type: None,
        actor: None,
        max_rate: None,
        grant: None,
        extra_params: BTreeMap::new(),
        chain: None,
        enforce_may_act: None,
        ..x
    };
    let x = exchange(cx, base, raw, servers)?;
    Some(MachineConfig {
        authorization_server: x.authorization_server,
        audience: x.audience,
        resource: x.resource,
        scope: x.scope,
        max_ttl: x.max_ttl,
        default_ttl: x.default_ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::super::super::parse;

    fn errors(server: &str, exchange: &str, route: &str) -> String {
        let yaml = format!(
            "listen: {{ address: \"127.0.0.1:8080\" }}\nauthorization_servers:\n  corp:\n    token_endpoint: https://as.example.com/token\n{server}routes:\n  - name: r\n    upstream: http://127.0.0.1:8081\n{route}    exchange:\n      authorization_server: corp\n{exchange}"
        );
        match parse(&yaml) {
            Ok(_) => String::new(),
            Err(e) => e.errors.iter().map(|d| format!("error: {}", d.unlined())).collect::<Vec<_>>().join("\n"),
        }
    }

    #[test]
    fn protection_settings_are_checked() {
        assert_eq!(errors("    max_concurrent: 8\n    circuit_breaker: { consecutive_failures: 0 }\n", "", ""), "");
        let c = parse(
            "listen: { address: \"127.0.0.1:8080\" }\nauthorization_servers:\n  corp: { token_endpoint: https://as.example.com/token }\nroutes:\n  - { name: r, upstream: \"http://127.0.0.1:8081\", exchange: { authorization_server: corp, max_rate: { per_second: 2.5 } } }\n",
        )
        .unwrap();
        let rate = c.routes[0].exchange.as_ref().unwrap().max_rate;
        assert_eq!(rate.route.map(|b| (b.per_second, b.burst)), Some((2.5, 2.5)));
        assert!(rate.per_client.is_none());
        assert!(c.routes[0].retry_on_invalid_token);
        assert_eq!(c.servers["corp"].max_concurrent, 64);
        assert_eq!(c.servers["corp"].circuit_breaker.consecutive_failures, 5);
        for (server, exchange, route, path) in [
            ("    max_concurrent: 0\n", "", "", "authorization_servers.corp.max_concurrent"),
            ("    circuit_breaker: { open_for: 2h }\n", "", "", "authorization_servers.corp.circuit_breaker.open_for"),
            ("    circuit_breaker: { open_for: 0s }\n", "", "", "authorization_servers.corp.circuit_breaker.open_for"),
            ("    timeout: 11m\n", "", "", "authorization_servers.corp.timeout"),
            ("", "      max_rate: {}\n", "", "routes[0].exchange.max_rate"),
            ("", "      max_rate: { burst: 5 }\n", "", "routes[0].exchange.max_rate.burst"),
            ("", "      max_rate: { per_second: -1 }\n", "", "routes[0].exchange.max_rate.per_second"),
            ("", "      max_rate: { per_second: .nan }\n", "", "routes[0].exchange.max_rate.per_second"),
            ("", "      max_rate: { per_client: .inf }\n", "", "routes[0].exchange.max_rate.per_client"),
            (
                "",
                "      max_rate: { per_client: 1, per_client_burst: 0.5 }\n",
                "",
                "routes[0].exchange.max_rate.per_client_burst",
            ),
            (
                "",
                "      max_rate: { per_second: 1 }\n",
                "    auth: client_credentials\n",
                "routes[0].exchange.max_rate",
            ),
            ("", "", "    retry_on_invalid_token: maybe\n", "routes[0].retry_on_invalid_token"),
        ] {
            let e = errors(server, exchange, route);
            assert!(e.contains(path), "{path}: {e}");
        }
    }
}
