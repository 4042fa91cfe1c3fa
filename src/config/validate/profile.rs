//! Provider profiles: a server's `profile` and `error_map`, a route's
//! `grant` and `extra_params`, and what each provider is documented to
//! refuse (warnings: a profile only sets defaults, so a deliberate
//! deviation still runs).

use super::*;

/// `authorization_servers.X.profile` and `.error_map`.
pub(super) fn server(
    cx: &mut Ctx,
    base: &str,
    profile: Option<&Text>,
    error_map: &BTreeMap<String, Text>,
) -> Option<(Profile, ErrorMap)> {
    let profile = match profile.map(Text::as_str) {
        None => Profile::Generic,
        Some(p) => match Profile::parse(p) {
            Some(p) => p,
            None => {
                cx.err(format!("{base}.profile"), format!("unknown profile {p:?}: expected {}", Profile::NAMES));
                return None;
            }
        },
    };
    let mut map = profile.error_map();
    let mut ok = true;
    for (code, outcome) in error_map {
        let path = format!("{base}.error_map.{code}");
        if code.is_empty() || code.len() > 48 || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            cx.err(&path, "an error code is 1 to 48 letters, digits or '_' (e.g. interaction_required, AADSTS50076)");
            ok = false;
        }
        match Outcome::parse(outcome.as_str()) {
            Some(o) => map.set(code.clone(), o),
            None => {
                cx.err(&path, format!("unknown outcome {:?}: expected {}", outcome.value, Outcome::NAMES));
                ok = false;
            }
        }
    }
    ok.then_some((profile, map))
}

/// What a provider is documented to need of tokex's client authentication.
pub(super) fn server_checks(cx: &mut Ctx, base: &str, profile: Profile, auth: &ClientAuthConfig) {
    let public = matches!(auth, ClientAuthConfig::None { .. });
    match profile {
        Profile::GoogleSts if !public => cx.warn(
            format!("{base}.client_auth"),
            "google_sts: the STS takes no client authentication (\"do not send the Authorization HTTP header\"): use method none",
        ),
        Profile::Entra | Profile::Keycloak | Profile::Okta | Profile::PingOne if public => cx.warn(
            format!("{base}.client_auth"),
            format!("{profile}: token exchange needs a confidential client: configure client_auth"),
        ),
        _ => {}
    }
}

/// A route's `grant` (the profile's when unset).
pub(super) fn grant(cx: &mut Ctx, base: &str, raw: Option<&Text>, profile: Profile) -> Option<Grant> {
    match raw.map(Text::as_str) {
        None => Some(profile.grant()),
        Some(g) => Grant::parse(g).or_else(|| {
            cx.err(format!("{base}.grant"), format!("unknown grant {g:?}: expected {}", Grant::NAMES));
            None
        }),
    }
}

/// Longest static `extra_params` value, in bytes.
const MAX_PARAM_BYTES: usize = 4096;

/// `extra_params`: names that no grant or client authentication uses.
pub(super) fn extra_params(
    cx: &mut Ctx,
    base: &str,
    raw: BTreeMap<String, RawParam>,
) -> Option<Vec<(String, ParamValue)>> {
    let mut ok = true;
    let mut out = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let path = format!("{base}.extra_params.{name}");
        // Servers differ in how they read names: `Scope` (case-insensitive
        // form readers) and `scope[]` (PHP-style arrays) are `scope` too.
        let plain = name.trim_end_matches("[]").to_ascii_lowercase();
        if crate::config::profile::RESERVED_PARAMS.contains(&plain.as_str()) {
            cx.err(&path, format!("{name} is set by the grant or client authentication, not by extra_params"));
            ok = false;
        } else if name.is_empty() || name.len() > 128 || !name.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            cx.err(&path, "a parameter name is 1 to 128 printable ASCII characters");
            ok = false;
        }
        let value = match value {
            RawParam::Static(t) => {
                if t.value.len() > MAX_PARAM_BYTES {
                    cx.err(&path, format!("at most {MAX_PARAM_BYTES} bytes"));
                    ok = false;
                }
                ParamValue::Static { interpolated: !t.literal, value: t.value }
            }
            RawParam::Claim(c) => {
                if c.claim.value.is_empty() || c.claim.value.len() > 128 {
                    cx.err(format!("{path}.claim"), "a claim name is 1 to 128 characters");
                    ok = false;
                }
                ParamValue::Claim { name: c.claim.value, required: c.required.unwrap_or(false) }
            }
        };
        out.push((name, value));
    }
    ok.then_some(out)
}

/// What the grant and the provider are documented to refuse. `explicit`:
/// which of `subject_token_type` / `requested_token_type` the route set.
pub(super) fn provider_checks(cx: &mut Ctx, base: &str, x: &ExchangeConfig, profile: Profile, explicit: (bool, bool)) {
    let name = x.grant.name();
    if x.grant != Grant::TokenExchange {
        // The RFC 7523 grant has one token, the assertion.
        for (key, set) in
            [("actor", x.actor.is_some()), ("subject_token_type", explicit.0), ("requested_token_type", explicit.1)]
        {
            if set {
                cx.err(
                    format!("{base}.{key}"),
                    format!("not sent with grant {name} (the caller's token is the assertion)"),
                );
            }
        }
        if x.scope.is_empty() {
            cx.err(format!("{base}.scope"), format!("grant {name} needs scope (e.g. api://orders/.default)"));
        }
    }
    let warn = |cx: &mut Ctx, key: &str, why: &str| cx.warn(format!("{base}.{key}"), format!("{profile}: {why}"));
    match profile {
        Profile::Generic => {}
        Profile::Entra => {
            if x.grant == Grant::TokenExchange {
                warn(cx, "grant", "Entra ID does not offer RFC 8693 token exchange; use grant on_behalf_of");
            }
            if !x.resource.is_empty() {
                warn(cx, "resource", "the v2.0 endpoint refuses resource (AADSTS901002): name the API in scope, e.g. api://orders/.default");
            }
            if !x.audience.is_empty() {
                warn(cx, "audience", "Entra ID takes the target API in scope, not audience");
            }
            if x.scope.iter().any(|s| s.ends_with("/.default")) && x.scope.len() > 1 {
                warn(cx, "scope", "a /.default scope cannot be combined with other scopes (AADSTS70011)");
            }
        }
        Profile::Keycloak => {
            if !x.resource.is_empty() {
                warn(cx, "resource", "standard token exchange (v2) does not take resource: use audience (client ids)");
            }
            if x.actor.is_some() {
                warn(cx, "actor", "standard token exchange (v2) does not support delegation (actor_token)");
            }
            if x.subject_token_type != ACCESS_TOKEN_TYPE {
                warn(cx, "subject_token_type", "standard token exchange (v2) accepts access tokens only");
            }
        }
        Profile::Okta => {
            if x.audience.is_empty() {
                warn(cx, "audience", "Okta needs audience: the audience of the custom authorization server of the API");
            }
            if !x.resource.is_empty() {
                warn(cx, "resource", "Okta's token exchange takes audience, not resource");
            }
        }
        Profile::Auth0 if x.subject_token_type.starts_with(IETF_TOKEN_TYPE) => {
            // On-Behalf-Of token exchange (an Auth0 access token).
            if x.audience.is_empty() {
                warn(cx, "audience", "On-Behalf-Of token exchange needs audience: the downstream API's identifier");
            }
            if x.actor.is_some() {
                warn(cx, "actor", "On-Behalf-Of token exchange takes no actor_token (tokex, the client, is the actor)");
            }
        }
        Profile::Auth0 => {
            // Custom Token Exchange (a token type of your own).
            if auth0_reserved(&x.subject_token_type) {
                warn(cx, "subject_token_type", "Custom Token Exchange refuses token types in the urn:ietf, urn:auth0, urn:okta, auth0.com and okta.com namespaces");
            }
            if x.requested_token_type.is_some() {
                warn(cx, "requested_token_type", "Custom Token Exchange refuses requested_token_type (\"Invalid subject_token_type and requested_token_type combination\")");
            }
        }
        Profile::PingOne => {
            if !x.resource.is_empty() {
                warn(
                    cx,
                    "resource",
                    "PingOne selects the custom resource by scope and audience; resource is not documented",
                );
            }
        }
        Profile::GoogleSts => {
            if x.audience.len() != 1 || !x.audience[0].starts_with("//iam.googleapis.com/") {
                warn(cx, "audience", "the STS needs one audience: the workload identity provider's full name, //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER");
            }
            if x.scope.is_empty() {
                warn(cx, "scope", "the STS needs scope, e.g. https://www.googleapis.com/auth/cloud-platform");
            }
            if x.actor.is_some() {
                warn(cx, "actor", "the STS does not support actor_token");
            }
        }
        Profile::Zitadel => {
            if x.subject_token_type == ZITADEL_USER_ID && x.actor.is_none() {
                warn(cx, "actor", "impersonation by user id needs an actor token (the impersonator)");
            }
            if !x.resource.is_empty() {
                warn(cx, "resource", "ZITADEL refuses resource (invalid_target): use audience (project ids)");
            }
        }
    }
}

/// ZITADEL's subject token type for impersonating a user by id.
pub const ZITADEL_USER_ID: &str = "urn:zitadel:params:oauth:token-type:user_id";

fn auth0_reserved(t: &str) -> bool {
    let t = t.to_ascii_lowercase();
    [
        "urn:ietf:",
        "urn:auth0",
        "urn:okta",
        "http://auth0.com",
        "https://auth0.com",
        "http://okta.com",
        "https://okta.com",
    ]
    .iter()
    .any(|p| t.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::super::super::parse;

    fn yaml(server: &str, exchange: &str, inbound: bool) -> String {
        let inbound = if inbound {
            "inbound: { jwt: { issuer: https://as.example.com, jwks_uri: https://as.example.com/jwks, audiences: [tokex] } }\n"
        } else {
            ""
        };
        format!(
            "listen: {{ address: \"127.0.0.1:8080\" }}\n{inbound}authorization_servers:\n  idp:\n    token_endpoint: https://as.example.com/token\n    client_auth: {{ method: client_secret_post, client_id: tokex, client_secret: s }}\n{server}routes:\n  - name: r\n    upstream: http://127.0.0.1:8081\n    exchange:\n      authorization_server: idp\n{exchange}"
        )
    }

    /// Errors (or, when it parses, warnings) as `path: message` lines.
    fn report(server: &str, exchange: &str, inbound: bool) -> String {
        match parse(&yaml(server, exchange, inbound)) {
            Ok(c) => c.warnings.iter().map(|d| format!("warning: {}", d.unlined())).collect::<Vec<_>>().join("\n"),
            Err(e) => e.errors.iter().map(|d| format!("error: {}", d.unlined())).collect::<Vec<_>>().join("\n"),
        }
    }

    #[test]
    fn refuses_what_cannot_work() {
        for (server, exchange, inbound, needle) in [
            ("    profile: azure\n", "", false, "error: authorization_servers.idp.profile: unknown profile \"azure\""),
            (
                "    error_map: { invalid_request: retry }\n",
                "",
                false,
                "error: authorization_servers.idp.error_map.invalid_request: unknown outcome \"retry\"",
            ),
            (
                "    error_map: { \"bad code\": step_up }\n",
                "",
                false,
                "error: authorization_servers.idp.error_map.bad code: an error code is",
            ),
            ("", "      grant: saml\n", false, "error: routes[0].exchange.grant: unknown grant \"saml\""),
            (
                "",
                "      extra_params: { scope: x }\n",
                false,
                "error: routes[0].exchange.extra_params.scope: scope is set by the grant",
            ),
            (
                "",
                "      extra_params: { client_assertion: x }\n",
                false,
                "error: routes[0].exchange.extra_params.client_assertion:",
            ),
            (
                "",
                "      extra_params: { Scope: x }\n",
                false,
                "error: routes[0].exchange.extra_params.Scope: Scope is set by",
            ),
            (
                "",
                "      extra_params: { \"audience[]\": x }\n",
                false,
                "error: routes[0].exchange.extra_params.audience[]:",
            ),
            (
                "",
                "      extra_params: { tid: { claim: tid } }\n",
                false,
                "error: routes[0].exchange.extra_params.tid: a claim value needs inbound:",
            ),
            (
                "",
                "      extra_params: { tid: { claim: tid, optional: true } }\n",
                true,
                "error: routes[0].exchange.extra_params.tid.optional: unknown field `optional`",
            ),
            (
                "",
                "      grant: on_behalf_of\n",
                false,
                "error: routes[0].exchange.scope: grant on_behalf_of needs scope",
            ),
            (
                "",
                "      grant: jwt_bearer\n      scope: [s]\n      actor: { token: t }\n",
                false,
                "error: routes[0].exchange.actor: not sent with grant jwt_bearer",
            ),
            (
                "",
                "      grant: jwt_bearer\n      scope: [s]\n      requested_token_type: urn:x\n",
                false,
                "error: routes[0].exchange.requested_token_type: not sent",
            ),
        ] {
            let got = report(server, exchange, inbound);
            assert!(got.contains(needle), "want {needle:?}, got:\n{got}");
        }
        // Offline-free parse of the good forms.
        let ok = report(
            "    profile: entra\n",
            "      scope: [api://x/.default]\n      extra_params: { n: 5, b: true, tid: { claim: tid } }\n",
            true,
        );
        assert!(!ok.contains("error"), "{ok}");
    }

    #[test]
    fn warns_where_a_provider_is_documented_to_refuse() {
        for (server, exchange, needle) in [
            ("    profile: entra\n", "      scope: [a/.default, b]\n      resource: [https://graph.microsoft.com]\n", "routes[0].exchange.resource: entra: the v2.0 endpoint refuses resource"),
            ("    profile: entra\n", "      scope: [a/.default, b]\n", "routes[0].exchange.scope: entra: a /.default scope cannot be combined"),
            ("    profile: entra\n", "      grant: token_exchange\n", "routes[0].exchange.grant: entra: Entra ID does not offer RFC 8693"),
            ("    profile: keycloak\n", "      actor: { token: t }\n", "routes[0].exchange.actor: keycloak: standard token exchange (v2) does not support delegation"),
            ("    profile: okta\n", "", "routes[0].exchange.audience: okta: Okta needs audience"),
            ("    profile: auth0\n", "      subject_token_type: urn:acme:t\n      requested_token_type: urn:ietf:params:oauth:token-type:access_token\n", "routes[0].exchange.requested_token_type: auth0: Custom Token Exchange refuses requested_token_type"),
            ("    profile: auth0\n", "      subject_token_type: urn:auth0:mine\n", "routes[0].exchange.subject_token_type: auth0: Custom Token Exchange refuses token types in the urn:ietf"),
            ("    profile: google_sts\n", "", "authorization_servers.idp.client_auth: google_sts: the STS takes no client authentication"),
            ("    profile: google_sts\n", "", "routes[0].exchange.audience: google_sts: the STS needs one audience"),
            ("    profile: zitadel\n", "      resource: [https://x]\n", "routes[0].exchange.resource: zitadel: ZITADEL refuses resource"),
        ] {
            let got = report(server, exchange, false);
            assert!(got.contains(&format!("warning: {needle}")), "want {needle:?}, got:\n{got}");
        }
        assert_eq!(report("", "      audience: [a]\n", false), "", "generic warns about nothing");
    }

    #[test]
    fn an_error_map_entry_replaces_the_profiles_rules_for_its_code() {
        let c = parse(&yaml(
            "    profile: keycloak\n    error_map: { invalid_request: unavailable, AADSTS1: step_up }\n",
            "",
            false,
        ))
        .unwrap();
        let m = &c.servers["idp"].error_map;
        assert_eq!(m.get("invalid_request"), Some(crate::config::Outcome::Unavailable));
        assert_eq!(m.described("invalid_request", "Invalid token"), None);
        assert_eq!(
            m.described("access_denied", "Client is not within the token audience"),
            Some(crate::config::Outcome::InvalidToken)
        );
        assert_eq!(m.get("AADSTS1"), Some(crate::config::Outcome::StepUp));
    }
}
