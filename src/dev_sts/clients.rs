//! Registered clients of the development authorization server: how they are
//! described (`--client` flags or a small YAML file), validated, and
//! authenticated at the token endpoint (`client_secret_basic`,
//! `client_secret_post`, `private_key_jwt`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::Validation;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::endpoint::{OAuthError, Params};
use super::keys::ClientKey;
use super::DevStsError;

/// `client_assertion_type` of RFC 7523 client authentication.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Largest client assertion accepted.
const MAX_ASSERTION_BYTES: usize = 8 * 1024;
/// Clock-skew allowance for assertion `exp` / `nbf`, in seconds.
const ASSERTION_LEEWAY: u64 = 5;
/// Assertions may not live longer than this (bounds the replay cache), in seconds.
const MAX_ASSERTION_LIFETIME: u64 = 3600;
/// Most assertion ids remembered at once.
const MAX_REMEMBERED_JTIS: usize = 100_000;

/// A client of the development authorization server.
///
/// `audiences` and `scopes` list what the client may obtain; the single
/// entry `*` allows any value. When a request names no audience, the token
/// is issued for all of the client's listed (non-`*`) audiences.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientSpec {
    pub id: String,
    /// For `client_secret_basic` / `client_secret_post`.
    pub secret: Option<String>,
    /// A `PUBLIC KEY` PEM (EC, RSA or Ed25519) for `private_key_jwt`.
    pub public_key_pem: Option<String>,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for ClientSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSpec")
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("public_key_pem", &self.public_key_pem.is_some())
            .field("audiences", &self.audiences)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl ClientSpec {
    /// Parses a `--client` flag value:
    /// `id=demo,secret=demo-secret,audiences=orders-api|billing-api,scopes=orders:read|billing:read`,
    /// optionally `public_key_file=client.pub.pem` (read now) for `private_key_jwt`.
    /// Values cannot contain `,` (list items not `|`); use a clients file for those.
    pub fn parse_flag(value: &str) -> Result<ClientSpec, DevStsError> {
        let bad = |why: String| DevStsError::ClientSpec(format!("--client {:?}: {why}", redact_flag(value)));
        let mut spec = ClientSpec::default();
        let mut seen = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, val) = part.split_once('=').ok_or_else(|| bad(format!("`{}` is not key=value", key_of(part))))?;
            let key = key.trim();
            if seen.contains(&key) {
                return Err(bad(format!("`{key}` given twice")));
            }
            seen.push(key);
            let list = |v: &str| v.split('|').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
            match key {
                "id" => spec.id = val.trim().to_owned(),
                "secret" => spec.secret = Some(val.to_owned()),
                "audiences" | "audience" => spec.audiences = list(val),
                "scopes" | "scope" => spec.scopes = list(val),
                "public_key_file" => {
                    let pem = std::fs::read_to_string(val.trim())
                        .map_err(|e| bad(format!("cannot read public_key_file {}: {e}", val.trim())))?;
                    spec.public_key_pem = Some(pem);
                }
                other => {
                    return Err(bad(format!(
                        "unknown key `{other}` (expected id, secret, audiences, scopes, public_key_file)"
                    )))
                }
            }
        }
        if spec.id.is_empty() {
            return Err(bad("`id=` is required".into()));
        }
        Ok(spec)
    }

    /// Reads a clients file:
    ///
    /// ```yaml
    /// clients:
    ///   - id: gateway
    ///     secret: ${GATEWAY_SECRET}        # ${VAR} / ${VAR:-default} expanded
    ///     audiences: [orders-api]
    ///     scopes: [orders:read]
    ///   - id: agent
    ///     public_key_file: agent.pub.pem   # relative to this file; or public_key_pem: |
    ///     audiences: ["*"]
    ///     scopes: ["*"]
    /// ```
    pub fn load_file(path: &Path) -> Result<Vec<ClientSpec>, DevStsError> {
        let bad = |why: String| DevStsError::ClientSpec(format!("{}: {why}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_file(&text, base).map_err(bad)
    }

    fn parse_file(text: &str, base: &Path) -> Result<Vec<ClientSpec>, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            clients: Vec<RawClient>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawClient {
            id: String,
            #[serde(default)]
            secret: Option<String>,
            #[serde(default)]
            public_key_pem: Option<String>,
            #[serde(default)]
            public_key_file: Option<String>,
            #[serde(default)]
            audiences: Vec<String>,
            #[serde(default)]
            scopes: Vec<String>,
        }
        let file: File = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let env = |name: &str| std::env::var(name).ok();
        let mut out = Vec::with_capacity(file.clients.len());
        for (i, c) in file.clients.into_iter().enumerate() {
            let at = |why: String| format!("clients[{i}] ({}): {why}", c.id);
            let secret = c.secret.as_deref().map(|s| crate::config::interpolate(s, env)).transpose().map_err(at)?;
            let public_key_pem = match (c.public_key_pem.clone(), c.public_key_file.as_deref()) {
                (Some(_), Some(_)) => return Err(at("give public_key_pem or public_key_file, not both".into())),
                (Some(pem), None) => Some(pem),
                (None, Some(file)) => {
                    let file = crate::config::interpolate(file, env).map_err(at)?;
                    let full = base.join(&file);
                    Some(std::fs::read_to_string(&full).map_err(|e| at(format!("{}: {e}", full.display())))?)
                }
                (None, None) => None,
            };
            out.push(ClientSpec { id: c.id, secret, public_key_pem, audiences: c.audiences, scopes: c.scopes });
        }
        Ok(out)
    }
}

/// The flag without its secret, for error messages.
fn redact_flag(value: &str) -> String {
    value
        .split(',')
        .map(|p| if p.trim_start().starts_with("secret=") { "secret=[redacted]" } else { p })
        .collect::<Vec<_>>()
        .join(",")
}

fn key_of(part: &str) -> &str {
    part.split_once('=').map_or(part, |(k, _)| k)
}

/// RFC 6749 §3.3 `scope-token` characters: %x21 / %x23-5B / %x5D-7E.
pub(crate) fn is_scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// A validated client.
pub(crate) struct Client {
    pub id: String,
    secret_hash: Option<[u8; 32]>,
    key: Option<ClientKey>,
    audiences: Vec<String>,
    scopes: Vec<String>,
}

impl Client {
    pub fn allows_audience(&self, aud: &str) -> bool {
        self.audiences.iter().any(|a| a == "*" || a == aud)
    }
    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == "*" || s == scope)
    }
    /// Audiences used when a request names none.
    pub fn default_audiences(&self) -> Vec<String> {
        self.audiences.iter().filter(|a| *a != "*").cloned().collect()
    }
    /// Scopes granted by `client_credentials` when none are requested.
    pub fn default_scopes(&self) -> Vec<String> {
        self.scopes.iter().filter(|s| *s != "*").cloned().collect()
    }
    /// Scopes listed explicitly (discovery's `scopes_supported`).
    pub fn listed_scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(String::as_str).filter(|s| *s != "*")
    }
}

/// How a client authenticated at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

/// Where a client assertion may be addressed (the endpoint called, the
/// token endpoint, the issuer), and the time.
pub(crate) struct AssertionContext<'a> {
    pub audiences: &'a [&'a str],
    pub now: u64,
}

/// All clients, and the assertion ids already used.
pub(crate) struct Registry {
    clients: HashMap<String, Client>,
    /// `(client_id, jti)` → forget after (unix seconds).
    used_jtis: Mutex<HashMap<(String, String), u64>>,
}

impl Registry {
    pub fn new(specs: Vec<ClientSpec>) -> Result<Self, DevStsError> {
        let mut clients = HashMap::new();
        for spec in specs {
            let bad = |why: &str| DevStsError::ClientSpec(format!("client {:?}: {why}", spec.id));
            if spec.id.is_empty() || spec.id.chars().any(char::is_control) {
                return Err(bad("the id must be non-empty, without control characters"));
            }
            if clients.contains_key(&spec.id) {
                return Err(bad("defined twice"));
            }
            if spec.secret.as_deref() == Some("") {
                return Err(bad("empty secret"));
            }
            if spec.secret.is_none() && spec.public_key_pem.is_none() {
                return Err(bad("needs a secret or a public key (private_key_jwt)"));
            }
            if let Some(s) = spec.scopes.iter().find(|s| !is_scope_token(s)) {
                return Err(bad(&format!("invalid scope {s:?}")));
            }
            if let Some(a) = spec.audiences.iter().find(|a| a.is_empty() || a.chars().any(|c| c.is_whitespace())) {
                return Err(bad(&format!("invalid audience {a:?}")));
            }
            let key = spec.public_key_pem.as_deref().map(ClientKey::from_pem).transpose().map_err(|e| bad(&e))?;
            let client = Client {
                id: spec.id.clone(),
                secret_hash: spec.secret.as_deref().map(|s| Sha256::digest(s.as_bytes()).into()),
                key,
                audiences: spec.audiences,
                scopes: spec.scopes,
            };
            clients.insert(spec.id, client);
        }
        Ok(Registry { clients, used_jtis: Mutex::new(HashMap::new()) })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.clients.values()
    }

    /// Authenticates the client of a token request: exactly one of HTTP
    /// Basic, `client_secret` in the form, or a `client_assertion`.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        params: &Params,
        ctx: &AssertionContext<'_>,
    ) -> Result<&Client, OAuthError> {
        self.authenticate_by(authorization, params, ctx).map(|(client, _)| client)
    }

    /// Like [`Registry::authenticate`], also saying how the client
    /// authenticated (a Txn-Token needs `private_key_jwt`).
    pub fn authenticate_by(
        &self,
        authorization: Option<&[u8]>,
        params: &Params,
        ctx: &AssertionContext<'_>,
    ) -> Result<(&Client, AuthMethod), OAuthError> {
        let form_id = params.one("client_id")?;
        let form_secret = params.one("client_secret")?;
        let assertion = params.one("client_assertion")?;
        let assertion_type = params.one("client_assertion_type")?;
        let methods = [authorization.is_some(), form_secret.is_some(), assertion.is_some()];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(OAuthError::InvalidRequest("use exactly one client authentication method".into()));
        }
        if let Some(header) = authorization {
            let (id, secret) = parse_basic(header)?;
            if form_id.is_some_and(|f| f != id) {
                return Err(OAuthError::InvalidClient("client_id does not match the Basic credentials"));
            }
            return self.check_secret(&id, &secret).map(|c| (c, AuthMethod::ClientSecretBasic));
        }
        if let Some(secret) = form_secret {
            let id = form_id.ok_or(OAuthError::InvalidClient("client_secret without client_id"))?;
            return self.check_secret(id, secret).map(|c| (c, AuthMethod::ClientSecretPost));
        }
        match (assertion, assertion_type) {
            (Some(a), Some(JWT_BEARER)) => {
                self.check_assertion(a, form_id, ctx).map(|c| (c, AuthMethod::PrivateKeyJwt))
            }
            (Some(_), Some(_)) => Err(OAuthError::InvalidClient("unsupported client_assertion_type")),
            (Some(_), None) => Err(OAuthError::InvalidRequest("client_assertion without client_assertion_type".into())),
            (None, Some(_)) => Err(OAuthError::InvalidRequest("client_assertion_type without client_assertion".into())),
            (None, None) => Err(OAuthError::InvalidClient("client authentication is required")),
        }
    }

    /// Constant-time over the secret (SHA-256 digests compared with
    /// `subtle`), and an unknown client costs the same comparison.
    fn check_secret(&self, id: &str, secret: &str) -> Result<&Client, OAuthError> {
        let given: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let client = self.clients.get(id);
        let stored = client.and_then(|c| c.secret_hash).unwrap_or([0u8; 32]);
        let equal: bool = stored.ct_eq(&given).into();
        match client {
            Some(c) if equal && c.secret_hash.is_some() => Ok(c),
            _ => Err(OAuthError::InvalidClient("client authentication failed")),
        }
    }

    /// RFC 7523 §3 / OpenID Connect Core §9: `iss` = `sub` = client_id,
    /// `aud` one of the context's audiences, `exp` required and not past,
    /// `jti` required and not seen before within its lifetime.
    fn check_assertion(
        &self,
        assertion: &str,
        form_id: Option<&str>,
        ctx: &AssertionContext<'_>,
    ) -> Result<&Client, OAuthError> {
        const FAILED: OAuthError = OAuthError::InvalidClient("client assertion rejected");
        if assertion.len() > MAX_ASSERTION_BYTES {
            return Err(FAILED);
        }
        // Which client claims to have signed it; the signature decides.
        let claimed = unverified_claims(assertion).ok_or(FAILED)?;
        let sub = claimed.get("sub").and_then(Value::as_str).ok_or(FAILED)?;
        if form_id.is_some_and(|f| f != sub) {
            return Err(OAuthError::InvalidClient("client_id does not match the assertion"));
        }
        let client = self.clients.get(sub).ok_or(FAILED)?;
        let key =
            client.key.as_ref().ok_or(OAuthError::InvalidClient("client is not registered for private_key_jwt"))?;
        let mut v = Validation::new(jsonwebtoken::Algorithm::ES256);
        v.algorithms = key.algorithms.clone();
        v.leeway = ASSERTION_LEEWAY;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        v.set_issuer(&[client.id.as_str()]);
        v.sub = Some(client.id.clone());
        v.set_audience(ctx.audiences);
        let data = jsonwebtoken::decode::<Value>(assertion, &key.key, &v).map_err(|_| FAILED)?;
        let exp = data.claims.get("exp").and_then(Value::as_u64).ok_or(FAILED)?;
        if exp > ctx.now + MAX_ASSERTION_LIFETIME {
            return Err(OAuthError::InvalidClient("client assertion lives too long (at most 1 hour)"));
        }
        let jti = data.claims.get("jti").and_then(Value::as_str).filter(|j| !j.is_empty());
        let jti = jti.ok_or(OAuthError::InvalidClient("client assertion has no jti"))?;
        let mut used = self.used_jtis.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, forget_after| *forget_after >= ctx.now);
        let entry = (client.id.clone(), jti.to_owned());
        if used.contains_key(&entry) {
            return Err(OAuthError::InvalidClient("client assertion already used (jti replayed)"));
        }
        if used.len() >= MAX_REMEMBERED_JTIS {
            return Err(OAuthError::InvalidClient("too many live client assertions; retry later"));
        }
        used.insert(entry, exp + ASSERTION_LEEWAY);
        Ok(client)
    }
}

/// The payload of a compact JWS, unverified.
fn unverified_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_h, payload, _s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`
/// (RFC 6749 §2.3.1).
fn parse_basic(header: &[u8]) -> Result<(String, String), OAuthError> {
    const BAD: OAuthError = OAuthError::InvalidClient("malformed Basic credentials");
    let header = std::str::from_utf8(header).map_err(|_| BAD)?.trim();
    let (scheme, b64) = header.split_once(' ').ok_or(BAD)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidClient("unsupported authentication scheme (use Basic)"));
    }
    let raw = STANDARD.decode(b64.trim()).map_err(|_| BAD)?;
    let raw = String::from_utf8(raw).map_err(|_| BAD)?;
    let (id, secret) = raw.split_once(':').ok_or(BAD)?;
    Ok((form_decode(id).ok_or(BAD)?, form_decode(secret).ok_or(BAD)?))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a
/// space, `%XX` a byte; the result must be UTF-8.
pub(crate) fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok())?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_flags() {
        let s = ClientSpec::parse_flag(
            "id=demo, secret=demo-secret ,audiences=orders-api|billing-api,scopes=orders:read|billing:read",
        )
        .unwrap();
        assert_eq!(s.id, "demo");
        assert_eq!(s.secret.as_deref(), Some("demo-secret"));
        assert_eq!(s.audiences, ["orders-api", "billing-api"]);
        assert_eq!(s.scopes, ["orders:read", "billing:read"]);
        assert!(s.public_key_pem.is_none());
        // `=` inside a value is kept.
        let s = ClientSpec::parse_flag("id=x,secret=a=b").unwrap();
        assert_eq!(s.secret.as_deref(), Some("a=b"));
    }

    #[test]
    fn rejects_bad_client_flags_without_echoing_secrets() {
        for bad in ["secret=x", "id=a,colour=blue", "id=a,id=b", "id=a,secret", "id=a,public_key_file=/nonexistent"] {
            assert!(ClientSpec::parse_flag(bad).is_err(), "{bad}");
        }
        let e = ClientSpec::parse_flag("id=a,secret=hunter2,colour=x").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn parses_clients_file() {
        std::env::set_var("TOKEX_DEV_STS_TEST_SECRET", "from-env");
        let text = "clients:\n  - id: gw\n    secret: ${TOKEX_DEV_STS_TEST_SECRET}\n    audiences: [orders-api]\n    scopes: [orders:read]\n  - id: bare\n    secret: s\n";
        let specs = ClientSpec::parse_file(text, Path::new(".")).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].secret.as_deref(), Some("from-env"));
        assert_eq!(specs[0].audiences, ["orders-api"]);
        assert!(specs[1].scopes.is_empty());
        assert!(ClientSpec::parse_file("clients:\n  - id: a\n    colour: x\n", Path::new(".")).is_err());
        assert!(ClientSpec::parse_file("clients:\n  - id: a\n    public_key_file: nope.pem\n", Path::new(".")).is_err());
    }

    #[test]
    fn registry_validates_specs() {
        let ok = ClientSpec { id: "a".into(), secret: Some("s".into()), ..Default::default() };
        assert!(Registry::new(vec![ok.clone()]).is_ok());
        assert!(Registry::new(vec![ok.clone(), ok.clone()]).is_err(), "duplicate id");
        assert!(Registry::new(vec![ClientSpec { secret: None, ..ok.clone() }]).is_err(), "no credential");
        assert!(Registry::new(vec![ClientSpec { secret: Some(String::new()), ..ok.clone() }]).is_err());
        assert!(Registry::new(vec![ClientSpec { scopes: vec!["a b".into()], ..ok.clone() }]).is_err());
        assert!(Registry::new(vec![ClientSpec { public_key_pem: Some("nope".into()), ..ok }]).is_err());
    }

    #[test]
    fn wildcards_allow_anything_but_are_never_defaults() {
        let r = Registry::new(vec![ClientSpec {
            id: "a".into(),
            secret: Some("s".into()),
            audiences: vec!["*".into(), "orders".into()],
            scopes: vec!["*".into()],
            ..Default::default()
        }])
        .unwrap();
        let c = r.iter().next().unwrap();
        assert!(c.allows_audience("anything") && c.allows_scope("x:y"));
        assert_eq!(c.default_audiences(), ["orders"]);
        assert!(c.default_scopes().is_empty());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let enc = STANDARD.encode("my%20client:p%2Bw+%3Ad%25");
        assert_eq!(
            parse_basic(format!("Basic {enc}").as_bytes()).unwrap(),
            ("my client".to_owned(), "p+w :d%".to_owned())
        );
        assert!(parse_basic(b"Bearer abc").is_err());
        assert!(parse_basic(b"Basic !!!").is_err());
        assert!(parse_basic(format!("Basic {}", STANDARD.encode("nocolon")).as_bytes()).is_err());
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("%4"), None);
    }

    #[test]
    fn scope_tokens() {
        assert!(is_scope_token("orders:read"));
        assert!(is_scope_token("*"));
        assert!(!is_scope_token(""));
        assert!(!is_scope_token("a\"b"));
        assert!(!is_scope_token("a\\b"));
        assert!(!is_scope_token("a b"));
    }
}
