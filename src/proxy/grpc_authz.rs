//! Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`) on
//! the check pipeline of `authz.rs`: the request Envoy describes takes
//! phases 1 to 4, and the HTTP answer the other dialects get is carried
//! in a `CheckResponse` (allowed: `ok_response` headers and
//! `headers_to_remove`; refused: `denied_response` with the status,
//! challenge and body).
//!
//! The messages are the fields tokex reads and writes of Envoy's protos
//! (`api/envoy/service/auth/v3/{external_auth,attribute_context}.proto`,
//! `api/envoy/config/core/v3/{base,address}.proto`), with their field
//! numbers; prost skips the others. gRPC framing, size limits and status
//! trailers are tonic's (already in the tree through OpenTelemetry).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::authz::{allowed, method, origin_form, Described, ENVOY_REMOVE};
use super::handler::Gateway;
use super::target::Authority;
use crate::config::Dialect;
use crate::error::GatewayError;

/// The one method served.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// A check request at most (headers; Envoy sends the body only when configured to).
const MAX_CHECK_BYTES: usize = 1024 * 1024;
/// The original request's headers at most, in number and in bytes (names
/// and values): Envoy's own defaults are 100 and 60 KiB.
const MAX_HEADERS: usize = 256;
const MAX_HEADER_BYTES: usize = 128 * 1024;
/// Time to receive a whole check request.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<AttributeRequest>,
}

/// `AttributeContext.Peer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

/// `envoy.config.core.v3.Address` (its `socket_address` only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeRequest {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    #[prost(string, tag = "2")]
    pub method: String,
    /// Lower-case names, pseudo-headers included, repeats joined by ",".
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    /// The request target as received: path and query.
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub host: String,
    /// Instead of `headers` with `encode_raw_headers: true`.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMapProto>,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMapProto {
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValueProto>,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValueProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// `envoy.config.core.v3.HeaderValueOption`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValueOption {
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValueProto>,
    /// `HeaderAppendAction`.
    #[prost(int32, tag = "3")]
    pub append_action: i32,
}

/// `HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD`.
const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;

/// `envoy.service.auth.v3.CheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    #[prost(message, optional, tag = "2")]
    pub denied_response: Option<DeniedHttpResponse>,
    #[prost(message, optional, tag = "3")]
    pub ok_response: Option<OkHttpResponse>,
}

/// `google.rpc.Status`: code 0 allows; any other refuses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `envoy.service.auth.v3.DeniedHttpResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeniedHttpResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, tag = "3")]
    pub body: String,
}

/// `envoy.type.v3.HttpStatus`: the `StatusCode` enum's values are the HTTP codes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// `envoy.service.auth.v3.OkHttpResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OkHttpResponse {
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
}

/// The gRPC check listener.
pub struct GrpcChecks {
    gateway: Arc<Gateway>,
}

impl GrpcChecks {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        GrpcChecks { gateway }
    }

    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<tonic::body::Body> {
        if req.uri().path() != CHECK_PATH {
            return tonic::Status::unimplemented("tokex serves envoy.service.auth.v3.Authorization/Check only")
                .into_http();
        }
        // The whole request first, bounded in size and time: a stalled
        // client holds nothing for long.
        let (parts, body) = req.into_parts();
        let limited = http_body_util::Limited::new(body, MAX_CHECK_BYTES + 5);
        let body = match tokio::time::timeout(READ_TIMEOUT, limited.collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return tonic::Status::resource_exhausted("check request too large").into_http(),
            Err(_) => return tonic::Status::deadline_exceeded("check request not received in time").into_http(),
        };
        let req = Request::from_parts(parts, http_body_util::Full::new(body));
        let codec = tonic_prost::ProstCodec::<CheckResponse, CheckRequest>::default();
        let mut grpc = tonic::server::Grpc::new(codec).max_decoding_message_size(MAX_CHECK_BYTES);
        grpc.unary(Check { gateway: self.gateway.clone(), peer }, req).await
    }
}

impl super::server::Handler for GrpcChecks {
    type Body = tonic::body::Body;

    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> impl Future<Output = Response<Self::Body>> + Send {
        self.answer(req, peer)
    }
}

/// One `Check` call.
struct Check {
    gateway: Arc<Gateway>,
    /// The connection's peer: Envoy.
    peer: SocketAddr,
}

impl tonic::server::UnaryService<CheckRequest> for Check {
    type Response = CheckResponse;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<CheckResponse>, tonic::Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        let gateway = self.gateway.clone();
        let peer = self.peer;
        Box::pin(async move { Ok(tonic::Response::new(check(&gateway, request.into_inner(), peer).await)) })
    }
}

async fn check(gateway: &Gateway, req: CheckRequest, envoy: SocketAddr) -> CheckResponse {
    let attributes = req.attributes.unwrap_or_default();
    // The caller as Envoy saw it (rate limits and logs), else Envoy itself.
    let caller = attributes
        .source
        .and_then(|p| p.address)
        .and_then(|a| a.socket_address)
        .and_then(|s| s.address.parse::<IpAddr>().ok());
    let peer = caller.map_or(envoy, |ip| SocketAddr::new(ip, 0));
    let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
    let (headers, described) = match headers(&http) {
        Ok(h) => (h, describe(&http)),
        Err(why) => (HeaderMap::new(), Err(why)),
    };
    let original = match &described {
        Ok(d) => Ok(d.original(&headers, Dialect::Envoy)),
        Err(why) => Err(GatewayError::BadTarget(why)),
    };
    // What is logged of a check that does not say what the request was.
    let (method, uri) = (Method::POST, Uri::from_static(CHECK_PATH));
    let headers = &headers;
    let resp = gateway
        .check(original, (&method, &uri, headers), peer, |route, credential| allowed(Dialect::Envoy, route, credential))
        .await;
    into_check_response(resp).await
}

/// The original request of a gRPC check.
fn describe(http: &HttpRequest) -> Result<Described, &'static str> {
    let method = method(http.method.as_bytes())?;
    let uri = origin_form(http.path.as_bytes())?;
    let authority = match http.host.as_str() {
        "" => None,
        host => {
            let value = HeaderValue::from_str(host).map_err(|_| "invalid original host")?;
            Some(Authority::reported(value).map_err(|_| "invalid original host")?)
        }
    };
    Described::new(method, uri, authority)
}

/// The original request's headers, pseudo-headers left out. One that is
/// not a valid header refuses the check.
fn headers(http: &HttpRequest) -> Result<HeaderMap, &'static str> {
    let mut map = HeaderMap::new();
    let mut bytes = 0usize;
    let mut add = |key: &str, value: &[u8]| -> Result<(), &'static str> {
        if key.starts_with(':') {
            return Ok(());
        }
        bytes += key.len() + value.len();
        if map.len() >= MAX_HEADERS || bytes > MAX_HEADER_BYTES {
            return Err("too many or too large original headers");
        }
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| "invalid original header name")?;
        let value = HeaderValue::from_bytes(value).map_err(|_| "invalid original header value")?;
        map.try_append(name, value).map_err(|_| "too many original headers")?;
        Ok(())
    };
    match &http.header_map {
        Some(raw) => {
            for h in &raw.headers {
                let value = if h.raw_value.is_empty() { h.value.as_bytes() } else { &h.raw_value };
                add(&h.key, value)?;
            }
        }
        None => {
            for (k, v) in &http.headers {
                add(k, v.as_bytes())?;
            }
        }
    }
    Ok(map)
}

/// The HTTP answer of the check pipeline as a `CheckResponse`.
async fn into_check_response(resp: Response<super::Body>) -> CheckResponse {
    let (parts, body) = resp.into_parts();
    let option = |name: &HeaderName, value: &HeaderValue| HeaderValueOption {
        header: Some(HeaderValueProto {
            key: name.as_str().to_owned(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            raw_value: Vec::new(),
        }),
        append_action: OVERWRITE_IF_EXISTS_OR_ADD,
    };
    if parts.status == StatusCode::OK {
        let headers_to_remove = parts
            .headers
            .get(ENVOY_REMOVE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        // The credential only: never the answer's own headers.
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| **name != ENVOY_REMOVE && **name != super::ids::X_REQUEST_ID)
            .map(|(n, v)| option(n, v))
            .collect();
        return CheckResponse {
            status: Some(RpcStatus { code: 0, message: String::new() }),
            denied_response: None,
            ok_response: Some(OkHttpResponse { headers, headers_to_remove }),
        };
    }
    // A local answer: its body is a small `Full`.
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let code = match parts.status {
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => tonic::Code::Unavailable,
        _ => tonic::Code::PermissionDenied,
    };
    CheckResponse {
        status: Some(RpcStatus {
            code: code as i32,
            message: parts.status.canonical_reason().unwrap_or("").to_owned(),
        }),
        denied_response: Some(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(parts.status.as_u16()) }),
            headers: parts
                .headers
                .iter()
                .filter(|(n, _)| *n != http::header::CONTENT_LENGTH)
                .map(|(n, v)| option(n, v))
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        }),
        ok_response: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn reads_what_envoy_sends_and_refuses_what_it_cannot_read() {
        let mut http = HttpRequest {
            method: "POST".into(),
            path: "/orders/1?x=1".into(),
            host: "api.example.com".into(),
            ..Default::default()
        };
        http.headers.insert(":authority".into(), "api.example.com".into());
        http.headers.insert("authorization".into(), "Bearer abc".into());
        // The other dialects' headers are the caller's words: not read.
        http.headers.insert("x-original-uri".into(), "/admin".into());
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                source: None,
                request: Some(AttributeRequest { http: Some(http.clone()) }),
            }),
        };
        // Round trip through the wire format.
        let decoded = CheckRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        let http2 = decoded.attributes.unwrap().request.unwrap().http.unwrap();
        let d = describe(&http2).unwrap();
        assert_eq!((d.method.as_str(), d.uri.to_string().as_str()), ("POST", "/orders/1?x=1"));
        assert_eq!(d.authority.unwrap().host(), "api.example.com");
        let h = headers(&http2).unwrap();
        assert_eq!(h.get("authorization").unwrap(), "Bearer abc");
        assert!(!h.contains_key(":authority"));

        http.path = "orders".into();
        assert!(describe(&http).is_err());
        http.path = "/a//b".into();
        assert!(describe(&http).is_err());
        http.path = "/".into();
        http.host = "a@b".into();
        assert!(describe(&http).is_err());
        http.headers.insert("bad name".into(), "x".into());
        assert!(headers(&http).is_err());
        // Bounded: a flood of names is refused, not a panic.
        let flood = HttpRequest {
            header_map: Some(HeaderMapProto {
                headers: (0..40_000)
                    .map(|i| HeaderValueProto { key: format!("h{i}"), value: "v".into(), raw_value: Vec::new() })
                    .collect(),
            }),
            ..Default::default()
        };
        assert_eq!(headers(&flood).err(), Some("too many or too large original headers"));
        // encode_raw_headers: header_map instead of headers.
        let raw = HttpRequest {
            header_map: Some(HeaderMapProto {
                headers: vec![HeaderValueProto {
                    key: "authorization".into(),
                    value: String::new(),
                    raw_value: b"Bearer r".to_vec(),
                }],
            }),
            ..Default::default()
        };
        assert_eq!(headers(&raw).unwrap().get("authorization").unwrap(), "Bearer r");
    }
}
