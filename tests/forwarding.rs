//! Forwarding on the wire (SPEC §3): hop-by-hop headers, X-Forwarded-*,
//! credentials, token extraction, route matching, streaming, upgrades, h2c,
//! hostile input and the admin listener — all over real sockets.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::wire::*;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------
// 1. Hop-by-hop headers

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("a", "/", backend, "")).await;

    let request = "GET /hop HTTP/1.1\r\n\
        Host: gw.example\r\n\
        Authorization: Bearer broad\r\n\
        Connection: keep-alive, x-foo\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: trailers\r\n\
        Trailer: x-checksum\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        Proxy-Connection: keep-alive\r\n\
        Upgrade: websocket\r\n\
        X-Foo: connection-scoped\r\n\
        X-Keep: end-to-end\r\n\
        Content-Length: 0\r\n\r\n";
    let resp = raw(gw.running.addr, request).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = echoed(&resp.text());
    for name in
        ["connection", "keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection", "upgrade", "x-foo"]
    {
        assert_eq!(seen(&echo, name), Vec::<String>::new(), "{name} reached the backend: {echo}");
    }
    assert_eq!(seen(&echo, "x-keep"), vec!["end-to-end"]);
    assert_eq!(seen(&echo, "authorization"), vec!["Bearer exchanged-1"]);
    assert_eq!(echo["path"], "/hop");

    // Response side: the backend's `keep-alive` is dropped, ordinary headers kept.
    assert_eq!(resp.header("keep-alive"), None, "{:?}", resp.headers);
    assert_eq!(resp.header("x-backend-hop"), Some("should-not-be-stripped"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
}

// ---------------------------------------------------------------------------
// 2. X-Forwarded-*

#[tokio::test]
async fn x_forwarded_headers_and_host() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("a", "/", backend, "")).await;

    let resp = raw_get(
        gw.running.addr,
        "/xf",
        "shop.example.com:8443",
        &[
            "Authorization: Bearer broad",
            "X-Forwarded-For: 203.0.113.7",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: spoofed.example",
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = echoed(&resp.text());
    assert_eq!(seen(&echo, "host"), vec!["shop.example.com:8443"], "original Host preserved");
    assert_eq!(seen(&echo, "x-forwarded-for"), vec!["203.0.113.7, 127.0.0.1"]);
    assert_eq!(seen(&echo, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen(&echo, "x-forwarded-host"), vec!["shop.example.com:8443"]);

    // Without an inbound value, the peer alone.
    let (status, _, body) = get(&format!("{}/xf", gw.url), Some("broad")).await;
    assert_eq!(status, 200);
    let echo = echoed(&body);
    assert_eq!(seen(&echo, "x-forwarded-for"), vec!["127.0.0.1"]);
    let authority = gw.url.trim_start_matches("http://");
    assert_eq!(seen(&echo, "host"), vec![authority]);
    assert_eq!(seen(&echo, "x-forwarded-host"), vec![authority]);
}

/// Several `X-Forwarded-For` field lines form one list (RFC 9110 §5.3): the
/// proxy appends to all of it, it does not drop lines.
#[tokio::test]
async fn x_forwarded_for_keeps_every_inbound_line() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("a", "/", backend, "")).await;
    let resp = raw_get(
        gw.running.addr,
        "/xf",
        "gw.example",
        &["Authorization: Bearer broad", "X-Forwarded-For: 198.51.100.1", "X-Forwarded-For: 203.0.113.7"],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let xff = seen(&echoed(&resp.text()), "x-forwarded-for").join(", ");
    assert_eq!(xff, "198.51.100.1, 203.0.113.7, 127.0.0.1");
}

// ---------------------------------------------------------------------------
// 3. Credentials

#[tokio::test]
async fn inbound_credentials_never_reach_the_backend() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = open_route("open", "{ path_prefix: /open }", &format!("http://{backend}"))
        + &exchange_route("hdr", "/hdr", backend, "    forward: { header: x-access-token }\n")
        + &exchange_route("ex", "/ex", backend, "");
    let gw = gateway_with(&auth_server, &routes).await;

    // auth: none — the Authorization header is stripped, no exchange.
    let (status, _, body) = get(&format!("{}/open/x", gw.url), Some("broad-secret")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&echoed(&body), "authorization"), Vec::<String>::new());
    assert!(!body.contains("broad-secret"), "{body}");
    assert_eq!(auth_server.count(), 0, "auth: none must not exchange");

    // exchange — the broad token is replaced.
    let (status, _, body) = get(&format!("{}/ex/1", gw.url), Some("broad-secret")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&echoed(&body), "authorization"), vec!["Bearer exchanged-1"]);
    assert!(!body.contains("broad-secret"), "{body}");

    // forward.header — bare token in x-access-token, no Authorization, and a
    // caller-supplied x-access-token is replaced, not kept alongside.
    let resp = client()
        .get(format!("{}/hdr/1", gw.url))
        .bearer_auth("broad-secret")
        .header("x-access-token", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let echo = echoed(&body);
    assert_eq!(seen(&echo, "x-access-token"), vec!["exchanged-2"]);
    assert_eq!(seen(&echo, "authorization"), Vec::<String>::new());
    assert!(!body.contains("broad-secret") && !body.contains("spoofed"), "{body}");
    assert_eq!(auth_server.count(), 2);
}

// ---------------------------------------------------------------------------
// 4. Token extraction (SPEC §3.3)

#[tokio::test]
async fn token_extraction_answers() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("a", "/", backend, "")).await;
    let url = format!("{}/x", gw.url);

    // No header: 401, the bare challenge.
    let (status, headers, body) = get(&url, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer realm=\"tokex\"");

    // Another scheme: 401.
    let resp = client().get(&url).header("authorization", "Basic dXNlcjpwYXNz").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers().get("www-authenticate").unwrap(), "Bearer realm=\"tokex\"");

    // Two Authorization headers: 400 invalid_request.
    let resp =
        raw_get(gw.running.addr, "/x", "gw.example", &["Authorization: Bearer one", "Authorization: Bearer two"]).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_request\""), "{challenge}");
    assert_eq!(json(&resp.text())["error"], "invalid_request");

    // A space inside the token: 400 invalid_request.
    let resp = client().get(&url).header("authorization", "Bearer abc def").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let challenge = resp.headers().get("www-authenticate").unwrap().to_str().unwrap().to_owned();
    assert!(challenge.contains("error=\"invalid_request\""), "{challenge}");

    // access_token in the query: refused, with or without a header.
    let (status, _, body) = get(&format!("{}/x?access_token=broad", gw.url), None).await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = get(&format!("{}/x?a=1&access_token=broad", gw.url), Some("good")).await;
    assert_eq!(status, 400, "{body}");

    assert_eq!(auth_server.count(), 0, "none of these may call the authorization server");

    // Lower-case scheme works.
    let resp = client().get(&url).header("authorization", "bearer lower-case").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(seen(&echoed(&resp.text().await.unwrap()), "authorization"), vec!["Bearer exchanged-1"]);
    assert_eq!(auth_server.last().param("subject_token"), Some("lower-case"));
}

// ---------------------------------------------------------------------------
// 5. Route matching

#[tokio::test]
async fn route_matching_over_the_wire() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    // Each route's upstream has its own base path, so the backend's `path`
    // says which route matched.
    let b = |base: &str| format!("http://{backend}/{base}");
    let routes = [
        open_route("exact-host", "{ host: api.example.com, path_prefix: /h }", &b("exact-host")),
        open_route("wild-host", "{ host: \"*.example.com\", path_prefix: /h }", &b("wild-host")),
        open_route("writes", "{ path_prefix: /m, methods: [POST, PUT] }", &b("writes")),
        open_route("tenant", "{ path_prefix: /t, headers: { x-tenant: acme } }", &b("tenant")),
        open_route("orders", "{ path_prefix: /orders }", &b("orders-route")),
        open_route("exact", "{ path: /exact }", &b("exact-route")),
        open_route("first", "{ path_prefix: /f, methods: [GET] }", &b("first")),
        open_route("second", "{ path_prefix: /f }", &b("second")),
    ]
    .concat();
    let gw = gateway_with(&auth_server, &routes).await;
    let addr = gw.running.addr;

    let matched = |resp: RawResponse| -> String {
        assert_eq!(resp.status, 200, "{}", resp.text());
        echoed(&resp.text())["path"].as_str().unwrap().to_owned()
    };
    let no_route = |resp: RawResponse| {
        assert_eq!(resp.status, 404, "{}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(json(&resp.text())["error"], "no_route");
    };

    // Host: exact (port ignored, case-insensitive), then *.suffix, not the apex.
    assert_eq!(matched(raw_get(addr, "/h/1", "api.example.com:8080", &[]).await), "/exact-host/h/1");
    assert_eq!(matched(raw_get(addr, "/h/1", "API.Example.COM", &[]).await), "/exact-host/h/1");
    assert_eq!(matched(raw_get(addr, "/h/1", "shop.example.com", &[]).await), "/wild-host/h/1");
    assert_eq!(matched(raw_get(addr, "/h/1", "a.b.example.com", &[]).await), "/wild-host/h/1");
    no_route(raw_get(addr, "/h/1", "example.com", &[]).await);
    no_route(raw_get(addr, "/h/1", "badexample.com", &[]).await);

    // Methods.
    no_route(raw_get(addr, "/m/1", "gw", &[]).await);
    let post =
        raw(addr, "POST /m/1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi").await.unwrap();
    assert_eq!(post.status, 200, "{}", post.text());
    let echo = echoed(&post.text());
    assert_eq!(
        (echo["path"].as_str(), echo["method"].as_str(), echo["body_len"].as_u64()),
        (Some("/writes/m/1"), Some("POST"), Some(2))
    );

    // Header match.
    no_route(raw_get(addr, "/t", "gw", &[]).await);
    no_route(raw_get(addr, "/t", "gw", &["X-Tenant: other"]).await);
    assert_eq!(matched(raw_get(addr, "/t", "gw", &["X-Tenant: acme"]).await), "/tenant/t");

    // Segment-aware prefix.
    assert_eq!(matched(raw_get(addr, "/orders", "gw", &[]).await), "/orders-route/orders");
    assert_eq!(matched(raw_get(addr, "/orders/1", "gw", &[]).await), "/orders-route/orders/1");
    no_route(raw_get(addr, "/ordersx", "gw", &[]).await);

    // Exact path.
    assert_eq!(matched(raw_get(addr, "/exact", "gw", &[]).await), "/exact-route/exact");
    no_route(raw_get(addr, "/exact/1", "gw", &[]).await);

    // First match wins: GET /f/x matches both; the first is chosen.
    assert_eq!(matched(raw_get(addr, "/f/x", "gw", &[]).await), "/first/f/x");
    let delete = raw(addr, "DELETE /f/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await.unwrap();
    assert_eq!(echoed(&delete.text())["path"], "/second/f/x");

    assert_eq!(auth_server.count(), 0);
}

// ---------------------------------------------------------------------------
// 6. Streaming

#[tokio::test]
async fn eight_mib_upload_and_download() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("a", "/", backend, "")).await;

    let mut rng = fastrand::Rng::with_seed(7);
    let upload: Vec<u8> = (0..8 * 1024 * 1024).map(|_| rng.u8(..)).collect();
    let want_sha = hex(&Sha256::digest(&upload));
    let resp = client().post(format!("{}/upload", gw.url)).bearer_auth("broad").body(upload).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo = echoed(&resp.text().await.unwrap());
    assert_eq!(echo["body_len"], 8 * 1024 * 1024);
    assert_eq!(echo["body_sha256"], want_sha.as_str());

    let resp = client().get(format!("{}/download/8388608", gw.url)).bearer_auth("broad").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 8_388_608);
    assert!(body.iter().all(|&b| b == b'x'));
}

/// A response body fed from a channel (Send + Sync, as `TestBody` needs).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn response_bodies_are_streamed_not_buffered() {
    let auth_server = RecordingAs::start().await;
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let backend = common::serve(move |_req: Request<Incoming>| {
        let release = r.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.try_send(Bytes::from_static(b"first-chunk")).unwrap();
            tokio::spawn(async move {
                release.notified().await;
                let _ = tx.send(Bytes::from_static(b"second-chunk")).await;
            });
            Response::new(ChannelBody(rx).boxed())
        }
    })
    .await;
    let gw = gateway_with(&auth_server, &exchange_route("a", "/", backend, "")).await;

    let mut resp = tokio::time::timeout(IO_TIMEOUT, client().get(format!("{}/stream", gw.url)).bearer_auth("b").send())
        .await
        .expect("response headers within 5 s")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    while got.len() < b"first-chunk".len() {
        let chunk = tokio::time::timeout(IO_TIMEOUT, resp.chunk())
            .await
            .expect("the first chunk did not arrive before the backend finished: the gateway buffers responses")
            .unwrap()
            .expect("body ended early");
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"first-chunk");
    release.notify_one();
    while let Some(chunk) = tokio::time::timeout(IO_TIMEOUT, resp.chunk()).await.expect("rest of the body").unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"first-chunksecond-chunk");
}

// ---------------------------------------------------------------------------
// 7. Upgrades

#[tokio::test]
async fn websocket_style_upgrade_is_tunnelled() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("a", "/", backend, "")).await;

    tokio::time::timeout(IO_TIMEOUT, async {
        let mut c = Conn::open(gw.running.addr).await;
        c.send(
            b"GET /upgrade HTTP/1.1\r\nHost: gw.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Authorization: Bearer broad\r\n\r\n",
        )
        .await
        .unwrap();
        let (status, headers) = c.head().await.unwrap();
        assert_eq!(status, 101, "{headers:?}");
        let h = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.to_ascii_lowercase());
        assert_eq!(h("upgrade").as_deref(), Some("websocket"));
        assert_eq!(h("connection").as_deref(), Some("upgrade"));
        for msg in [&b"ping-1"[..], b"a somewhat longer second frame \x00\x01\x02"] {
            c.send(msg).await.unwrap();
            assert_eq!(c.exact(msg.len()).await.unwrap(), msg);
        }
    })
    .await
    .expect("upgrade round trip within 5 s");
    assert_eq!(auth_server.count(), 1);
    assert_eq!(auth_server.last().param("subject_token"), Some("broad"));
}

// ---------------------------------------------------------------------------
// 8. h2c

#[tokio::test]
async fn h2c_prior_knowledge() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("a", "/", backend, "")).await;
    let tls = tokex::exchange::client::tls_config(None).unwrap();
    let h2 = reqwest::Client::builder().use_preconfigured_tls(tls).http2_prior_knowledge().build().unwrap();

    let resp = h2.get(format!("{}/h2/path?q=1", gw.url)).bearer_auth("broad-h2").send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let echo = echoed(&body);
    assert_eq!(seen(&echo, "authorization"), vec!["Bearer exchanged-1"]);
    assert_eq!((echo["path"].as_str(), echo["query"].as_str()), (Some("/h2/path"), Some("q=1")));
    let authority = gw.url.trim_start_matches("http://");
    assert_eq!(seen(&echo, "host"), vec![authority], ":authority becomes Host");
    assert_eq!(seen(&echo, "x-forwarded-host"), vec![authority]);
    assert!(!body.contains("broad-h2"));

    // Errors over h2 too.
    let resp = h2.get(format!("{}/h2", gw.url)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers().get("www-authenticate").unwrap(), "Bearer realm=\"tokex\"");
}

// ---------------------------------------------------------------------------
// 9. Hostile input and upstream failures

#[tokio::test]
async fn junk_bytes_get_400_or_close_and_the_gateway_keeps_serving() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("a", "/", backend, "")).await;
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all \xff\xfe\r\n\r\n"[..],
        b"GET / HTTP/9.9 garbage\r\n\r\n",
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header Without Colon\r\n\r\n",
    ] {
        let outcome = tokio::time::timeout(IO_TIMEOUT, async {
            let mut c = Conn::open(gw.running.addr).await;
            c.send(junk).await?;
            c.response().await
        })
        .await
        .expect("junk input: neither an answer nor a close within 5 s");
        if let Ok(resp) = outcome {
            assert_eq!(resp.status, 400, "junk {junk:?} answered {resp:?}");
        }
        assert_still_serving(&gw).await;
    }
}

#[tokio::test]
async fn oversized_headers_get_431_or_close() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("a", "/", backend, "")).await;
    let mut req = String::from("GET /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer big\r\n");
    for i in 0..100 {
        req.push_str(&format!("X-Pad-{i}: {}\r\n", "a".repeat(1024)));
    }
    req.push_str("\r\n");
    let outcome = tokio::time::timeout(IO_TIMEOUT, async {
        let mut c = Conn::open(gw.running.addr).await;
        c.send(req.as_bytes()).await?;
        c.response().await
    })
    .await
    .expect("oversized headers: neither an answer nor a close within 5 s");
    if let Ok(resp) = outcome {
        assert_eq!(resp.status, 431, "{resp:?}");
    }
    assert_eq!(auth_server.count(), 0);
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn dot_segment_paths_are_refused() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("orders", "/orders", backend, "")).await;
    for path in [
        "/orders/../admin",
        "/orders/%2e%2e/admin",
        "/orders/%2E%2E/admin",
        "/orders/.%2e/admin",
        "/orders/./1",
        "/orders/..;/admin",
        "/orders/%5c..%5cadmin",
        "/orders/%5C..%5Cadmin",
    ] {
        let resp = raw_get(gw.running.addr, path, "gw", &["Authorization: Bearer broad"]).await;
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
        assert_eq!(json(&resp.text())["error"], "invalid_request", "{path}");
    }
    assert_eq!(auth_server.count(), 0, "a refused path must not be exchanged");
    // A dot inside a segment is fine.
    let resp = raw_get(gw.running.addr, "/orders/v1.2/..x", "gw", &["Authorization: Bearer broad"]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn upstream_down_is_502_json() {
    let auth_server = RecordingAs::start().await;
    let dead = dead_addr();
    let routes = open_route("down", "{ path_prefix: /open }", &format!("http://{dead}"))
        + &exchange_route("down-ex", "/", dead, "");
    let gw = gateway_with(&auth_server, &routes).await;
    for (path, token) in [("/open", None), ("/x", Some("broad"))] {
        let (status, headers, body) = get(&format!("{}{path}", gw.url), token).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert_eq!(headers.get("content-type").unwrap(), "application/json");
        assert_eq!(json(&body)["error"], "upstream_unavailable");
    }
}

#[tokio::test]
async fn a_silent_upstream_is_504_after_the_route_timeout() {
    let auth_server = RecordingAs::start().await;
    let silent = common::serve(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Response::new(full("too late"))
    })
    .await;
    let gw = gateway_with(&auth_server, &exchange_route("slow", "/", silent, "    timeout: 300ms\n")).await;
    let started = Instant::now();
    let (status, headers, body) = tokio::time::timeout(IO_TIMEOUT, get(&format!("{}/x", gw.url), Some("broad")))
        .await
        .expect("the caller waited more than 5 s");
    let waited = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    assert_eq!(json(&body)["error"], "upstream_timeout");
    assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(1), "waited {waited:?}");
}

// ---------------------------------------------------------------------------
// 10. Admin listener

#[tokio::test]
async fn admin_endpoints() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = gateway_with(&auth_server, &exchange_route("orders", "/", backend, "")).await;
    assert_eq!(get(&format!("{}/x", gw.url), Some("broad")).await.0, 200);
    assert_eq!(get(&format!("{}/x", gw.url), Some("broad")).await.0, 200);
    assert_eq!(get(&format!("{}/x", gw.url), None).await.0, 401);

    let (status, _, body) = get(&format!("{}/healthz", gw.admin), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = get(&format!("{}/readyz", gw.admin), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, metrics) = get(&format!("{}/metrics", gw.admin), None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("tokex_requests_total{route=\"orders\",status=\"200\"} 2"), "{metrics}");
    assert!(metrics.contains("tokex_requests_total{route=\"orders\",status=\"401\"} 1"), "{metrics}");
    let (status, _, body) = get(&format!("{}/nope", gw.admin), None).await;
    assert_eq!(status, 404, "{body}");
    // The admin listener is not the proxy: gateway paths are not served there.
    assert_eq!(get(&format!("{}/x", gw.admin), Some("broad")).await.0, 404);
}

/// Found by review of the per-worker pool: a backend that answers before the
/// request's body is all there (an early 200, 413, redirect) leaves the
/// connection busy with that upload. It must not go back to the idle list
/// then: the next request would wait on another caller's upload.
#[tokio::test]
async fn a_connection_still_uploading_is_not_lent_to_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw backend that answers an upload at once and keeps reading it
    // (the connection stays open, busy with the upload).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let upload = head.starts_with(b"POST /upload");
                    let body = if upload { "early" } else { "next" };
                    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    conn.write_all(answer.as_bytes()).await.unwrap();
                    if upload {
                        while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                        return;
                    }
                    head.drain(..end + 4);
                }
            });
        }
    });
    let gw =
        TestGateway::start(&format!("routes:\n  - name: u\n    auth: none\n    upstream: http://{backend}\n")).await;
    // Caller A: a body of 100,000 bytes declared, 10 sent, then nothing.
    let mut a = tokio::net::TcpStream::connect(gw.running.addr).await.unwrap();
    a.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"early") {
        let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf)).await.expect("A's answer").unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // Caller B, on the same worker, right after: answered at once.
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(3), client().get(format!("{}/next", gw.url)).send())
        .await
        .expect("B is not held behind A's upload")
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "next");
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(a);
}
