//! Callers' proofs (`inbound.dpop`): each check with a good and a bad case,
//! a replayed proof, the binding from a verified JWT or an introspection
//! answer, Bearer refusals, and the challenges.

use common::jwt::{claims, jwt_inbound, ready, rejections, EcSigner, JwksServer};
use http::header::WWW_AUTHENTICATE;
use tokex::dpop::ProofKey;

use super::*;

struct Caller {
    key: ProofKey,
}

impl Caller {
    fn new() -> Self {
        Caller { key: ProofKey::generate(jsonwebtoken::Algorithm::ES256).unwrap() }
    }

    fn proof(&self, htm: &str, htu: &str, token: &str) -> String {
        self.key.proof(htm, htu, Some(&dpop::ath(token)), None).unwrap()
    }
}

struct Fixture {
    gw: TestGateway,
    signer: EcSigner,
    auth_server: RecordingAs,
    _jwks: JwksServer,
}

impl Fixture {
    /// `inbound.jwt` (ES256 tokens of `signer`) with `dpop` lines under `inbound:`.
    async fn start(dpop: &str) -> Self {
        let signer = EcSigner::new("k1");
        let jwks = JwksServer::start(vec![signer.jwk.clone()]).await;
        let auth_server = RecordingAs::start().await;
        let backend = echo_backend().await;
        let yaml = jwt_inbound(&jwks.uri(), "[ES256]", dpop)
            + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, ""));
        let gw = TestGateway::start(&yaml).await;
        assert!(ready(&gw, Duration::from_secs(5)).await);
        Fixture { gw, signer, auth_server, _jwks: jwks }
    }

    /// A caller token, bound to `jkt` when given.
    fn token(&self, jkt: Option<&str>) -> String {
        let extra = match jkt {
            Some(j) => json!({"cnf": {"jkt": j}}),
            None => json!({}),
        };
        self.signer.token(&claims(extra))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gw.url)
    }

    async fn call(&self, method: &str, path: &str, auth: &str, proofs: &[&str]) -> (u16, Vec<String>, String) {
        let mut req = client().request(method.parse().unwrap(), self.url(path)).header("authorization", auth);
        for p in proofs {
            req = req.header("dpop", *p);
        }
        let resp = req.send().await.unwrap();
        let challenges =
            resp.headers().get_all(WWW_AUTHENTICATE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        (resp.status().as_u16(), challenges, resp.text().await.unwrap())
    }
}

#[tokio::test]
async fn a_good_proof_passes_and_every_bad_one_is_refused() {
    let fx = Fixture::start("  dpop: require\n").await;
    let caller = Caller::new();
    let token = fx.token(Some(caller.key.jkt()));
    let auth = format!("DPoP {token}");
    let htu = fx.url("/orders/1");

    let good = caller.proof("GET", &htu, &token);
    let (status, _, body) = fx.call("GET", "/orders/1?page=2", &auth, &[&good]).await;
    assert_eq!(status, 200, "{body}");
    let echo = echoed(&body);
    assert_eq!(seen(&echo, "authorization"), ["Bearer exchanged-1"]);
    assert!(seen(&echo, "dpop").is_empty(), "the caller's proof stays at the gateway");
    assert!(!body.contains(&token), "nor does the caller's token reach the backend");

    let refused_proof = |(status, challenges, _): (u16, Vec<String>, String), what: &str| {
        assert_eq!(status, 401, "{what}");
        assert_eq!(challenges.len(), 1, "{what}: {challenges:?}");
        assert!(challenges[0].starts_with("DPoP "), "{what}: {challenges:?}");
        assert!(challenges[0].contains("error=\"invalid_dpop_proof\""), "{what}: {challenges:?}");
        assert!(challenges[0].contains("algs=\"ES256 EdDSA\""), "{what}: {challenges:?}");
    };
    refused_proof(fx.call("GET", "/orders/1", &auth, &[&good]).await, "replayed");
    refused_proof(fx.call("GET", "/orders/1", &auth, &[]).await, "no proof");
    let (a, b) = (caller.proof("GET", &htu, &token), caller.proof("GET", &htu, &token));
    refused_proof(fx.call("GET", "/orders/1", &auth, &[&a, &b]).await, "two proofs");
    refused_proof(fx.call("GET", "/orders/1", &auth, &[&caller.proof("POST", &htu, &token)]).await, "htm");
    refused_proof(
        fx.call("GET", "/orders/1", &auth, &[&caller.proof("GET", &fx.url("/orders/2"), &token)]).await,
        "htu",
    );
    refused_proof(
        fx.call("GET", "/orders/1", &auth, &[&caller.proof("GET", &htu, "another-token")]).await,
        "ath of another token",
    );
    refused_proof(
        fx.call("GET", "/orders/1", &auth, &[&caller.key.proof("GET", &htu, None, None).unwrap()]).await,
        "no ath",
    );
    refused_proof(fx.call("GET", "/orders/1", &auth, &["not.a.proof"]).await, "garbage");
    assert_eq!(fx.auth_server.count(), 1, "refused proofs never reach the authorization server");

    // A token bound to another key, an unbound token sent as DPoP, a Bearer
    // token where DPoP is required: invalid_token, DPoP challenge.
    let other = Caller::new();
    let theirs = fx.token(Some(other.key.jkt()));
    let (status, challenges, _) =
        fx.call("GET", "/orders/1", &format!("DPoP {theirs}"), &[&caller.proof("GET", &htu, &theirs)]).await;
    assert_eq!(status, 401);
    assert!(challenges[0].starts_with("DPoP ") && challenges[0].contains("error=\"invalid_token\""), "{challenges:?}");
    let unbound = fx.token(None);
    let (status, _, _) =
        fx.call("GET", "/orders/1", &format!("DPoP {unbound}"), &[&caller.proof("GET", &htu, &unbound)]).await;
    assert_eq!(status, 401);
    let (status, challenges, _) = fx.call("GET", "/orders/1", &format!("Bearer {unbound}"), &[]).await;
    assert_eq!(status, 401);
    assert!(challenges[0].starts_with("DPoP ") && challenges[0].contains("algs="), "require: {challenges:?}");
    let (status, challenges, _) = fx.call("GET", "/orders/1", "Basic eDp5", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(challenges, ["DPoP realm=\"tokex\", algs=\"ES256 EdDSA\""]);

    let m = fx.gw.metrics().await;
    assert_eq!(rejections(&m, "dpop_replayed"), 1);
    assert_eq!(rejections(&m, "dpop_htu"), 1);
    assert_eq!(rejections(&m, "dpop_not_bound"), 2);
    assert_eq!(rejections(&m, "dpop_required"), 1);
}

#[tokio::test]
async fn allow_takes_bearer_but_not_a_bound_token_as_bearer() {
    let fx = Fixture::start("  dpop: allow\n").await;
    let caller = Caller::new();
    let unbound = fx.token(None);
    assert_eq!(fx.call("GET", "/a", &format!("Bearer {unbound}"), &[]).await.0, 200);
    let bound = fx.token(Some(caller.key.jkt()));
    let (status, challenges, _) = fx.call("GET", "/a", &format!("Bearer {bound}"), &[]).await;
    assert_eq!(status, 401, "a stolen DPoP-bound token is no bearer token");
    assert_eq!(challenges.len(), 2, "Bearer, and DPoP beside it: {challenges:?}");
    assert!(challenges[0].starts_with("Bearer ") && challenges[1].starts_with("DPoP "));
    let proof = caller.proof("GET", &fx.url("/a"), &bound);
    assert_eq!(fx.call("GET", "/a", &format!("DPoP {bound}"), &[&proof]).await.0, 200);
    // An expired token with a good proof: the token check still decides.
    let expired = fx.signer.token(&claims(json!({"cnf": {"jkt": caller.key.jkt()}, "exp": now() - 600})));
    let proof = caller.proof("GET", &fx.url("/a"), &expired);
    let (status, challenges, _) = fx.call("GET", "/a", &format!("DPoP {expired}"), &[&proof]).await;
    assert_eq!(status, 401);
    assert!(challenges[0].starts_with("DPoP ") && challenges[0].contains("invalid_token"), "{challenges:?}");
}

#[tokio::test]
async fn the_binding_can_come_from_introspection() {
    let caller = Caller::new();
    let jkt = caller.key.jkt().to_owned();
    let auth_server = RecordingAs::start().await;
    auth_server.set(move |req, n| {
        if req.path == "/introspect" {
            return Reply::Json(200, json!({"active": true, "sub": "alice", "cnf": {"jkt": jkt}}));
        }
        issue(n)
    });
    let backend = echo_backend().await;
    let yaml = format!(
        "inbound:\n  dpop: require\n  introspection:\n    endpoint: http://{}/introspect\n    client_auth: {BASIC_AUTH}\n",
        auth_server.addr
    ) + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&yaml).await;
    let url = format!("{}/o", gw.url);
    let send = |token: &'static str, proof: String| {
        let url = url.clone();
        async move {
            client()
                .get(&url)
                .header("authorization", format!("DPoP {token}"))
                .header("dpop", proof)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send("opaque-token", caller.proof("GET", &url, "opaque-token")).await, 200);
    let stranger = Caller::new();
    assert_eq!(send("opaque-token", stranger.proof("GET", &url, "opaque-token")).await, 401, "another key");
}

#[tokio::test]
async fn origins_name_where_proofs_may_point() {
    let caller = Caller::new();
    let fx = Fixture::start("  dpop: require\n  dpop_proof: { origins: [\"https://api.example.com\"] }\n").await;
    let token = fx.token(Some(caller.key.jkt()));
    let send = |proof: String, host: Option<&'static str>| {
        let mut req =
            client().get(fx.url("/orders")).header("authorization", format!("DPoP {token}")).header("dpop", proof);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(caller.proof("GET", "https://api.example.com/orders", &token), None).await, 200);
    // Whatever Host the caller sends, a proof for another server is refused.
    assert_eq!(send(caller.proof("GET", "https://rs-b.example/orders", &token), Some("rs-b.example")).await, 401);
    assert_eq!(send(caller.proof("GET", &fx.url("/orders"), &token), None).await, 401, "not a listed origin");
    assert_eq!(send(caller.proof("GET", "https://api.example.com/other", &token), None).await, 401, "the path counts");
}

#[tokio::test]
async fn forwarded_scheme_and_host_count_only_when_trusted() {
    let caller = Caller::new();
    for trusted in [false, true] {
        let extra = format!("  dpop: require\n  dpop_proof: {{ trust_forwarded: {trusted} }}\n");
        let fx = Fixture::start(&extra).await;
        let token = fx.token(Some(caller.key.jkt()));
        let proof = caller.proof("GET", "https://api.example.com/orders", &token);
        let resp = client()
            .get(fx.url("/orders"))
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "api.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), if trusted { 200 } else { 401 }, "trusted: {trusted}");
    }
}

#[tokio::test]
async fn proofs_for_refused_tokens_are_not_remembered_and_cannot_fill_the_cache() {
    let fx = Fixture::start("  dpop: allow\n  dpop_proof: { replay_cache_entries: 1000 }\n").await;
    let attacker = Caller::new();
    let htu = fx.url("/a");
    // The same proof with a token the check refuses, twice: refused for the
    // token both times, never as a replay (it was not remembered).
    let proof = attacker.proof("GET", &htu, "garbage-0");
    for _ in 0..2 {
        let (status, challenges, _) = fx.call("GET", "/a", "DPoP garbage-0", &[&proof]).await;
        assert_eq!(status, 401);
        assert!(challenges[0].contains("invalid_token"), "{challenges:?}");
    }
    // More proofs for refused tokens than the cache holds...
    for i in 1..=1000 {
        let token = format!("garbage-{i}");
        let proof = attacker.proof("GET", &htu, &token);
        assert_eq!(fx.call("GET", "/a", &format!("DPoP {token}"), &[&proof]).await.0, 401);
    }
    // ...and a real caller still gets in, once per proof.
    let caller = Caller::new();
    let token = fx.token(Some(caller.key.jkt()));
    let proof = caller.proof("GET", &htu, &token);
    assert_eq!(fx.call("GET", "/a", &format!("DPoP {token}"), &[&proof]).await.0, 200);
    assert_eq!(fx.call("GET", "/a", &format!("DPoP {token}"), &[&proof]).await.0, 401);
    let m = fx.gw.metrics().await;
    assert_eq!(rejections(&m, "dpop_replayed"), 1);
    assert_eq!(rejections(&m, "dpop_replay_full"), 0);
}

#[tokio::test]
async fn a_bound_token_is_no_bearer_token_even_with_dpop_off() {
    // inbound.jwt without dpop: tokex takes no DPoP, and a stolen bound token
    // is not accepted as Bearer either.
    let fx = Fixture::start("").await;
    let key = Caller::new();
    let (status, challenges, _) = fx.call("GET", "/a", &format!("Bearer {}", fx.token(Some(key.key.jkt()))), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(challenges, [common::jwt::INVALID_TOKEN], "no DPoP challenge: tokex takes no DPoP here");
    assert_eq!(fx.auth_server.count(), 0, "never exchanged");
    assert_eq!(fx.call("GET", "/a", &format!("Bearer {}", fx.token(None)), &[]).await.0, 200);

    // Another kind of confirmation binds as well (allow).
    let fx = Fixture::start("  dpop: allow\n").await;
    let x5t = fx.signer.token(&claims(json!({"cnf": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}})));
    assert_eq!(fx.call("GET", "/a", &format!("Bearer {x5t}"), &[]).await.0, 401);
    let proof = key.proof("GET", &fx.url("/a"), &x5t);
    assert_eq!(fx.call("GET", "/a", &format!("DPoP {x5t}"), &[&proof]).await.0, 401);
}

#[tokio::test]
async fn a_token_cached_for_a_dpop_caller_is_not_served_to_a_bearer_one() {
    // A DPoP caller's exchange is cached; then inbound.dpop is turned off by
    // a reload (or another replica runs with it off): the cached token is
    // still only for callers that prove possession.
    let signer = EcSigner::new("k1");
    let jwks = JwksServer::start(vec![signer.jwk.clone()]).await;
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, ""));
    let with = |dpop: &str| jwt_inbound(&jwks.uri(), "[ES256]", dpop) + &routes;
    let gw = TestGateway::start(&with("  dpop: allow\n")).await;
    assert!(ready(&gw, Duration::from_secs(5)).await);
    let caller = Caller::new();
    let token = signer.token(&claims(json!({"cnf": {"jkt": caller.key.jkt()}})));
    let url = format!("{}/a", gw.url);
    let proof = caller.proof("GET", &url, &token);
    let resp = client().get(&url).header("authorization", format!("DPoP {token}")).header("dpop", proof).send().await;
    assert_eq!(resp.unwrap().status(), 200);
    assert_eq!(auth_server.count(), 1);

    let file = common::process::temp_dir("dpop-off").join("tokex.yaml");
    std::fs::write(&file, format!("listen: {{ address: \"127.0.0.1:0\" }}\n{}", with(""))).unwrap();
    assert!(gw.running.reload(&file, "test"));
    assert_eq!(get(&url, Some(&token)).await.0, 401, "the cached bound token is not a bearer token's");
    assert_eq!(auth_server.count(), 1, "nor exchanged again");
}
