//! The caller's credentials never reach the backend, wherever they ride
//! along: an `access_token` URL parameter in any spelling, the bearer
//! token's value in the URL, another header, a cookie or the body, and the
//! headers removed on each `auth` mode (`forward.remove_headers`).

mod common;

use std::sync::{Arc, Mutex};

use common::wire::*;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

/// An echo backend that also keeps every request body it received (whole
/// or cut short), so a test can prove a token never arrived.
async fn recording_backend() -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b = bodies.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let bodies = b.clone();
        async move {
            let path = req.uri().path().to_owned();
            let mut received = Vec::new();
            let mut body = req.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    received.extend_from_slice(&d);
                }
            }
            let len = received.len();
            bodies.lock().unwrap().push(received);
            Response::new(full(json!({"path": path, "body_len": len}).to_string()))
        }
    })
    .await;
    (addr, bodies)
}

fn routes(backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "{}  - name: open\n    match: {{ path_prefix: /open }}\n    upstream: http://{backend}\n    auth: none\n{}",
        exchange_route("ex", "/ex", backend, extra),
        "  - name: egress\n    match: { path_prefix: /egress }\n    upstream: http://".to_owned()
            + &backend.to_string()
            + "\n    auth: client_credentials\n    exchange: { authorization_server: corp, audience: [x] }\n"
    )
}

fn refused(resp: &RawResponse, what: &str) {
    assert_eq!(resp.status, 400, "{what}: {}", resp.text());
    let body = resp.text();
    assert!(body.contains("\"error\":\"invalid_request\""), "{what}: {body}");
}

/// Item: `?access%5Ftoken=` passed the old check (plain `access_token=` did
/// not). Every spelling a server would decode to `access_token` is refused,
/// on every auth mode, before any exchange.
#[tokio::test]
async fn access_token_url_parameters_are_refused_in_every_spelling_on_every_route() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes(backend, ""))).await;
    let spellings = [
        "access_token=broad",
        "access%5Ftoken=broad",
        "access%5ftoken=broad",
        "%61ccess_token=broad",
        "access%255Ftoken=broad",
        "ACCESS_TOKEN=broad",
        "a=1;access_token=broad",
        "access.token=broad",
        "access+token=broad",
        "access_token[]=broad",
        // Found by review: PHP, qs/Rack, ASP.NET and decode-before-split spellings.
        "+access_token=broad",
        "access_token%00=broad",
        "[access_token]=broad",
        "]access_token=broad",
        "%u0061ccess_token=broad",
        "a=%26access_token%3Dbroad",
        "accessToken=broad",
    ];
    for prefix in ["/ex/1", "/open/1", "/egress/1"] {
        for q in spellings {
            let target = format!("{prefix}?{q}");
            let resp = raw_get(gw.running.addr, &target, "gw.example", &["Authorization: Bearer broad"]).await;
            refused(&resp, &target);
        }
        let resp = raw_get(gw.running.addr, &format!("{prefix};access_token=broad"), "gw.example", &[]).await;
        refused(&resp, "a ;access_token path parameter");
    }
    assert_eq!(auth_server.count(), 0, "a refused request is never exchanged");
    // Names that merely contain the words pass, and so does prose that
    // decodes to them (found by the second review).
    let resp =
        raw_get(gw.running.addr, "/ex/1?my_access_token_count=2", "gw.example", &["Authorization: Bearer broad"]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for q in ["q=refresh+%26+access+token", "q=cookies%3B%20access%20token", "q=a%26accessToken"] {
        let resp = raw_get(gw.running.addr, &format!("/open/search?{q}"), "gw.example", &[]).await;
        assert_eq!(resp.status, 200, "{q}: {}", resp.text());
    }
}

/// On exchange routes the caller's token itself must not ride along in the
/// URL or another header (raw or percent-encoded): refused before the
/// exchange, so the AS is not called either.
#[tokio::test]
async fn the_bearer_token_elsewhere_in_the_head_is_refused() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes(backend, ""))).await;
    let token = fake_jwt(json!({"sub": "alice", "exp": now() + 600, "jti": "SECRET-CLAIM"}));
    let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
    let auth = format!("Authorization: Bearer {token}");
    let api_key = format!("X-Api-Key: {token}");
    let forwarded = format!("X-Original-Auth: Bearer {token}");
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (format!("/ex/1?t={token}"), vec![&auth], "the query"),
        (format!("/ex/1?t={encoded}"), vec![&auth], "the query, percent-encoded"),
        (format!("/ex/{token}"), vec![&auth], "the path"),
        ("/ex/1".into(), vec![&auth, &api_key], "another header"),
        ("/ex/1".into(), vec![&auth, &forwarded], "another header, after a scheme"),
    ];
    for (target, headers, what) in &cases {
        let resp = raw_get(gw.running.addr, target, "gw.example", headers).await;
        refused(&resp, what);
        assert!(!resp.text().contains("SECRET"), "{what}: the answer echoes the token");
    }
    // Found by review: the token as the method, as the absolute-form
    // authority, and as a header name (lower case tokens).
    let hex = "0123456789abcdef0123456789abcdef";
    let with = |line: String, extra: &str| {
        format!("{line}\r\nHost: x\r\nAuthorization: Bearer {hex}\r\n{extra}Connection: close\r\n\r\n")
    };
    for (what, request) in [
        ("the method", with(format!("{hex} /ex/1 HTTP/1.1"), "")),
        ("the absolute-form authority", with(format!("GET http://{hex}/ex/1 HTTP/1.1"), "")),
        ("a header name", with("GET /ex/1 HTTP/1.1".into(), &format!("{hex}: 1\r\n"))),
    ] {
        refused(&raw(gw.running.addr, &request).await.unwrap(), what);
    }
    let long_method = format!("{} /ex/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "M".repeat(60_000));
    assert_eq!(raw(gw.running.addr, &long_method).await.map(|r| r.status).unwrap_or(400), 400, "a 60 KB method");
    assert_eq!(auth_server.count(), 0);

    // A cookie holding the token is removed by default, so it is not a leak:
    // the request goes through and the backend sees no cookie.
    let cookie = format!("Cookie: session={token}");
    let resp = raw_get(gw.running.addr, "/ex/1", "gw.example", &[&auth, &cookie]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(!resp.text().contains("SECRET") && seen(&echoed(&resp.text()), "cookie").is_empty());
}

/// The same cookie on a route that keeps cookies would reach the backend:
/// refused there.
#[tokio::test]
async fn a_kept_cookie_holding_the_token_is_refused() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let extra = "    forward: { remove_headers: [] }\n";
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes(backend, extra))).await;
    let token = fake_jwt(json!({"sub": "alice", "exp": now() + 600}));
    let resp = raw_get(
        gw.running.addr,
        "/ex/1",
        "gw.example",
        &[&format!("Authorization: Bearer {token}"), &format!("Cookie: a=1; session={token}")],
    )
    .await;
    refused(&resp, "a kept cookie");
    // Other cookies are kept on this route.
    let resp =
        raw_get(gw.running.addr, "/ex/1", "gw.example", &[&format!("Authorization: Bearer {token}"), "Cookie: a=1"])
            .await;
    assert_eq!(resp.status, 200);
    assert_eq!(seen(&echoed(&resp.text()), "cookie"), vec!["a=1"]);
}

/// A body carrying the caller's token is cut off before the chunk that
/// holds it, and the caller gets `400`: the backend never receives the
/// token, even split across chunks or after a megabyte of data.
#[tokio::test]
async fn the_bearer_token_in_the_body_never_reaches_the_backend() {
    let auth_server = RecordingAs::start().await;
    let (backend, bodies) = recording_backend().await;
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes(backend, ""))).await;
    let token = fake_jwt(json!({"sub": "alice", "exp": now() + 600, "pad": "x".repeat(200)}));

    // A JSON body with the token, sent in one piece.
    let body = json!({"note": "hello", "token": token}).to_string();
    let resp = client().post(format!("{}/ex/upload", gw.url)).bearer_auth(&token).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("request body"));

    // Chunked, with the token split across two chunks after 1 MiB of data.
    let (head, tail) = token.split_at(token.len() / 2);
    let prefix = "a".repeat(1024 * 1024);
    let chunks = [prefix.as_str(), "form=1&copy=", head, tail, "&end=1"];
    let mut request = format!(
        "POST /ex/upload HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for c in chunks {
        request.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    request.push_str("0\r\n\r\n");
    let resp = raw(gw.running.addr, &request).await.unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text());

    // Found by review: a token whose last byte comes in a later TCP segment
    // must not leave before it (it used to, all but that byte).
    let body = format!("{{\"t\":\"{token}\"}}");
    let cut = body.len() - 3;
    let mut c = Conn::open(gw.running.addr).await;
    c.send(
        format!(
            "POST /ex/upload HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            body.len(),
            &body[..cut]
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    c.send(&body.as_bytes()[cut..]).await.unwrap();
    assert_eq!(c.response().await.unwrap().status, 400);

    // A form body with the token percent-encoded (RFC 6750 §2.2's own form).
    let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
    let resp = client()
        .post(format!("{}/ex/upload", gw.url))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("a=1&access_token={encoded}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "a percent-encoded token in a form body");

    // Found by the second review: form parsers read more than the exact
    // media type (PHP and Rack cut it at `,` or a space; Rack reads a POST
    // without one as a form).
    for content_type in [
        Some("application/x-www-form-urlencoded,text/plain"),
        Some("application/x-www-form-urlencoded charset=utf-8"),
        Some(""),
        None,
    ] {
        let mut req = client().post(format!("{}/ex/upload", gw.url)).bearer_auth(&token);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.body(format!("a=1&access_token={encoded}")).send().await.unwrap();
        assert_eq!(resp.status(), 400, "Content-Type {content_type:?}");
    }

    // A body without the token streams through untouched.
    let clean = "b".repeat(300_000);
    let resp = client().post(format!("{}/ex/upload", gw.url)).bearer_auth(&token).body(clean).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(echoed(&resp.text().await.unwrap())["body_len"], 300_000);

    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Not even most of it: no 32-byte piece of the token reached the backend.
    let pieces: Vec<&[u8]> = token.as_bytes().chunks(32).filter(|p| p.len() == 32).collect();
    for received in bodies.lock().unwrap().iter() {
        for piece in &pieces {
            assert!(!received.windows(32).any(|w| w == *piece), "the backend received part of the token");
        }
    }
}

/// Found by the second review: bytes that might begin the token were held
/// back until the next chunk, so an interactive stream (send a message,
/// wait for the reply) waited forever on exchange routes. Only a possible
/// beginning is held, and never longer than a moment.
#[tokio::test]
async fn an_interactive_request_stream_is_not_held_back() {
    let auth_server = RecordingAs::start().await;
    // Answers as soon as the message (x-len bytes) has arrived, body still open.
    let backend = serve(|req: Request<Incoming>| async move {
        let want: usize = req.headers()["x-len"].to_str().unwrap().parse().unwrap();
        let mut body = req.into_body();
        let mut got = Vec::new();
        while got.len() < want {
            match body.frame().await {
                Some(Ok(f)) => got.extend_from_slice(&f.into_data().unwrap_or_default()),
                _ => break,
            }
        }
        Response::new(full(got))
    })
    .await;
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes(backend, ""))).await;
    let token = fake_jwt(json!({"sub": "alice", "exp": now() + 600}));
    // "hello": nothing that could begin the token (it starts "eyJ"); "hello ey": it could.
    for message in ["hello", "hello ey"] {
        let mut c = Conn::open(gw.running.addr).await;
        let head = format!(
            "POST /ex/talk HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nX-Len: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{message}\r\n",
            message.len(),
            message.len()
        );
        c.send(head.as_bytes()).await.unwrap();
        let resp = tokio::time::timeout(std::time::Duration::from_secs(2), c.response())
            .await
            .unwrap_or_else(|_| panic!("{message:?}: no answer while the body stays open"))
            .unwrap();
        assert_eq!((resp.status, resp.text()), (200, message.to_owned()));
    }
}

/// What the backend receives of the caller's credentials on each auth mode:
/// `Authorization`, `Proxy-Authorization`, `Cookie` and `Forwarded` are
/// removed by default; `forward.remove_headers` replaces the list.
#[tokio::test]
async fn inbound_credential_headers_removed_on_each_auth_mode() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes(backend, ""))).await;
    let sent = [
        "Authorization: Bearer broad-secret",
        "Proxy-Authorization: Basic c2VjcmV0",
        "Cookie: session=cookie-secret",
        "Forwarded: for=203.0.113.9;host=spoofed.example",
        "X-Api-Key: key-1",
    ];
    for path in ["/ex/1", "/open/1", "/egress/1"] {
        let resp = raw_get(gw.running.addr, path, "gw.example", &sent).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        let echo = echoed(&resp.text());
        for name in ["proxy-authorization", "cookie", "forwarded"] {
            assert!(seen(&echo, name).is_empty(), "{path}: {name} reached the backend");
        }
        assert!(!resp.text().contains("broad-secret") && !resp.text().contains("cookie-secret"), "{path}");
        assert_eq!(seen(&echo, "x-api-key"), vec!["key-1"], "{path}: other headers pass");
        let authorization = seen(&echo, "authorization");
        match path {
            "/open/1" => assert!(authorization.is_empty()),
            _ => assert!(authorization[0].starts_with("Bearer exchanged-"), "{path}: {authorization:?}"),
        }
    }

    // remove_headers replaces the default: cookies and Forwarded kept, the API key removed.
    let auth_server = RecordingAs::start().await;
    let extra = "    forward: { remove_headers: [x-api-key] }\n";
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes(backend, extra))).await;
    let resp = raw_get(gw.running.addr, "/ex/1", "gw.example", &sent).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = echoed(&resp.text());
    assert_eq!(seen(&echo, "cookie"), vec!["session=cookie-secret"]);
    assert_eq!(seen(&echo, "forwarded").len(), 1);
    assert!(seen(&echo, "x-api-key").is_empty());
    assert!(seen(&echo, "proxy-authorization").is_empty(), "always removed");
}

#[test]
fn remove_headers_is_checked() {
    let yaml = |list: &str| {
        format!(
            "listen: {{ address: \"127.0.0.1:0\" }}\nroutes:\n  - name: r\n    upstream: http://127.0.0.1:1\n    auth: none\n    forward: {{ remove_headers: {list} }}\n"
        )
    };
    assert!(tokex::config::parse(&yaml("[cookie, x-api-key]")).is_ok());
    let err = tokex::config::parse(&yaml("[\"bad header\"]")).unwrap_err().to_string();
    assert!(err.contains("routes[0].forward.remove_headers[0]"), "{err}");
    let err = tokex::config::parse(&yaml("[host]")).unwrap_err().to_string();
    assert!(err.contains("host cannot be removed"), "{err}");
}
