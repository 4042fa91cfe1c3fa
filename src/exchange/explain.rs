//! `tokex check --explain`: the token request each route will send, read
//! from the same [`Template`] the request path fills, with client
//! authentication described (never a secret) and the server's error mapping.

use serde_json::{json, Value};

use super::request::{Slot, Template};
use crate::config::profile::JWT_BEARER_GRANT;
use crate::config::{
    ActorSource, AsLocation, AssertionAudience, AuthMode, AuthServerConfig, ClientAuthConfig, Config, Outcome,
    SecretSource,
};

/// One route's explanation, as text lines and as JSON.
pub struct Explained {
    pub route: String,
    pub lines: Vec<String>,
    pub json: Value,
}

/// Every route of `config`, in order.
pub fn explain(config: &Config) -> Vec<Explained> {
    config.routes.iter().map(|r| route(config, r)).collect()
}

fn route(config: &Config, r: &crate::config::RouteConfig) -> Explained {
    let (template, server, grant, actor) = match (r.auth, &r.exchange, &r.machine, &r.transaction_token) {
        (AuthMode::Exchange, Some(x), _, _) => {
            let actor = x.actor.as_ref().map(|a| match &a.source {
                ActorSource::Token(SecretSource::File(p)) => format!("the token in {}", p.display()),
                ActorSource::Token(SecretSource::Inline(_)) => "the token in the configuration".to_owned(),
                ActorSource::ClientCredentials(m) => {
                    format!("tokex's own client_credentials token from {}", m.authorization_server)
                }
            });
            // A chain's first leg names the next server as it is configured.
            let next = x.chain.as_ref().and_then(|c| config.servers.get(&c.authorization_server));
            let next = next.map(|n| n.location.identifier());
            let template = match &next {
                Some(next) => Template::exchange(&super::policy::first_leg(x, next)),
                None => Template::exchange(x),
            };
            (template, &x.authorization_server, x.grant.name(), actor)
        }
        (AuthMode::ClientCredentials, _, Some(m), _) => {
            (Template::machine(m), &m.authorization_server, "client_credentials", None)
        }
        (AuthMode::TransactionToken, _, _, Some(t)) => {
            (Template::transaction(t), &t.authorization_server, "transaction_token", None)
        }
        _ => {
            let line = format!("route {}: auth none: no token request; Authorization is removed", r.name);
            return Explained {
                route: r.name.clone(),
                lines: vec![line],
                json: json!({"route": r.name, "auth": "none"}),
            };
        }
    };
    let Some(s) = config.servers.get(server) else {
        // (validation guarantees the server exists)
        return Explained { route: r.name.clone(), lines: vec![], json: Value::Null };
    };
    let endpoint = match &s.location {
        AsLocation::TokenEndpoint(u) => without_password(u),
        AsLocation::Issuer(i) => format!("<token_endpoint discovered from {i} (RFC 8414)>"),
    };
    let params: Vec<(String, String)> = template
        .params()
        .iter()
        .map(|(name, slot)| {
            let value = match slot {
                Slot::Fixed(v) => v.clone(),
                Slot::Hidden(_) => "<from the environment; not shown>".to_owned(),
                Slot::Subject => "<the caller's token>".to_owned(),
                Slot::Actor => format!("<{}>", actor.as_deref().unwrap_or("actor token")),
                Slot::Claim { name, required: true } => format!("<claim {name} of the caller's token; required>"),
                Slot::Claim { name, required: false } => {
                    format!("<claim {name} of the caller's token; left out if absent>")
                }
            };
            (name.clone(), value)
        })
        .collect();
    let auth = client_auth(&s.client_auth);
    let errors = error_rules(s);
    let mut lines = vec![
        format!("route {}: {grant} at authorization server {server} (profile {})", r.name, s.profile),
        format!("  POST {endpoint}"),
        "  Content-Type: application/x-www-form-urlencoded".to_owned(),
    ];
    lines.extend(params.iter().map(|(k, v)| format!("  {k}={v}")));
    lines.push(format!("  client authentication: {auth}"));
    lines.push("  refusals:".to_owned());
    lines.extend(errors.iter().map(|(k, v)| format!("    {k} -> {v}")));
    lines.push(format!("    other codes -> {SPEC_36}"));
    if matches!(r.auth, AuthMode::TransactionToken) {
        lines.push("  per request: request_context (req_ip, authn, the caller's sub and client_id), request_details (method, path); never cached".to_owned());
    }
    if let Some(c) = r.exchange.as_ref().and_then(|x| x.chain.as_ref()) {
        lines.push(format!("  then, at authorization server {} (identity chaining):", c.authorization_server));
        lines.push(format!("  grant_type={JWT_BEARER_GRANT}"));
        lines.push("  assertion=<the JWT grant above>".to_owned());
        lines.extend(c.audience.iter().map(|a| format!("  audience={a}")));
        lines.extend(c.resource.iter().map(|a| format!("  resource={a}")));
        lines.push(format!("  scope={}", c.scope.join(" ")));
    }
    let chain = r.exchange.as_ref().and_then(|x| x.chain.as_ref()).map(|c| {
        json!({
            "authorization_server": c.authorization_server,
            "grant": "jwt_bearer",
            "params": [["grant_type", JWT_BEARER_GRANT], ["assertion", "<the JWT grant above>"]],
            "audience": c.audience,
            "resource": c.resource,
            "scope": c.scope.join(" "),
        })
    });
    let json = json!({
        "route": r.name,
        "chain": chain,
        "grant": grant,
        "authorization_server": server,
        "profile": s.profile.name(),
        "endpoint": endpoint,
        "params": params.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "client_auth": auth,
        "refusals": errors.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
    });
    Explained { route: r.name.clone(), lines, json }
}

/// A URL as shown: a password in it is not.
fn without_password(u: &url::Url) -> String {
    let mut u = u.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("redacted"));
    }
    u.to_string()
}

const SPEC_36: &str = "invalid_grant: 401 invalid_token; invalid_scope, invalid_target: 403 insufficient_scope; \
                       invalid_client, unauthorized_client and any other: 502";

/// The error map's rules, as `code` → answer.
fn error_rules(s: &AuthServerConfig) -> Vec<(String, &'static str)> {
    let (codes, described) = s.error_map.rules();
    let mut out: Vec<(String, &'static str)> = codes.map(|(c, o)| (c.to_owned(), Outcome::answer(o))).collect();
    out.extend(described.iter().map(|d| (format!("{} \"{}…\"", d.error, d.text), d.outcome.answer())));
    out
}

/// How tokex proves who it is, without the secret.
fn client_auth(c: &ClientAuthConfig) -> String {
    let secret = |s: &SecretSource| match s {
        SecretSource::File(p) => format!("secret [redacted] from {}", p.display()),
        SecretSource::Inline(_) => "secret [redacted] from the configuration".to_owned(),
    };
    let aud = |a: &AssertionAudience| match a {
        AssertionAudience::TokenEndpoint => "aud = the token endpoint",
        AssertionAudience::Issuer => "aud = the issuer",
    };
    match c {
        ClientAuthConfig::SecretBasic { client_id, secret: s } => {
            format!("client_secret_basic: Authorization: Basic, client_id={client_id}, {}", secret(s))
        }
        ClientAuthConfig::SecretPost { client_id, secret: s } => {
            format!("client_secret_post: client_id={client_id}&client_secret=<{}>", secret(s))
        }
        ClientAuthConfig::SecretJwt { client_id, secret: s, assertion_audience } => format!(
            "client_secret_jwt: client_id={client_id}&client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer&client_assertion=<HS256 JWT, {}, {}>",
            aud(assertion_audience),
            secret(s)
        ),
        ClientAuthConfig::PrivateKeyJwt { client_id, private_key_file, assertion_audience, .. } => format!(
            "private_key_jwt: client_id={client_id}&client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer&client_assertion=<JWT signed with {}, {}>",
            private_key_file.display(),
            aud(assertion_audience)
        ),
        ClientAuthConfig::TlsClientAuth { client_id, cert_file, .. } => {
            format!("tls_client_auth: client_id={client_id}, certificate {}", cert_file.display())
        }
        ClientAuthConfig::None { client_id: Some(id) } => format!("none: client_id={id}"),
        ClientAuthConfig::None { client_id: None } => "none".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn explains_the_request_without_secrets() {
        let yaml = "listen: { address: \"127.0.0.1:0\" }\nauthorization_servers:\n  entra:\n    token_endpoint: https://login.microsoftonline.com/t/oauth2/v2.0/token\n    profile: entra\n    client_auth: { method: client_secret_post, client_id: tokex, client_secret: very-secret-value }\nroutes:\n  - name: graph\n    upstream: http://127.0.0.1:2\n    exchange: { authorization_server: entra, scope: [https://graph.microsoft.com/.default], extra_params: { tenant_hint: contoso, key: \"${TOKEX_EXPLAIN_UNSET_VAR:-k3y-from-env}\" } }\n  - { name: open, upstream: \"http://127.0.0.1:2\", auth: none }\n";
        let cfg = crate::config::parse(yaml).unwrap();
        let out = super::explain(&cfg);
        let text = out[0].lines.join("\n");
        for needle in [
            "route graph: on_behalf_of at authorization server entra (profile entra)",
            "POST https://login.microsoftonline.com/t/oauth2/v2.0/token",
            "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion=<the caller's token>",
            "requested_token_use=on_behalf_of",
            "scope=https://graph.microsoft.com/.default",
            "tenant_hint=contoso",
            "client_secret_post: client_id=tokex",
            "AADSTS50076 -> 401 insufficient_user_authentication",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
        assert!(!text.contains("very-secret-value"));
        assert!(text.contains("key=<from the environment; not shown>") && !text.contains("k3y-from-env"), "{text}");
        assert!(!out[0].json.to_string().contains("very-secret-value"));
        assert!(out[1].lines[0].contains("no token request"));
    }
}
