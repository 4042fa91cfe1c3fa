//! `inbound:` (JWT validation or RFC 7662 introspection) and
//! `routes[].require_scopes`.

use std::str::FromStr;

use jsonwebtoken::Algorithm;

use super::super::interp::Dur;
use super::*;

/// Algorithms accepted in `inbound.jwt.algorithms`: asymmetric only.
const ALLOWED: &[Algorithm] = super::super::limits::ASYMMETRIC_ALGORITHMS;

/// Largest bearer token the extractor accepts; the JWT cap cannot exceed it.
const MAX_TOKEN_CAP: usize = super::super::limits::MAX_TOKEN_BYTES;

pub(super) fn inbound(
    cx: &mut Ctx,
    raw: RawInbound,
    servers: &BTreeMap<String, AuthServerConfig>,
) -> Option<InboundConfig> {
    match (raw.jwt, raw.introspection) {
        (Some(j), None) => jwt(cx, j, servers).map(InboundConfig::Jwt),
        (None, Some(i)) => introspection(cx, i, servers).map(InboundConfig::Introspection),
        (Some(_), Some(_)) => {
            cx.err("inbound", "set either jwt or introspection, not both");
            None
        }
        (None, None) => {
            cx.err("inbound", "set jwt or introspection");
            None
        }
    }
}

fn positive(cx: &mut Ctx, path: &str, d: Option<Dur>, default: Duration) -> Duration {
    let d = d.map_or(default, |d| d.0);
    if d.is_zero() {
        cx.err(path, "must be greater than zero");
    }
    d
}

/// An endpoint given as a URL (`url_key`), or taken from the discovered
/// metadata of an `issuer:` authorization server; with that server's issuer.
fn discoverable(
    cx: &mut Ctx,
    base: &str,
    url_key: &str,
    url: Option<&Text>,
    server: Option<&Text>,
    servers: &BTreeMap<String, AuthServerConfig>,
) -> (Option<EndpointSource>, Option<String>) {
    match (url, server) {
        (Some(u), None) => (http_url(cx, &format!("{base}.{url_key}"), u).map(EndpointSource::Url), None),
        (None, Some(name)) => match servers.get(name.as_str()).map(|s| &s.location) {
            Some(AsLocation::Issuer(iss)) => (Some(EndpointSource::Discovered(name.value.clone())), Some(iss.clone())),
            Some(AsLocation::TokenEndpoint(_)) => {
                cx.err(
                    format!("{base}.authorization_server"),
                    format!(
                        "{:?} is configured with token_endpoint: only an issuer: server's endpoints are discovered; set {url_key} instead",
                        name.value
                    ),
                );
                (None, None)
            }
            None => {
                cx.unknown_server(format!("{base}.authorization_server"), &name.value);
                (None, None)
            }
        },
        (Some(_), Some(_)) => {
            cx.err(base, format!("set either {url_key} or authorization_server, not both"));
            (None, None)
        }
        (None, None) => {
            cx.err(
                base,
                format!("set {url_key}, or authorization_server (an issuer: server whose discovered endpoint is used)"),
            );
            (None, None)
        }
    }
}

fn jwt(cx: &mut Ctx, j: RawJwt, servers: &BTreeMap<String, AuthServerConfig>) -> Option<JwtConfig> {
    jwt_at(cx, "inbound.jwt", j, servers)
}

/// A JWT check configured at `base` (`inbound.jwt`, or `revocation.ssf` for SETs).
pub(super) fn jwt_at(
    cx: &mut Ctx,
    base: &str,
    j: RawJwt,
    servers: &BTreeMap<String, AuthServerConfig>,
) -> Option<JwtConfig> {
    let mut ok = true;
    // The JWKS: a URL, or the `jwks_uri` a discovered authorization server
    // publishes (whose issuer is then the default `issuer`).
    let (jwks, default_issuer) =
        discoverable(cx, base, "jwks_uri", j.jwks_uri.as_ref(), j.authorization_server.as_ref(), servers);
    let issuer = match (j.issuer.map(|t| t.value), default_issuer) {
        (Some(i), _) if !i.is_empty() => i,
        (None, Some(d)) => d,
        // The JWKS source is in error (a bad or unknown server): that one
        // error says it; no second one for the issuer it would have given.
        (None, None) if jwks.is_none() => {
            ok = false;
            String::new()
        }
        (None, None) => {
            cx.err(
                format!("{base}.issuer"),
                "required: the exact iss of accepted tokens (or use authorization_server: an issuer: server)",
            );
            ok = false;
            String::new()
        }
        (Some(_), _) => {
            cx.err(format!("{base}.issuer"), "must not be empty");
            ok = false;
            String::new()
        }
    };
    if j.audiences.is_empty() {
        cx.err(format!("{base}.audiences"), "list at least one audience this gateway accepts (RFC 9068 §4)");
        ok = false;
    }
    for (i, a) in j.audiences.iter().enumerate() {
        if a.value.is_empty() {
            cx.err(format!("{base}.audiences[{i}]"), "must not be empty");
            ok = false;
        }
    }
    let algorithms = algorithm_list(cx, &format!("{base}.algorithms"), j.algorithms, &["RS256", "ES256"]);
    let leeway = j.leeway.map_or(Duration::from_secs(30), |d| d.0);
    if leeway > Duration::from_secs(300) {
        cx.err(format!("{base}.leeway"), "at most 5m");
        ok = false;
    }
    let require_typ = j.require_typ.map(|t| t.value);
    if require_typ.as_deref().is_some_and(str::is_empty) {
        cx.err(format!("{base}.require_typ"), "must not be empty (omit it to accept any typ)");
        ok = false;
    }
    let max_token_bytes = j.max_token_bytes.unwrap_or(8 * 1024);
    if !(1024..=MAX_TOKEN_CAP).contains(&max_token_bytes) {
        cx.err(format!("{base}.max_token_bytes"), format!("must be between 1024 and {MAX_TOKEN_CAP}"));
        ok = false;
    }
    let jwks_refresh_min = j.jwks_refresh_min.map_or(Duration::from_secs(60), |d| d.0);
    let jwks_refresh_max = j.jwks_refresh_max.map_or(Duration::from_secs(3600), |d| d.0);
    if jwks_refresh_min < Duration::from_secs(1) {
        cx.err(format!("{base}.jwks_refresh_min"), "at least 1s");
        ok = false;
    }
    if jwks_refresh_max < jwks_refresh_min {
        cx.err(format!("{base}.jwks_refresh_max"), "must not be shorter than jwks_refresh_min");
        ok = false;
    }
    let unknown_kid_cooldown = j.unknown_kid_cooldown.map_or(Duration::from_secs(10), |d| d.0);
    if unknown_kid_cooldown < Duration::from_secs(1) {
        cx.err(
            format!("{base}.unknown_kid_cooldown"),
            "at least 1s (it bounds how often forged kids make tokex refetch the JWKS)",
        );
        ok = false;
    }
    let ca_file = j.ca_file.as_ref().map(|f| existing_file(cx, &format!("{base}.ca_file"), f));
    let timeout = positive(cx, &format!("{base}.timeout"), j.timeout, Duration::from_secs(5));
    let (jwks, algorithms) = (jwks?, algorithms?);
    ok.then(|| JwtConfig {
        issuer,
        jwks,
        audiences: j.audiences.into_iter().map(|t| t.value).collect(),
        algorithms,
        leeway,
        require_typ,
        max_token_bytes,
        jwks_refresh_min,
        jwks_refresh_max,
        unknown_kid_cooldown,
        ca_file,
        timeout,
    })
}

/// An allow-list of asymmetric JWS algorithms at `path` (`default` when
/// absent): `none` and HMAC are refused, duplicates dropped.
pub(super) fn algorithm_list(
    cx: &mut Ctx,
    path: &str,
    given: Option<Vec<Text>>,
    default: &[&str],
) -> Option<Vec<Algorithm>> {
    let names = given.map_or_else(
        || default.iter().map(|s| (*s).to_owned()).collect(),
        |v: Vec<Text>| v.into_iter().map(|t| t.value).collect::<Vec<_>>(),
    );
    let mut ok = true;
    if names.is_empty() {
        cx.err(path, "list at least one algorithm");
        ok = false;
    }
    let mut algorithms = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let path = format!("{path}[{i}]");
        match Algorithm::from_str(name) {
            Ok(a) if ALLOWED.contains(&a) => {
                if !algorithms.contains(&a) {
                    algorithms.push(a);
                }
            }
            Ok(_) => {
                cx.err(
                    path,
                    format!("{name} is refused: HMAC needs a shared secret, and a public JWKS key used as one is the key-confusion attack"),
                );
                ok = false;
            }
            Err(_) if name.eq_ignore_ascii_case("none") => {
                cx.err(path, "alg none (unsigned tokens) is never accepted");
                ok = false;
            }
            Err(_) => {
                cx.err(
                    path,
                    format!("unknown algorithm {name:?}: expected RS256/384/512, PS256/384/512, ES256/384 or EdDSA"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(algorithms)
}

fn introspection(
    cx: &mut Ctx,
    i: RawIntrospection,
    servers: &BTreeMap<String, AuthServerConfig>,
) -> Option<IntrospectionConfig> {
    const BASE: &str = "inbound.introspection";
    let (endpoint, _) =
        discoverable(cx, BASE, "endpoint", i.endpoint.as_ref(), i.authorization_server.as_ref(), servers);
    let client_auth = match i.client_auth {
        None => Some(ClientAuthConfig::None { client_id: None }),
        Some(ca) => {
            let path = format!("{BASE}.client_auth");
            match super::client_auth::client_auth(cx, &path, ca) {
                Some(
                    c @ (ClientAuthConfig::SecretBasic { .. }
                    | ClientAuthConfig::SecretPost { .. }
                    | ClientAuthConfig::None { .. }),
                ) => Some(c),
                Some(_) => {
                    cx.err(
                        format!("{path}.method"),
                        "introspection supports client_secret_basic, client_secret_post or none",
                    );
                    None
                }
                None => None,
            }
        }
    };
    let cache_ttl = i.cache_ttl.map_or(Duration::from_secs(30), |d| d.0);
    let negative_ttl = i.negative_ttl.map_or(Duration::from_secs(5), |d| d.0);
    if negative_ttl > cache_ttl.max(Duration::from_secs(60)) {
        cx.err(format!("{BASE}.negative_ttl"), "keep it short (at most cache_ttl or 1m)");
    }
    let max_entries = i.max_entries.unwrap_or(100_000);
    if max_entries == 0 {
        cx.err(format!("{BASE}.max_entries"), "must be at least 1");
    }
    let ca_file = i.ca_file.as_ref().map(|f| existing_file(cx, &format!("{BASE}.ca_file"), f));
    let timeout = positive(cx, &format!("{BASE}.timeout"), i.timeout, Duration::from_secs(2));
    Some(IntrospectionConfig {
        endpoint: endpoint?,
        client_auth: client_auth?,
        cache_ttl,
        negative_ttl,
        max_entries,
        ca_file,
        timeout,
    })
}

/// `routes[i].require_scopes`: scope tokens (RFC 6749 §3.3), only on
/// `auth: exchange` routes. Absent is an empty list.
pub(super) fn require_scopes(
    cx: &mut Ctx,
    base: &str,
    list: Option<Vec<Text>>,
    auth: Option<AuthMode>,
) -> Option<Vec<String>> {
    let Some(list) = list else { return Some(Vec::new()) };
    let path = format!("{base}.require_scopes");
    let mut ok = true;
    if auth.is_some_and(|a| !matches!(a, AuthMode::Exchange | AuthMode::TransactionToken)) {
        cx.err(&path, "only used with auth: exchange or transaction_token (the caller's token is checked there)");
        ok = false;
    }
    if list.is_empty() {
        cx.err(&path, "list at least one scope, or remove require_scopes");
        ok = false;
    }
    let (out, good) = super::agents::scope_tokens(cx, &path, list);
    (ok && good).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::super::super::{parse, InboundConfig};

    const ROUTES: &str = r#"
authorization_servers:
  corp: { token_endpoint: https://as.example.com/token }
routes:
  - name: orders
    upstream: http://127.0.0.1:8081
    require_scopes: [orders:read]
    exchange: { authorization_server: corp }
"#;

    fn with(inbound: &str) -> String {
        format!("listen: {{ address: \"127.0.0.1:8080\" }}\n{inbound}{ROUTES}")
    }

    fn errors(yaml: &str) -> String {
        match parse(yaml) {
            Ok(_) => String::new(),
            Err(e) => e.errors.iter().map(|d| d.unlined()).collect::<Vec<_>>().join("\n"),
        }
    }

    #[test]
    fn jwt_defaults() {
        let c = parse(&with("inbound:\n  jwt: { issuer: https://as, jwks_uri: https://as/jwks, audiences: [edge] }\n"))
            .unwrap();
        let Some(InboundConfig::Jwt(j)) = c.inbound else { panic!("no jwt") };
        assert_eq!(j.algorithms, vec![jsonwebtoken::Algorithm::RS256, jsonwebtoken::Algorithm::ES256]);
        assert_eq!(j.max_token_bytes, 8192);
        assert_eq!(j.leeway.as_secs(), 30);
        assert_eq!((j.jwks_refresh_min.as_secs(), j.jwks_refresh_max.as_secs()), (60, 3600));
        assert_eq!(j.unknown_kid_cooldown.as_secs(), 10);
        assert_eq!(c.routes[0].require_scopes, vec!["orders:read"]);
    }

    #[test]
    fn refuses_none_hmac_and_unknown_algorithms() {
        let errs = errors(&with(
            "inbound:\n  jwt: { issuer: https://as, jwks_uri: https://as/jwks, audiences: [edge], algorithms: [none, HS256, ES512, ES256] }\n",
        ));
        assert!(errs.contains("inbound.jwt.algorithms[0]: alg none"), "{errs}");
        assert!(errs.contains("inbound.jwt.algorithms[1]: HS256 is refused"), "{errs}");
        assert!(errs.contains("inbound.jwt.algorithms[2]: unknown algorithm"), "{errs}");
    }

    #[test]
    fn checks_the_jwt_section() {
        let errs = errors(&with(
            "inbound:\n  jwt: { issuer: \"\", jwks_uri: \"ftp://x\", max_token_bytes: 100, jwks_refresh_min: 10m, jwks_refresh_max: 1m, unknown_kid_cooldown: 0s, bogus: 1 }\n",
        ));
        assert!(errs.contains("bogus"), "unknown keys are errors: {errs}");
        let errs = errors(&with(
            "inbound:\n  jwt: { issuer: \"\", jwks_uri: \"ftp://x\", max_token_bytes: 100, jwks_refresh_min: 10m, jwks_refresh_max: 1m, unknown_kid_cooldown: 0s }\n",
        ));
        for needle in [
            "inbound.jwt.issuer",
            "inbound.jwt.jwks_uri",
            "inbound.jwt.audiences",
            "inbound.jwt.max_token_bytes",
            "inbound.jwt.jwks_refresh_max",
            "inbound.jwt.unknown_kid_cooldown",
        ] {
            assert!(errs.contains(needle), "missing {needle} in:\n{errs}");
        }
    }

    #[test]
    fn exactly_one_inbound_check() {
        let both = "inbound:\n  jwt: { issuer: https://as, jwks_uri: https://as/jwks, audiences: [edge] }\n  introspection: { endpoint: https://as/introspect }\n";
        assert!(errors(&with(both)).contains("inbound: set either jwt or introspection, not both"));
        assert!(errors(&with("inbound: {}\n")).contains("inbound: set jwt or introspection"));
    }

    #[test]
    fn introspection_takes_the_token_endpoint_client_auth_shape() {
        let ok = "inbound:\n  introspection:\n    endpoint: https://as/introspect\n    client_auth: { method: client_secret_post, client_id: tokex, client_secret: s }\n";
        let c = parse(&with(ok)).unwrap();
        let Some(InboundConfig::Introspection(i)) = c.inbound else { panic!("no introspection") };
        assert_eq!((i.cache_ttl.as_secs(), i.negative_ttl.as_secs(), i.timeout.as_secs()), (30, 5, 2));
        let errs = errors(&with(
            "inbound:\n  introspection:\n    endpoint: https://as/introspect\n    client_auth: { method: client_secret_basic, client_id: tokex }\n",
        ));
        assert!(errs.contains("inbound.introspection.client_auth"), "{errs}");
    }

    #[test]
    fn require_scopes_needs_inbound_and_an_exchange_route() {
        let errs = errors(&with(""));
        assert!(errs.contains("routes[0].require_scopes: needs inbound:"), "{errs}");
        let yaml = with("inbound:\n  introspection: { endpoint: https://as/introspect }\n")
            .replace("    exchange: { authorization_server: corp }\n", "    auth: none\n");
        let errs = errors(&yaml);
        assert!(errs.contains("routes[0].require_scopes: only used with auth: exchange"), "{errs}");
        let yaml = with("inbound:\n  introspection: { endpoint: https://as/introspect }\n")
            .replace("[orders:read]", "[\"orders read\", \"\"]");
        let errs = errors(&yaml);
        assert!(errs.contains("routes[0].require_scopes[0]") && errs.contains("routes[0].require_scopes[1]"), "{errs}");
    }
}
