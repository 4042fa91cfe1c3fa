//! OpenTelemetry trace export (src/otel.rs) against a real OTLP/HTTP
//! receiver on 127.0.0.1: what is exported, what never is, and that a
//! collector that is down or silent never blocks or hangs anything.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::otlp::*;
use http::{HeaderMap, HeaderValue, Method};
use tokex::otel::{OtlpConfig, RequestAttrs, Tracer};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.caller-secret-token.sig";

fn config(endpoint: url::Url, timeout: Duration) -> OtlpConfig {
    OtlpConfig { endpoint, service_name: "tokex-test".to_owned(), sample_ratio: 1.0, timeout, ca_file: None }
}

/// A sampled caller's headers, with a bearer token, a cookie and tracestate.
fn caller() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("traceparent", HeaderValue::from_str(&format!("00-{TRACE}-{SPAN}-01")).unwrap());
    h.insert("tracestate", HeaderValue::from_static("vendor=opaque"));
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap());
    h.insert("cookie", HeaderValue::from_static("session=cookie-secret"));
    h
}

fn attrs(path: &str, status: u16) -> RequestAttrs<'_> {
    let client = IpAddr::from([192, 0, 2, 9]);
    RequestAttrs { route: "orders", path, status, client, cache: Some(false), request_id: "req-42" }
}

/// Ends `n` request spans with a child each.
fn burst(tracer: &Tracer, n: usize) {
    let h = caller();
    for _ in 0..n {
        let req = tracer.request(&h, &Method::GET);
        req.child("upstream").end(Some(200), None);
        req.end(attrs("/orders/1", 200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_its_children_are_exported_in_one_trace() {
    let receiver = OtlpReceiver::start().await;
    let tracer = Tracer::start(&config(receiver.url(), Duration::from_secs(5))).unwrap();

    let req = tracer.request(&caller(), &Method::POST);
    assert_eq!(req.trace_id(), TRACE);
    let mut exchange = req.child("token exchange");
    exchange.set("tokex.as.server", "corp".to_owned());
    let exchange_tp = exchange.traceparent();
    exchange.end(Some(200), None);
    let mut upstream = req.child("upstream");
    upstream.set("server.address", "127.0.0.1".to_owned());
    let upstream_tp = upstream.traceparent();
    upstream.end(Some(503), Some("upstream unavailable"));
    req.end(attrs("/orders/7?access_token=query-secret", 502));
    tracer.shutdown().await;

    // shutdown exported everything: no waiting needed.
    let spans = receiver.spans();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap_or_else(|| panic!("no span {n}: {spans:#?}"));
    let (server, exchange, upstream) = (by_name("POST orders"), by_name("token exchange"), by_name("upstream"));
    assert!(spans.iter().all(|s| s.trace_id == TRACE && s.service_name == "tokex-test"));
    assert_eq!(server.parent_span_id, SPAN);
    assert_eq!(exchange.parent_span_id, server.span_id);
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!([server.kind, exchange.kind, upstream.kind], [KIND_SERVER, KIND_CLIENT, KIND_CLIENT]);
    assert_eq!(exchange_tp.to_str().unwrap(), format!("00-{TRACE}-{}-01", exchange.span_id));
    assert_eq!(upstream_tp.to_str().unwrap(), format!("00-{TRACE}-{}-01", upstream.span_id));

    let want = [
        ("http.request.method", "POST"),
        ("url.path", "/orders/7"),
        ("http.route", "orders"),
        ("http.response.status_code", "502"),
        ("client.address", "192.0.2.9"),
        ("tokex.cache", "miss"),
        ("tokex.request_id", "req-42"),
        ("error.type", "502"),
    ];
    for (k, v) in want {
        assert_eq!(server.attr(k), Some(v), "{k}: {server:#?}");
    }
    assert_eq!(server.attributes.len(), want.len(), "{server:#?}");
    assert_eq!(server.status_code, STATUS_ERROR);

    assert_eq!(exchange.attr("tokex.as.server"), Some("corp"));
    assert_eq!(exchange.attr("http.response.status_code"), Some("200"));
    assert_eq!(exchange.status_code, STATUS_UNSET);
    assert_eq!(upstream.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(upstream.attr("http.response.status_code"), Some("503"));
    assert_eq!(upstream.attr("error.type"), Some("upstream unavailable"));
    assert_eq!((upstream.status_code, upstream.status_message.as_str()), (STATUS_ERROR, "upstream unavailable"));

    let exports = receiver.exports();
    assert!(exports.iter().all(|e| e.content_type == "application/x-protobuf"));
}

#[tokio::test]
async fn no_token_header_value_or_query_is_ever_exported() {
    let receiver = OtlpReceiver::start().await;
    let tracer = Tracer::start(&config(receiver.url(), Duration::from_secs(5))).unwrap();
    let paths = ["/orders/7?access_token=query-secret", "/orders/7#frag-secret?x=1", "/a?b=query-secret#c"];
    for (i, path) in paths.into_iter().enumerate() {
        let mut h = caller();
        if i == 1 {
            h.remove("traceparent"); // a new root
        }
        let method = if i == 2 { Method::from_bytes(b"BREW").unwrap() } else { Method::GET };
        let req = tracer.request(&h, &method);
        let mut child = req.child("token exchange");
        child.set("tokex.outcome", "exchanged".to_owned());
        child.end(Some(200), None);
        req.end(attrs(path, 200));
    }
    // Spans dropped without end are ended, and exported, too.
    let req = tracer.request(&caller(), &Method::DELETE);
    drop(req.child("upstream"));
    drop(req);
    tracer.shutdown().await;

    let spans = receiver.spans();
    assert_eq!(spans.len(), 8, "{spans:#?}");
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for name in ["GET orders", "HTTP orders", "request", "upstream"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let other = spans.iter().find(|s| s.name == "HTTP orders").unwrap();
    assert_eq!(other.attr("http.request.method"), Some("_OTHER"));
    let paths: Vec<&str> = spans.iter().filter_map(|s| s.attr("url.path")).collect();
    assert_eq!(paths, ["/orders/7", "/orders/7", "/a"]);

    let bytes: Vec<u8> = receiver.exports().into_iter().flat_map(|e| e.body.to_vec()).collect();
    assert!(!bytes.is_empty());
    let text = String::from_utf8_lossy(&bytes);
    for secret in
        [TOKEN, "caller-secret-token", "Bearer", "query-secret", "access_token", "frag-secret", "cookie-secret"]
    {
        assert!(!text.contains(secret), "{secret:?} was exported");
    }
    assert!(!text.contains("BREW"), "a non-standard method was exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_never_blocks_or_panics() {
    // A port that was just closed: connections are refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let timeout = Duration::from_secs(2);
    let tracer = Tracer::start(&config(format!("http://{closed}/v1/traces").parse().unwrap(), timeout)).unwrap();
    let started = Instant::now();
    burst(&tracer, 5_000); // 10k spans
    let spent = started.elapsed();
    assert!(spent < Duration::from_secs(5), "10k spans took {spent:?}");
    let started = Instant::now();
    tracer.shutdown().await;
    let spent = started.elapsed();
    assert!(spent <= timeout + Duration::from_secs(1), "shutdown took {spent:?}");
    // Spans after shutdown go nowhere, quietly.
    burst(&tracer, 10);
    tracer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_collector_is_given_up_on_at_the_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let timeout = Duration::from_millis(400);
    let tracer = Tracer::start(&config(format!("http://{addr}/v1/traces").parse().unwrap(), timeout)).unwrap();
    let started = Instant::now();
    burst(&tracer, 1_000);
    assert!(started.elapsed() < Duration::from_secs(3), "ending spans took {:?}", started.elapsed());
    let started = Instant::now();
    tracer.shutdown().await;
    let spent = started.elapsed();
    assert!(spent <= timeout + Duration::from_secs(1), "shutdown took {spent:?}");
}

#[tokio::test]
async fn an_https_collector_is_trusted_through_ca_file() {
    let pki = common::certs::local_pki();
    let receiver = OtlpReceiver::start_tls(&pki.cert_pem, &pki.key_pem).await;
    let ca_file = std::env::temp_dir().join(format!("tokex-otel-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    // Without the CA the collector is not trusted: nothing arrives, nothing hangs.
    let untrusted = Tracer::start(&config(receiver.url(), Duration::from_secs(2))).unwrap();
    burst(&untrusted, 1);
    untrusted.shutdown().await;
    assert!(receiver.spans().is_empty());

    let cfg = OtlpConfig { ca_file: Some(ca_file.clone()), ..config(receiver.url(), Duration::from_secs(5)) };
    let tracer = Tracer::start(&cfg).unwrap();
    burst(&tracer, 1);
    tracer.shutdown().await;
    let _ = std::fs::remove_file(&ca_file);
    let spans = receiver.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == TRACE));
}

#[tokio::test]
async fn start_refuses_what_it_cannot_use() {
    let err = |endpoint: &str, f: &dyn Fn(&mut OtlpConfig)| {
        let mut cfg = config(endpoint.parse().unwrap(), Duration::from_secs(1));
        f(&mut cfg);
        Tracer::start(&cfg).expect_err("refused")
    };
    assert!(err("ftp://127.0.0.1/v1/traces", &|_| {}).contains("scheme"));
    assert!(err("http://u:p@127.0.0.1/v1/traces", &|_| {}).contains("credentials"));
    assert!(err("http://127.0.0.1/v1/traces", &|c| c.sample_ratio = 1.5).contains("ratio"));
    assert!(err("http://127.0.0.1/v1/traces", &|c| c.sample_ratio = f64::NAN).contains("ratio"));
    assert!(err("http://127.0.0.1/v1/traces", &|c| c.timeout = Duration::ZERO).contains("timeout"));
    let missing = err("https://127.0.0.1/v1/traces", &|c| c.ca_file = Some("/nonexistent/ca.pem".into()));
    assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
}

#[test]
fn start_needs_a_tokio_runtime() {
    let cfg = config("http://127.0.0.1:9/v1/traces".parse().unwrap(), Duration::from_secs(1));
    assert!(Tracer::start(&cfg).expect_err("refused").contains("tokio runtime"));
}
