//! Connection handling over real sockets: silent and half-open connections
//! are closed, idle keep-alive connections end after `idle_timeout`, the
//! connection cap holds (idle and silent connections make room, busy ones
//! are never shed), and while draining clients are told to move off
//! (`Connection: close`, HTTP/2 `GOAWAY`) before the listener closes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::wire::*;
use common::*;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with one `auth: none` route to an echo backend (and `/slow`,
/// which answers after 3 s) and the given `listen:` settings.
async fn gateway(listen: &str) -> TestGateway {
    let backend = echo_backend().await;
    let slow = serve(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(full("slow"))
    })
    .await;
    TestGateway::start(&format!(
        "listen: {{ address: \"127.0.0.1:0\", {listen} }}\nroutes:\n\
         \x20 - name: slow\n    match: {{ path: /slow }}\n    upstream: http://{slow}\n    auth: none\n\
         \x20 - name: echo\n    upstream: http://{backend}\n    auth: none\n"
    ))
    .await
}

/// How long until the server closes `stream` (reads until EOF or error).
async fn closed_after(mut stream: TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn silent_and_half_sent_connections_are_closed_after_the_header_timeout() {
    let gw = gateway("header_read_timeout: 500ms, idle_timeout: 30s").await;
    let cases: [(&str, &[u8]); 4] = [
        ("nothing at all", b""),
        ("14 bytes of the h2 preface", &H2_PREFACE[..14]),
        ("half a request head", b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Slow"),
        ("one byte", b"G"),
    ];
    let mut waits = Vec::new();
    for (name, bytes) in cases {
        let addr = gw.running.addr;
        waits.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(bytes).await.unwrap();
            (name, closed_after(s, Duration::from_secs(5)).await)
        }));
    }
    for w in waits {
        let (name, after) = w.await.unwrap();
        let after = after.unwrap_or_else(|| panic!("{name}: still open after 5 s"));
        assert!(
            after >= Duration::from_millis(400) && after < Duration::from_millis(1500),
            "{name}: closed after {after:?}"
        );
    }
    // A complete h2 preface is an HTTP/2 connection: idle, not silent.
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // empty SETTINGS
    assert!(closed_after(s, Duration::from_millis(1200)).await.is_none(), "an idle h2 connection was cut as silent");
}

#[tokio::test]
async fn idle_keep_alive_connections_end_after_the_idle_timeout() {
    let gw = gateway("header_read_timeout: 300ms, idle_timeout: 1200ms").await;
    let mut c = Conn::open(gw.running.addr).await;
    let req = b"GET /a HTTP/1.1\r\nHost: gw.example\r\n\r\n";
    c.send(req).await.unwrap();
    assert_eq!(c.response().await.unwrap().status, 200);
    // Idle longer than the header timeout, shorter than the idle timeout: still open.
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.send(req).await.unwrap();
    let resp = c.response().await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), None);
    let idle_from = Instant::now();
    let closed = closed_after(c.stream, Duration::from_secs(5)).await.expect("idle connection still open after 5 s");
    assert!(closed >= Duration::from_millis(1000), "closed after {closed:?}, {:?} idle", idle_from.elapsed());

    // HTTP/2: a connection without streams gets GOAWAY after the idle timeout.
    let stream = TcpStream::connect(gw.running.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let resp = send.send_request(Request::get("http://gw.example/h2").body(Empty::<bytes::Bytes>::new()).unwrap());
    assert_eq!(resp.await.unwrap().status(), 200);
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the idle h2 connection was not closed");
    assert!(started.elapsed() >= Duration::from_millis(1000), "{:?}", started.elapsed());
}

/// Same class as silent connections: a client that asks for a large answer
/// and never reads it kept the connection (and an upstream one) forever.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    let gw = gateway("header_read_timeout: 1s, idle_timeout: 1s").await;
    let size = 64 * 1024 * 1024;
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(format!("GET /download/{size} HTTP/1.1\r\nHost: gw.example\r\n\r\n").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Whatever was buffered before the stall, then the end: not the whole answer.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was still open");
    assert!(got < size, "the whole answer arrived ({got} bytes): the stall was not noticed");
}

/// Found by review: an HTTP/2 client that holds its flow-control window at
/// zero (and answers pings) kept a request "in flight" forever; no socket
/// write ever blocks, since nothing is sent.
#[tokio::test]
async fn an_h2_client_that_never_opens_its_window_is_cut_off() {
    let gw = gateway("header_read_timeout: 1s, idle_timeout: 1s").await;
    let (resp, conn, _send) = zero_window_download(gw.running.addr, 1_048_576).await;
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    // The body is never read: the window stays at zero.
    let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
    assert!(ended.is_ok(), "the connection was still open after 6 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    drop(resp);
}

/// An HTTP/2 download whose client never opens its flow-control window:
/// the answer's head, and the connection's task (and its handle, which
/// keeps the connection open).
type Stalled = (
    Response<Incoming>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
    hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>,
);

async fn zero_window_download(addr: SocketAddr, size: usize) -> Stalled {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://gw.example/download/{size}")).body(Empty::<bytes::Bytes>::new()).unwrap();
    (send.send_request(req).await.unwrap(), conn, send)
}

/// Found by the second review: at the cap, shedding notices came every
/// 250 ms and restarted the watchdog, so zero-window stalls were never cut
/// and held every slot.
#[tokio::test]
async fn zero_window_stalls_are_cut_at_the_cap_too() {
    let gw = gateway("header_read_timeout: 1s, idle_timeout: 1s, max_connections: 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(zero_window_download(gw.running.addr, 65536).await);
    }
    // The cap is full of stalled connections; a fourth client gets in once they are cut.
    let started = Instant::now();
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(6), get(&format!("{}/a", gw.url), None))
        .await
        .expect("a new client waited more than 6 s");
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    for (_, conn, _) in held {
        assert!(tokio::time::timeout(Duration::from_secs(3), conn).await.is_ok(), "a stalled connection stayed");
    }
}

/// Found by review: an upgraded connection that goes silent held its slot
/// forever. It ends after `idle_timeout` without a byte either way.
#[tokio::test]
async fn a_silent_upgraded_connection_is_closed() {
    let gw = gateway("header_read_timeout: 1s, idle_timeout: 1s").await;
    let mut c = Conn::open(gw.running.addr).await;
    c.send(b"GET /upgrade HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await.unwrap();
    let (status, _) = c.head().await.unwrap();
    assert_eq!(status, 101);
    // Talking keeps it open...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        c.send(b"ping").await.unwrap();
        assert_eq!(c.exact(4).await.unwrap(), b"ping");
    }
    // ...silence ends it.
    let closed = closed_after(c.stream, Duration::from_secs(5)).await.expect("the silent tunnel stayed open");
    assert!(closed >= Duration::from_millis(900), "{closed:?}");
}

/// Opens `n` connections that send nothing.
async fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(TcpStream::connect(addr).await.unwrap());
    }
    v
}

#[tokio::test]
async fn at_the_cap_silent_and_idle_connections_make_room_and_busy_ones_stay() {
    // Long header timeout: only the cap can free the silent connections.
    let gw = gateway("header_read_timeout: 30s, idle_timeout: 30s, max_connections: 20").await;
    let url = gw.url.clone();
    // One busy connection (a request in flight for 3 s) and one idle keep-alive.
    let busy = tokio::spawn(async move { get(&format!("{url}/slow"), None).await });
    let mut idle = Conn::open(gw.running.addr).await;
    idle.send(b"GET /a HTTP/1.1\r\nHost: gw.example\r\n\r\n").await.unwrap();
    assert_eq!(idle.response().await.unwrap().status, 200);
    let hold = silent(gw.running.addr, 18).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // older than the shedding minimum age

    let started = Instant::now();
    let (status, _, _) =
        tokio::time::timeout(Duration::from_secs(5), get(&format!("{}/served", gw.url), None)).await.expect("served");
    assert_eq!(status, 200);
    eprintln!("a new client at the cap was served after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // The idle and silent connections were closed to make room...
    assert!(closed_after(idle.stream, Duration::from_secs(1)).await.is_some(), "the idle connection was kept");
    let mut closed = 0;
    for s in hold {
        closed += usize::from(closed_after(s, Duration::from_millis(200)).await.is_some());
    }
    assert_eq!(closed, 18, "silent connections still open");
    // ...but the busy one finished its request.
    let (status, _, body) = busy.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow"));
}

/// The gateway binary run with `routes` under `ulimit -n files`; its
/// address. It is killed when the returned child is dropped.
async fn under_file_limit(files: usize, routes: &str) -> (tokio::process::Child, SocketAddr) {
    let dir = std::env::temp_dir().join(format!("tokex-fd-{}-{}-{}", std::process::id(), now(), fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokex.yaml");
    std::fs::write(
        &file,
        format!("listen: {{ address: \"127.0.0.1:0\", header_read_timeout: 60s }}\nroutes:\n{routes}"),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_tokex");
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {files} && exec {bin} run -c {}", file.display()))
        .env("TOKEX_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        loop {
            line.clear();
            assert!(lines.read_line(&mut line).await.unwrap() > 0, "tokex exited");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "tokex listening" {
                return v["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap();
            }
        }
    })
    .await
    .expect("tokex starts");
    tokio::spawn(async move {
        // Keep reading the log so the child never blocks on a full pipe.
        let mut sink = Vec::new();
        let _ = lines.read_to_end(&mut sink).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
    (child, addr)
}

/// The review's case: with a low open-files limit, hundreds of silent
/// connections must not deny service to everyone (they used to: accept
/// failed with EMFILE and 0 of 10 requests were served).
#[tokio::test]
async fn silent_connections_beyond_the_open_files_limit_do_not_deny_service() {
    let backend = echo_backend().await;
    let (mut child, addr) =
        under_file_limit(160, &format!("  - name: r\n    upstream: http://{backend}\n    auth: none\n")).await;
    let hold = silent(addr, 300).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut served = 0;
    for i in 0..10 {
        let url = format!("http://{addr}/r{i}");
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), client().get(&url).send()).await {
            served += usize::from(resp.status() == 200);
        }
    }
    drop(hold);
    let _ = child.kill().await;
    assert_eq!(served, 10, "requests served while 300 silent connections were open under a 160-file limit");
}

/// Found by the second review: HTTP/2 puts many requests on one client
/// connection, each of which may need an upstream connection, so 250
/// streams to a slow backend ran out of descriptors (EMFILE on accept, 502s
/// upstream). Requests at upstreams are bounded by what the limit leaves.
#[tokio::test]
async fn h2_streams_cannot_run_the_gateway_out_of_descriptors() {
    let backend = echo_backend().await;
    let slow = serve(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        Response::new(full("slow"))
    })
    .await;
    let routes = format!(
        "  - name: slow\n    match: {{ path: /slow }}\n    upstream: http://{slow}\n    auth: none\n  - name: r\n    upstream: http://{backend}\n    auth: none\n"
    );
    let (mut child, addr) = under_file_limit(200, &routes).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for _ in 0..200 {
        let mut send = send.clone();
        streams.push(tokio::spawn(async move {
            let req = Request::get("http://gw.example/slow").body(Empty::<bytes::Bytes>::new()).unwrap();
            send.send_request(req).await.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile other clients get in and are served.
    for i in 0..5 {
        let resp = tokio::time::timeout(Duration::from_secs(6), client().get(format!("http://{addr}/r{i}")).send())
            .await
            .expect("another client waited more than 6 s")
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let mut statuses = std::collections::BTreeMap::new();
    for s in streams {
        *statuses.entry(s.await.unwrap()).or_insert(0) += 1;
    }
    let _ = child.kill().await;
    assert_eq!(
        statuses.get(&200),
        Some(&200),
        "every stream served, none refused for lack of descriptors: {statuses:?}"
    );
}

#[tokio::test]
async fn draining_tells_keep_alive_clients_to_move_off_before_the_listener_closes() {
    let backend = echo_backend().await;
    let gw = TestGateway::start(&format!(
        "runtime: {{ shutdown_delay: 2s, shutdown_grace: 5s }}\nroutes:\n  - name: r\n    upstream: http://{backend}\n    auth: none\n"
    ))
    .await;
    let addr = gw.running.addr;
    let req = b"GET /a HTTP/1.1\r\nHost: gw.example\r\n\r\n";
    let mut h1 = Conn::open(addr).await;
    h1.send(req).await.unwrap();
    let resp = h1.response().await.unwrap();
    assert_eq!((resp.status, resp.header("connection")), (200, None));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut h2, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    let h2_req = || Request::get("http://gw.example/h2").body(Empty::<bytes::Bytes>::new()).unwrap();
    assert_eq!(h2.send_request(h2_req()).await.unwrap().status(), 200);

    let draining_since = Instant::now();
    let stop = tokio::spawn(gw.running.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;

    // HTTP/1.1: the next answer on the open connection says close, and it closes.
    h1.send(req).await.unwrap();
    let resp = h1.response().await.unwrap();
    assert_eq!((resp.status, resp.header("connection")), (200, Some("close")));
    assert!(closed_after(h1.stream, Duration::from_secs(1)).await.is_some());
    // A new connection during the delay is served, and told the same.
    let resp = raw(addr, "GET /b HTTP/1.1\r\nHost: gw.example\r\n\r\n").await.unwrap();
    assert_eq!((resp.status, resp.header("connection")), (200, Some("close")));
    // HTTP/2: GOAWAY, well before the listener closes at the end of the delay.
    tokio::time::timeout(Duration::from_secs(1), h2_conn).await.expect("no GOAWAY while draining").unwrap().unwrap();
    assert!(draining_since.elapsed() < Duration::from_millis(1800));
    assert!(TcpStream::connect(addr).await.is_ok(), "the listener still accepts during the delay");
    stop.await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "the listener closed after the delay");
}
