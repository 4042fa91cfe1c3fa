//! **Development only.** A small OAuth 2.0 authorization server for local
//! work, the `tokex demo` walkthrough and tests: never put it in front of
//! real users. It keeps no state across restarts (a fresh signing key per
//! start unless a key file is given), knows its clients from flags or a
//! small YAML file, and trusts only tokens it issued itself, and the JWTs of
//! the issuers it is told to trust for the jwt-bearer grant.
//!
//! Endpoints:
//! - `POST /token`: `client_credentials` (RFC 6749 §4.4), token exchange
//!   (RFC 8693; also for Transaction Tokens, `txn.rs`) and, with trusted
//!   issuers, the JWT bearer grant (RFC 7523 §2.1, `assertion.rs`), with
//!   `client_secret_basic`, `client_secret_post` and `private_key_jwt` (RFC
//!   7523) client authentication. Issues JWT access tokens (RFC 9068: `typ:
//!   at+jwt`, `kid`; claims `iss sub aud scope client_id iat exp jti`, `act`
//!   for delegation, and `cnf` for DPoP), and Txn-Tokens (`txntoken+jwt`).
//! - `POST /mint`: a user (subject) token for any `sub`, `aud`, `scope`
//!   and lifetime, for a caller authenticated as any registered client, so
//!   the gateway can be tried by hand with curl (`tokex dev-sts mint`);
//!   with `jkt`, bound to that DPoP key. Not standard and not advertised
//!   in the metadata.
//! - `POST /revoke`: token revocation (RFC 7009), with the client
//!   authentication of `/token`; `200` and an empty body for any token. A
//!   revoked token of this server is refused afterwards as a subject or
//!   actor token ([`DevSts::revocations`] lists what was revoked).
//! - `POST /ssf/emit`: revokes a subject ([`DevSts::revoke_subject`]) and
//!   pushes a Security Event Token about it (RFC 8417, CAEP / RISC events,
//!   RFC 8935 push) to a receiver's URL, for a caller authenticated as any
//!   registered client (`tokex dev-sts revoke`). Not standard and not
//!   advertised. [`DevSts::security_event`] makes the same SETs in tests.
//! - `GET /jwks.json` (also `/.well-known/jwks.json`): the public key.
//! - `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata.
//!
//! Token exchange only narrows: the subject token must be one of this
//! server's unexpired tokens; the new token's scopes are a subset of the
//! subject's (and allowed for the client), its audiences are allowed for the
//! client, and it expires no later than the subject token. With an
//! `actor_token` the new token carries `act: {sub: <actor>}`, nesting the
//! subject's own `act` (RFC 8693 §4.1); without one, the subject's `act` is
//! kept. A subject `may_act` claim restricts who may be the actor (§4.4).
//! A revoked subject or actor token, and a subject token of a revoked
//! subject issued at or before the revocation, are refused (`invalid_grant`).
//! With `requested_token_type=urn:ietf:params:oauth:token-type:jwt` the
//! token is the same JWT, named as such; its `aud` may be another
//! authorization server's issuer (identity chaining, below).
//!
//! Transaction Tokens (draft-ietf-oauth-transaction-tokens-10, `txn.rs`):
//! token exchange with `requested_token_type` [`TXN_TOKEN_TYPE`] issues a
//! Txn-Token, only to a client authenticated with `private_key_jwt`
//! (`400 unauthorized_client` otherwise: no mTLS on this plain-HTTP server).
//! `subject_token` is checked as for exchange; exactly one `audience` (the
//! trust domain, allowed for the client), no `resource`, no `actor_token`,
//! no `DPoP` proof (`invalid_request`: a Txn-Token is not
//! sender-constrained); `scope` optional, each allowed for the client and,
//! when the subject token has a scope, held by it (`invalid_scope`);
//! `request_context` / `request_details` optional JSON objects of at most
//! [`MAX_CONTEXT_BYTES`] (`invalid_request`). The token: header `typ:
//! txntoken+jwt`, `kid`; claims `iss iat exp aud txn sub`, `scope` when
//! any, `rctx` = the request context and `tctx` = the request details as
//! given; `exp` at most [`MAX_TXN_TOKEN_LIFETIME`] (and the server's token
//! lifetime) ahead and never after the subject token's; `txn` 128 random
//! bits. Answered `token_type: N_A`, `issued_token_type` the Txn-Token
//! type. A Txn-Token is not an access token: it is refused as a subject or
//! actor token.
//!
//! JWT bearer grant (RFC 7523, `assertion.rs`, `trusted.rs`), for identity
//! chaining across trust domains (draft-ietf-oauth-identity-chaining): with
//! [`DevStsConfig::trusted_issuers`] (`--trust-issuer ISSUER=JWKS_URL`),
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an
//! `assertion` JWT is accepted when: its `alg` is asymmetric
//! ([`ASSERTION_GRANT_ALGS`]; never HMAC or `none`), its `iss` is a trusted
//! issuer (this server's own issuer only when listed), its signature
//! verifies with the key of that issuer's JWK Set named by `kid` (fetched
//! with a [`JWKS_FETCH_TIMEOUT`] timeout, at most [`MAX_JWKS_BYTES`], cached
//! [`JWKS_CACHE_TTL`], fetched again for an unknown `kid` at most once per
//! [`JWKS_REFETCH_INTERVAL`]), its `aud` names this issuer or its token
//! endpoint, `exp` is present and not past, `nbf` / `iat` not ahead (5 s
//! leeway), `sub` is present, its `typ` is absent, `JWT` or `at+jwt`, and
//! it was not revoked here. Any failure is
//! `400 invalid_grant` naming the check. The access token is shaped like an
//! exchange's: the assertion's `sub`, `aud` / `resource` allowed for the
//! client, scopes allowed for the client and held by the assertion when it
//! has a `scope` (nothing requested: its scopes the client may hold), the
//! assertion's `act` kept, no later expiry than the assertion's, `cnf` with
//! a DPoP proof; no `issued_token_type`. Without trusted issuers the grant
//! is not advertised and answered `unsupported_grant_type`.
//!
//! DPoP (RFC 9449, `dpop.rs`): a token request may carry one `DPoP` proof
//! header, checked after client authentication: `typ`, an algorithm of
//! `dpop_signing_alg_values_supported` (ES256, ES384, EdDSA, RS256, PS256),
//! the public `jwk` and the signature, `htm` POST, `htu` the token endpoint
//! as the client addressed it (`http://<Host><path>`; the advertised
//! `token_endpoint` is accepted too), no `ath`, `iat` at most 60 s old and
//! 5 s ahead, and a `jti` not seen before (a replay cache of 100 000
//! proofs, refusing more when full). A failing proof is answered
//! `400 invalid_dpop_proof`. A good one binds the token issued, by
//! `client_credentials`, token exchange or jwt-bearer alike, to the proof's
//! key (`cnf: {jkt}`), answered as `token_type: DPoP` (a Txn-Token request
//! with a proof is refused, see above); without a proof nothing changes
//! (`Bearer`, no `cnf`). A DPoP-bound subject token is exchanged like any
//! other (its possession is not checked here, and its `cnf` is not carried
//! over): the new token is bound to the requester's proof key, if any.
//! With [`DevSts::set_dpop_nonce`] (`tokex dev-sts --dpop-nonce`) the server
//! demands nonces (§8): a proof without the current one gets `400
//! use_dpop_nonce`, and every answer to a request with a proof carries the
//! current `DPoP-Nonce` (a random value, renewed every 5 minutes).
//! [`DevSts::mint_bound`] signs a DPoP-bound user token directly.
//!
//! ```no_run
//! # async fn example() -> Result<(), tokex::dev_sts::DevStsError> {
//! use tokex::dev_sts::{self, ClientSpec, DevStsConfig};
//! let cfg = DevStsConfig {
//!     clients: vec![ClientSpec::parse_flag("id=gw,secret=s3cret,audiences=orders-api,scopes=orders:read")?],
//!     ..DevStsConfig::default()
//! };
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(dev_sts::DevStsError::Bind)?;
//! let sts = dev_sts::start(cfg, listener).await?;
//! let user = sts.mint("alice", &["orders:read", "orders:write"], &["edge"], std::time::Duration::from_secs(300));
//! # drop(user);
//! sts.shutdown().await;
//! # Ok(()) }
//! ```

mod assertion;
pub mod cli;
mod clients;
mod dpop;
mod emit;
mod endpoint;
mod keys;
mod mint;
pub mod mint_cli;
mod outbound;
mod revoke;
pub mod revoke_cli;
mod ssf;
mod token;
mod trusted;
mod txn;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use assertion::{ASSERTION_GRANT_ALGS, ASSERTION_GRANT_LEEWAY, JWT_BEARER_GRANT};
pub use clients::{ClientSpec, JWT_BEARER};
pub use dpop::{NONCE_LIFETIME, PROOF_LEEWAY, PROOF_MAX_AGE, REPLAY_CACHE_ENTRIES, SIGNING_ALGS as DPOP_SIGNING_ALGS};
pub use emit::{MAX_RECEIVER_ANSWER_BYTES, PUSH_TIMEOUT};
pub use endpoint::MAX_FORM_BYTES;
pub use mint::{DEFAULT_MINT_LIFETIME, MAX_MINT_LIFETIME};
pub use revoke::{RevocationRecord, MAX_REVOKED_SUBJECTS, MAX_REVOKED_TOKENS};
pub use ssf::{SecurityEvent, SubjectFormat, UnknownName, SET_TYP};
pub use token::{ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE};
pub use trusted::{TrustedIssuer, JWKS_CACHE_TTL, JWKS_FETCH_TIMEOUT, JWKS_REFETCH_INTERVAL, MAX_JWKS_BYTES};
pub use txn::{MAX_CONTEXT_BYTES, MAX_TXN_TOKEN_LIFETIME, TXN_TOKEN_TYP, TXN_TOKEN_TYPE};

use crate::proxy::server::{serve, Limits, Listening, Phase};
use clients::Registry;
use keys::SigningKey;
use revoke::Revocations;
use trusted::TrustedIssuers;

/// Settings of the development authorization server.
#[derive(Clone, Debug)]
pub struct DevStsConfig {
    /// `iss` of issued tokens and base of the advertised endpoints;
    /// default `http://<bound address>`.
    pub issuer: Option<String>,
    pub clients: Vec<ClientSpec>,
    /// Lifetime of issued tokens (exchanged tokens also end with their subject).
    pub expires_in: Duration,
    /// A PKCS#8 PEM signing key (EC P-256 → ES256, EC P-384 → ES384,
    /// RSA → RS256); default a fresh P-256 key per start.
    pub key_file: Option<PathBuf>,
    /// Issuers whose JWTs are accepted as `jwt-bearer` grants (RFC 7523).
    /// None by default, this server's own issuer included: with none the
    /// grant is not offered.
    pub trusted_issuers: Vec<TrustedIssuer>,
}

impl Default for DevStsConfig {
    fn default() -> Self {
        DevStsConfig {
            issuer: None,
            clients: Vec::new(),
            expires_in: Duration::from_secs(60),
            key_file: None,
            trusted_issuers: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevStsError {
    #[error("cannot read key file {path}: {source}")]
    KeyFile { path: PathBuf, source: std::io::Error },
    #[error("signing key: {0}")]
    Key(String),
    #[error("client: {0}")]
    ClientSpec(String),
    #[error("invalid issuer: {0}")]
    Issuer(String),
    #[error("expires_in must be between 1 s and 1 day")]
    ExpiresIn,
    #[error("cannot listen: {0}")]
    Bind(std::io::Error),
    #[error("cannot sign a token: {0}")]
    Sign(String),
    #[error("trusted issuer: {0}")]
    TrustedIssuer(String),
}

/// Shared state of a running server (the request handler).
pub(crate) struct State {
    issuer: String,
    /// The issuer URL's path without a trailing `/` (often empty).
    issuer_path: String,
    token_endpoint: String,
    /// `<issuer>/mint` (not advertised).
    mint_endpoint: String,
    /// `<issuer>/revoke`.
    revocation_endpoint: String,
    /// `<issuer>/ssf/emit` (not advertised).
    emit_endpoint: String,
    revocations: Revocations,
    /// DPoP proofs at `/token`: the replay cache and the nonce.
    dpop: dpop::DpopState,
    key: SigningKey,
    clients: Registry,
    /// Issuers of `jwt-bearer` assertions; `None` when none is trusted.
    trusted: Option<TrustedIssuers>,
    expires_in: Duration,
    exchanges: AtomicU64,
    txn_tokens: AtomicU64,
    jwt_bearer_grants: AtomicU64,
    jwks: String,
    metadata: String,
}

/// A running development authorization server. Dropping it stops the
/// accept loop too; [`DevSts::shutdown`] also waits for it.
pub struct DevSts {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<Phase>,
    task: Option<JoinHandle<()>>,
}

/// Starts serving on `listener`. Warns when it is not a loopback address.
pub async fn start(cfg: DevStsConfig, listener: TcpListener) -> Result<DevSts, DevStsError> {
    let addr = listener.local_addr().map_err(DevStsError::Bind)?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "DEVELOPMENT authorization server listening on a non-loopback address: anyone who can reach it can obtain tokens; do not expose it");
    }
    if cfg.expires_in < Duration::from_secs(1) || cfg.expires_in > Duration::from_secs(86_400) {
        return Err(DevStsError::ExpiresIn);
    }
    let issuer = match &cfg.issuer {
        Some(i) => check_issuer(i)?,
        None => {
            if addr.ip().is_unspecified() {
                tracing::warn!(%addr, "no issuer given for a wildcard address: tokens will name http://{addr}; set the issuer to the URL clients use");
            }
            format!("http://{addr}")
        }
    };
    let issuer_path = url::Url::parse(&issuer)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .map_err(|e| DevStsError::Issuer(e.to_string()))?;
    let key = match &cfg.key_file {
        Some(path) => SigningKey::from_pem_file(path)?,
        None => SigningKey::generate()?,
    };
    let clients = Registry::new(cfg.clients)?;
    let trusted = TrustedIssuers::new(&cfg.trusted_issuers)?;
    let token_endpoint = format!("{issuer}/token");
    let mint_endpoint = format!("{issuer}/mint");
    let revocation_endpoint = format!("{issuer}/revoke");
    let emit_endpoint = format!("{issuer}/ssf/emit");
    let jwks_uri = format!("{issuer}/jwks.json");
    let jwks = json!({"keys": [key.jwk.clone()]}).to_string();
    let mut scopes: Vec<&str> = clients.iter().flat_map(|c| c.listed_scopes()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let mut grants = vec![TOKEN_EXCHANGE, token::CLIENT_CREDENTIALS];
    if trusted.is_some() {
        grants.push(JWT_BEARER_GRANT);
    }
    let metadata = json!({
        "issuer": issuer,
        "token_endpoint": token_endpoint,
        "jwks_uri": jwks_uri,
        "grant_types_supported": grants,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": keys::ASSERTION_ALGS,
        "revocation_endpoint": revocation_endpoint,
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "revocation_endpoint_auth_signing_alg_values_supported": keys::ASSERTION_ALGS,
        "dpop_signing_alg_values_supported": dpop::signing_alg_names(),
        "response_types_supported": [],
        "scopes_supported": scopes,
        "tokex_development_only": true,
    })
    .to_string();
    let state = Arc::new(State {
        issuer,
        issuer_path,
        token_endpoint,
        mint_endpoint,
        revocation_endpoint,
        emit_endpoint,
        revocations: Revocations::default(),
        dpop: dpop::DpopState::default(),
        key,
        clients,
        trusted,
        expires_in: cfg.expires_in,
        exchanges: AtomicU64::new(0),
        txn_tokens: AtomicU64::new(0),
        jwt_bearer_grants: AtomicU64::new(0),
        jwks,
        metadata,
    });
    let (shutdown, rx) = watch::channel(Phase::Serving);
    let limits = Limits::internal(16 * 1024);
    let task = tokio::spawn(serve(listener, Listening::plain(), limits, state.clone(), rx, Duration::from_secs(1)));
    tracing::info!(%addr, issuer = %state.issuer, kid = %state.key.kid, "dev-sts (development only) listening");
    Ok(DevSts { addr, state, shutdown, task: Some(task) })
}

/// An absolute http(s) URL without query or fragment (RFC 8414 §2),
/// returned without a trailing `/`.
fn check_issuer(issuer: &str) -> Result<String, DevStsError> {
    let u = url::Url::parse(issuer).map_err(|e| DevStsError::Issuer(format!("{issuer}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.query().is_some() || u.fragment().is_some() {
        return Err(DevStsError::Issuer(format!("{issuer}: must be an http(s) URL without query or fragment")));
    }
    Ok(issuer.trim_end_matches('/').to_owned())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl DevSts {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `iss` of its tokens, without a trailing `/`.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// `<issuer>/token`.
    pub fn token_endpoint(&self) -> String {
        self.state.token_endpoint.clone()
    }

    /// `<issuer>/mint`: user tokens for hand testing (`tokex dev-sts mint`).
    pub fn mint_endpoint(&self) -> String {
        self.state.mint_endpoint.clone()
    }

    /// `<issuer>/revoke` (RFC 7009).
    pub fn revocation_endpoint(&self) -> String {
        self.state.revocation_endpoint.clone()
    }

    /// `<issuer>/ssf/emit`: revoke a subject and push a SET (`tokex dev-sts revoke`).
    pub fn emit_endpoint(&self) -> String {
        self.state.emit_endpoint.clone()
    }

    /// `<issuer>/jwks.json`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks.json", self.state.issuer)
    }

    /// `kid` of the signing key.
    pub fn kid(&self) -> &str {
        &self.state.key.kid
    }

    /// Signs a token for `sub` directly, without a client (no `client_id`
    /// claim): the demo's broad user token, or a subject token in tests.
    /// `ttl` zero gives a token that is already expired.
    pub fn mint(&self, sub: &str, scope: &[&str], audience: &[&str], ttl: Duration) -> String {
        // The key passed a sign-and-verify self-test at start; signing can
        // only fail if the system RNG does.
        self.mint_with(sub, scope, audience, ttl, serde_json::Map::new())
            .expect("signing with the self-tested dev-sts key")
    }

    /// Like [`DevSts::mint`], with extra claims merged in (e.g. `act` or
    /// `may_act`, for tests of delegation chains), and the error returned.
    pub fn mint_with(
        &self,
        sub: &str,
        scope: &[&str],
        audience: &[&str],
        ttl: Duration,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, DevStsError> {
        let now = unix_now();
        let aud: Vec<String> = audience.iter().map(|s| s.to_string()).collect();
        let scope: Vec<String> = scope.iter().map(|s| s.to_string()).collect();
        let exp = now.saturating_add(ttl.as_secs());
        let mut claims = token::build_claims(&self.state.issuer, sub, &aud, &scope, None, now, exp, None);
        if let Some(m) = claims.as_object_mut() {
            m.extend(extra);
        }
        self.state.key.sign(&claims)
    }

    /// Like [`DevSts::mint`], bound to a DPoP key: `cnf: {jkt}` (RFC 9449
    /// §6.1), `jkt` being the key's RFC 7638 thumbprint. A resource server
    /// that checks DPoP accepts it only with proofs of that key.
    pub fn mint_bound(&self, sub: &str, scope: &[&str], audience: &[&str], ttl: Duration, jkt: &str) -> String {
        let mut extra = serde_json::Map::new();
        extra.insert("cnf".into(), json!({ "jkt": jkt }));
        // As in `mint`: the self-tested key fails only if the system RNG does.
        self.mint_with(sub, scope, audience, ttl, extra).expect("signing with the self-tested dev-sts key")
    }

    /// Demand DPoP nonces (RFC 9449 §8) at `/token` from now on, or stop.
    /// Off at start (`tokex dev-sts --dpop-nonce` turns it on).
    pub fn set_dpop_nonce(&self, on: bool) {
        self.state.dpop.set_demand_nonce(on);
    }

    /// `use_dpop_nonce` answers so far.
    pub fn dpop_nonce_challenges(&self) -> u64 {
        self.state.dpop.nonce_challenges()
    }

    /// Successful token exchanges so far (client_credentials, Txn-Tokens
    /// and jwt-bearer grants not counted).
    pub fn exchange_count(&self) -> u64 {
        self.state.exchanges.load(Ordering::Relaxed)
    }

    /// Txn-Tokens issued so far.
    pub fn txn_token_count(&self) -> u64 {
        self.state.txn_tokens.load(Ordering::Relaxed)
    }

    /// Access tokens issued for `jwt-bearer` assertions so far.
    pub fn jwt_bearer_count(&self) -> u64 {
        self.state.jwt_bearer_grants.load(Ordering::Relaxed)
    }

    /// The JWK Set served at `/jwks.json`.
    pub fn jwks_json(&self) -> String {
        self.state.jwks.clone()
    }

    /// The tokens revoked at `/revoke`, oldest first (each token once).
    pub fn revocations(&self) -> Vec<RevocationRecord> {
        self.state.revocations.records()
    }

    /// Revokes `sub`: a later exchange whose subject token has this `sub`
    /// and was issued (`iat`) at or before now (whole seconds, so within
    /// this second too) is refused with `invalid_grant`. Tokens issued
    /// from the next second on work again.
    pub fn revoke_subject(&self, sub: &str) {
        self.state.revocations.revoke_subject(sub, unix_now());
        tracing::info!(sub, "dev-sts: subject revoked");
    }

    /// A signed Security Event Token (RFC 8417) about `sub` for the
    /// receiver `audience`, issued now, with a fresh `jti`: header
    /// `{alg, kid, typ: secevent+jwt}`, claims `iss aud iat jti sub_id
    /// events` (see `ssf.rs`). It does not revoke the subject.
    pub fn security_event(&self, sub: &str, event: SecurityEvent, audience: &str, format: SubjectFormat) -> String {
        let content = ssf::SetContent { issuer: &self.state.issuer, sub, event, audience, format };
        self.sign_security_event(&ssf::set_claims(&content, &ssf::new_jti(), unix_now()))
    }

    /// Signs any claims as a SET (header `{alg, kid, typ: secevent+jwt}`),
    /// for tests that need a wrong `aud`, an old `iat` or a reused `jti`.
    pub fn sign_security_event(&self, claims: &serde_json::Value) -> String {
        // As in `mint`: the self-tested key fails only if the system RNG does.
        self.state.key.sign_typed(claims, SET_TYP).expect("signing with the self-tested dev-sts key")
    }

    /// Stops accepting and waits (at most ~1 s) for open connections.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(Phase::Stopping);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DevSts {
    fn drop(&mut self) {
        let _ = self.shutdown.send(Phase::Stopping);
    }
}

impl std::fmt::Debug for DevSts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevSts").field("addr", &self.addr).field("issuer", &self.state.issuer).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_checked() {
        assert_eq!(check_issuer("https://sts.example/dev/").unwrap(), "https://sts.example/dev");
        assert!(check_issuer("ftp://x").is_err());
        assert!(check_issuer("https://x/?a=b").is_err());
        assert!(check_issuer("not a url").is_err());
    }
}
