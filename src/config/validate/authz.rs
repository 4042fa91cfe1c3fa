//! `authz:` the check listeners (SPEC §8), and the rule that no two
//! listeners share a port.

use std::net::IpAddr;

use super::*;

pub(super) fn authz(cx: &mut Ctx, a: RawAuthz) -> Option<AuthzConfig> {
    let address = a.address.as_ref().and_then(|t| socket_addr(cx, "authz.address", t));
    let grpc_address = a.grpc_address.as_ref().and_then(|t| socket_addr(cx, "authz.grpc_address", t));
    if a.address.is_none() && a.grpc_address.is_none() {
        cx.err("authz", "needs address: (HTTP checks, with dialect:) or grpc_address: (Envoy gRPC ext_authz), or both");
    }
    let dialect = match a.dialect.as_ref().map(|d| d.as_str()) {
        Some("envoy") => Some(Dialect::Envoy),
        Some("nginx") => Some(Dialect::Nginx),
        Some("traefik") => Some(Dialect::Traefik),
        Some(other) => {
            cx.err("authz.dialect", format!("unknown dialect {other:?}: expected envoy, nginx or traefik"));
            None
        }
        // Only the gRPC listener: its requests say where each part is.
        None if a.address.is_none() => Some(Dialect::Envoy),
        None => {
            cx.err(
                "authz.dialect",
                "required with address: envoy, nginx or traefik (the front proxy in use; it is never guessed from \
                 the headers, which a caller can send too)",
            );
            None
        }
    };
    let path_prefix = match (&a.path_prefix, dialect) {
        (None, _) => None,
        (Some(p), Some(Dialect::Envoy)) => {
            let v = p.as_str();
            let ok = v.starts_with('/') && v.len() > 1 && !v.ends_with('/') && !v.contains(['?', '#', '%']);
            if !ok {
                cx.err(
                    "authz.path_prefix",
                    format!("{:?} must start with '/', not end with '/', and hold no query, fragment or '%'", p.value),
                );
            }
            Some(v.to_owned())
        }
        (Some(_), Some(d)) => {
            cx.err(
                "authz.path_prefix",
                format!(
                    "is Envoy's http_service.path_prefix; under dialect {} the original URI comes in a header",
                    d.name()
                ),
            );
            None
        }
        (Some(_), None) => None,
    };
    // An address that did not parse has its error.
    if address.is_none() && a.address.is_some() || grpc_address.is_none() && a.grpc_address.is_some() {
        return None;
    }
    Some(AuthzConfig { address, dialect: dialect?, grpc_address, path_prefix })
}

/// Every listener gets a port of its own.
pub(super) fn no_shared_ports(
    cx: &mut Ctx,
    proxy: Option<(&'static str, SocketAddr)>,
    admin: Option<SocketAddr>,
    authz: Option<&AuthzConfig>,
) {
    let listeners: Vec<(&str, SocketAddr)> = [
        proxy,
        admin.map(|a| ("admin.address", a)),
        authz.and_then(|z| z.address).map(|a| ("authz.address", a)),
        authz.and_then(|z| z.grpc_address).map(|a| ("authz.grpc_address", a)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (i, (path, addr)) in listeners.iter().enumerate() {
        if let Some((earlier, taken)) = listeners[..i].iter().find(|(_, other)| binds_overlap(*other, *addr)) {
            cx.err(*path, format!("{addr} takes the port of {earlier} {taken}: give each listener a port of its own"));
        }
    }
}

/// Two listeners that cannot both bind: the same port on the same address,
/// or on a wildcard of the same family; `[::]` is dual-stack (Linux's
/// default) and also takes the IPv4 port. Port 0 is always free.
pub(super) fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    match (x, y) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            x == y || x.is_unspecified() || y.is_unspecified()
        }
        (IpAddr::V6(v6), IpAddr::V4(_)) | (IpAddr::V4(_), IpAddr::V6(v6)) => v6.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::parse;

    fn errors(yaml: &str) -> String {
        parse(yaml).unwrap_err().errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    }

    const ROUTES: &str = "routes: [{ name: r, auth: none }]\n";

    #[test]
    fn listeners_that_cannot_both_bind() {
        let sa = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        for (a, b, clash) in [
            ("0.0.0.0:8080", "0.0.0.0:8080", true),
            ("0.0.0.0:8080", "127.0.0.1:8080", true),
            ("127.0.0.1:8080", "127.0.0.2:8080", false),
            ("127.0.0.1:8080", "127.0.0.1:9901", false),
            ("127.0.0.1:8080", "[::ffff:127.0.0.1]:8080", true),
            ("0.0.0.0:8080", "[::1]:8080", false),
            ("[::]:8080", "127.0.0.1:8080", true),
            ("[::]:8080", "[::1]:8080", true),
            ("[::1]:8080", "[::2]:8080", false),
            ("127.0.0.1:0", "127.0.0.1:0", false),
        ] {
            assert_eq!(super::binds_overlap(sa(a), sa(b)), clash, "{a} {b}");
            assert_eq!(super::binds_overlap(sa(b), sa(a)), clash, "{b} {a}");
        }
        let e = errors(&format!(
            "listen: {{ address: \"0.0.0.0:9191\" }}\nauthz: {{ address: \"127.0.0.1:9191\", dialect: envoy }}\n{ROUTES}"
        ));
        assert!(e.contains("authz.address (line 2): 127.0.0.1:9191 takes the port of listen.address"), "{e}");
        let e = errors(&format!(
            "authz: {{ address: \"127.0.0.1:9191\", grpc_address: \"127.0.0.1:9191\", dialect: nginx }}\n{ROUTES}"
        ));
        assert!(e.contains("127.0.0.1:9191 takes the port of authz.address"), "{e}");
    }

    #[test]
    fn a_check_only_deployment_needs_no_listen_and_no_upstream() {
        let c = parse(&format!("authz: {{ address: \"127.0.0.1:9191\", dialect: traefik }}\n{ROUTES}")).unwrap();
        assert!(c.listen.is_none() && c.routes[0].upstream.is_none());
        let z = c.authz.unwrap();
        assert_eq!(
            (z.address.map(|a| a.port()), z.dialect, z.grpc_address),
            (Some(9191), super::Dialect::Traefik, None)
        );
        // gRPC alone: the dialect is Envoy's own.
        let c = parse(&format!("authz: {{ grpc_address: \"127.0.0.1:9192\" }}\n{ROUTES}")).unwrap();
        assert_eq!(c.authz.unwrap().grpc_address.map(|a| a.port()), Some(9192));
        // With the proxy listener, every route needs its upstream.
        let e = errors(&format!(
            "listen: {{ address: \"127.0.0.1:8080\" }}\nauthz: {{ address: \"127.0.0.1:9191\", dialect: envoy }}\n{ROUTES}"
        ));
        assert!(e.contains("routes[0].upstream (line 3): required"), "{e}");
        assert!(errors(ROUTES).contains("listen: required (or authz:"), "{}", errors(ROUTES));
    }

    #[test]
    fn the_dialect_is_configured_never_guessed() {
        let e = errors(&format!("authz: {{ address: \"127.0.0.1:9191\" }}\n{ROUTES}"));
        assert!(e.contains("authz.dialect (line 1): required with address"), "{e}");
        let e = errors(&format!("authz: {{ address: \"127.0.0.1:9191\", dialect: istio }}\n{ROUTES}"));
        assert!(e.contains("unknown dialect \"istio\""), "{e}");
        let e = errors(&format!("authz: {{}}\n{ROUTES}"));
        assert!(e.contains("needs address: (HTTP checks"), "{e}");
    }

    #[test]
    fn path_prefix_is_envoys_and_well_formed() {
        let ok =
            parse(&format!("authz: {{ address: \"127.0.0.1:9191\", dialect: envoy, path_prefix: /check }}\n{ROUTES}"))
                .unwrap();
        assert_eq!(ok.authz.unwrap().path_prefix.as_deref(), Some("/check"));
        for bad in ["check", "/check/", "/", "/a?b", "/a%2f"] {
            let e = errors(&format!(
                "authz: {{ address: \"127.0.0.1:9191\", dialect: envoy, path_prefix: \"{bad}\" }}\n{ROUTES}"
            ));
            assert!(e.contains("authz.path_prefix"), "{bad}: {e}");
        }
        let e = errors(&format!("authz: {{ address: \"127.0.0.1:9191\", dialect: nginx, path_prefix: /x }}\n{ROUTES}"));
        assert!(e.contains("is Envoy's http_service.path_prefix"), "{e}");
    }
}
