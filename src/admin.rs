//! The admin listener: `/healthz` (the process serves), `/readyz` (listeners
//! bound, every start-up dependency up — `issuer:` discovery, the inbound
//! JWKS — and not draining: see `readiness`), `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::exchange::Exchanger;
use crate::metrics::Metrics;
use crate::proxy::server::Handler;
use crate::proxy::Body;
use crate::readiness::Readiness;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub exchanger: Exchanger,
    pub readiness: Arc<Readiness>,
}

impl Admin {
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json_response(StatusCode::METHOD_NOT_ALLOWED, r#"{"error":"method_not_allowed"}"#);
        }
        match req.uri().path() {
            "/healthz" => json_response(StatusCode::OK, r#"{"status":"ok"}"#),
            "/readyz" if self.readiness.is_ready() => json_response(StatusCode::OK, r#"{"status":"ready"}"#),
            "/readyz" => json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not_ready"}"#),
            "/metrics" => {
                self.exchanger.cache().sync().await;
                let text = self.metrics.encode(self.exchanger.cache().entry_count());
                let mut resp = Response::new(Body::Right(http_body_util::Full::new(Bytes::from(text))));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                resp
            }
            _ => json_response(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#),
        }
    }
}

impl Handler for Admin {
    type Body = crate::proxy::Body;

    fn handle(
        &self,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        self.answer(req)
    }
}

/// A small JSON answer for paths that are not errors of the request pipeline.
pub fn json_response(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::Right(http_body_util::Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
