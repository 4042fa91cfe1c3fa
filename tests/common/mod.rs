//! Test servers on 127.0.0.1:0: a recording authorization server, an echo
//! backend, and the gateway itself, plus small HTTP helpers.
#![allow(dead_code)]

pub mod certs;
pub mod faulty;
pub mod jwt;
pub mod otlp;
pub mod process;
pub mod redis_server;
pub mod sts;
pub mod wire;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

/// Serves `handler` on 127.0.0.1:0 (HTTP/1.1 and h2c, with upgrades) until the test ends.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------
// Recording authorization server

/// One request the authorization server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    /// Form parameters in order (repeated keys kept).
    pub form: Vec<(String, String)>,
}

impl Recorded {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub fn params(&self, key: &str) -> Vec<&str> {
        self.form.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }
    /// `(client_id, secret)` from an HTTP Basic header, form-decoded.
    pub fn basic(&self) -> Option<(String, String)> {
        let v = self.headers.get("authorization")?.to_str().ok()?;
        let b64 = v.strip_prefix("Basic ")?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (id, secret) = s.split_once(':')?;
        let dec = |x: &str| form_urlencoded::parse(format!("v={x}").as_bytes()).next().unwrap().1.into_owned();
        Some((dec(id), dec(secret)))
    }
}

/// How the recording AS answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Json(u16, Value),
    Raw(u16, &'static str, Vec<u8>),
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
    /// The answer, with these headers too.
    Headers(Vec<(&'static str, String)>, Box<Reply>),
}

type Behaviour = Arc<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
pub struct RecordingAs {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    count: Arc<AtomicUsize>,
}

/// The default answer: a fresh token per request (`exchanged-N`), 60 s.
pub fn issue(n: usize) -> Reply {
    Reply::Json(
        200,
        json!({
            "access_token": format!("exchanged-{n}"),
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": 60
        }),
    )
}

impl RecordingAs {
    pub async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let behaviour: Arc<Mutex<Behaviour>> = Arc::new(Mutex::new(Arc::new(|_: &Recorded, n| issue(n))));
        let count = Arc::new(AtomicUsize::new(0));
        let (r, b, c) = (requests.clone(), behaviour.clone(), count.clone());
        let addr = serve(move |req: Request<Incoming>| {
            let (r, b, c) = (r.clone(), b.clone(), c.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let form = form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
                let rec = Recorded { path: parts.uri.path().to_owned(), headers: parts.headers, form };
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                r.lock().unwrap().push(rec.clone());
                let f = b.lock().unwrap().clone();
                let mut reply = f(&rec, n);
                let mut extra = Vec::new();
                let mut resp = loop {
                    match reply {
                        Reply::Delay(d, next) => {
                            tokio::time::sleep(d).await;
                            reply = *next;
                        }
                        Reply::Headers(h, next) => {
                            extra.extend(h);
                            reply = *next;
                        }
                        Reply::Json(status, v) => {
                            break response(status, "application/json", v.to_string().into_bytes())
                        }
                        Reply::Raw(status, ct, body) => break response(status, ct, body),
                    }
                };
                for (name, value) in extra {
                    resp.headers_mut().insert(name, value.parse().unwrap());
                }
                resp
            }
        })
        .await;
        RecordingAs { addr, requests, behaviour, count }
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Replaces the answer; `n` is the 1-based request number.
    pub fn set(&self, f: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) {
        *self.behaviour.lock().unwrap() = Arc::new(f);
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests.lock().unwrap().last().cloned().expect("the AS received no request")
    }
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> Response<TestBody> {
    Response::builder().status(status).header("content-type", content_type).body(full(body)).unwrap()
}

// ---------------------------------------------------------------------------
// Echo backend

/// Answers every request with JSON describing what it received:
/// `{method, path, query, headers: {name: [values]}, body_len, body_sha256}`.
/// Special paths:
/// - `/status/NNN` answers NNN, with `WWW-Authenticate` copied from the
///   request header `x-echo-www-authenticate`;
/// - `/upgrade` answers `101` to an upgrade request and echoes bytes;
/// - `/download/N` streams N bytes of `x` in 64 KiB chunks.
pub async fn echo_backend() -> SocketAddr {
    serve(|mut req: Request<Incoming>| async move {
        let path = req.uri().path().to_owned();
        if path == "/upgrade" && req.headers().contains_key("upgrade") {
            echo_upgraded(&mut req);
            return Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(full(Bytes::new()))
                .unwrap();
        }
        if let Some(n) = path.strip_prefix("/download/").and_then(|n| n.parse::<usize>().ok()) {
            let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = (0..n.div_ceil(65536))
                .map(|i| Ok(http_body::Frame::data(Bytes::from(vec![b'x'; (n - i * 65536).min(65536)]))))
                .collect();
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
            return Response::new(BodyExt::boxed(body));
        }
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in req.headers() {
            headers.entry(k.as_str().to_owned()).or_default().push(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        let method = req.method().to_string();
        let query = req.uri().query().map(str::to_owned);
        let challenge = req.headers().get("x-echo-www-authenticate").cloned();
        let mut hasher = Sha256::new();
        let mut len = 0usize;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map(|f| f.into_data()) {
                if let Ok(d) = data {
                    len += d.len();
                    hasher.update(&d);
                }
            } else {
                break;
            }
        }
        let status = path.strip_prefix("/status/").and_then(|s| s.parse::<u16>().ok()).unwrap_or(200);
        let v = json!({
            "method": method, "path": path, "query": query, "headers": headers,
            "body_len": len, "body_sha256": hex(&hasher.finalize()),
        });
        let mut resp = response(status, "application/json", v.to_string().into_bytes());
        if let Some(c) = challenge {
            resp.headers_mut().insert("www-authenticate", c);
        }
        resp.headers_mut().insert("x-backend-hop", "should-not-be-stripped".parse().unwrap());
        resp.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
        resp
    })
    .await
}

/// Echoes the bytes of `req`'s connection once it is upgraded (answer 101).
pub fn echo_upgraded<B>(req: &mut Request<B>) {
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------
// The gateway

pub struct TestGateway {
    pub running: tokex::app::Running,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub admin: String,
}

impl TestGateway {
    /// Starts the gateway in-process. `yaml` may omit `listen` and `admin`
    /// (both default to 127.0.0.1:0).
    pub async fn start(yaml: &str) -> Self {
        let mut text = String::new();
        if !yaml.contains("listen:") {
            text.push_str("listen: { address: \"127.0.0.1:0\" }\n");
        }
        if !yaml.contains("admin:") {
            text.push_str("admin: { address: \"127.0.0.1:0\" }\n");
        }
        text.push_str(yaml);
        let config = tokex::config::parse(&text).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
        let running = tokex::app::start(config).await.expect("gateway starts");
        let url = format!("http://{}", running.addr);
        let admin = running.admin_addr.map(|a| format!("http://{a}")).unwrap_or_default();
        TestGateway { running, url, admin }
    }

    pub async fn metrics(&self) -> String {
        client().get(format!("{}/metrics", self.admin)).send().await.unwrap().text().await.unwrap()
    }
}

/// A config with one authorization server `corp` at `as_url` and the given routes.
pub fn config_with(as_url: &str, client_auth: &str, routes: &str) -> String {
    format!(
        "authorization_servers:\n  corp:\n    token_endpoint: {as_url}\n    client_auth: {client_auth}\n    timeout: 2s\n    retries: 1\ncache: {{ expiry_skew: 0s }}\nroutes:\n{routes}"
    )
}

/// One exchange route `name` on `prefix` to `upstream`.
pub fn exchange_route(name: &str, prefix: &str, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: http://{upstream}\n    exchange:\n      authorization_server: corp\n      audience: [{name}-api]\n      scope: [{name}:read]\n{extra}"
    )
}

pub const BASIC_AUTH: &str = "{ method: client_secret_basic, client_id: tokex, client_secret: s3cret }";

/// An HTTP client for the tests (no TLS needed).
pub fn client() -> reqwest::Client {
    let tls = tokex::exchange::client::tls_config(None).unwrap();
    reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap()
}

pub async fn get(url: &str, token: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// The JSON the echo backend answered.
pub fn echoed(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not echo JSON: {body}"))
}

/// Header values the backend received, by name.
pub fn seen(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// An unsigned JWT with the given claims (enough for `exp`/`sub` peeking).
pub fn fake_jwt(claims: Value) -> String {
    let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!("{}.{}.{}", e(br#"{"alg":"RS256","typ":"JWT"}"#), e(claims.to_string().as_bytes()), e(b"sig"))
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Retries `check` until it holds or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut check: F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A config's errors as `path: message` lines, for tests that pin the
/// message and not the line (`check` prints `path (line N): message`).
pub fn config_errors(yaml: &str) -> String {
    match tokex::config::parse(yaml) {
        Ok(_) => String::new(),
        Err(e) => e.errors.iter().map(|d| d.unlined()).collect::<Vec<_>>().join("\n"),
    }
}
