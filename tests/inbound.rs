//! Inbound validation: the JWT attack suite (each refused with 401 and no
//! call to the authorization server), JWKS rotation and unknown-kid floods,
//! readiness, `require_scopes`, the verified-token cache, and RFC 7662
//! introspection.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::jwt::*;
use common::*;
use http::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn jwt_attack_suite_is_refused_without_calling_the_authorization_server() {
    let ec = EcSigner::new("ec-1");
    let rsa = RsaSigner::new("rsa-1");
    let s = setup(vec![ec.jwk.clone(), rsa.jwk.clone()], "[ES256]", "", "").await;
    assert_eq!(s.jwks.fetches(), 1);

    // The control: a valid token passes and is exchanged.
    let (status, _, body) = get(&s.gw.url, Some(&ec.token(&claims(json!({}))))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.auth_server.count(), 1);

    let valid = ec.token(&claims(json!({})));
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let forged = b64(claims(json!({"sub": "admin", "scope": "orders:read orders:admin"})).to_string());
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let ec_header = |extra: Value| {
        let mut h = ec.header();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                h.as_object_mut().unwrap().remove(k);
            } else {
                h[k] = v.clone();
            }
        }
        h
    };
    let pad = "x".repeat(9000);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "at+jwt", "kid": "ec-1"}).to_string()),
                b64(claims(json!({})).to_string())
            ),
            "alg_not_allowed",
        ),
        (
            "HS256 signed with the RSA public key (key confusion)",
            jws(&json!({"alg": "HS256", "typ": "at+jwt", "kid": rsa.kid}), &claims(json!({})), |m| {
                hmac_sha256(rsa.public_pem, m)
            }),
            "alg_not_allowed",
        ),
        (
            "RS256 (valid signature, only ES256 allowed)",
            jws(&json!({"alg": "RS256", "typ": "at+jwt", "kid": rsa.kid}), &claims(json!({})), |m| rsa.sign(m)),
            "alg_not_allowed",
        ),
        ("expired", ec.token(&claims(json!({"exp": now() - 3600}))), "expired"),
        ("not yet valid (nbf)", ec.token(&claims(json!({"nbf": now() + 3600}))), "not_yet_valid"),
        ("wrong iss", ec.token(&claims(json!({"iss": "https://evil.test"}))), "wrong_issuer"),
        ("wrong aud", ec.token(&claims(json!({"aud": ["orders-api"]}))), "wrong_audience"),
        ("no exp", ec.token(&claims(json!({"exp": null}))), "missing_claim"),
        ("oversize (> 8 KiB)", ec.token(&claims(json!({"pad": pad}))), "too_large"),
        ("payload tampered, signature kept", tampered, "bad_signature"),
        ("signed by another key with a known kid", EcSigner::new("ec-1").token(&claims(json!({}))), "bad_signature"),
        (
            "crit header",
            jws(&ec_header(json!({"crit": ["exp"], "exp": now() + 60})), &claims(json!({})), |m| ec.sign(m)),
            "crit_header",
        ),
        (
            "typ missing (at+jwt required)",
            jws(&ec_header(json!({"typ": null})), &claims(json!({})), |m| ec.sign(m)),
            "wrong_typ",
        ),
        (
            "typ JWT (at+jwt required)",
            jws(&ec_header(json!({"typ": "JWT"})), &claims(json!({})), |m| ec.sign(m)),
            "wrong_typ",
        ),
        ("not a JWT", "opaque-token".to_owned(), "malformed"),
        // A registered claim of the wrong type refuses the token; it is not skipped.
        ("nbf a string", ec.token(&claims(json!({"nbf": (now() + 3600).to_string()}))), "claim_type"),
        ("nbf a numeric string in the past", ec.token(&claims(json!({"nbf": "0"}))), "claim_type"),
        ("exp a string", ec.token(&claims(json!({"exp": (now() + 600).to_string()}))), "claim_type"),
        ("iat a string", ec.token(&claims(json!({"iat": "now"}))), "claim_type"),
        ("iss an array holding the issuer", ec.token(&claims(json!({"iss": [ISS]}))), "claim_type"),
        ("iss a number", ec.token(&claims(json!({"iss": 1}))), "claim_type"),
        ("aud a number", ec.token(&claims(json!({"aud": 7}))), "claim_type"),
        ("aud holding a number", ec.token(&claims(json!({"aud": ["edge", 7]}))), "claim_type"),
        ("sub an object", ec.token(&claims(json!({"sub": {"id": "alice"}}))), "claim_type"),
        ("jti a number", ec.token(&claims(json!({"jti": 5}))), "claim_type"),
        // Found by review: serde reads a struct from an array by position.
        ("claims as a JSON array", ec.token(&json!([now() + 600, 0, 0, ISS, "alice", "edge"])), "malformed"),
    ];
    eprintln!("| case | answer | AS calls | JWKS fetches | reason |");
    for (name, token, reason) in cases {
        let before = (s.auth_server.count(), s.jwks.fetches(), rejections(&s.gw.metrics().await, reason));
        let (status, headers, body) = get(&s.gw.url, Some(&token)).await;
        let fetched = s.jwks.fetches() - before.1;
        eprintln!("| {name} | {status} | {} | {fetched} | {reason} |", s.auth_server.count() - before.0);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN, "{name}");
        assert_eq!(s.auth_server.count(), before.0, "{name}: the AS was called");
        assert_eq!(fetched, 0, "{name}: the JWKS was refetched");
        assert_eq!(rejections(&s.gw.metrics().await, reason), before.2 + 1, "{name}: counted as {reason}");
        assert!(!body.contains(&token[..token.len().min(40)]), "{name}: the answer echoes the token");
    }
    // `application/at+jwt` is the same type as `at+jwt`.
    let token = jws(&ec_header(json!({"typ": "application/at+jwt"})), &claims(json!({})), |m| ec.sign(m));
    assert_eq!(get(&s.gw.url, Some(&token)).await.0, 200);
}

#[tokio::test]
async fn key_confusion_is_refused_when_rsa_is_allowed_too() {
    let ec = EcSigner::new("ec-1");
    let rsa = RsaSigner::new("rsa-1");
    let s = setup(vec![ec.jwk.clone(), rsa.jwk.clone()], "[ES256, RS256]", "", "").await;
    let rs256 =
        |kid: &str| jws(&json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}), &claims(json!({})), |m| rsa.sign(m));
    let hs256 = |kid: &str| {
        jws(&json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}), &claims(json!({})), |m| {
            hmac_sha256(rsa.public_pem, m)
        })
    };
    let es256_on_rsa_kid =
        jws(&json!({"alg": "ES256", "typ": "at+jwt", "kid": "rsa-1"}), &claims(json!({})), |m| ec.sign(m));
    for (name, token, reason) in [
        ("RS256 token naming the EC key", rs256("ec-1"), "key_mismatch"),
        ("ES256 token naming the RSA key", es256_on_rsa_kid, "key_mismatch"),
        ("HS256 with the RSA public key as secret", hs256("rsa-1"), "alg_not_allowed"),
    ] {
        let before = rejections(&s.gw.metrics().await, reason);
        let (status, headers, _) = get(&s.gw.url, Some(&token)).await;
        assert_eq!(status, 401, "{name}");
        assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN, "{name}");
        assert_eq!(rejections(&s.gw.metrics().await, reason), before + 1, "{name}");
    }
    assert_eq!(s.auth_server.count(), 0);
    // A genuine RS256 token passes.
    assert_eq!(get(&s.gw.url, Some(&rs256("rsa-1"))).await.0, 200);
    assert_eq!(s.jwks.fetches(), 1);
}

/// An RSA key is "2048+" by its bits, not its bytes: a 2047- or 2041-bit
/// modulus (256 bytes) is skipped like any short key, so a token naming it
/// finds no key instead of being checked against it.
#[tokio::test]
async fn rsa_keys_shorter_than_2048_bits_are_skipped() {
    let ec = EcSigner::new("ec-1");
    let rsa = RsaSigner::new("rsa-2048");
    let short = |kid: &str, top: u8| {
        let mut n = vec![0xc5u8; 256];
        n[0] = top;
        json!({"kty": "RSA", "n": b64(&n), "e": "AQAB", "kid": kid, "use": "sig"})
    };
    let keys = vec![ec.jwk.clone(), rsa.jwk.clone(), short("rsa-2047", 0x7f), short("rsa-2041", 0x01)];
    let s = setup(keys, "[ES256, RS256]", "", "").await;
    let signed_rs256 =
        |kid: &str| jws(&json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}), &claims(json!({})), |m| rsa.sign(m));
    assert_eq!(get(&s.gw.url, Some(&signed_rs256("rsa-2048"))).await.0, 200, "the 2048-bit control");
    for kid in ["rsa-2047", "rsa-2041"] {
        let before = rejections(&s.gw.metrics().await, "unknown_kid");
        let (status, headers, _) = get(&s.gw.url, Some(&signed_rs256(kid))).await;
        assert_eq!(status, 401, "{kid}");
        assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN);
        assert_eq!(rejections(&s.gw.metrics().await, "unknown_kid"), before + 1, "{kid} was kept as a key");
    }
    assert_eq!(s.auth_server.count(), 1);
}

#[tokio::test]
async fn unknown_kid_flood_makes_at_most_one_jwks_fetch() {
    let ec = EcSigner::new("ec-1");
    let s = setup(vec![ec.jwk.clone()], "[ES256]", "", "").await;
    let before = s.jwks.fetches();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": format!("forged-{}", fastrand::u64(..))});
        let token = jws(&header, &claims(json!({})), |m| ec.sign(m));
        let url = s.gw.url.clone();
        tasks.push(tokio::spawn(async move { get(&url, Some(&token)).await }));
    }
    for t in tasks {
        let (status, headers, _) = t.await.unwrap();
        assert_eq!(status, 401);
        assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN);
    }
    let during = s.jwks.fetches() - before;
    eprintln!("unknown-kid flood: 100 requests -> {during} JWKS fetch(es), {} AS calls", s.auth_server.count());
    assert!(during <= 1, "{during} JWKS fetches for 100 forged kids");
    assert_eq!(s.auth_server.count(), 0);
    assert_eq!(rejections(&s.gw.metrics().await, "unknown_kid"), 100);
    let m = s.gw.metrics().await;
    assert_eq!(metric(&m, "tokex_jwks_fetches_total{outcome=\"ok\"}"), s.jwks.fetches() as u64, "{m}");
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_without_restart() {
    let old = EcSigner::new("key-2025");
    let new = EcSigner::new("key-2026");
    let s = setup(vec![old.jwk.clone()], "[ES256]", "", "").await;
    let old_token = old.token(&claims(json!({})));
    assert_eq!(get(&s.gw.url, Some(&old_token)).await.0, 200);
    assert_eq!(s.jwks.fetches(), 1);

    // The AS rotates: the new key is published and the old one removed.
    *s.jwks.keys.lock().unwrap() = vec![new.jwk.clone()];
    let (status, _, body) = get(&s.gw.url, Some(&new.token(&claims(json!({}))))).await;
    assert_eq!(status, 200, "a token from the new key triggers a refetch: {body}");
    assert_eq!(s.jwks.fetches(), 2);

    // The old key is gone: its tokens are refused, even one whose exchange is cached.
    let (status, headers, _) = get(&s.gw.url, Some(&old_token)).await;
    assert_eq!(status, 401);
    assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN);
    assert_eq!(s.auth_server.count(), 2, "no exchange for the refused token");
    assert_eq!(s.jwks.fetches(), 2, "within the cooldown: no refetch for the old kid");
}

#[tokio::test]
async fn jwks_refresh_follows_max_age_within_bounds() {
    let ec = EcSigner::new("ec-1");
    let jwks = JwksServer::start(vec![ec.jwk.clone()]).await;
    *jwks.cache_control.lock().unwrap() = "max-age=0";
    let backend = echo_backend().await;
    let auth_server = RecordingAs::start().await;
    // max-age=0 is clamped up to the 1 s floor: about one fetch per second, not a busy loop.
    let yaml = jwt_inbound(&jwks.uri(), "[ES256]", "    jwks_refresh_min: 1s\n    jwks_refresh_max: 2s\n")
        + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let n = jwks.fetches();
    assert!((3..=4).contains(&n), "{n} fetches in 2.5 s with a 1 s floor");
    // A long max-age is clamped down to the 2 s ceiling.
    *jwks.cache_control.lock().unwrap() = "max-age=86400";
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let m = jwks.fetches() - n;
    assert!((1..=3).contains(&m), "{m} fetches in 4.5 s with a 2 s ceiling");
    gw.running.shutdown().await;
    let after = jwks.fetches();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(jwks.fetches(), after, "the refresh task stops on shutdown");
}

#[tokio::test]
async fn reload_keeps_unchanged_keys_and_follows_a_changed_jwks_uri() {
    let a = EcSigner::new("a");
    let b = EcSigner::new("b");
    let s = setup(vec![a.jwk.clone()], "[ES256]", "", "").await;
    let other = JwksServer::start(vec![b.jwk.clone()]).await;
    let dir = std::env::temp_dir().join(format!("tokex-inbound-reload-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokex.yaml");
    let listen = "listen: { address: \"127.0.0.1:0\" }\n";

    std::fs::write(&path, format!("{listen}{}", s.yaml)).unwrap();
    assert!(s.gw.running.reload(&path, "test"));
    assert_eq!(get(&s.gw.url, Some(&a.token(&claims(json!({}))))).await.0, 200);
    assert_eq!(s.jwks.fetches(), 1, "an unchanged inbound section keeps its keys");

    std::fs::write(&path, format!("{listen}{}", s.yaml.replace(&s.jwks.uri(), &other.uri()))).unwrap();
    assert!(s.gw.running.reload(&path, "test"));
    let (status, _, body) = get(&s.gw.url, Some(&b.token(&claims(json!({}))))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&s.gw.url, Some(&a.token(&claims(json!({}))))).await.0, 401);
    assert!(ready(&s.gw, Duration::from_secs(1)).await);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The review's case: a reload that changed `inbound.jwt` (not its JWKS)
/// dropped the keys, and with the JWKS endpoint hanging every request
/// failed with 503 while `/readyz` said 200. The keys now carry over; a
/// reload to another JWKS says not ready until that one is fetched.
#[tokio::test]
async fn a_reload_keeps_the_keys_of_an_unchanged_jwks_and_readyz_tells_the_truth() {
    let ec = EcSigner::new("a");
    let s = setup(vec![ec.jwk.clone()], "[ES256]", "    timeout: 1s\n", "").await;
    let token = ec.token(&claims(json!({})));
    assert_eq!(get(&s.gw.url, Some(&token)).await.0, 200);
    s.jwks.hang.store(true, Ordering::SeqCst);

    let dir = std::env::temp_dir().join(format!("tokex-jwks-reload-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokex.yaml");
    let listen = "listen: { address: \"127.0.0.1:0\" }\n";
    std::fs::write(&path, format!("{listen}{}", s.yaml.replace("leeway: 5s", "leeway: 10s"))).unwrap();
    assert!(s.gw.running.reload(&path, "test"));
    for i in 0..20 {
        let started = std::time::Instant::now();
        let (status, _, body) = get(&s.gw.url, Some(&ec.token(&claims(json!({"n": i}))))).await;
        assert_eq!(status, 200, "request {i} after the reload: {body}");
        assert!(started.elapsed() < Duration::from_millis(500), "request {i} waited {:?}", started.elapsed());
    }
    assert!(ready(&s.gw, Duration::from_millis(100)).await, "ready with the keys it holds");

    // Another JWKS, which hangs: not ready, and callers are told so at once.
    let other = JwksServer::start(vec![ec.jwk.clone()]).await;
    other.hang.store(true, Ordering::SeqCst);
    std::fs::write(&path, format!("{listen}{}", s.yaml.replace(&s.jwks.uri(), &other.uri()))).unwrap();
    assert!(s.gw.running.reload(&path, "test"));
    assert!(!ready(&s.gw, Duration::from_millis(300)).await, "ready without the new JWKS");
    let started = std::time::Instant::now();
    let (status, headers, _) = get(&s.gw.url, Some(&token)).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert!(started.elapsed() < Duration::from_millis(1300), "waited {:?} (budget 1 s)", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The review's case: at start with the JWKS endpoint hanging, callers
/// waited 3.0 s for their 503 against a 2 s budget (they queued behind the
/// background fetch, then made their own). A caller now waits at most one
/// budget for keys, before the first fetch and for an unknown kid after it.
#[tokio::test]
async fn callers_never_wait_longer_than_the_jwks_budget() {
    let ec = EcSigner::new("ec-1");
    let auth_server = RecordingAs::start().await;
    let jwks = JwksServer::start(vec![ec.jwk.clone()]).await;
    jwks.hang.store(true, Ordering::SeqCst);
    let backend = echo_backend().await;
    let yaml = jwt_inbound(&jwks.uri(), "[ES256]", "    timeout: 2s\n    unknown_kid_cooldown: 1s\n")
        + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&yaml).await;
    let mut waits = Vec::new();
    for i in 0..6u64 {
        let (url, token) = (gw.url.clone(), ec.token(&claims(json!({}))));
        waits.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300 * i)).await;
            let started = std::time::Instant::now();
            let (status, _, _) = get(&url, Some(&token)).await;
            (status, started.elapsed())
        }));
    }
    for w in waits {
        let (status, waited) = w.await.unwrap();
        assert_eq!(status, 503);
        assert!(waited < Duration::from_millis(2300), "waited {waited:?} before the first fetch");
    }
    // Loaded, then an unknown kid while the endpoint hangs: one budget at most.
    jwks.hang.store(false, Ordering::SeqCst);
    assert!(ready(&gw, Duration::from_secs(10)).await);
    jwks.hang.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the unknown-kid cooldown
    let forged = jws(&json!({"alg": "ES256", "typ": "at+jwt", "kid": "rotated"}), &claims(json!({})), |m| ec.sign(m));
    let started = std::time::Instant::now();
    let (status, _, _) = get(&gw.url, Some(&forged)).await;
    let waited = started.elapsed();
    assert_eq!(status, 401);
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_millis(2600), "waited {waited:?}");
    assert_eq!(auth_server.count(), 0);
}

#[tokio::test]
async fn not_ready_until_the_jwks_is_fetched() {
    let ec = EcSigner::new("ec-1");
    let auth_server = RecordingAs::start().await;
    let jwks = JwksServer::start(vec![ec.jwk.clone()]).await;
    jwks.up.store(false, Ordering::SeqCst);
    let backend = echo_backend().await;
    let yaml = jwt_inbound(&jwks.uri(), "[ES256]", "    jwks_refresh_min: 1s\n")
        + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&yaml).await;

    assert!(!ready(&gw, Duration::from_millis(1500)).await, "ready while the JWKS server is down");
    assert!(jwks.fetches() >= 2, "retries while down: {}", jwks.fetches());
    // Meanwhile tokens cannot be checked: 503, and nothing reaches the AS.
    let (status, headers, _) = get(&gw.url, Some(&ec.token(&claims(json!({}))))).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert_eq!(auth_server.count(), 0);
    let m = gw.metrics().await;
    assert!(metric(&m, "tokex_jwks_fetches_total{outcome=\"unreachable\"}") >= 2, "{m}");

    jwks.up.store(true, Ordering::SeqCst);
    assert!(ready(&gw, Duration::from_secs(5)).await, "not ready after the JWKS server came up");
    assert_eq!(get(&gw.url, Some(&ec.token(&claims(json!({}))))).await.0, 200);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn require_scopes_reads_scope_and_scp() {
    let ec = EcSigner::new("ec-1");
    let s = setup(vec![ec.jwk.clone()], "[ES256]", "", "    require_scopes: [orders:read, orders:list]\n").await;
    let both = "orders:read orders:list";
    for (name, extra, want) in [
        ("scope string with both", json!({"scope": format!("profile {both}")}), 200),
        ("scp array with both", json!({"scope": null, "scp": ["orders:list", "orders:read"]}), 200),
        ("scope string missing one", json!({"scope": "orders:read profile"}), 403),
        ("scp array missing one", json!({"scope": null, "scp": ["orders:read"]}), 403),
        ("no scope at all", json!({"scope": null}), 403),
    ] {
        let before = s.auth_server.count();
        let (status, headers, body) = get(&s.gw.url, Some(&ec.token(&claims(extra)))).await;
        assert_eq!(status, want, "{name}: {body}");
        if want == 403 {
            assert_eq!(
                headers.get("www-authenticate").unwrap(),
                "Bearer realm=\"tokex\", error=\"insufficient_scope\", scope=\"orders:read orders:list\"",
                "{name}"
            );
            assert_eq!(s.auth_server.count(), before, "{name}: the AS was called");
        }
    }
    assert_eq!(rejections(&s.gw.metrics().await, "insufficient_scope"), 3);
}

/// `tokex_inbound_cache_total`: (hits, misses). A miss is a signature check.
fn verifications(m: &str) -> (u64, u64) {
    let n = |result: &str| metric(m, &format!("tokex_inbound_cache_total{{result=\"{result}\"}}"));
    (n("hit"), n("miss"))
}

/// Waits until tokex has stored `n` more JWKS fetches than `before`.
async fn jwks_stored(gw: &TestGateway, before: u64, n: u64) {
    let ok = |m: &str| metric(m, "tokex_jwks_fetches_total{outcome=\"ok\"}");
    for _ in 0..100 {
        if ok(&gw.metrics().await) >= before + n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no JWKS refresh within 5 s");
}

#[tokio::test]
async fn a_verified_token_is_not_verified_again_and_another_token_is() {
    let ec = EcSigner::new("ec-1");
    let s = setup(vec![ec.jwk.clone()], "[ES256]", "", "    require_scopes: [orders:read]\n").await;
    let token = ec.token(&claims(json!({})));
    assert_eq!(get(&s.gw.url, Some(&token)).await.0, 200);
    assert_eq!(verifications(&s.gw.metrics().await), (0, 1), "the first request verifies");
    for _ in 0..3 {
        assert_eq!(get(&s.gw.url, Some(&token)).await.0, 200);
    }
    assert_eq!(verifications(&s.gw.metrics().await), (3, 1), "the same token is not verified again");

    // Another token of the same caller (another jti) is verified.
    assert_eq!(get(&s.gw.url, Some(&ec.token(&claims(json!({}))))).await.0, 200);
    assert_eq!(verifications(&s.gw.metrics().await), (3, 2));

    // A cached verification still answers to the route's require_scopes.
    let narrow = ec.token(&claims(json!({"scope": "profile"})));
    assert_eq!(get(&s.gw.url, Some(&narrow)).await.0, 403);
    assert_eq!(get(&s.gw.url, Some(&narrow)).await.0, 403);
    assert_eq!(verifications(&s.gw.metrics().await), (4, 3));

    // Refusals are not remembered: each is checked (and counted) again.
    let forged = EcSigner::new("ec-1").token(&claims(json!({})));
    let early = ec.token(&claims(json!({"nbf": now() + 60})));
    for _ in 0..2 {
        assert_eq!(get(&s.gw.url, Some(&forged)).await.0, 401);
        assert_eq!(get(&s.gw.url, Some(&early)).await.0, 401);
    }
    let m = s.gw.metrics().await;
    assert_eq!(verifications(&m), (4, 7));
    assert_eq!((rejections(&m, "bad_signature"), rejections(&m, "not_yet_valid")), (2, 2));
    assert_eq!(s.auth_server.count(), 2, "one exchange per accepted token");
}

/// A scheduled refresh that drops the key a cached token was verified with
/// refuses that token on the very next request; a refresh that brings the
/// same keys keeps the cache.
#[tokio::test]
async fn a_cached_token_is_refused_on_the_next_request_after_its_key_leaves_the_jwks() {
    let old = EcSigner::new("key-2025");
    let new = EcSigner::new("key-2026");
    let refresh = "    jwks_refresh_min: 1s\n    jwks_refresh_max: 1s\n";
    let s = setup(vec![old.jwk.clone(), new.jwk.clone()], "[ES256]", refresh, "").await;
    let (old_token, new_token) = (old.token(&claims(json!({}))), new.token(&claims(json!({}))));
    for t in [&old_token, &new_token, &old_token, &new_token] {
        assert_eq!(get(&s.gw.url, Some(t)).await.0, 200);
    }
    assert_eq!(verifications(&s.gw.metrics().await), (2, 2));

    // Refreshes that bring the same keys: still cached.
    let ok = |m: &str| metric(m, "tokex_jwks_fetches_total{outcome=\"ok\"}");
    jwks_stored(&s.gw, ok(&s.gw.metrics().await), 2).await;
    assert_eq!(get(&s.gw.url, Some(&old_token)).await.0, 200);
    assert_eq!(verifications(&s.gw.metrics().await), (3, 2));

    // The old key is removed; a fetch that began before may still bring it,
    // the one after cannot.
    *s.jwks.keys.lock().unwrap() = vec![new.jwk.clone()];
    jwks_stored(&s.gw, ok(&s.gw.metrics().await), 2).await;
    let (status, headers, _) = get(&s.gw.url, Some(&old_token)).await;
    assert_eq!(status, 401, "a token of a removed key was served from the cache");
    assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN);
    let m = s.gw.metrics().await;
    assert_eq!(verifications(&m), (3, 3), "verified again, not served from the cache");
    assert_eq!(rejections(&m, "unknown_kid"), 1);
    // The other key is still there: its token is verified again once, then cached.
    assert_eq!(get(&s.gw.url, Some(&new_token)).await.0, 200);
    assert_eq!(get(&s.gw.url, Some(&new_token)).await.0, 200);
    assert_eq!(verifications(&s.gw.metrics().await), (4, 4));
    assert_eq!(s.auth_server.count(), 2, "no exchange for the refused token");
}

#[tokio::test]
async fn a_cached_token_expires_at_exp_plus_leeway() {
    let ec = EcSigner::new("ec-1");
    let s = setup(vec![ec.jwk.clone()], "[ES256]", "", "").await;
    // exp 3 s ago, within the 5 s leeway: accepted for 1 to 2 s more.
    let token = ec.token(&claims(json!({"exp": now() - 3})));
    assert_eq!(get(&s.gw.url, Some(&token)).await.0, 200);
    assert_eq!(get(&s.gw.url, Some(&token)).await.0, 200);
    assert_eq!(verifications(&s.gw.metrics().await), (1, 1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let exchanges = s.auth_server.count();
    let (status, headers, _) = get(&s.gw.url, Some(&token)).await;
    assert_eq!(status, 401, "the cache kept an expired token valid");
    assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN);
    assert_eq!(rejections(&s.gw.metrics().await, "expired"), 1);
    assert_eq!(s.auth_server.count(), exchanges, "the expired token reached the AS");
}

/// A reload that changes `inbound.jwt` starts with an empty cache: a token
/// verified for an audience that is no longer accepted is refused at once.
#[tokio::test]
async fn a_reload_that_changes_inbound_jwt_verifies_again() {
    let ec = EcSigner::new("ec-1");
    let s = setup(vec![ec.jwk.clone()], "[ES256]", "", "").await;
    let token = ec.token(&claims(json!({"aud": "other-edge"})));
    assert_eq!(get(&s.gw.url, Some(&token)).await.0, 200);
    assert_eq!(get(&s.gw.url, Some(&token)).await.0, 200);
    assert_eq!(verifications(&s.gw.metrics().await), (1, 1));

    let dir = std::env::temp_dir().join(format!("tokex-verified-reload-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokex.yaml");
    let narrowed = s.yaml.replace("audiences: [edge, other-edge]", "audiences: [edge]");
    assert_ne!(narrowed, s.yaml);
    std::fs::write(&path, format!("listen: {{ address: \"127.0.0.1:0\" }}\n{narrowed}")).unwrap();
    assert!(s.gw.running.reload(&path, "test"));
    assert_eq!(get(&s.gw.url, Some(&token)).await.0, 401);
    let m = s.gw.metrics().await;
    assert_eq!(verifications(&m), (1, 2));
    assert_eq!(rejections(&m, "wrong_audience"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recording AS that also answers RFC 7662 introspection at `/introspect`:
/// tokens `active-*` are active (scope `orders:read`, `exp` per the suffix
/// `-ttlN`, default 600 s), anything else inactive.
fn introspecting(auth_server: &RecordingAs) {
    auth_server.set(|r, n| {
        if r.path != "/introspect" {
            return issue(n);
        }
        let token = r.param("token").unwrap_or_default();
        if !token.starts_with("active-") {
            return Reply::Json(200, json!({"active": false}));
        }
        let ttl = token.rsplit_once("-ttl").and_then(|(_, n)| n.parse::<u64>().ok()).unwrap_or(600);
        Reply::Json(200, json!({"active": true, "scope": "orders:read", "exp": now() + ttl, "sub": "alice"}))
    });
}

fn introspections(auth_server: &RecordingAs) -> usize {
    auth_server.requests().iter().filter(|r| r.path == "/introspect").count()
}

async fn introspection_gateway(auth_server: &RecordingAs, endpoint: &str, route_extra: &str) -> TestGateway {
    let backend = echo_backend().await;
    let yaml = format!(
        "inbound:\n  introspection:\n    endpoint: {endpoint}\n    client_auth: {BASIC_AUTH}\n    cache_ttl: 30s\n    timeout: 1s\n"
    ) + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, route_extra));
    TestGateway::start(&yaml).await
}

#[tokio::test]
async fn introspection_active_is_forwarded_and_cached() {
    let auth_server = RecordingAs::start().await;
    introspecting(&auth_server);
    let endpoint = format!("http://{}/introspect", auth_server.addr);
    let gw = introspection_gateway(&auth_server, &endpoint, "    require_scopes: [orders:read]\n").await;
    assert!(ready(&gw, Duration::from_secs(2)).await);

    let (status, _, body) = get(&gw.url, Some("active-alice")).await;
    assert_eq!(status, 200, "{body}");
    let r = auth_server.requests().into_iter().find(|r| r.path == "/introspect").unwrap();
    assert_eq!(r.param("token"), Some("active-alice"));
    assert_eq!(r.param("token_type_hint"), Some("access_token"));
    assert_eq!(r.basic(), Some(("tokex".into(), "s3cret".into())), "the exchange's client authentication");
    assert!(!body.contains("active-alice"), "the caller's token reached the backend");

    // The second call uses the cached answer: no introspection request.
    assert_eq!(get(&gw.url, Some("active-alice")).await.0, 200);
    assert_eq!(introspections(&auth_server), 1);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "tokex_introspections_total{outcome=\"active\"}"), 1, "{m}");
}

/// Same class as the JWKS reload defect: a reload used to drop every cached
/// introspection answer, so with the endpoint down, callers whose answers
/// were cached failed with 503 right after any reload.
#[tokio::test]
async fn a_reload_keeps_cached_introspection_answers() {
    let auth_server = RecordingAs::start().await;
    introspecting(&auth_server);
    let backend = echo_backend().await;
    let yaml = format!(
        "inbound:\n  introspection:\n    endpoint: http://{}/introspect\n    client_auth: {BASIC_AUTH}\n    cache_ttl: 30s\n    timeout: 1s\n",
        auth_server.addr
    ) + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(get(&gw.url, Some("active-alice")).await.0, 200);
    assert_eq!(introspections(&auth_server), 1);

    // The endpoint goes down; the configuration is reloaded (a route added).
    auth_server.set(|r, n| if r.path == "/introspect" { Reply::Json(503, json!({})) } else { issue(n) });
    let dir =
        std::env::temp_dir().join(format!("tokex-introspect-reload-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokex.yaml");
    let extra =
        format!("  - name: health\n    match: {{ path: /health }}\n    upstream: http://{backend}\n    auth: none\n");
    std::fs::write(
        &path,
        format!("listen: {{ address: \"127.0.0.1:0\" }}\n{}", yaml.replace("routes:\n", &format!("routes:\n{extra}"))),
    )
    .unwrap();
    assert!(gw.running.reload(&path, "test"));
    assert_eq!(get(&format!("{}/health", gw.url), None).await.0, 200, "the reload took effect");
    let (status, _, body) = get(&gw.url, Some("active-alice")).await;
    assert_eq!(status, 200, "the cached answer was lost: {body}");
    assert_eq!(introspections(&auth_server), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn introspection_inactive_is_401_without_an_exchange() {
    let auth_server = RecordingAs::start().await;
    introspecting(&auth_server);
    let gw = introspection_gateway(&auth_server, &format!("http://{}/introspect", auth_server.addr), "").await;
    for _ in 0..3 {
        let (status, headers, _) = get(&gw.url, Some("revoked-token")).await;
        assert_eq!(status, 401);
        assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN);
    }
    assert_eq!(introspections(&auth_server), 1, "inactive answers are remembered briefly");
    assert_eq!(auth_server.count(), 1, "no token exchange");
    assert_eq!(rejections(&gw.metrics().await, "inactive"), 3);
}

#[tokio::test]
async fn introspection_cache_ends_with_the_token() {
    let auth_server = RecordingAs::start().await;
    introspecting(&auth_server);
    let gw = introspection_gateway(&auth_server, &format!("http://{}/introspect", auth_server.addr), "").await;
    // exp is 2 s away (whole seconds): the answer is cached at most that long, not cache_ttl (30 s).
    assert_eq!(get(&gw.url, Some("active-short-ttl2")).await.0, 200);
    assert_eq!(get(&gw.url, Some("active-short-ttl2")).await.0, 200);
    assert_eq!(introspections(&auth_server), 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(get(&gw.url, Some("active-short-ttl2")).await.0, 200);
    assert_eq!(introspections(&auth_server), 2, "the cached answer outlived the token's exp");
}

#[tokio::test]
async fn introspection_scope_and_unreachable_endpoint() {
    let auth_server = RecordingAs::start().await;
    introspecting(&auth_server);
    let gw = introspection_gateway(
        &auth_server,
        &format!("http://{}/introspect", auth_server.addr),
        "    require_scopes: [orders:write]\n",
    )
    .await;
    let (status, headers, _) = get(&gw.url, Some("active-bob")).await;
    assert_eq!(status, 403, "the scope comes from the introspection answer");
    assert_eq!(
        headers.get("www-authenticate").unwrap(),
        "Bearer realm=\"tokex\", error=\"insufficient_scope\", scope=\"orders:write\""
    );
    assert_eq!(auth_server.count(), 1, "only the introspection request");

    // An endpoint nobody listens on: 503 with Retry-After, like the exchange.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = introspection_gateway(&auth_server, &format!("http://{closed}/introspect"), "").await;
    let (status, headers, _) = get(&gw.url, Some("active-carol")).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert_eq!(auth_server.count(), 1);
}

#[tokio::test]
async fn dev_sts_tokens_pass_inbound_validation_end_to_end() {
    use tokex::dev_sts::{self, ClientSpec, DevStsConfig};
    let cfg = DevStsConfig {
        clients: vec![ClientSpec::parse_flag("id=gw,secret=s3cret,audiences=orders-api,scopes=orders:read").unwrap()],
        ..DevStsConfig::default()
    };
    let sts = dev_sts::start(cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    let backend = echo_backend().await;
    let yaml = format!(
        "inbound:\n  jwt:\n    issuer: {}\n    jwks_uri: {}\n    audiences: [edge]\n    algorithms: [ES256]\n    require_typ: at+jwt\n",
        sts.issuer(),
        sts.jwks_uri()
    ) + &config_with(
        &sts.token_endpoint(),
        "{ method: client_secret_basic, client_id: gw, client_secret: s3cret }",
        &format!(
            "  - name: orders\n    match: {{ path_prefix: / }}\n    upstream: http://{backend}\n    require_scopes: [orders:read]\n    exchange:\n      authorization_server: corp\n      audience: [orders-api]\n      scope: [orders:read]\n"
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(5)).await);
    let ttl = Duration::from_secs(300);
    let (status, _, body) = get(&gw.url, Some(&sts.mint("alice", &["orders:read", "profile"], &["edge"], ttl))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sts.exchange_count(), 1);
    let (status, _, _) = get(&gw.url, Some(&sts.mint("alice", &["orders:read"], &["elsewhere"], ttl))).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&gw.url, Some(&sts.mint("alice", &["profile"], &["edge"], ttl))).await;
    assert_eq!(status, 403);
    assert_eq!(sts.exchange_count(), 1, "refused tokens never reach the AS");
}

/// `inbound.jwt.authorization_server`: the JWKS URL and the issuer come from
/// the RFC 8414 metadata of an `issuer:` server; nothing is ready before it.
#[tokio::test]
async fn jwks_from_a_discovered_authorization_server() {
    use tokex::dev_sts::{self, ClientSpec, DevStsConfig};
    let cfg = DevStsConfig {
        clients: vec![ClientSpec::parse_flag("id=gw,secret=s3cret,audiences=orders-api,scopes=orders:read").unwrap()],
        ..DevStsConfig::default()
    };
    let sts = dev_sts::start(cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    let other = dev_sts::start(DevStsConfig::default(), tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap();
    let backend = echo_backend().await;
    let yaml = format!(
        "inbound:\n  jwt:\n    authorization_server: corp\n    audiences: [edge]\n    algorithms: [ES256]\n\
         authorization_servers:\n  corp:\n    issuer: {}\n    client_auth: {{ method: client_secret_basic, client_id: gw, client_secret: s3cret }}\n\
         routes:\n  - name: orders\n    upstream: http://{backend}\n    exchange: {{ authorization_server: corp, audience: [orders-api], scope: [orders:read] }}\n",
        sts.issuer()
    );
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(10)).await, "discovery, then the JWKS, then ready");
    let ttl = Duration::from_secs(300);
    let (status, _, body) = get(&gw.url, Some(&sts.mint("alice", &["orders:read"], &["edge"], ttl))).await;
    assert_eq!(status, 200, "{body}");
    // Signed by another issuer's key: refused locally, the AS never sees it.
    let (status, headers, _) = get(&gw.url, Some(&other.mint("alice", &["orders:read"], &["edge"], ttl))).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_eq!(sts.exchange_count(), 1);
}

#[test]
fn discovered_jwks_needs_an_issuer_server() {
    let yaml =
        "listen: { address: \"127.0.0.1:0\" }\ninbound:\n  jwt: { authorization_server: corp, audiences: [edge] }\n\
                authorization_servers:\n  corp: { token_endpoint: \"http://127.0.0.1:1/token\" }\n\
                routes:\n  - name: r\n    upstream: http://127.0.0.1:2\n    exchange: { authorization_server: corp }\n";
    let err = tokex::config::parse(yaml).unwrap_err().to_string();
    assert!(err.contains("inbound.jwt.authorization_server") && err.contains("set jwks_uri instead"), "{err}");
    let both = yaml.replace(
        "authorization_server: corp, audiences",
        "authorization_server: corp, jwks_uri: \"http://x/j\", audiences",
    );
    assert!(tokex::config::parse(&both).unwrap_err().to_string().contains("not both"));
}

/// `inbound.introspection.authorization_server`: the introspection endpoint
/// comes from the discovered metadata.
#[tokio::test]
async fn introspection_endpoint_from_a_discovered_authorization_server() {
    let auth_server = RecordingAs::start().await;
    let issuer = format!("http://{}", auth_server.addr);
    let meta = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/token"),
        "introspection_endpoint": format!("{issuer}/introspect"),
    });
    auth_server.set(move |r, n| match r.path.as_str() {
        "/.well-known/oauth-authorization-server" => Reply::Json(200, meta.clone()),
        "/introspect" if r.param("token") == Some("good") => {
            Reply::Json(200, serde_json::json!({"active": true, "scope": "orders:read", "exp": now() + 60}))
        }
        "/introspect" => Reply::Json(200, serde_json::json!({"active": false})),
        _ => issue(n),
    });
    let backend = echo_backend().await;
    let yaml = format!(
        "inbound:\n  introspection:\n    authorization_server: corp\n    client_auth: {{ method: client_secret_post, client_id: tokex, client_secret: s3cret }}\n\
         authorization_servers:\n  corp:\n    issuer: {issuer}\n    client_auth: {BASIC_AUTH}\n\
         routes:\n  - name: orders\n    upstream: http://{backend}\n    require_scopes: [orders:read]\n    exchange: {{ authorization_server: corp, audience: [orders-api] }}\n"
    );
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(10)).await);
    assert_eq!(get(&gw.url, Some("good")).await.0, 200);
    assert_eq!(get(&gw.url, Some("bad")).await.0, 401);
    let paths: Vec<String> = auth_server.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.iter().filter(|p| *p == "/introspect").count(), 2, "{paths:?}");
    assert_eq!(paths.iter().filter(|p| *p == "/token").count(), 1, "only the active token is exchanged: {paths:?}");
    let introspected = auth_server.requests().into_iter().find(|r| r.path == "/introspect").unwrap();
    assert_eq!(introspected.param("client_id"), Some("tokex"));
}
