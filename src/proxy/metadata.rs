//! RFC 9728 protected resource metadata: each route with
//! `resource_metadata` is described at `/.well-known/oauth-protected-resource`
//! plus its resource's path (and its own path, and the bare prefix when it
//! is the only one), and its `401` challenges name that document
//! (`resource_metadata="…"`, §5.1) with the scopes to ask for. This is how
//! an MCP client finds the authorization server.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::routes::Route;
use super::Body;
use crate::config::matcher::HostMatch;
use crate::config::{DpopInboundConfig, DpopMode, ResourceMetadataConfig, RouteConfig, METADATA_PREFIX};

/// What a route's challenges add: the document's URL and the scopes.
pub struct Challenge {
    /// `resource_metadata="<url>"`, ready to append.
    param: String,
    /// `scope="<scopes>"`, when the route names any.
    scope: Option<String>,
}

impl Challenge {
    pub fn new(m: &ResourceMetadataConfig) -> Self {
        // A URL (checked by validation) holds no `"` or `\`.
        let param = format!("resource_metadata=\"{}\"", m.url());
        let scope = (!m.scopes_supported.is_empty()).then(|| format!("scope=\"{}\"", m.scopes_supported.join(" ")));
        Challenge { param, scope }
    }

    /// Adds the document's URL to every Bearer or DPoP challenge of a
    /// `401` (and of tokex's own `403`), and the route's scopes to tokex's
    /// own challenges that name none. `own`: tokex refused the request (the
    /// backend's challenges only gain the URL; one that sent none gets a
    /// Bearer challenge with it).
    pub fn apply(&self, status: StatusCode, headers: &mut HeaderMap, own: bool) {
        if status != StatusCode::UNAUTHORIZED && !(own && status == StatusCode::FORBIDDEN) {
            return;
        }
        let values: Vec<HeaderValue> = headers.get_all(WWW_AUTHENTICATE).iter().cloned().collect();
        if values.is_empty() {
            if let Ok(v) = HeaderValue::try_from(format!("Bearer {}", self.param)) {
                headers.insert(WWW_AUTHENTICATE, v);
            }
            return;
        }
        headers.remove(WWW_AUTHENTICATE);
        for value in values {
            let out = value
                .to_str()
                .ok()
                .and_then(|text| self.extended_field(text, own))
                .and_then(|t| HeaderValue::try_from(t).ok());
            headers.append(WWW_AUTHENTICATE, out.unwrap_or(value));
        }
    }

    /// A header field with the parameters added to each of its Bearer and
    /// DPoP challenges, or `None` to keep it as it is.
    fn extended_field(&self, field: &str, own: bool) -> Option<String> {
        let parts = challenges(field);
        let out: Vec<Option<String>> = parts.iter().map(|c| self.extended(c, own)).collect();
        if out.iter().all(Option::is_none) {
            return None;
        }
        let joined: Vec<&str> = parts.iter().zip(&out).map(|(c, o)| o.as_deref().unwrap_or(c)).collect();
        Some(joined.join(", "))
    }

    /// One challenge with the parameters added, or `None` to keep it.
    fn extended(&self, challenge: &str, own: bool) -> Option<String> {
        let scheme = challenge.split(' ').next().unwrap_or_default();
        let ours = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop");
        if !ours || challenge.contains("resource_metadata=") {
            return None;
        }
        let mut out = challenge.trim_end().to_owned();
        let mut add = |param: &str| {
            out.push_str(if out.len() == scheme.len() { " " } else { ", " });
            out.push_str(param);
        };
        add(&self.param);
        if let (true, Some(scope), false) = (own, &self.scope, challenge.contains("scope=")) {
            add(scope);
        }
        Some(out)
    }
}

/// The challenges of one `WWW-Authenticate` field (RFC 9110 §11.6.1: a
/// comma-separated list whose members are challenges or, after a scheme,
/// its `name=value` parameters). A comma outside a quoted string starts a
/// new challenge when a token follows it that is not a parameter's name.
fn challenges(field: &str) -> Vec<&str> {
    let bytes = field.as_bytes();
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b);
    let mut out = Vec::new();
    let (mut start, mut i, mut quoted) = (0, 0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                let mut j = i + 1;
                while j < bytes.len() && matches!(bytes[j], b' ' | b'\t' | b',') {
                    j += 1;
                }
                let mut k = j;
                while k < bytes.len() && is_token(bytes[k]) {
                    k += 1;
                }
                let mut m = k;
                while m < bytes.len() && matches!(bytes[m], b' ' | b'\t') {
                    m += 1;
                }
                if k > j && bytes.get(m) != Some(&b'=') {
                    out.push(field[start..i].trim_matches([' ', '\t', ',']));
                    start = j;
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push(field[start..].trim_matches([' ', '\t', ',']));
    out.retain(|c| !c.is_empty());
    out
}

/// The documents of a configuration, with the routes they describe.
#[derive(Default)]
pub struct Documents {
    docs: Vec<Doc>,
}

struct Doc {
    path: String,
    host: HostMatch,
    route: Arc<Route>,
    body: Bytes,
}

impl Documents {
    /// `routes` are `configs` made ready to serve, in the same order.
    pub fn new(configs: &[RouteConfig], routes: &[Arc<Route>], dpop: &DpopInboundConfig) -> Self {
        let described: Vec<_> =
            configs.iter().zip(routes).filter_map(|(c, r)| c.resource_metadata.as_ref().map(|m| (c, r, m))).collect();
        let single = described.len() == 1;
        let mut docs = Vec::new();
        for (c, route, m) in described {
            let body = Bytes::from(document(m, dpop).to_string());
            let mut paths = m.paths(&c.matcher.path);
            if single && !paths.iter().any(|p| p == METADATA_PREFIX) {
                paths.push(METADATA_PREFIX.to_owned());
            }
            for path in paths {
                docs.push(Doc { path, host: c.matcher.host.clone(), route: route.clone(), body: body.clone() });
            }
        }
        Documents { docs }
    }

    /// The document at `path` for `host`, and the route it describes.
    pub fn find(&self, method: &Method, path: &str, host: Option<&str>) -> Option<(&Arc<Route>, Response<Body>)> {
        if self.docs.is_empty() || !path.starts_with(METADATA_PREFIX) {
            return None;
        }
        let doc = self.docs.iter().find(|d| d.path == path && d.host.matches(host))?;
        Some((&doc.route, answer(method, &doc.body)))
    }
}

/// RFC 9728 §2; the DPoP members when callers may use DPoP.
fn document(m: &ResourceMetadataConfig, dpop: &DpopInboundConfig) -> Value {
    let mut doc = json!({
        "resource": m.resource_id,
        "authorization_servers": m.authorization_servers,
        "bearer_methods_supported": ["header"],
    });
    let Some(obj) = doc.as_object_mut() else { return doc };
    if !m.scopes_supported.is_empty() {
        obj.insert("scopes_supported".into(), json!(m.scopes_supported));
    }
    if let Some(name) = &m.resource_name {
        obj.insert("resource_name".into(), json!(name));
    }
    if let Some(d) = &m.resource_documentation {
        obj.insert("resource_documentation".into(), json!(d.as_str()));
    }
    if dpop.mode != DpopMode::Off {
        let algs: Vec<String> = dpop.algorithms.iter().map(|a| format!("{a:?}")).collect();
        obj.insert("dpop_signing_alg_values_supported".into(), json!(algs));
    }
    if dpop.mode == DpopMode::Require {
        obj.insert("dpop_bound_access_tokens_required".into(), json!(true));
    }
    doc
}

fn answer(method: &Method, body: &Bytes) -> Response<Body> {
    let (status, body) = match *method {
        Method::GET => (StatusCode::OK, body.clone()),
        Method::HEAD => (StatusCode::OK, Bytes::new()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    };
    let mut resp = Response::new(Body::Right(Full::new(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    // Browser-based clients read it from another origin (RFC 9728 §3).
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(scopes: &[&str]) -> Challenge {
        Challenge::new(&ResourceMetadataConfig {
            resource: url::Url::parse("https://gw.example.com/mcp").unwrap(),
            resource_id: "https://gw.example.com/mcp".into(),
            authorization_servers: vec!["https://as.example.com".into()],
            scopes_supported: scopes.iter().map(|s| (*s).to_owned()).collect(),
            resource_name: None,
            resource_documentation: None,
        })
    }

    const RM: &str = "resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp\"";

    #[test]
    fn parameters_join_each_bearer_or_dpop_challenge() {
        let c = challenge(&["a", "b"]);
        let ext = |v: &str, own| c.extended(v, own);
        assert_eq!(ext("Bearer", false), Some(format!("Bearer {RM}")), "a bare scheme takes a space");
        assert_eq!(ext("bearer realm=\"x\"", false), Some(format!("bearer realm=\"x\", {RM}")));
        assert_eq!(
            ext("Bearer realm=\"tokex\"", true),
            Some(format!("Bearer realm=\"tokex\", {RM}, scope=\"a b\"")),
            "tokex's own: the scopes too"
        );
        assert_eq!(
            ext("Bearer error=\"insufficient_scope\", scope=\"x\"", true),
            Some(format!("Bearer error=\"insufficient_scope\", scope=\"x\", {RM}")),
            "a named scope stays the only one"
        );
        assert_eq!(ext("DPoP algs=\"ES256\"", true).unwrap(), format!("DPoP algs=\"ES256\", {RM}, scope=\"a b\""));
        assert_eq!(ext("Basic realm=\"x\"", false), None, "other schemes are left alone");
        assert_eq!(ext(&format!("Bearer {RM}"), false), None, "one there already");
        assert_eq!(
            challenge(&[]).extended("Bearer realm=\"tokex\"", true),
            Some(format!("Bearer realm=\"tokex\", {RM}"))
        );
    }

    #[test]
    fn a_field_is_split_into_its_challenges() {
        assert_eq!(challenges("Bearer"), ["Bearer"]);
        assert_eq!(challenges("Bearer realm=\"a, b\", error=\"x\""), ["Bearer realm=\"a, b\", error=\"x\""]);
        assert_eq!(
            challenges("Bearer realm=\"api\", Basic realm=\"b\""),
            ["Bearer realm=\"api\"", "Basic realm=\"b\""]
        );
        assert_eq!(challenges("Negotiate, Bearer x=\"1\""), ["Negotiate", "Bearer x=\"1\""]);
        assert_eq!(challenges("Basic realm=\"q\\\", Bearer\", DPoP"), ["Basic realm=\"q\\\", Bearer\"", "DPoP"]);
        assert_eq!(challenges("Newauth abc==, Bearer"), ["Newauth abc==", "Bearer"], "token68");
        assert_eq!(challenges(" , Bearer a=1 ,, "), ["Bearer a=1"]);
        let c = challenge(&[]);
        assert_eq!(
            c.extended_field("Bearer realm=\"api\", Basic realm=\"b\"", false),
            Some(format!("Bearer realm=\"api\", {RM}, Basic realm=\"b\""))
        );
        assert_eq!(
            c.extended_field("Basic realm=\"b\", Bearer realm=\"api\"", false),
            Some(format!("Basic realm=\"b\", Bearer realm=\"api\", {RM}"))
        );
        assert_eq!(c.extended_field("Negotiate, Bearer", false), Some(format!("Negotiate, Bearer {RM}")));
        assert_eq!(c.extended_field("Basic realm=\"b\"", false), None);
    }

    #[test]
    fn only_401s_and_own_403s_change() {
        let c = challenge(&[]);
        let mut h = HeaderMap::new();
        c.apply(StatusCode::FORBIDDEN, &mut h, false);
        assert!(h.is_empty(), "a backend's 403");
        c.apply(StatusCode::OK, &mut h, true);
        assert!(h.is_empty());
        c.apply(StatusCode::UNAUTHORIZED, &mut h, false);
        assert_eq!(h[WWW_AUTHENTICATE], format!("Bearer {RM}").as_str(), "a 401 without a challenge gets one");
        let mut h = HeaderMap::new();
        h.append(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"x\""));
        h.append(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"y\""));
        h.append(WWW_AUTHENTICATE, HeaderValue::from_bytes(b"Bearer \xff").unwrap());
        c.apply(StatusCode::UNAUTHORIZED, &mut h, false);
        let all: Vec<_> = h.get_all(WWW_AUTHENTICATE).iter().map(|v| v.as_bytes().to_vec()).collect();
        assert_eq!(
            all,
            [b"Basic realm=\"x\"".to_vec(), format!("Bearer realm=\"y\", {RM}").into_bytes(), b"Bearer \xff".to_vec()],
            "order kept; what is not text is kept as it was"
        );
    }
}
