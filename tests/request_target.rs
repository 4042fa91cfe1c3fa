//! The request target and `Host` (RFC 9112 §3.2, RFC 9110 §7.2, RFC 9113
//! §8.3.1) over real sockets: exactly one valid authority, userinfo
//! refused, the absolute-form authority wins; the backend is told the host
//! the route matched.

mod common;

use common::wire::*;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Two `auth: none` routes told apart by host, and a catch-all.
async fn gateway() -> TestGateway {
    let backend = echo_backend().await;
    TestGateway::start(&format!(
        "routes:\n\
         \x20 - name: a\n    match: {{ host: a.example }}\n    upstream: http://{backend}/a\n    auth: none\n\
         \x20 - name: b\n    match: {{ host: b.example }}\n    upstream: http://{backend}/b\n    auth: none\n\
         \x20 - name: any\n    upstream: http://{backend}/any\n    auth: none\n"
    ))
    .await
}

fn bad_request(resp: &RawResponse, what: &str) {
    assert_eq!(resp.status, 400, "{what}: {}", resp.text());
    assert!(resp.text().contains("\"error\":\"invalid_request\""), "{what}: {}", resp.text());
}

#[tokio::test]
async fn userinfo_in_an_absolute_form_target_is_refused() {
    let gw = gateway().await;
    let resp = raw(
        gw.running.addr,
        "GET http://user:secret@a.example/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    bad_request(&resp, "absolute-form with userinfo");
    assert!(!resp.text().contains("secret"), "{}", resp.text());
}

#[tokio::test]
async fn userinfo_in_the_h2_authority_is_refused() {
    let gw = gateway().await;
    let stream = tokio::net::TcpStream::connect(gw.running.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let send_to = |uri: String, host: Option<&str>| {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(Empty::<bytes::Bytes>::new()).unwrap()
    };
    let port = gw.running.addr.port();
    let resp = send.send_request(send_to(format!("http://user:secret@a.example:{port}/x"), None)).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains("secret"));

    // `Host` beside `:authority` must name the same authority.
    let resp = send.send_request(send_to(format!("http://a.example:{port}/x"), Some("b.example"))).await.unwrap();
    assert_eq!(resp.status(), 400);
    // The control: a plain `:authority` routes by its host and becomes Host.
    let resp = send.send_request(send_to(format!("http://b.example:{port}/x"), None)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo = echoed(&String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()));
    assert_eq!(echo["path"], "/b/x");
    assert_eq!(seen(&echo, "host"), vec![format!("b.example:{port}")]);
}

#[tokio::test]
async fn exactly_one_valid_host() {
    let gw = gateway().await;
    let addr = gw.running.addr;
    let send = |head: &'static str| async move { raw(addr, head).await.unwrap() };
    bad_request(
        &send("GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n").await,
        "two Host headers",
    );
    bad_request(&send("GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await, "HTTP/1.1 without Host");
    for bad in ["a b.example", "a.example/evil", "a.example:99999", "user@a.example", "a.example:80:80", ""] {
        let head = format!("GET /x HTTP/1.1\r\nHost: {bad}\r\nConnection: close\r\n\r\n");
        bad_request(&raw(addr, &head).await.unwrap(), &format!("Host {bad:?}"));
    }
    // HTTP/1.0 may omit Host: served by a route without a host match.
    let resp = send("GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(echoed(&resp.text())["path"], "/any/x");
}

#[tokio::test]
async fn the_absolute_form_authority_wins_over_host() {
    let gw = gateway().await;
    let resp = raw(gw.running.addr, "GET http://b.example/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = echoed(&resp.text());
    assert_eq!(echo["path"], "/b/x", "routed by the target's authority");
    assert_eq!(seen(&echo, "host"), vec!["b.example"]);
    assert_eq!(seen(&echo, "x-forwarded-host"), vec!["b.example"]);
}

/// Found by review: `a.example.` (fully qualified) skipped the `a.example`
/// route for a later catch-all. It is the same host; empty labels are not.
#[tokio::test]
async fn a_fully_qualified_host_matches_its_route() {
    let gw = gateway().await;
    let resp = raw(gw.running.addr, "GET /x HTTP/1.1\r\nHost: a.example.\r\nConnection: close\r\n\r\n").await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(echoed(&resp.text())["path"], "/a/x");
    for bad in ["..a.example", "a..example", "a.example:0"] {
        let head = format!("GET /x HTTP/1.1\r\nHost: {bad}\r\nConnection: close\r\n\r\n");
        bad_request(&raw(gw.running.addr, &head).await.unwrap(), bad);
    }
}

#[tokio::test]
async fn connect_and_asterisk_form_are_refused() {
    let gw = gateway().await;
    let resp =
        raw(gw.running.addr, "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
    bad_request(&resp, "CONNECT");
    let resp =
        raw(gw.running.addr, "OPTIONS * HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n").await.unwrap();
    bad_request(&resp, "OPTIONS *");
}

/// Routes match on the path without segment parameters (`;...`), as
/// servers that strip them route: `/orders;jsessionid=1/1` is an orders
/// request, forwarded as sent. A header a backend may read as the route's
/// forward header (`x_token` for `x-token`) is refused.
#[tokio::test]
async fn segment_parameters_do_not_change_the_route_and_forward_header_aliases_are_refused() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = exchange_route("orders", "/orders", backend, "    forward: { header: x-token }\n")
        + &format!("  - {{ name: open, upstream: \"http://{backend}\", auth: none }}\n");
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes)).await;
    let resp = raw_get(gw.running.addr, "/orders;jsessionid=1/1", "gw", &["Authorization: Bearer broad-token-1"]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = echoed(&resp.text());
    assert_eq!(echo["path"], "/orders;jsessionid=1/1");
    assert_eq!(seen(&echo, "x-token"), ["exchanged-1"], "the orders route's token: {echo}");
    assert_eq!(auth_server.last().param("audience"), Some("orders-api"));
    let resp = raw_get(
        gw.running.addr,
        "/orders/1",
        "gw",
        &["Authorization: Bearer broad-token-1", "X_Token: chosen-by-the-caller"],
    )
    .await;
    bad_request(&resp, "x_token beside x-token");
}
