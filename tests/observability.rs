//! What an operator sees: every metric family after traffic (with no label
//! value taken from a request), the body limit, the access line and the
//! audit event (request id, trace id, client, upstream latency, the AS's
//! sanitised words, a refused actor token), and `check` in JSON.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::otlp;
use common::process::*;
use common::*;
use serde_json::{json, Value};

const FAMILIES: &[&str] = &[
    "tokex_build_info",
    "tokex_requests_total",
    "tokex_request_duration_seconds",
    "tokex_cache_lookups_total",
    "tokex_cache_entries",
    "tokex_cache_evictions_total",
    "tokex_exchanges_total",
    "tokex_exchange_duration_seconds",
    "tokex_exchanges_in_flight",
    "tokex_circuit_breaker_open",
    "tokex_exchanges_rate_limited_total",
    "tokex_invalid_token_retries_total",
    "tokex_upstream_errors_total",
    "tokex_upstream_duration_seconds",
    "tokex_config_reloads_total",
    "tokex_config_last_reload_success",
    "tokex_config_last_reload_timestamp_seconds",
    "tokex_tls_reloads_total",
    "tokex_connections_open",
    "tokex_connections_total",
    "tokex_inbound_rejections_total",
    "tokex_jwks_fetches_total",
    "tokex_introspections_total",
    "tokex_inbound_cache_total",
];

/// A sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Every `name{labels} value` sample of a scrape, with its labels.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (head, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").unwrap();
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().unwrap_or(f64::NAN))
        })
        .collect()
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .into_iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v)))
        .map(|(_, _, v)| v)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
}

#[tokio::test]
async fn metrics_show_every_family_and_no_label_from_the_request() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let routes = format!(
        "{}    max_body_bytes: 100\n  - name: down\n    match: {{ path_prefix: /down }}\n    upstream: http://{closed}\n    auth: none\n",
        exchange_route("orders", "/orders", backend, "")
    );
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes)).await;
    let c = client();
    let hostile = "EVIL-LABEL-VALUE";

    assert_eq!(get(&format!("{}/orders", gw.url), Some("subject-1")).await.0, 200);
    let resp = c
        .get(format!("{}/orders/{hostile}?{hostile}=1", gw.url))
        .bearer_auth("subject-1")
        .header("x-request-id", hostile)
        .header("x-tenant", hostile)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(get(&format!("{}/{hostile}", gw.url), Some("subject-1")).await.0, 404);

    // A declared body over the limit: refused before the exchange and the backend.
    let exchanges = auth_server.count();
    let resp =
        c.post(format!("{}/orders", gw.url)).bearer_auth("subject-2").body(vec![b'x'; 101]).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(serde_json::from_str::<Value>(&resp.text().await.unwrap()).unwrap()["error"], "request_too_large");
    assert_eq!(auth_server.count(), exchanges, "no exchange for a refused body");
    // At the limit: forwarded whole.
    let resp =
        c.post(format!("{}/orders", gw.url)).bearer_auth("subject-1").body(vec![b'x'; 100]).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(echoed(&resp.text().await.unwrap())["body_len"], 100);
    // A streamed body (no Content-Length) is counted as it comes.
    let mut conn = wire::Conn::open(gw.running.addr).await;
    let mut req =
        b"POST /orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer subject-1\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"28\r\n");
        req.extend_from_slice(&[b'y'; 40]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    conn.send(&req).await.unwrap();
    assert_eq!(conn.head().await.unwrap().0, 413, "a streamed body is counted as it comes");

    // A backend that refuses connections.
    assert_eq!(get(&format!("{}/down", gw.url), None).await.0, 502);

    let text = gw.metrics().await;
    for family in FAMILIES {
        let base = family.trim_end_matches("_total");
        assert!(text.contains(&format!("# TYPE {base} ")), "no family {family} in\n{text}");
    }
    assert_eq!(value(&text, "tokex_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert_eq!(value(&text, "tokex_config_last_reload_success", &[]), 1.0);
    assert!(value(&text, "tokex_config_last_reload_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(value(&text, "tokex_upstream_errors_total", &[("route", "down"), ("kind", "connect")]), 1.0);
    assert_eq!(value(&text, "tokex_requests_total", &[("route", "orders"), ("status", "413")]), 2.0);
    assert!(value(&text, "tokex_upstream_duration_seconds_count", &[("route", "orders")]) >= 3.0);
    assert!(value(&text, "tokex_connections_total", &[]) >= 1.0);
    assert_eq!(value(&text, "tokex_exchanges_in_flight", &[("server", "corp")]), 0.0);

    // Every label value is a route or server name, a status, a bucket
    // bound, a version, or one of the fixed words; nothing from a request.
    assert!(!text.contains(hostile), "a request value became a label:\n{text}");
    let fixed: BTreeSet<&str> = [
        "orders",
        "down",
        "-",
        "corp",
        "hit",
        "miss",
        "ok",
        "rejected",
        "refused",
        "route",
        "client",
        "listener",
        "upstream",
        "connect",
        "tls",
        "reset",
        "protocol",
        "timeout",
        "at_capacity",
        "expired",
        "size",
        "invalidated",
        "replaced",
    ]
    .into_iter()
    .collect();
    for (name, labels, _) in samples(&text) {
        for (k, v) in labels {
            let ok = match k.as_str() {
                "status" => v.parse::<u16>().is_ok(),
                "le" => v == "+Inf" || v.parse::<f64>().is_ok(),
                "version" => v == env!("CARGO_PKG_VERSION"),
                "outcome" | "reason" | "result" => v.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                _ => fixed.contains(v.as_str()),
            };
            assert!(ok, "{name}: label {k}={v:?} is not from the fixed set");
        }
    }
}

#[tokio::test]
async fn access_line_and_audit_event_carry_ids_and_the_as_reason() {
    let auth_server = RecordingAs::start().await;
    let leaked = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.U0VDUkVULVNJR05BVFVSRS1GT1ItVEhFLUxPRw";
    auth_server.set(move |r, n| match (r.param("subject_token"), r.param("actor_token")) {
        (_, Some(_)) => Reply::Json(400, json!({"error": "invalid_grant", "error_description": "actor token expired"})),
        (Some(s), _) if s.contains("REVOKED") => Reply::Json(
            400,
            json!({"error": "invalid_grant", "error_description": format!("token {leaked} revoked\nat 12:00")}),
        ),
        _ => issue(n),
    });
    let backend = echo_backend().await;
    let dir = temp_dir("obs");
    let actor = dir.join("actor");
    std::fs::write(&actor, fake_jwt(json!({"sub": "agent", "exp": now() - 60}))).unwrap();
    let routes = format!(
        "{}{}",
        exchange_route("orders", "/orders", backend, ""),
        exchange_route("agent", "/agent", backend, &format!("      actor: {{ token_file: {} }}\n", actor.display()))
    );
    let file = write_config(&dir, &config_with(&auth_server.token_url(), BASIC_AUTH, &routes));
    let gw = Proc::start(&file, "info").await;
    let c = client();
    let subject = fake_jwt(json!({"sub": "alice", "exp": now() + 600}));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");

    // A caller's request id and trace context: kept, forwarded, logged, returned.
    let resp = c
        .get(format!("{}/orders?secret=1", gw.addr))
        .bearer_auth(&subject)
        .header("x-request-id", "req-42")
        .header("traceparent", &traceparent)
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    let echo = echoed(&resp.text().await.unwrap());
    assert_eq!(seen(&echo, "x-request-id"), ["req-42"]);
    assert_eq!(seen(&echo, "traceparent"), [traceparent.as_str()], "forwarded unchanged");
    assert_eq!(seen(&echo, "tracestate"), ["vendor=abc"]);
    // None (or an unusable one): generated, the same everywhere.
    let resp =
        c.get(format!("{}/orders", gw.addr)).bearer_auth(&subject).header("x-request-id", "a b").send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "{generated}");
    assert_eq!(seen(&echoed(&resp.text().await.unwrap()), "x-request-id"), [generated.as_str()]);
    // The AS refuses the caller's token, echoing it in its description.
    let resp = c
        .get(format!("{}/orders", gw.addr))
        .bearer_auth("REVOKED-subject")
        .header("x-request-id", "req-43")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // The AS refuses the actor token: the caller's token is not blamed.
    let resp = c
        .get(format!("{}/agent", gw.addr))
        .bearer_auth(&subject)
        .header("x-request-id", "req-44")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "tokex's own credential was refused");
    assert!(resp.headers().get("www-authenticate").is_none());

    let mut events = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            events = gw.lines.lock().unwrap().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
            events.iter().filter(|v| v["target"] == "tokex::access").count() == 4
        })
        .await,
        "{}",
        gw.log()
    );
    let log = gw.log();
    // One event per line, every line JSON, no Rust Option rendering.
    for line in gw.lines.lock().unwrap().iter() {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "not one JSON event per line: {line}");
    }
    assert!(!log.contains("Some("), "{log}");
    assert!(
        !log.contains("eyJzdWIiOiJtYWxsb3J5In0") && !log.contains("U0VDUkVULVNJR05B"),
        "the AS's echo leaked: {log}"
    );
    assert!(!log.contains("secret=1"), "{log}");

    let access: Vec<&Value> = events.iter().filter(|v| v["target"] == "tokex::access").collect();
    let first = access[0];
    assert_eq!(first["request_id"], "req-42");
    assert_eq!(first["trace_id"], trace);
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["path"], "/orders");
    assert!(first["upstream_us"].is_u64() && first["latency_us"].is_u64() && first["exchange_us"].is_u64(), "{first}");
    assert_eq!(access[1]["request_id"], generated.as_str());
    assert!(access[1].get("trace_id").is_none(), "no traceparent, no trace id: {}", access[1]);
    assert_eq!(access[1]["cache"], "hit");

    let audit: Vec<&Value> = events.iter().filter(|v| v["target"] == "tokex::audit").collect();
    let ok = audit.iter().find(|a| a["request_id"] == "req-42").expect("audit of the first exchange");
    assert_eq!(ok["outcome"], "ok");
    assert_eq!(ok["token"], first["token"], "the subject token's fingerprint");
    assert!(ok["latency_us"].is_u64());
    assert!(ok.get("as_error").is_none());
    let refused = audit.iter().find(|a| a["request_id"] == "req-43").expect("audit of the refusal");
    assert_eq!(refused["outcome"], "invalid_grant");
    assert_eq!(refused["as_error"], "invalid_grant");
    assert_eq!(refused["as_error_description"], "token [redacted] revoked?at 12:00");
    let actor_refused = audit.iter().find(|a| a["request_id"] == "req-44").expect("audit of the actor refusal");
    assert_eq!(actor_refused["outcome"], "actor_rejected");
    assert_eq!(actor_refused["actor"], "agent");
    assert_eq!(actor_refused["as_error_description"], "actor token expired");
    assert!(
        events
            .iter()
            .any(|v| v["level"] == "ERROR"
                && v["message"].as_str().is_some_and(|m| m.contains("refused the actor token"))),
        "{log}"
    );
}

#[test]
fn check_writes_json_lines_when_asked() {
    let dir = temp_dir("check-json");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "listen: { address: \"127.0.0.1:0\" }\nroutes:\n  - name: a\n    upstream: http://127.0.0.1:1\n    auth: none\n    max_body_bytes: 1\n    upstream_tls: { server_name: \"not a name\" }\n  - name: a\n    upstream: nope\n    auth: none\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&file)
        .env("TOKEX_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let paths: Vec<&str> = lines.iter().filter_map(|l| l["path"].as_str()).collect();
    for p in ["routes[0].upstream_tls", "routes[0].upstream_tls.server_name", "routes[1].name", "routes[1].upstream"] {
        assert!(paths.contains(&p), "{p} missing from {lines:?}");
    }
    assert_eq!(lines.last().unwrap()["result"], "invalid");
    let good = dir.join("good.yaml");
    std::fs::write(&good, "listen: { address: \"127.0.0.1:0\" }\nroutes:\n  - { name: a, upstream: \"http://127.0.0.1:1\", auth: none }\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&good)
        .env("TOKEX_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let last: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["result"], "ok");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `tracing.otlp`: one server span per request with children for the
/// exchange and the upstream call, parented on the caller's `traceparent`;
/// the backend gets tokex's upstream span as its parent, same trace.
#[tokio::test]
async fn spans_are_exported_for_each_request() {
    let receiver = otlp::OtlpReceiver::start().await;
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let yaml = format!(
        "tracing:\n  otlp: {{ endpoint: \"{}\", service_name: gw-test }}\n{}",
        receiver.url(),
        config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/orders", backend, ""))
    );
    let gw = TestGateway::start(&yaml).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = client()
        .get(format!("{}/orders/1?token-in-query=SECRET-Q", gw.url))
        .bearer_auth("SUBJECT-SECRET-TOKEN")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = echoed(&resp.text().await.unwrap());
    let forwarded = seen(&echo, "traceparent");
    assert!(forwarded[0].starts_with(&format!("00-{trace}-")), "{forwarded:?}");
    assert!(!forwarded[0].contains("00f067aa0ba902b7"), "the backend's parent is tokex's upstream span");
    gw.running.shutdown().await;

    let spans = receiver.wait_for(3, Duration::from_secs(5)).await;
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    assert_eq!(server.trace_id, trace);
    assert_eq!(server.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(server.service_name, "gw-test");
    assert_eq!(server.attr("http.route"), Some("orders"));
    assert_eq!(server.attr("url.path"), Some("/orders/1"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    let child = |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} in {spans:?}"));
    let (exchange, upstream) = (child("token exchange"), child("upstream"));
    for c in [exchange, upstream] {
        assert_eq!(c.trace_id, trace);
        assert_eq!(c.parent_span_id, server.span_id);
    }
    assert_eq!(exchange.attr("tokex.cache"), Some("miss"));
    assert!(forwarded[0].contains(&upstream.span_id), "{forwarded:?} vs {}", upstream.span_id);
    for export in receiver.exports() {
        let bytes = String::from_utf8_lossy(&export.body);
        assert!(!bytes.contains("SECRET"), "a token or the query was exported");
    }
}

/// A caller's `x-request-id` that holds its bearer token is replaced, so
/// the token reaches neither the backend nor the log, even on a route whose
/// `remove_headers` lets that header skip the token check.
#[tokio::test]
async fn a_request_id_holding_the_token_is_replaced() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let extra = "    forward: { remove_headers: [cookie, x-request-id] }\n";
    let routes = exchange_route("orders", "/orders", backend, extra);
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes)).await;
    let token = "SUBJECT-TOKEN-0123456789";
    let resp = client()
        .get(format!("{}/orders", gw.url))
        .bearer_auth(token)
        .header("x-request-id", token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, token);
    assert_eq!(id.len(), 36, "a generated id: {id}");
    let echo = echoed(&resp.text().await.unwrap());
    assert_eq!(seen(&echo, "x-request-id"), [id.as_str()]);
    assert!(!echo.to_string().contains(token), "the token reached the backend: {echo}");
}
