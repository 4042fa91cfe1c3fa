//! A small OTLP/HTTP trace receiver on 127.0.0.1:0 (plain or TLS): accepts
//! `POST /v1/traces` with protobuf, decodes `ExportTraceServiceRequest`,
//! answers 200 with an empty `ExportTraceServiceResponse`, and keeps the
//! spans and the raw bodies.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;
use tokio::net::TcpListener;

use super::{full, hex, serve, TestBody};

/// `Span.kind` in OTLP.
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;
/// `Status.code` in OTLP.
pub const STATUS_UNSET: i32 = 0;
pub const STATUS_ERROR: i32 = 2;

/// One span as received, ids in lowercase hex ("" when absent).
#[derive(Clone, Debug)]
pub struct Span {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    pub status_code: i32,
    pub status_message: String,
    /// The resource's `service.name`.
    pub service_name: String,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// What one export request carried.
#[derive(Clone, Debug)]
pub struct Export {
    pub content_type: String,
    pub body: Bytes,
}

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    exports: Vec<Export>,
}

#[derive(Clone)]
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    tls: bool,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let r = received.clone();
        let addr = serve(move |req: Request<Incoming>| {
            let r = r.clone();
            async move { receive(req, &r).await }
        })
        .await;
        OtlpReceiver { addr, received, tls: false }
    }

    /// The same over TLS, with this certificate chain and key (PEM).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes()).unwrap().unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let r = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (acceptor, r) = (acceptor.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let svc = service_fn(move |req| {
                        let r = r.clone();
                        async move { Ok::<_, Infallible>(receive(req, &r).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        OtlpReceiver { addr, received, tls: true }
    }

    /// `http(s)://127.0.0.1:PORT/v1/traces`
    pub fn url(&self) -> url::Url {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/v1/traces", self.addr).parse().unwrap()
    }

    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().unwrap().spans.clone()
    }

    pub fn exports(&self) -> Vec<Export> {
        self.received.lock().unwrap().exports.clone()
    }

    /// The spans once there are at least `n`, or what came within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Span> {
        super::eventually(timeout, || self.received.lock().unwrap().spans.len() >= n).await;
        self.spans()
    }
}

async fn receive(req: Request<Incoming>, received: &Mutex<Received>) -> Response<TestBody> {
    if req.method() != Method::POST || req.uri().path() != "/v1/traces" {
        return answer(404, "text/plain", b"not found".to_vec());
    }
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if content_type != "application/x-protobuf" {
        return answer(415, "text/plain", b"protobuf only".to_vec());
    }
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return answer(400, "text/plain", b"unreadable body".to_vec());
    };
    let Ok(request) = ExportTraceServiceRequest::decode(body.clone()) else {
        return answer(400, "text/plain", b"not an ExportTraceServiceRequest".to_vec());
    };
    let mut spans = Vec::new();
    for rs in request.resource_spans {
        let attrs = rs.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service_name = attrs.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let status = s.status.unwrap_or_default();
                spans.push(Span {
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    kind: s.kind,
                    attributes: attributes(&s.attributes),
                    status_code: status.code,
                    status_message: status.message,
                    service_name: service_name.clone(),
                });
            }
        }
    }
    let mut r = received.lock().unwrap();
    r.spans.extend(spans);
    r.exports.push(Export { content_type, body });
    answer(200, "application/x-protobuf", ExportTraceServiceResponse::default().encode_to_vec())
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default())).collect()
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn answer(status: u16, content_type: &str, body: Vec<u8>) -> Response<TestBody> {
    Response::builder().status(status).header("content-type", content_type).body(full(body)).unwrap()
}
