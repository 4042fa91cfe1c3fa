//! `routes[].resource_metadata` (RFC 9728), `routes[].transaction_token`
//! and `routes[].exchange.chain` / `enforce_may_act` (SPEC §6).

use super::*;

/// `resource_metadata`: on a route that takes a caller's token; the
/// resource an absolute http(s) URL without fragment; at least one
/// authorization server; scopes default to the route's `require_scopes`.
pub(super) fn resource_metadata(
    cx: &mut Ctx,
    base: &str,
    raw: RawResourceMetadata,
    auth: Option<AuthMode>,
    require_scopes: &[String],
) -> Option<ResourceMetadataConfig> {
    let base = format!("{base}.resource_metadata");
    let mut ok = true;
    if auth.is_some_and(|a| !matches!(a, AuthMode::Exchange | AuthMode::TransactionToken)) {
        cx.err(&base, "only on routes that take the caller's token (auth: exchange or transaction_token)");
        ok = false;
    }
    let resource = http_url_as(
        cx,
        &format!("{base}.resource"),
        &raw.resource,
        "the URL clients call, e.g. https://gw.example.com/mcp",
    );
    if let Some(r) = &resource {
        if r.query().is_some() {
            cx.err(format!("{base}.resource"), "a resource identifier has no query (RFC 9728 §1.2)");
            ok = false;
        }
        if r.scheme() != "https" && !raw.resource.unresolved {
            cx.warn(
                format!("{base}.resource"),
                "RFC 9728 resource identifiers are https URLs: clients may refuse this one",
            );
        }
    }
    if !cx.proxy_listener {
        cx.warn(
            &base,
            "documents are served on the proxy listener (listen:) only: behind a front proxy, serve the document there (the 401s still name it)",
        );
    }
    if raw.authorization_servers.is_empty() {
        cx.err(
            format!("{base}.authorization_servers"),
            "list the issuer URL of at least one authorization server clients get tokens from",
        );
        ok = false;
    }
    let mut servers = Vec::with_capacity(raw.authorization_servers.len());
    for (i, t) in raw.authorization_servers.iter().enumerate() {
        match http_url(cx, &format!("{base}.authorization_servers[{i}]"), t) {
            Some(_) => servers.push(t.value.clone()),
            None => ok = false,
        }
    }
    let scopes_supported = match raw.scopes_supported {
        None => require_scopes.to_vec(),
        Some(list) => {
            let (out, good) = scope_tokens(cx, &format!("{base}.scopes_supported"), list);
            ok &= good;
            out
        }
    };
    let resource_documentation = match &raw.resource_documentation {
        Some(t) => match http_url(cx, &format!("{base}.resource_documentation"), t) {
            Some(u) => Some(u),
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let resource_name = raw.resource_name.map(|t| t.value);
    if resource_name.as_ref().is_some_and(|n| n.is_empty() || n.len() > 256 || n.chars().any(char::is_control)) {
        cx.err(format!("{base}.resource_name"), "1 to 256 characters, no control characters");
        ok = false;
    }
    let resource = resource?;
    ok.then_some(ResourceMetadataConfig {
        resource,
        resource_id: raw.resource.value,
        authorization_servers: servers,
        scopes_supported,
        resource_name,
        resource_documentation,
    })
}

/// Scope tokens (RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B /
/// %x5D-7E )`) at `path[i]`, and whether every one is.
pub(super) fn scope_tokens(cx: &mut Ctx, path: &str, list: Vec<Text>) -> (Vec<String>, bool) {
    let mut ok = true;
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.into_iter().enumerate() {
        let token = !t.value.is_empty()
            && t.value.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !token {
            cx.err(format!("{path}[{i}]"), "a scope is printable ASCII without spaces, '\"' or '\\'");
            ok = false;
        }
        out.push(t.value);
    }
    (out, ok)
}

/// Two routes must not publish their documents at one path for one host.
pub(super) fn unique_metadata(cx: &mut Ctx, routes: &[RouteConfig]) {
    let mut seen: Vec<(&HostMatch, String, &str)> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let Some(m) = &r.resource_metadata else { continue };
        for path in m.paths(&r.matcher.path) {
            if let Some((_, _, other)) = seen.iter().find(|(h, p, _)| **h == r.matcher.host && *p == path) {
                cx.err(
                    format!("routes[{i}].resource_metadata"),
                    format!("route {other} already publishes metadata at {path}"),
                );
                continue;
            }
            seen.push((&r.matcher.host, path, &r.name));
        }
    }
}

/// `transaction_token:` (with `auth: transaction_token`): a server that
/// authenticates tokex mutually (mTLS or private_key_jwt), one audience.
pub(super) fn transaction_token(
    cx: &mut Ctx,
    base: &str,
    raw: RawTransactionToken,
    servers: &BTreeMap<String, AuthServerConfig>,
) -> Option<TransactionTokenConfig> {
    let base = format!("{base}.transaction_token");
    let mut ok = true;
    let server = raw.authorization_server.value;
    match servers.get(&server) {
        None => {
            cx.unknown_server(format!("{base}.authorization_server"), &server);
            ok = false;
        }
        Some(s)
            if !matches!(
                s.client_auth,
                ClientAuthConfig::PrivateKeyJwt { .. } | ClientAuthConfig::TlsClientAuth { .. }
            ) =>
        {
            cx.err(
                format!("{base}.authorization_server"),
                format!(
                    "the transaction token service {server} must authenticate tokex with tls_client_auth or private_key_jwt (mutual authentication; a shared secret is refused)"
                ),
            );
            ok = false;
        }
        Some(s) if s.dpop.is_some() => {
            cx.err(
                format!("{base}.authorization_server"),
                format!("{server} has dpop:, but a Txn-Token is not sender-constrained: use a server without it"),
            );
            ok = false;
        }
        Some(_) => {}
    }
    let audience = match raw.audience {
        Some(t) if !t.value.is_empty() && !t.value.contains(char::is_whitespace) => Some(t.value),
        Some(_) => {
            cx.err(format!("{base}.audience"), "must be non-empty and hold no spaces");
            None
        }
        None => {
            cx.err(format!("{base}.audience"), "required: the trust domain the Txn-Token is for");
            None
        }
    };
    let (scope, good) = scope_tokens(cx, &format!("{base}.scope"), raw.scope);
    ok &= good;
    let header = match raw.header {
        None => Some(HeaderName::from_static("txn-token")),
        Some(h) => {
            // Credentials of their own, and what tokex sets on every request.
            let forbidden = [http::header::AUTHORIZATION, http::header::COOKIE, http::header::PROXY_AUTHORIZATION]
                .into_iter()
                .chain(super::super::limits::SET_BY_TOKEX.iter().cloned())
                .collect::<Vec<_>>();
            super::routes::header_name(cx, &format!("{base}.header"), &h, &forbidden, "carry the Txn-Token")
        }
    };
    let subject_token_type = raw.subject_token_type.map_or_else(|| ACCESS_TOKEN_TYPE.to_owned(), |t| t.value);
    let max_rate =
        raw.max_rate.map(|r| super::routes::rate(cx, &format!("{base}.max_rate"), r, &mut ok)).unwrap_or_default();
    let cfg = TransactionTokenConfig {
        authorization_server: server,
        audience: audience?,
        scope,
        subject_token_type,
        header: header?,
        max_rate,
    };
    ok.then_some(cfg)
}

/// `exchange.chain`: the second leg's server and the token it issues.
pub(super) fn chain(
    cx: &mut Ctx,
    base: &str,
    raw: Option<RawMachine>,
    servers: &BTreeMap<String, AuthServerConfig>,
) -> Result<Option<ChainConfig>, ()> {
    let Some(raw) = raw else { return Ok(None) };
    let path = format!("{base}.chain");
    let server = raw.authorization_server.value;
    let mut ok = true;
    if !servers.contains_key(&server) {
        cx.unknown_server(format!("{path}.authorization_server"), &server);
        ok = false;
    }
    let target = super::routes::targets(cx, &path, raw.audience, raw.resource, raw.scope);
    if target.as_ref().is_some_and(|t| t.scope.is_empty()) {
        cx.err(format!("{path}.scope"), "required: the jwt-bearer grant (RFC 7523) names the scope it asks for");
        ok = false;
    }
    match (target, ok) {
        (Some(t), true) => Ok(Some(ChainConfig {
            authorization_server: server,
            audience: t.audience,
            resource: t.resource,
            scope: t.scope,
        })),
        _ => Err(()),
    }
}
