//! Fault suite over real sockets: an authorization server (token endpoint,
//! JWKS, introspection) that is slow, down, resets mid-answer, answers 5xx,
//! 429, junk, 10 MB, odd `expires_in`. For each fault, on a fresh gateway
//! (`timeout: 1s`, `retries: 1`): the caller's status per SPEC §3.6, a wait
//! bounded by the budget, the number of AS requests where it matters, and
//! the same gateway serving again — a new subject token gets 200 once the
//! fault is gone, and an `auth: none` route answers throughout.

mod common;

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use common::faulty::{Faulty, Mode};
use common::jwt::*;
use common::*;
use http::HeaderMap;
use serde_json::{json, Value};

/// The AS (and inbound) budget of every gateway here.
const BUDGET: Duration = Duration::from_secs(1);
/// What a caller may wait beyond the budget (scheduling, connection set-up).
const SLACK: Duration = Duration::from_secs(1);
/// How long a gateway may take to serve again once the fault is gone (a
/// circuit breaker may stay open a few seconds).
const RECOVERY: Duration = Duration::from_secs(10);
/// "Never answers", as far as any budget here is concerned.
const HANG: Duration = Duration::from_secs(30);
const TEN_MB: usize = 10 * 1024 * 1024;

/// The gateway configuration: AS `corp` at `as_url` (`timeout: 1s`,
/// `retries: 1`), an `auth: none` route on `/health` and an exchange route
/// `api` (scope `api:read`) on `/api`, both to `backend`.
fn gateway_yaml(as_url: &str, backend: std::net::SocketAddr) -> String {
    let health =
        format!("  - name: health\n    match: {{ path: /health }}\n    upstream: http://{backend}\n    auth: none\n");
    config_with(as_url, BASIC_AUTH, &(health + &exchange_route("api", "/api", backend, "")))
        .replace("timeout: 2s", "timeout: 1s")
}

/// One caller request and how long it took.
struct Outcome {
    status: u16,
    headers: HeaderMap,
    body: String,
    waited: Duration,
}

async fn timed(url: &str, token: &str) -> Outcome {
    let started = Instant::now();
    let (status, headers, body) = get(url, Some(token)).await;
    Outcome { status: status.as_u16(), headers, body, waited: started.elapsed() }
}

impl Outcome {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Within the budget, a JSON error body, and the given status.
    fn failed(&self, what: &str, status: u16) {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert!(self.waited < BUDGET + SLACK, "{what}: the caller waited {:?}", self.waited);
        assert!(self.body.starts_with("{\"error\":"), "{what}: {}", self.body);
    }

    /// `503` with a `Retry-After` of whole seconds, and no challenge (the
    /// caller's token is not at fault).
    fn unavailable(&self, what: &str) {
        self.failed(what, 503);
        let retry_after = self.header("retry-after").unwrap_or_else(|| panic!("{what}: 503 without Retry-After"));
        assert!(retry_after.parse::<u64>().is_ok_and(|s| s >= 1), "{what}: Retry-After {retry_after}");
        assert_eq!(self.header("www-authenticate"), None, "{what}");
    }

    fn bad_gateway(&self, what: &str) {
        self.failed(what, 502);
        assert_eq!(self.header("www-authenticate"), None, "{what}");
    }
}

/// The `auth: none` route answers, whatever state the AS is in.
async fn health_answers(gw: &TestGateway, what: &str) {
    let (status, _, body) = get(&format!("{}/health", gw.url), None).await;
    assert_eq!(status, 200, "{what}: the auth: none route: {body}");
}

/// Polls with a new subject token each time (`token(i)`) until the
/// gateway answers 200 with a token from the AS (`good-N`), then checks the
/// `auth: none` route.
async fn serves_again(gw: &TestGateway, what: &str, mut token: impl FnMut(usize) -> String) {
    let deadline = Instant::now() + RECOVERY;
    for i in 1.. {
        let (status, _, body) = get(&format!("{}/api/after", gw.url), Some(&token(i))).await;
        if status == 200 {
            let forwarded = seen(&echoed(&body), "authorization");
            assert!(forwarded.len() == 1 && forwarded[0].starts_with("Bearer good-"), "{what}: {forwarded:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{what}: still {status} {RECOVERY:?} after the fault ended: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    health_answers(gw, what).await;
}

// ---------------------------------------------------------------------------
// The token endpoint

/// A fresh gateway in front of a faulty token endpoint.
struct Rig {
    faulty: Faulty,
    gw: TestGateway,
}

impl Rig {
    async fn start(mode: Mode) -> Rig {
        let faulty = Faulty::start(mode).await;
        let backend = echo_backend().await;
        let gw = TestGateway::start(&gateway_yaml(&faulty.url("/token"), backend)).await;
        Rig { faulty, gw }
    }

    async fn call(&self, subject: &str) -> Outcome {
        timed(&format!("{}/api/x", self.gw.url), subject).await
    }

    /// The AS is healthy again (listening, valid answers): the same gateway serves.
    async fn recovers(&self, what: &str) {
        self.faulty.up().await;
        self.faulty.set(Mode::Good);
        serves_again(&self.gw, what, |i| format!("fresh-subject-{i}")).await;
    }
}

/// What the caller gets for one fault of the token endpoint.
enum Expect {
    /// `503` + `Retry-After` after this many AS requests.
    Unavailable(RangeInclusive<usize>),
    /// `502` after one AS request (no retry).
    BadGateway,
    /// `401` `invalid_token` after one AS request.
    InvalidToken,
    /// `403` `insufficient_scope` after one AS request.
    InsufficientScope,
    /// `200` with this token at the backend; `cached`: a second call with
    /// the same subject token is served without another exchange.
    Forwarded { token: &'static str, cached: bool },
}

async fn exchange_fault(name: &str, mode: Mode, expect: Expect) -> Outcome {
    let rig = Rig::start(mode).await;
    let o = rig.call("subject-under-fault").await;
    let n = rig.faulty.count();
    eprintln!("fault {name}: {} in {} ms after {n} AS request(s)", o.status, o.waited.as_millis());
    match &expect {
        Expect::Unavailable(attempts) => {
            o.unavailable(name);
            assert!(attempts.contains(&n), "{name}: {n} AS requests, expected {attempts:?}");
        }
        Expect::BadGateway => o.bad_gateway(name),
        Expect::InvalidToken => {
            o.failed(name, 401);
            assert_eq!(o.header("www-authenticate"), Some(INVALID_TOKEN), "{name}");
            // The short negative cache: the same token again is refused without a request.
            assert_eq!(rig.call("subject-under-fault").await.status, 401, "{name}: second call");
            assert_eq!(rig.faulty.count(), 1, "{name}: invalid_grant is not negatively cached");
        }
        Expect::InsufficientScope => {
            o.failed(name, 403);
            let challenge = "Bearer realm=\"tokex\", error=\"insufficient_scope\", scope=\"api:read\"";
            assert_eq!(o.header("www-authenticate"), Some(challenge), "{name}");
        }
        Expect::Forwarded { token, cached } => {
            assert_eq!(o.status, 200, "{name}: {}", o.body);
            assert!(o.waited < BUDGET + SLACK, "{name}: waited {:?}", o.waited);
            assert_eq!(seen(&echoed(&o.body), "authorization"), vec![format!("Bearer {token}")], "{name}");
            assert_eq!(rig.call("subject-under-fault").await.status, 200, "{name}: second call");
            let want = if *cached { 1 } else { 2 };
            assert_eq!(rig.faulty.count(), want, "{name}: AS requests for two calls (cached: {cached})");
        }
    }
    if !matches!(expect, Expect::Unavailable(_) | Expect::Forwarded { .. }) {
        assert_eq!(n, 1, "{name}: an answer that is not 5xx, 429 or a network error is not retried");
    }
    health_answers(&rig.gw, name).await;
    rig.recovers(name).await;
    o
}

/// One test per fault of the token endpoint.
macro_rules! exchange_faults {
    ($($(#[$doc:meta])* $name:ident: $mode:expr => $expect:expr;)*) => {$(
        $(#[$doc])*
        #[tokio::test]
        async fn $name() {
            exchange_fault(stringify!($name), $mode, $expect).await;
        }
    )*};
}

fn token_with(extra: &str) -> Mode {
    Mode::token("tok-exp", extra)
}

exchange_faults! {
    /// Headers sent, then the body stalls: the budget covers the body too.
    as_stalls_mid_body: Mode::SlowBody(HANG) => Expect::Unavailable(1..=1);
    as_resets_in_the_status_line: Mode::ResetInHead => Expect::Unavailable(2..=2);
    as_resets_mid_body: Mode::ResetMidBody => Expect::Unavailable(2..=2);
    /// `Content-Length: 200`, fewer bytes, then a clean close.
    as_closes_before_content_length: Mode::ShortBody => Expect::Unavailable(2..=2);
    as_500: Mode::json(500, "{}") => Expect::Unavailable(2..=2);
    as_502: Mode::raw(502, "text/html", "<html>bad gateway</html>") => Expect::Unavailable(2..=2);
    as_503: Mode::json(503, r#"{"error":"temporarily_unavailable"}"#) => Expect::Unavailable(2..=2);
    /// SPEC §2 retries "network errors and 5xx"; the code retries 429 too.
    as_429: Mode::json(429, "{}") => Expect::Unavailable(1..=2);
    /// A `Retry-After` beyond the whole budget: a retry within it is not
    /// what the AS asked for (observed: retried anyway, see the report).
    as_429_with_retry_after: Mode::json(429, "{}").with_header("retry-after", "30") => Expect::Unavailable(1..=2);
    as_200_not_json: Mode::raw(200, "application/json", "access_token=x&token_type=bearer") => Expect::BadGateway;
    as_200_without_access_token: Mode::json(200, r#"{"token_type":"Bearer","expires_in":60}"#) => Expect::BadGateway;
    as_200_of_10_mb_with_content_length: Mode::Huge { bytes: TEN_MB, chunked: false } => Expect::BadGateway;
    as_200_of_10_mb_chunked: Mode::Huge { bytes: TEN_MB, chunked: true } => Expect::BadGateway;
    as_200_html_page: Mode::raw(200, "text/html", "<html><body>Sign in</body></html>") => Expect::BadGateway;
    /// The body decides, not the label (RFC 6749 §5.1 says JSON; the answer is one).
    as_200_json_labelled_text_html: Mode::Answer {
        status: 200,
        content_type: "text/html",
        headers: vec![],
        body: br#"{"access_token":"tok-exp","token_type":"Bearer","expires_in":60}"#.to_vec(),
    } => Expect::Forwarded { token: "tok-exp", cached: true };
    /// Redirects are not followed (a login page, a moved endpoint): unusable.
    as_302_redirect: Mode::raw(302, "text/html", "").with_header("location", "https://login.example/") => Expect::BadGateway;
    as_invalid_grant: Mode::json(400, r#"{"error":"invalid_grant"}"#) => Expect::InvalidToken;
    as_invalid_scope: Mode::json(400, r#"{"error":"invalid_scope"}"#) => Expect::InsufficientScope;
    as_invalid_client: Mode::json(401, r#"{"error":"invalid_client"}"#) => Expect::BadGateway;
    /// Valid for no time: forwarded once, not cached.
    expires_in_zero: token_with(r#""expires_in":0"#) => Expect::Forwarded { token: "tok-exp", cached: false };
    expires_in_negative: token_with(r#""expires_in":-5"#) => Expect::BadGateway;
    /// RFC 6749 says a number; a numeric string is a common deviation, read as the number.
    expires_in_numeric_string: token_with(r#""expires_in":"300""#) => Expect::Forwarded { token: "tok-exp", cached: true };
    expires_in_non_numeric_string: token_with(r#""expires_in":"abc""#) => Expect::BadGateway;
    /// Capped by max_ttl: accepted and cached.
    expires_in_1e12: token_with(r#""expires_in":1e12"#) => Expect::Forwarded { token: "tok-exp", cached: true };
    /// null is absent: default_ttl.
    expires_in_null: token_with(r#""expires_in":null"#) => Expect::Forwarded { token: "tok-exp", cached: true };
}

/// Slower than the budget: the caller gets 503 when the budget ends, not
/// when the AS answers, and there is no time left for a retry.
#[tokio::test]
async fn as_slower_than_the_budget() {
    let o =
        exchange_fault("as_slower_than_the_budget", Mode::Slow(HANG, Box::new(Mode::Good)), Expect::Unavailable(1..=1))
            .await;
    assert!(o.waited >= BUDGET - Duration::from_millis(100), "gave up after {:?}, before the budget", o.waited);
}

/// Nobody listens on the AS's port: connections are refused.
#[tokio::test]
async fn as_port_refuses_connections() {
    let rig = Rig::start(Mode::Good).await;
    rig.faulty.down().await;
    let o = rig.call("subject-under-fault").await;
    eprintln!("fault as_port_refuses_connections: {} in {} ms", o.status, o.waited.as_millis());
    o.unavailable("connection refused");
    assert_eq!(rig.faulty.count(), 0);
    health_answers(&rig.gw, "connection refused").await;
    rig.recovers("connection refused").await;
}

/// Concurrent callers of one subject token under a hanging AS share one
/// exchange, and every one of them is answered within the budget.
#[tokio::test]
async fn concurrent_callers_under_a_hanging_as_are_all_bounded() {
    let rig = Rig::start(Mode::Slow(HANG, Box::new(Mode::Good))).await;
    let url = format!("{}/api/x", rig.gw.url);
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let url = url.clone();
            let subject = if i % 2 == 0 { "shared-subject".to_owned() } else { format!("own-subject-{i}") };
            tokio::spawn(async move { timed(&url, &subject).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unavailable("concurrent callers, hanging AS");
    }
    assert_eq!(rig.faulty.count(), 11, "one exchange for the shared subject, one per other subject");
    rig.recovers("concurrent callers, hanging AS").await;
}

// ---------------------------------------------------------------------------
// Inbound: the JWKS endpoint

fn jwks_answer(signer: &EcSigner) -> Mode {
    Mode::json(200, &json!({ "keys": [signer.jwk.clone()] }).to_string())
}

/// A gateway validating JWTs against `jwks`, exchanging at `auth_server`.
async fn jwt_gateway(jwks: &Faulty, auth_server: &Faulty) -> TestGateway {
    let backend = echo_backend().await;
    let inbound = jwt_inbound(
        &jwks.url("/jwks.json"),
        "[ES256]",
        "    timeout: 1s\n    jwks_refresh_min: 1s\n    unknown_kid_cooldown: 1s\n",
    );
    TestGateway::start(&(inbound + &gateway_yaml(&auth_server.url("/token"), backend))).await
}

/// Keys that never come (first fetch hangs): 503 within the JWKS budget,
/// nothing reaches the AS; keys that come later are used.
#[tokio::test]
async fn jwks_endpoint_that_hangs() {
    let ec = EcSigner::new("ec-1");
    let jwks = Faulty::start(Mode::Slow(HANG, Box::new(jwks_answer(&ec)))).await;
    let auth_server = Faulty::start(Mode::Good).await;
    let gw = jwt_gateway(&jwks, &auth_server).await;
    let o = timed(&format!("{}/api/x", gw.url), &ec.token(&claims(json!({})))).await;
    eprintln!("fault jwks hangs: {} in {} ms", o.status, o.waited.as_millis());
    o.unavailable("hanging JWKS");
    assert_eq!(auth_server.count(), 0, "an unchecked token reached the AS");
    health_answers(&gw, "hanging JWKS").await;
    jwks.set(jwks_answer(&ec));
    serves_again(&gw, "hanging JWKS", |_| ec.token(&claims(json!({})))).await;
}

/// A JWKS that is no key set — HTML, no usable key, 10 MB, cut off: never
/// loaded, so 503 (not 401: the token may well be good), then recovery.
#[tokio::test]
async fn jwks_endpoint_that_sends_junk() {
    let ec = EcSigner::new("ec-1");
    let cases = [
        ("HTML page", Mode::raw(200, "text/html", "<html>maintenance</html>")),
        ("no keys", Mode::json(200, r#"{"keys":[]}"#)),
        ("only a symmetric key", Mode::json(200, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"ec-1"}]}"#)),
        ("10 MB chunked", Mode::Huge { bytes: TEN_MB, chunked: true }),
        ("reset mid-body", Mode::ResetMidBody),
        ("HTTP 500", Mode::json(500, "{}")),
    ];
    let auth_server = Faulty::start(Mode::Good).await;
    for (name, junk) in cases {
        let jwks = Faulty::start(junk).await;
        let gw = jwt_gateway(&jwks, &auth_server).await;
        let o = timed(&format!("{}/api/x", gw.url), &ec.token(&claims(json!({})))).await;
        eprintln!("fault jwks {name}: {} in {} ms", o.status, o.waited.as_millis());
        o.unavailable(&format!("JWKS {name}"));
        health_answers(&gw, name).await;
        jwks.set(jwks_answer(&ec));
        serves_again(&gw, name, |_| ec.token(&claims(json!({})))).await;
    }
    assert_eq!(auth_server.count(), 6, "one exchange per recovery, none for unchecked tokens");
}

/// Once keys are loaded, a refetch that brings junk keeps them: known keys
/// still verify (200), an unknown kid is the token's fault (401), not 503.
#[tokio::test]
async fn jwks_junk_after_keys_were_loaded_keeps_the_keys() {
    let ec = EcSigner::new("ec-1");
    let jwks = Faulty::start(jwks_answer(&ec)).await;
    let auth_server = Faulty::start(Mode::Good).await;
    let gw = jwt_gateway(&jwks, &auth_server).await;
    assert!(ready(&gw, Duration::from_secs(5)).await);
    let url = format!("{}/api/x", gw.url);
    assert_eq!(timed(&url, &ec.token(&claims(json!({})))).await.status, 200);
    jwks.set(Mode::raw(200, "text/html", "<html>maintenance</html>"));
    let fetched = jwks.count();
    let rotated = jws(&json!({"alg": "ES256", "typ": "at+jwt", "kid": "rotated"}), &claims(json!({})), |m| ec.sign(m));
    // Unknown kids until one refetch (past the 1 s cooldown) got the junk.
    let deadline = Instant::now() + Duration::from_secs(3);
    while jwks.count() == fetched {
        let o = timed(&url, &rotated).await;
        assert_eq!(o.status, 401, "unknown kid with keys loaded: {}", o.body);
        assert!(o.waited < BUDGET + SLACK, "waited {:?}", o.waited);
        assert!(Instant::now() < deadline, "no JWKS refetch for an unknown kid");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = timed(&url, &rotated).await;
    assert_eq!(o.status, 401, "{}", o.body);
    assert_eq!(o.header("www-authenticate"), Some(INVALID_TOKEN));
    let o = timed(&url, &ec.token(&claims(json!({})))).await;
    assert_eq!(o.status, 200, "the loaded key was dropped after a junk refetch: {}", o.body);
}

// ---------------------------------------------------------------------------
// Inbound: the introspection endpoint

fn active() -> Mode {
    Mode::json(200, &json!({"active": true, "scope": "api:read", "exp": now() + 600}).to_string())
}

/// A gateway introspecting at `endpoint`, exchanging at `auth_server`.
async fn introspection_gateway(endpoint: &Faulty, auth_server: &Faulty) -> TestGateway {
    let backend = echo_backend().await;
    let inbound = format!(
        "inbound:\n  introspection:\n    endpoint: {}\n    client_auth: {BASIC_AUTH}\n    cache_ttl: 30s\n    timeout: 1s\n",
        endpoint.url("/introspect")
    );
    TestGateway::start(&(inbound + &gateway_yaml(&auth_server.url("/token"), backend))).await
}

/// Each fault of the introspection endpoint → the caller's status, within
/// the budget, nothing exchanged, then recovery on the same gateway.
#[tokio::test]
async fn introspection_endpoint_faults() {
    let cases = [
        ("hangs", Mode::Slow(HANG, Box::new(active())), 503),
        ("refuses connections", Mode::Good, 503),
        ("resets mid-body", Mode::ResetMidBody, 503),
        ("HTTP 503", Mode::json(503, "{}"), 503),
        ("HTTP 429", Mode::json(429, "{}"), 503),
        ("200 HTML page", Mode::raw(200, "text/html", "<html>Sign in</html>"), 502),
        ("200 JSON without active", Mode::json(200, r#"{"scope":"api:read"}"#), 502),
        ("200 active as a string", Mode::json(200, r#"{"active":"true"}"#), 502),
        ("200 of 10 MB with Content-Length", Mode::Huge { bytes: TEN_MB, chunked: false }, 502),
        ("200 of 10 MB chunked", Mode::Huge { bytes: TEN_MB, chunked: true }, 502),
        ("401 for tokex's credentials", Mode::json(401, r#"{"error":"invalid_client"}"#), 502),
    ];
    let auth_server = Faulty::start(Mode::Good).await;
    for (name, mode, want) in cases {
        let endpoint = Faulty::start(mode).await;
        if name == "refuses connections" {
            endpoint.down().await;
        }
        let gw = introspection_gateway(&endpoint, &auth_server).await;
        let before = auth_server.count();
        let o = timed(&format!("{}/api/x", gw.url), "opaque-under-fault").await;
        eprintln!("fault introspection {name}: {} in {} ms", o.status, o.waited.as_millis());
        let what = format!("introspection {name}");
        if want == 503 {
            o.unavailable(&what);
        } else {
            o.bad_gateway(&what);
        }
        assert_eq!(auth_server.count(), before, "{what}: an unchecked token was exchanged");
        health_answers(&gw, &what).await;
        endpoint.up().await;
        endpoint.set(active());
        serves_again(&gw, &what, |i| format!("opaque-fresh-{i}")).await;
    }
}

/// Sanity of the fault server itself: `Good` is what the gateway accepts,
/// and `down` really refuses connections.
#[tokio::test]
async fn the_fault_server_behaves() {
    let faulty = Faulty::start(Mode::Good).await;
    let resp = client().post(faulty.url("/token")).body("a=b").send().await.unwrap();
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["access_token"], "good-1");
    faulty.down().await;
    assert!(tokio::net::TcpStream::connect(faulty.addr).await.is_err(), "the port still accepts");
    faulty.up().await;
    assert_eq!(client().get(faulty.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(faulty.count(), 2);
}
