//! Operations TLS: a route's `upstream_tls` (its own CAs instead of the web
//! PKI, a client certificate, a server name, ALPN h2 with an HTTP/1.1 pool
//! for upgrades, files re-read when they change), `upstream_pool`, the
//! listener's certificate rotation, and what `tokex check` says about
//! `upstream_tls`. Every server is real, on 127.0.0.1:0; certificate files
//! are rotated the way kubelet does it (a `..data` symlink swapped by rename).
#![cfg(unix)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------
// Certificates

/// A test CA made with rcgen.
struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A certificate issued by a [`Ca`], with its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(cn: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.0.der().clone()).unwrap();
        roots
    }

    /// A certificate for `sans` (an IP literal becomes an IP SAN), usable by
    /// a server or a client.
    fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key_der.clone()).unwrap()
    }

    fn sha256(&self) -> String {
        hex(&Sha256::digest(&self.der))
    }
}

// ---------------------------------------------------------------------------
// Files

/// A scratch directory, removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tokex-ops-tls-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory laid out like a kubelet secret volume: `NAME -> ..data/NAME`,
/// `..data -> ..vN`. [`Projected::publish`] writes a new `..vN`, points a
/// fresh symlink at it, renames that symlink over `..data` (one atomic swap
/// for every file) and removes the old version.
struct Projected {
    dir: PathBuf,
    version: usize,
}

impl Projected {
    fn new(dir: PathBuf, files: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = Projected { dir, version: 0 };
        p.publish(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), p.dir.join(name)).unwrap();
        }
        p
    }

    fn publish(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        for (name, content) in files {
            std::fs::write(self.dir.join(&version).join(name), content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if self.version > 1 {
            std::fs::remove_dir_all(self.dir.join(format!("..v{}", self.version - 1))).unwrap();
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

// ---------------------------------------------------------------------------
// A TLS backend

/// A server config for `leaf`, HTTP/2 and HTTP/1.1 by ALPN, requiring a
/// client certificate from `client_ca` when given.
fn backend_tls(leaf: &Leaf, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                .build()
                .unwrap(),
        ),
    };
    let mut config = builder.with_single_cert(vec![leaf.der.clone()], leaf.key()).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An HTTPS backend (tokio-rustls, then hyper-util's auto builder: HTTP/1.1
/// or h2, with upgrades). Every answer is JSON describing the connection:
/// `{version, path, sni, alpn, client_cert_sha256}`; an upgrade request gets
/// `101` (with `x-backend-version`) and an echo of the bytes that follow.
struct TlsBackend {
    addr: SocketAddr,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    /// Connections whose handshake succeeded.
    connections: Arc<AtomicUsize>,
}

impl TlsBackend {
    async fn start(config: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(Mutex::new(config));
        let connections = Arc::new(AtomicUsize::new(0));
        let (current, count) = (config.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let acceptor = tokio_rustls::TlsAcceptor::from(current.lock().unwrap().clone());
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    count.fetch_add(1, Ordering::SeqCst);
                    let conn = tls.get_ref().1;
                    let seen = Arc::new(json!({
                        "sni": conn.server_name(),
                        "alpn": conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                        "client_cert_sha256": conn.peer_certificates().and_then(|c| c.first()).map(|c| hex(&Sha256::digest(c))),
                    }));
                    let svc = service_fn(move |req| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer(req, &seen)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsBackend { addr, config, connections }
    }

    /// "Restarts" the backend with another certificate: new connections use it.
    fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.config.lock().unwrap() = config;
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

fn answer(mut req: Request<Incoming>, seen: &Value) -> Response<TestBody> {
    let version = format!("{:?}", req.version());
    if req.headers().contains_key(http::header::UPGRADE) {
        echo_upgraded(&mut req);
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("x-backend-version", version)
            .body(full(Bytes::new()))
            .unwrap();
    }
    let mut v = seen.clone();
    v["version"] = json!(version);
    v["path"] = json!(req.uri().path());
    Response::builder().header("content-type", "application/json").body(full(v.to_string())).unwrap()
}

// ---------------------------------------------------------------------------
// Gateway helpers

/// One `auth: none` route on `prefix` to `upstream`, with `upstream_tls` when `tls` is not empty.
fn route(name: &str, prefix: &str, upstream: &str, tls: &str) -> String {
    let tls = if tls.is_empty() { String::new() } else { format!("    upstream_tls: {tls}\n") };
    format!("  - name: {name}\n    auth: none\n    match: {{ path_prefix: {prefix} }}\n    upstream: {upstream}\n{tls}")
}

/// The value of the series `name{labels..}` in a Prometheus text exposition.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn upstream_errors(gw: &TestGateway, route: &str, kind: &str) -> Option<f64> {
    metric(&gw.metrics().await, "tokex_upstream_errors_total", &[("route", route), ("kind", kind)])
}

/// Failures counted for `route`, whatever their kind.
async fn upstream_errors_any(gw: &TestGateway, route: &str) -> f64 {
    let text = gw.metrics().await;
    ["connect", "tls", "reset", "protocol", "timeout", "at_capacity"]
        .iter()
        .map(|kind| metric(&text, "tokex_upstream_errors_total", &[("route", route), ("kind", kind)]).unwrap_or(0.0))
        .sum()
}

async fn tls_reloads(gw: &TestGateway, source: &str, result: &str) -> Option<f64> {
    metric(&gw.metrics().await, "tokex_tls_reloads_total", &[("source", source), ("result", result)])
}

/// GET through the gateway: the status and, on 200, the backend's JSON.
async fn through(gw: &TestGateway, path: &str) -> (StatusCode, Value) {
    let (status, _, body) = get(&format!("{}{path}", gw.url), None).await;
    let v = if status == StatusCode::OK { echoed(&body) } else { json!({ "gateway_body": body }) };
    (status, v)
}

/// Retries `f` (every 50 ms) until it returns `Some`, for at most `timeout`.
async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// upstream_tls

/// A backend with a certificate from a private CA: the web PKI roots do not
/// trust it (502, counted in `tokex_upstream_errors_total`), `ca_file` of
/// its CA does, and `ca_file` of another CA does not (the CAs replace the
/// roots, they do not add to them). A refused connection is counted as `connect`.
#[tokio::test]
async fn ca_file_replaces_the_web_pki_roots() {
    let scratch = Scratch::new("ca");
    let (ca, other) = (Ca::new("tokex private CA"), Ca::new("tokex other CA"));
    let backend = TlsBackend::start(backend_tls(&ca.leaf("backend", &["127.0.0.1"]), None)).await;
    let ca_file = scratch.write("ca.pem", &ca.pem());
    let other_file = scratch.write("other.pem", &other.pem());
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let routes = [
        route("plain", "/plain", &backend.url(), ""),
        route("private", "/private", &backend.url(), &format!("{{ ca_file: {} }}", ca_file.display())),
        route("other", "/other", &backend.url(), &format!("{{ ca_file: {} }}", other_file.display())),
        route("closed", "/closed", &format!("https://{closed}"), &format!("{{ ca_file: {} }}", ca_file.display())),
    ];
    let gw = TestGateway::start(&format!("routes:\n{}", routes.concat())).await;

    let (status, v) = through(&gw, "/plain/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "web PKI roots do not trust a private CA: {v}");
    let (status, v) = through(&gw, "/private/x").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["path"], "/private/x");
    assert_eq!(v["client_cert_sha256"], Value::Null, "no client certificate configured");
    assert_eq!(v["sni"], Value::Null, "an IP literal host is not sent as SNI");
    let (status, v) = through(&gw, "/other/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "ca_file of another CA: only that CA is trusted: {v}");
    let (status, v) = through(&gw, "/closed/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");

    // Each failure is counted once (its kind: `tls_failures_are_counted_as_kind_tls`).
    assert_eq!(upstream_errors_any(&gw, "plain").await, 1.0);
    assert_eq!(upstream_errors_any(&gw, "other").await, 1.0);
    assert_eq!(upstream_errors_any(&gw, "private").await, 0.0);
    assert_eq!(upstream_errors(&gw, "closed", "connect").await, Some(1.0));
    // Only the trusted connection got past the handshake.
    assert_eq!(backend.connections(), 1);
}

/// A backend requiring a client certificate from CA X: a route without
/// `cert_file`/`key_file` is refused, one with a certificate from another CA
/// too, one with X's certificate gets through and the backend saw it.
#[tokio::test]
async fn cert_file_and_key_file_present_a_client_certificate() {
    let scratch = Scratch::new("mtls");
    let (server_ca, client_ca, stranger_ca) = (Ca::new("server CA"), Ca::new("client CA X"), Ca::new("client CA Y"));
    let backend = TlsBackend::start(backend_tls(&server_ca.leaf("backend", &["127.0.0.1"]), Some(&client_ca))).await;
    let ca_file = scratch.write("ca.pem", &server_ca.pem());
    let good = client_ca.leaf("tokex", &[]);
    let stranger = stranger_ca.leaf("tokex", &[]);
    let good_cert = scratch.write("good.pem", &good.cert_pem);
    let good_key = scratch.write("good.key", &good.key_pem);
    let stranger_cert = scratch.write("stranger.pem", &stranger.cert_pem);
    let stranger_key = scratch.write("stranger.key", &stranger.key_pem);
    let tls = |cert: Option<(&Path, &Path)>| match cert {
        None => format!("{{ ca_file: {} }}", ca_file.display()),
        Some((c, k)) => {
            format!("{{ ca_file: {}, cert_file: {}, key_file: {} }}", ca_file.display(), c.display(), k.display())
        }
    };
    let routes = [
        route("anonymous", "/anonymous", &backend.url(), &tls(None)),
        route("stranger", "/stranger", &backend.url(), &tls(Some((&stranger_cert, &stranger_key)))),
        route("mtls", "/mtls", &backend.url(), &tls(Some((&good_cert, &good_key)))),
    ];
    let gw = TestGateway::start(&format!("routes:\n{}", routes.concat())).await;

    let (status, v) = through(&gw, "/anonymous/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "no client certificate: {v}");
    let (status, v) = through(&gw, "/stranger/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "a client certificate of a CA the backend does not trust: {v}");
    assert_eq!(backend.connections(), 0, "neither handshake succeeded");
    let (status, v) = through(&gw, "/mtls/x").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["client_cert_sha256"], json!(good.sha256()), "the backend saw the configured client certificate");
    assert_eq!(upstream_errors_any(&gw, "anonymous").await, 1.0);
    assert_eq!(upstream_errors_any(&gw, "stranger").await, 1.0);
    assert_eq!(upstream_errors_any(&gw, "mtls").await, 0.0);
}

/// `server_name` is sent as SNI and checked against the backend's
/// certificate instead of the URL's host.
#[tokio::test]
async fn server_name_is_sent_and_checked_instead_of_the_url_host() {
    let scratch = Scratch::new("sni");
    let ca = Ca::new("orders CA");
    let backend = TlsBackend::start(backend_tls(&ca.leaf("orders", &["orders.internal"]), None)).await;
    let ca_file = scratch.write("ca.pem", &ca.pem());
    let tls = |name: Option<&str>| match name {
        None => format!("{{ ca_file: {} }}", ca_file.display()),
        Some(n) => format!("{{ ca_file: {}, server_name: {n} }}", ca_file.display()),
    };
    let routes = [
        route("by-ip", "/by-ip", &backend.url(), &tls(None)),
        route("named", "/named", &backend.url(), &tls(Some("orders.internal"))),
        route("misnamed", "/misnamed", &backend.url(), &tls(Some("billing.internal"))),
    ];
    let gw = TestGateway::start(&format!("routes:\n{}", routes.concat())).await;

    let (status, v) = through(&gw, "/by-ip/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "the certificate is not valid for 127.0.0.1: {v}");
    let (status, v) = through(&gw, "/named/x").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["sni"], "orders.internal", "the backend saw server_name as SNI");
    let (status, v) = through(&gw, "/misnamed/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "server_name is checked, not only sent: {v}");
    assert_eq!(upstream_errors_any(&gw, "by-ip").await, 1.0);
    assert_eq!(upstream_errors_any(&gw, "misnamed").await, 1.0);
    assert_eq!(upstream_errors_any(&gw, "named").await, 0.0);
}

/// ALPN: an ordinary request goes over h2 (one pooled connection for two
/// requests); an upgrade (WebSocket) request goes over HTTP/1.1 on a
/// connection of its own, and the tunnel carries bytes both ways.
#[tokio::test]
async fn alpn_h2_for_requests_and_http1_for_upgrades() {
    let scratch = Scratch::new("alpn");
    let ca = Ca::new("alpn CA");
    let backend = TlsBackend::start(backend_tls(&ca.leaf("backend", &["127.0.0.1"]), None)).await;
    let ca_file = scratch.write("ca.pem", &ca.pem());
    let routes = route("api", "/", &backend.url(), &format!("{{ ca_file: {} }}", ca_file.display()));
    let gw = TestGateway::start(&format!("routes:\n{routes}")).await;

    for _ in 0..2 {
        let (status, v) = through(&gw, "/x").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["version"], "HTTP/2.0", "{v}");
        assert_eq!(v["alpn"], "h2", "{v}");
    }
    assert_eq!(backend.connections(), 1, "the h2 connection is pooled and reused");

    let mut tcp = TcpStream::connect(gw.running.addr).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte)).await.unwrap().unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("x-backend-version: http/1.1\r\n"), "the upgrade went over HTTP/1.1: {head}");
    tcp.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo, b"ping");
    assert_eq!(backend.connections(), 2, "the upgrade used a connection of its own");
}

/// `ca_file` behind a kubelet-style symlink is re-read when its content
/// changes: after the backend moves to a certificate of a new CA and the
/// new CA is swapped in, new connections (`max_idle_per_host: 0`: one per
/// request) succeed. Garbage swapped in afterwards is refused and counted;
/// the CA in use keeps working.
#[tokio::test]
async fn ca_file_rotation_through_a_symlink_swap() {
    let scratch = Scratch::new("ca-rotation");
    let (old_ca, new_ca) = (Ca::new("CA 2024"), Ca::new("CA 2025"));
    let backend = TlsBackend::start(backend_tls(&old_ca.leaf("backend", &["127.0.0.1"]), None)).await;
    let mut volume = Projected::new(scratch.0.join("ca"), &[("ca.crt", &old_ca.pem())]);
    let routes = route("api", "/", &backend.url(), &format!("{{ ca_file: {} }}", volume.path("ca.crt").display()));
    let gw = TestGateway::start(&format!("upstream_pool: {{ max_idle_per_host: 0 }}\nroutes:\n{routes}")).await;

    for _ in 0..2 {
        assert_eq!(through(&gw, "/x").await.0, StatusCode::OK);
    }
    assert_eq!(backend.connections(), 2, "max_idle_per_host: 0 opens a connection per request");

    // The backend restarts with a certificate of the new CA: not trusted yet.
    backend.replace(backend_tls(&new_ca.leaf("backend", &["127.0.0.1"]), None));
    assert_eq!(through(&gw, "/x").await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(upstream_errors_any(&gw, "api").await, 1.0);

    volume.publish(&[("ca.crt", &new_ca.pem())]);
    let swapped = std::time::Instant::now();
    poll(Duration::from_secs(4), "the new CA to be trusted", || async {
        (through(&gw, "/x").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert!(
        swapped.elapsed() < Duration::from_millis(2500),
        "picked up within about a second: {:?}",
        swapped.elapsed()
    );
    assert_eq!(tls_reloads(&gw, "upstream", "ok").await, Some(1.0));
    assert_eq!(tls_reloads(&gw, "upstream", "rejected").await, Some(0.0));
    // Requests failed until the look at the files was due.
    let failures = upstream_errors_any(&gw, "api").await;
    assert!(failures >= 1.0);

    // Garbage: refused, counted once, and the new CA still in use meanwhile.
    volume.publish(&[("ca.crt", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")]);
    poll(Duration::from_secs(4), "the garbage CA file to be refused", || async {
        assert_eq!(through(&gw, "/x").await.0, StatusCode::OK, "the CA in use is kept");
        (tls_reloads(&gw, "upstream", "rejected").await == Some(1.0)).then_some(())
    })
    .await;
    let connections = backend.connections();
    let (status, v) = through(&gw, "/x").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(backend.connections(), connections + 1, "a new connection, verified with the CA kept");
    assert_eq!(tls_reloads(&gw, "upstream", "ok").await, Some(1.0));
    assert_eq!(upstream_errors_any(&gw, "api").await, failures, "no failure since the new CA was taken");
}

/// One change of a route's files is one reload, whichever pool (the h2
/// one, or the HTTP/1.1 one for upgrades) opens a connection after it.
#[tokio::test]
async fn one_file_change_is_counted_once() {
    let scratch = Scratch::new("count");
    let (old_ca, new_ca) = (Ca::new("CA 2024"), Ca::new("CA 2025"));
    let backend = TlsBackend::start(backend_tls(&old_ca.leaf("backend", &["127.0.0.1"]), None)).await;
    let mut volume = Projected::new(scratch.0.join("ca"), &[("ca.crt", &old_ca.pem())]);
    let routes = route("api", "/", &backend.url(), &format!("{{ ca_file: {} }}", volume.path("ca.crt").display()));
    let gw = TestGateway::start(&format!("upstream_pool: {{ max_idle_per_host: 0 }}\nroutes:\n{routes}")).await;
    backend.replace(backend_tls(&new_ca.leaf("backend", &["127.0.0.1"]), None));
    volume.publish(&[("ca.crt", &new_ca.pem())]);
    poll(Duration::from_secs(4), "the new CA to be trusted", || async {
        (through(&gw, "/x").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(tls_reloads(&gw, "upstream", "ok").await, Some(1.0));
    // An upgrade request: a connection of the HTTP/1.1 pool, with the new CA.
    let mut tcp = TcpStream::connect(gw.running.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut status_line = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut status_line)).await.unwrap().unwrap();
    assert_eq!(&status_line, b"HTTP/1.1 101");
    assert_eq!(tls_reloads(&gw, "upstream", "ok").await, Some(1.0), "one change, one reload");
}

/// `tokex_upstream_errors_total{kind}` tells a certificate problem (`tls`)
/// from a refused connection (`connect`): a certificate the route does not
/// trust (web PKI roots, another CA) and a certificate for another name
/// are `tls`.
#[tokio::test]
async fn tls_failures_are_counted_as_kind_tls() {
    let scratch = Scratch::new("kinds");
    let (ca, other) = (Ca::new("private CA"), Ca::new("other CA"));
    let backend = TlsBackend::start(backend_tls(&ca.leaf("backend", &["127.0.0.1"]), None)).await;
    let ca_file = scratch.write("ca.pem", &ca.pem());
    let other_file = scratch.write("other.pem", &other.pem());
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let trust = format!("{{ ca_file: {} }}", ca_file.display());
    let routes = [
        route("plain", "/plain", &backend.url(), ""),
        route("other", "/other", &backend.url(), &format!("{{ ca_file: {} }}", other_file.display())),
        route(
            "misnamed",
            "/misnamed",
            &backend.url(),
            &format!("{{ ca_file: {}, server_name: billing.internal }}", ca_file.display()),
        ),
        route("closed", "/closed", &format!("https://{closed}"), &trust),
    ];
    let gw = TestGateway::start(&format!("routes:\n{}", routes.concat())).await;
    for r in ["plain", "other", "misnamed", "closed"] {
        let (status, v) = through(&gw, &format!("/{r}/x")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{r}: {v}");
    }
    let text = gw.metrics().await;
    let count = |route: &str, kind: &str| {
        metric(&text, "tokex_upstream_errors_total", &[("route", route), ("kind", kind)]).unwrap_or(0.0)
    };
    assert_eq!(count("closed", "connect"), 1.0, "{text}");
    assert_eq!(count("closed", "tls"), 0.0, "a refused connection is not a TLS error");
    for r in ["plain", "other", "misnamed"] {
        assert_eq!(
            (count(r, "tls"), count(r, "connect"), count(r, "reset")),
            (1.0, 0.0, 0.0),
            "route {r}: a TLS failure is counted as kind=\"tls\"\n{}",
            text.lines()
                .filter(|l| l.starts_with("tokex_upstream_errors_total") && !l.ends_with(" 0"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Listener rotation

/// Opens an HTTP/1.1-over-TLS connection to the gateway (SNI `localhost`,
/// trusting `ca`): the certificate the gateway presented, and a sender for
/// requests on that same connection.
async fn tls_connection(
    addr: SocketAddr,
    ca: &Ca,
) -> (CertificateDer<'static>, hyper::client::conn::http1::SendRequest<Empty<Bytes>>) {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    (presented, sender)
}

/// Sends `GET path` on an open connection; the status.
async fn send(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, path: &str) -> StatusCode {
    sender.ready().await.expect("the connection is still open");
    let req = Request::get(path).header("host", "localhost").body(Empty::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed(&String::from_utf8_lossy(&body))["path"], path, "answered by the echo backend");
    status
}

/// The listener's certificate and key behind kubelet-style symlinks: after
/// a swap, new connections get the new certificate while an open keep-alive
/// connection keeps working; a key that does not match is refused (counted,
/// the current certificate kept), and a good pair after it is taken again.
#[tokio::test]
async fn listener_certificate_rotation_through_a_symlink_swap() {
    let scratch = Scratch::new("listener");
    let ca = Ca::new("listener CA");
    let [a, b, c] = ["a.test", "b.test", "c.test"].map(|san| ca.leaf(san, &[san, "localhost", "127.0.0.1"]));
    let mut volume = Projected::new(scratch.0.join("tls"), &[("tls.crt", &a.cert_pem), ("tls.key", &a.key_pem)]);
    let backend = echo_backend().await;
    let yaml = format!(
        "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert_file: {}, key_file: {} }} }}\nroutes:\n  - name: open\n    auth: none\n    upstream: http://{backend}\n",
        volume.path("tls.crt").display(),
        volume.path("tls.key").display()
    );
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.running.addr;

    let (presented, mut old) = tls_connection(addr, &ca).await;
    assert_eq!(presented, a.der, "certificate A at start");
    assert_eq!(send(&mut old, "/first").await, StatusCode::OK);

    volume.publish(&[("tls.crt", &b.cert_pem), ("tls.key", &b.key_pem)]);
    poll(Duration::from_secs(4), "a new connection to be served certificate B", || async {
        let (presented, _) = tls_connection(addr, &ca).await;
        assert!(presented == a.der || presented == b.der);
        (presented == b.der).then_some(())
    })
    .await;
    assert_eq!(send(&mut old, "/second").await, StatusCode::OK, "the connection opened before the swap still answers");
    assert_eq!(tls_reloads(&gw, "listener", "ok").await, Some(1.0));
    assert_eq!(tls_reloads(&gw, "listener", "rejected").await, Some(0.0));

    // C's certificate with A's key: refused, B kept.
    volume.publish(&[("tls.crt", &c.cert_pem), ("tls.key", &a.key_pem)]);
    poll(Duration::from_secs(4), "the mismatched pair to be refused", || async {
        let (presented, mut conn) = tls_connection(addr, &ca).await;
        assert_eq!(presented, b.der, "B is still served");
        assert_eq!(send(&mut conn, "/during").await, StatusCode::OK);
        (tls_reloads(&gw, "listener", "rejected").await == Some(1.0)).then_some(())
    })
    .await;
    let (presented, mut conn) = tls_connection(addr, &ca).await;
    assert_eq!(presented, b.der, "B is still served after the refusal");
    assert_eq!(send(&mut conn, "/after").await, StatusCode::OK);
    assert_eq!(tls_reloads(&gw, "listener", "ok").await, Some(1.0));
    assert_eq!(send(&mut old, "/third").await, StatusCode::OK);

    // A good pair after the bad one is taken.
    volume.publish(&[("tls.crt", &c.cert_pem), ("tls.key", &c.key_pem)]);
    poll(Duration::from_secs(4), "a new connection to be served certificate C", || async {
        let (presented, _) = tls_connection(addr, &ca).await;
        (presented == c.der).then_some(())
    })
    .await;
    assert_eq!(tls_reloads(&gw, "listener", "ok").await, Some(2.0));
    assert_eq!(tls_reloads(&gw, "listener", "rejected").await, Some(1.0));
}

// ---------------------------------------------------------------------------
// tokex check

/// Runs `tokex check` on a config with one route to `upstream` carrying
/// `upstream_tls: tls`: exit code and stdout.
fn check(scratch: &Scratch, upstream: &str, tls: &str) -> (Option<i32>, String) {
    let file = scratch.write(
        "tokex.yaml",
        &format!("listen: {{ address: \"127.0.0.1:0\" }}\nroutes:\n  - name: orders\n    auth: none\n    upstream: {upstream}\n    upstream_tls: {tls}\n"),
    );
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_tokex")).args(["check", "-c"]).arg(&file).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_refuses_unusable_upstream_tls_naming_the_yaml_path() {
    let scratch = Scratch::new("check");
    let ca = Ca::new("check CA");
    let leaf = ca.leaf("tokex", &[]);
    let ca_file = scratch.write("ca.pem", &ca.pem()).display().to_string();
    let cert = scratch.write("client.pem", &leaf.cert_pem).display().to_string();
    let key = scratch.write("client.key", &leaf.key_pem).display().to_string();
    let garbage = scratch.write("garbage.pem", "not a certificate\n").display().to_string();
    let missing = scratch.0.join("missing.pem").display().to_string();
    let https = "https://127.0.0.1:8443";

    // The valid form passes: each refusal below is caused by the one thing changed.
    let (code, out) = check(
        &scratch,
        https,
        &format!("{{ ca_file: {ca_file}, cert_file: {cert}, key_file: {key}, server_name: orders.internal }}"),
    );
    assert_eq!(code, Some(0), "{out}");

    let cases = [
        ("http://127.0.0.1:8080", format!("{{ ca_file: {ca_file} }}"), "routes[0].upstream_tls", "https://"),
        (https, format!("{{ cert_file: {cert} }}"), "routes[0].upstream_tls", "cert_file and key_file go together"),
        (https, format!("{{ key_file: {key} }}"), "routes[0].upstream_tls", "cert_file and key_file go together"),
        (https, format!("{{ ca_file: {missing} }}"), "routes[0].upstream_tls.ca_file", "cannot read"),
        (https, "{ server_name: \"not a name!\" }".to_owned(), "routes[0].upstream_tls.server_name", "not a name!"),
        // Present but unusable: found by building what `run` would build.
        (https, format!("{{ ca_file: {garbage} }}"), "routes[orders].upstream_tls", "ca_file holds no PEM certificate"),
    ];
    for (upstream, tls, path, message) in cases {
        let (code, out) = check(&scratch, upstream, &tls);
        assert_eq!(code, Some(1), "upstream {upstream}, upstream_tls {tls}:\n{out}");
        let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "one problem, one line:\n{out}");
        let named = errors[0].contains(&format!("{path}: ")) || errors[0].contains(&format!("{path} (line "));
        assert!(named && errors[0].contains(message), "expected `{path}: ...{message}...` in:\n{out}");
    }
}
