//! The Shared Signals push endpoint: a SET signed by the configured
//! transmitter purges the subject's entries at once (`202`); forged,
//! replayed, mis-addressed, stale and mistyped ones get `400` and purge
//! nothing; a flood is rate-limited and costs no JWKS fetch per SET.

use common::jwt::{b64, jws, metric, EcSigner, JwksServer};

use super::*;

const TRANSMITTER: &str = "https://idp.example";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const PUSH: &str = "/.well-known/ssf/push";

struct Fixture {
    auth_server: RecordingAs,
    gw: TestGateway,
    signer: EcSigner,
    jwks: JwksServer,
}

async fn fixture(extra: &str) -> Fixture {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let signer = EcSigner::new("ssf-1");
    let jwks = JwksServer::start(vec![signer.jwk.clone()]).await;
    let ssf = format!(
        "revocation:\n  ssf:\n    issuer: {TRANSMITTER}\n    jwks_uri: {}\n    audience: tokex\n    algorithms: [ES256]\n{extra}",
        jwks.uri()
    );
    let gw = TestGateway::start(&config(&auth_server, backend, "", &ssf)).await;
    Fixture { auth_server, gw, signer, jwks }
}

/// Valid SET claims for `sub`; `extra` overrides (`null` removes).
fn set_claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({
        "iss": TRANSMITTER, "aud": "tokex", "iat": now(), "jti": format!("{:x}", fastrand::u128(..)),
        "sub_id": {"format": "iss_sub", "iss": TRANSMITTER, "sub": sub},
        "events": {SESSION_REVOKED: {"event_timestamp": now()}},
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn header(signer: &EcSigner) -> Value {
    json!({"alg": "ES256", "kid": signer.kid, "typ": "secevent+jwt"})
}

impl Fixture {
    fn set(&self, claims: &Value) -> String {
        jws(&header(&self.signer), claims, |m| self.signer.sign(m))
    }

    async fn push_as(&self, body: &str, content_type: &str) -> (u16, Value) {
        let resp = client()
            .post(format!("{}{PUSH}", self.gw.url))
            .header("content-type", content_type)
            .header("accept", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null))
    }

    async fn push(&self, set: &str) -> (u16, Value) {
        self.push_as(set, "application/secevent+jwt").await
    }
}

#[tokio::test]
async fn a_signed_set_purges_the_subject_within_a_second() {
    let f = fixture("").await;
    let (alice, bob) = (subject("alice"), subject("bob"));
    call(&f.gw, "/orders/1", &alice).await;
    call(&f.gw, "/billing/1", &alice).await;
    call(&f.gw, "/orders/1", &bob).await;
    assert_eq!(exchanges(&f.auth_server), 3);

    let started = Instant::now();
    let (status, body) = f.push(&f.set(&set_claims("alice", json!({})))).await;
    let answered = started.elapsed();
    assert_eq!(status, 202, "{body}");
    // Purged before the answer: the next request re-exchanges.
    call(&f.gw, "/orders/1", &alice).await;
    let took = started.elapsed();
    assert_eq!(exchanges(&f.auth_server), 4, "alice re-exchanged");
    assert!(took < Duration::from_secs(1), "event to purge: {took:?}");
    eprintln!("SSF push answered in {answered:?}; event to re-exchange {took:?}");
    call(&f.gw, "/orders/1", &bob).await;
    assert_eq!(exchanges(&f.auth_server), 4, "bob untouched");
    call(&f.gw, "/billing/1", &alice).await;
    assert_eq!(exchanges(&f.auth_server), 5, "every route's entry of alice");

    // The other subject formats and RISC events.
    let events = [
        ("account-disabled", "https://schemas.openid.net/secevent/risc/event-type/account-disabled"),
        ("tokens-revoked", "https://schemas.openid.net/secevent/risc/event-type/tokens-revoked"),
        ("credential-change", "https://schemas.openid.net/secevent/caep/event-type/credential-change"),
        ("account-purged", "https://schemas.openid.net/secevent/risc/event-type/account-purged"),
    ];
    let subjects = [
        json!({"format": "email", "email": "alice@example.com"}),
        json!({"format": "opaque", "id": "alice"}),
        json!({"format": "complex", "user": {"format": "iss_sub", "iss": TRANSMITTER, "sub": "alice"}}),
        json!({"format": "aliases", "identifiers": [{"format": "email", "email": "alice@EXAMPLE.com"}]}),
    ];
    for ((name, uri), sub_id) in events.iter().zip(subjects) {
        let before = exchanges(&f.auth_server);
        let claims = set_claims("alice", json!({"sub_id": sub_id, "events": {*uri: {}}}));
        let (status, body) = f.push(&f.set(&claims)).await;
        assert_eq!(status, 202, "{name}: {body}");
        call(&f.gw, "/orders/1", &alice).await;
        assert_eq!(exchanges(&f.auth_server), before + 1, "{name} purged alice");
    }
    let metrics = f.gw.metrics().await;
    assert_eq!(metric(&metrics, "tokex_security_events_total{result=\"accepted\"}"), 5);
    assert!(metric(&metrics, "tokex_cache_purged_total{source=\"ssf\"}") >= 6);
}

#[tokio::test]
async fn forged_replayed_misaddressed_and_stale_sets_purge_nothing() {
    let f = fixture("").await;
    let alice = subject("alice");
    call(&f.gw, "/orders/1", &alice).await;
    let good = f.set(&set_claims("alice", json!({})));
    let other_key = EcSigner::new("ssf-1");
    let forged = jws(&header(&f.signer), &set_claims("alice", json!({})), |m| other_key.sign(m));
    let unknown_kid =
        jws(&json!({"alg": "ES256", "kid": "nope", "typ": "secevent+jwt"}), &set_claims("alice", json!({})), |m| {
            other_key.sign(m)
        });
    let access_token_typ =
        jws(&json!({"alg": "ES256", "kid": "ssf-1", "typ": "at+jwt"}), &set_claims("alice", json!({})), |m| {
            f.signer.sign(m)
        });
    let no_typ = jws(&json!({"alg": "ES256", "kid": "ssf-1"}), &set_claims("alice", json!({})), |m| f.signer.sign(m));
    let none_alg = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "secevent+jwt"}).to_string()),
        b64(set_claims("alice", json!({})).to_string())
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("forged signature", forged, "invalid_key"),
        ("unknown kid", unknown_kid, "invalid_key"),
        ("alg none", none_alg, "invalid_key"),
        ("an access token's typ", access_token_typ, "invalid_request"),
        ("no typ", no_typ, "invalid_request"),
        ("wrong audience", f.set(&set_claims("alice", json!({"aud": "someone-else"}))), "invalid_audience"),
        ("wrong issuer", f.set(&set_claims("alice", json!({"iss": "https://evil.example"}))), "invalid_issuer"),
        ("stale", f.set(&set_claims("alice", json!({"iat": now() - 3600}))), "invalid_request"),
        ("from the future", f.set(&set_claims("alice", json!({"iat": now() + 3600}))), "invalid_request"),
        ("expired", f.set(&set_claims("alice", json!({"exp": now() - 120}))), "invalid_request"),
        ("no jti", f.set(&set_claims("alice", json!({"jti": null}))), "invalid_request"),
        ("no iat", f.set(&set_claims("alice", json!({"iat": null}))), "invalid_request"),
        ("no events", f.set(&set_claims("alice", json!({"events": null}))), "invalid_request"),
        ("no subject", f.set(&set_claims("alice", json!({"sub_id": null}))), "invalid_request"),
        (
            "a subject format tokex cannot find",
            f.set(&set_claims("alice", json!({"sub_id": {"format": "phone_number", "phone_number": "+1"}}))),
            "invalid_request",
        ),
        ("not a JWS", "hello".to_owned(), "invalid_request"),
    ];
    for (what, set, err) in &cases {
        let (status, body) = f.push(set).await;
        assert_eq!((status, body["err"].as_str()), (400, Some(*err)), "{what}: {body}");
        assert!(body["description"].is_string(), "{what}");
    }
    // The wrong media type, the wrong method.
    let (status, body) = f.push_as(&good, "application/jwt").await;
    assert_eq!((status, body["err"].as_str()), (400, Some("invalid_request")));
    let resp = client().get(format!("{}{PUSH}", f.gw.url)).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    call(&f.gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&f.auth_server), 1, "nothing was purged");

    // The good one once, then its replay.
    assert_eq!(f.push(&good).await.0, 202);
    call(&f.gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&f.auth_server), 2);
    let (status, body) = f.push(&good).await;
    assert_eq!((status, body["err"].as_str()), (400, Some("invalid_request")), "replay: {body}");
    call(&f.gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&f.auth_server), 2, "a replay purges nothing");

    // An event type tokex does not act on: accepted, ignored.
    let other = set_claims(
        "alice",
        json!({"events": {"https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": "x"}}}),
    );
    assert_eq!(f.push(&f.set(&other)).await.0, 202);
    call(&f.gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&f.auth_server), 2);
}

#[tokio::test]
async fn a_flood_is_rate_limited_and_costs_no_jwks_fetch_per_set() {
    let f = fixture("    max_per_second: 20\n").await;
    let alice = subject("alice");
    call(&f.gw, "/orders/1", &alice).await;
    // Let the first fetch happen.
    assert_eq!(f.push(&f.set(&set_claims("nobody", json!({})))).await.0, 202);
    let fetches = f.jwks.fetches();
    let other_key = EcSigner::new("x");
    let mut limited = 0;
    for i in 0..200 {
        let kid = format!("kid-{i}");
        let set =
            jws(&json!({"alg": "ES256", "kid": kid, "typ": "secevent+jwt"}), &set_claims("alice", json!({})), |m| {
                other_key.sign(m)
            });
        match f.push(&set).await.0 {
            429 => limited += 1,
            400 => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert!(limited >= 150, "rate-limited: {limited}");
    assert!(f.jwks.fetches() <= fetches + 2, "JWKS fetches: {} then {}", fetches, f.jwks.fetches());
    call(&f.gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&f.auth_server), 1, "nothing purged");
}

#[tokio::test]
async fn every_subject_a_set_names_is_purged() {
    let f = fixture("").await;
    let victim = subject("victim");
    call(&f.gw, "/orders/1", &victim).await;
    // Two revoking events naming 9 subjects each; the cached one last.
    let ids = |from: usize, last: &str| {
        let mut list: Vec<Value> =
            (from..from + 8).map(|i| json!({"format": "opaque", "id": format!("user-{i}")})).collect();
        list.push(json!({"format": "opaque", "id": last}));
        json!({"format": "aliases", "identifiers": list})
    };
    let claims = set_claims(
        "x",
        json!({"sub_id": null, "events": {
            SESSION_REVOKED: {"subject": ids(0, "user-99")},
            "https://schemas.openid.net/secevent/risc/event-type/account-disabled": {"subject": ids(10, "victim")},
        }}),
    );
    assert_eq!(f.push(&f.set(&claims)).await.0, 202);
    call(&f.gw, "/orders/1", &victim).await;
    assert_eq!(exchanges(&f.auth_server), 2, "the 18th subject was purged too");
}

/// The transmitter's JWKS may be the one an `issuer:` server publishes.
#[tokio::test]
async fn the_jwks_may_come_from_an_authorization_servers_metadata() {
    let signer = EcSigner::new("ssf-1");
    let jwks = JwksServer::start(vec![signer.jwk.clone()]).await;
    let auth_server = RecordingAs::start().await;
    let base = format!("http://{}", auth_server.addr);
    let meta = json!({"issuer": base, "token_endpoint": format!("{base}/token"), "jwks_uri": jwks.uri()});
    auth_server.set(move |r, n| match r.path.as_str() {
        "/.well-known/oauth-authorization-server" => Reply::Json(200, meta.clone()),
        _ => issue(n),
    });
    let backend = echo_backend().await;
    let yaml = format!(
        "authorization_servers:\n  corp:\n    issuer: {base}\n    client_auth: {BASIC_AUTH}\ncache: {{ expiry_skew: 0s }}\nrevocation:\n  ssf: {{ authorization_server: corp, audience: tokex, algorithms: [ES256] }}\nroutes:\n{}",
        exchange_route("orders", "/orders", backend, "")
    );
    let gw = TestGateway::start(&yaml).await;
    assert!(common::jwt::ready(&gw, Duration::from_secs(5)).await);
    let alice = subject("alice");
    call(&gw, "/orders/1", &alice).await;
    // The issuer is the server's: `iss` must be it.
    let claims = set_claims("alice", json!({"iss": base}));
    let set = jws(&header(&signer), &claims, |m| signer.sign(m));
    let f = Fixture { auth_server, gw, signer, jwks };
    let (status, body) = f.push(&set).await;
    assert_eq!(status, 202, "{body}");
    call(&f.gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&f.auth_server), 2);
}
