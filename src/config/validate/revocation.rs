//! `revocation.ssf:` the Shared Signals push endpoint (RFC 8935), and the
//! warnings about revocation that `check` gives.

use super::*;

/// Where the push endpoint is when `path:` is not set (SPEC §5).
pub const DEFAULT_SSF_PATH: &str = "/.well-known/ssf/push";

pub(super) fn ssf(cx: &mut Ctx, s: RawSsf, servers: &BTreeMap<String, AuthServerConfig>) -> Option<SsfConfig> {
    const BASE: &str = "revocation.ssf";
    let path = s.path.as_ref().map_or_else(|| DEFAULT_SSF_PATH.to_owned(), |p| p.value.clone());
    let path_ok = path.starts_with('/')
        && path.len() > 1
        && !path.contains(['?', '#', '%', ';', '\\'])
        && !path.split('/').any(|seg| seg == "." || seg == "..")
        && !path.contains("//")
        && path.bytes().all(|b| b.is_ascii_graphic());
    if !path_ok {
        cx.err(
            format!("{BASE}.path"),
            "an absolute path of visible ASCII, without query, fragment, percent-encoding, `;`, `\\`, `//` or dot segments",
        );
    }
    if !cx.proxy_listener {
        cx.err(BASE, "needs listen: (the push endpoint is on the main listener)");
    }
    let audience = match s.audience {
        Some(a) if !a.value.is_empty() => Some(a),
        _ => {
            cx.err(format!("{BASE}.audience"), "required: the aud the transmitter puts in every SET for this receiver");
            None
        }
    };
    let max_age = s.max_age.map_or(Duration::from_secs(300), |d| d.0);
    if max_age < Duration::from_secs(10) || max_age > Duration::from_secs(24 * 3600) {
        cx.err(format!("{BASE}.max_age"), "between 10s and 24h");
    }
    let max_per_second = s.max_per_second.unwrap_or(100);
    if !(1..=100_000).contains(&max_per_second) {
        cx.err(format!("{BASE}.max_per_second"), "between 1 and 100000");
    }
    let raw = RawJwt {
        issuer: s.issuer,
        jwks_uri: s.jwks_uri,
        authorization_server: s.authorization_server,
        audiences: audience.into_iter().collect(),
        algorithms: s.algorithms,
        leeway: s.leeway,
        // RFC 8417 §2.3 / SSF §10: explicit typing keeps an access token or
        // ID token of the same issuer from being taken for a SET.
        require_typ: Some(Text { value: "secevent+jwt".into(), literal: true, unresolved: false }),
        max_token_bytes: Some(16 * 1024),
        jwks_refresh_min: None,
        jwks_refresh_max: None,
        unknown_kid_cooldown: None,
        ca_file: s.ca_file,
        timeout: s.timeout,
    };
    let jwt = inbound::jwt_at(cx, BASE, raw, servers)?;
    (path_ok && max_age >= Duration::from_secs(10)).then_some(SsfConfig { path, jwt, max_age, max_per_second })
}

/// The warnings that tie revocation to the rest of the configuration.
pub(super) fn warnings(cx: &mut Ctx, admin: bool, admin_token: bool, ssf: Option<&SsfConfig>, routes: &[RouteConfig]) {
    if admin && !admin_token {
        cx.warn(
            "admin.token_file",
            "not set: POST /cache/purge is disabled (404); set it to purge cached tokens by subject, route or token",
        );
    }
    if let Some(ssf) = ssf {
        if let Some(r) = routes.iter().find(|r| r.matcher.path.covers(&PathMatch::Exact(ssf.path.clone()))) {
            cx.warn(
                "revocation.ssf.path",
                format!("route {:?} matches {} too: the push endpoint answers there first", r.name, ssf.path),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::parse;

    const BASE: &str = "listen: { address: \"127.0.0.1:0\" }\nadmin: { address: \"127.0.0.1:0\" }\nroutes: [{ name: r, auth: none, upstream: \"http://127.0.0.1:1\" }]\n";

    fn check(extra: &str) -> Result<Vec<String>, String> {
        match parse(&format!("{BASE}{extra}")) {
            Ok(c) => Ok(c.warnings.iter().map(ToString::to_string).collect()),
            Err(e) => Err(e.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")),
        }
    }

    const SSF: &str =
        "revocation:\n  ssf:\n    issuer: https://idp\n    jwks_uri: https://idp/jwks\n    audience: tokex\n";

    #[test]
    fn a_shared_signals_receiver() {
        let c = parse(&format!("{BASE}{SSF}")).unwrap();
        let ssf = c.ssf.unwrap();
        assert_eq!(ssf.path, "/.well-known/ssf/push");
        assert_eq!(ssf.jwt.require_typ.as_deref(), Some("secevent+jwt"));
        assert_eq!(ssf.jwt.audiences, ["tokex"]);
        assert_eq!((ssf.max_age.as_secs(), ssf.max_per_second), (300, 100));
        for (extra, at) in [
            ("    path: relative\n", "revocation.ssf.path"),
            ("    path: /a/../b\n", "revocation.ssf.path"),
            ("    path: /a?b\n", "revocation.ssf.path"),
            ("    path: /a%2f\n", "revocation.ssf.path"),
            ("    max_age: 1s\n", "revocation.ssf.max_age"),
            ("    max_per_second: 0\n", "revocation.ssf.max_per_second"),
            ("    algorithms: [HS256]\n", "revocation.ssf.algorithms[0]"),
        ] {
            let e = check(&format!("{SSF}{extra}")).unwrap_err();
            assert!(e.contains(at), "{extra}: {e}");
        }
        let no_aud = SSF.replace("    audience: tokex\n", "");
        assert!(check(&no_aud).unwrap_err().contains("revocation.ssf.audience"));
        let no_iss = SSF.replace("    issuer: https://idp\n", "");
        assert!(check(&no_iss).unwrap_err().contains("revocation.ssf.issuer"));
        // The push endpoint is on the main listener.
        let check_only = format!(
            "authz: {{ address: \"127.0.0.1:0\", dialect: envoy }}\nroutes: [{{ name: r, auth: none }}]\n{SSF}"
        );
        assert!(parse(&check_only).unwrap_err().to_string().contains("needs listen:"));
        // A route that covers the path is warned about.
        let shadow = format!("listen: {{ address: \"127.0.0.1:0\" }}\nroutes: [{{ name: r, auth: none, upstream: \"http://127.0.0.1:1\" }}]\n{SSF}");
        let warnings = parse(&shadow).unwrap().warnings;
        assert!(warnings.iter().any(|w| w.path == "revocation.ssf.path"), "{warnings:?}");
    }

    #[test]
    fn the_admin_token_and_the_revocation_endpoint() {
        let w = check("").unwrap();
        assert!(w.iter().any(|w| w.contains("admin.token_file") && w.contains("404")), "{w:?}");
        let missing = BASE.replace(
            "admin: { address: \"127.0.0.1:0\" }",
            "admin: { address: \"127.0.0.1:0\", token_file: /nonexistent/t }",
        );
        let e = parse(&missing).unwrap_err().to_string();
        assert!(e.contains("admin.token_file"), "{e}");
        let server = "authorization_servers:\n  corp:\n    token_endpoint: https://as/token\n    revocation_endpoint: ";
        let c = parse(&format!("{BASE}{server}https://as/revoke\n")).unwrap();
        assert_eq!(c.servers["corp"].revocation_endpoint.as_ref().unwrap().as_str(), "https://as/revoke");
        assert!(check(&format!("{server}ftp://as/revoke\n")).unwrap_err().contains("revocation_endpoint"));
    }
}
