//! The agent-era grants of the development authorization server, over real
//! HTTP: Transaction Tokens (token exchange for
//! `urn:ietf:params:oauth:token-type:txn_token`), and the RFC 7523
//! jwt-bearer grant from trusted issuers, chained across two dev-sts
//! instances (identity chaining: a JWT for the partner's issuer from the
//! home server, then that JWT as an authorization grant at the partner).

mod common;

use std::time::Duration;

use common::jwt::{b64, hmac_sha256, jws, EcSigner, JwksServer};
use common::process::{DevStsProcess, BIN};
use common::sts::{client_assertion, client_key, post, post_with, start_trusting, trust, Auth};
use common::*;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::{json, Value};
use tokex::dev_sts::{
    self, ClientSpec, DevSts, DevStsConfig, TrustedIssuer, ACCESS_TOKEN_TYPE, JWKS_REFETCH_INTERVAL, JWT_BEARER_GRANT,
    JWT_TOKEN_TYPE, MAX_CONTEXT_BYTES, TOKEN_EXCHANGE, TXN_TOKEN_TYP, TXN_TOKEN_TYPE,
};
use tokex::dpop::ProofKey;
use tokio::net::TcpListener;

const HOUR: Duration = Duration::from_secs(3600);
const TRUST_DOMAIN: &str = "trust.example";
/// The fake identity provider trusted by the partner (its JWKS served by a `JwksServer`).
const IDP: &str = "https://idp.partner.test";

type Answer = (StatusCode, HeaderMap, Value);

async fn token(sts: &DevSts, auth: Auth<'_>, form: &[(&str, &str)]) -> Answer {
    token_with(sts, auth, form, &[]).await
}

async fn token_with(sts: &DevSts, auth: Auth<'_>, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Answer {
    let (status, headers, text) = post_with(&sts.token_endpoint(), auth, form, headers).await;
    (status, headers, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

/// A refusal with this status and code, whose description contains `says`.
fn refused(got: &Answer, status: u16, code: &str, says: &str) {
    assert_eq!(got.0.as_u16(), status, "{says}: {:?}", got.2);
    assert_eq!(got.2["error"], code, "{says}: {:?}", got.2);
    let description = got.2["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(says), "expected {says:?} in {description:?}");
    assert!(got.2.get("access_token").is_none());
    assert_eq!(got.1["cache-control"], "no-store");
}

fn ok(got: &Answer) -> &str {
    assert_eq!(got.0, StatusCode::OK, "{:?}", got.2);
    assert_eq!(got.1["cache-control"], "no-store");
    got.2["access_token"].as_str().expect("an access_token")
}

/// Verifies `token` against `sts`'s JWKS fetched over HTTP (`iss`, `aud`,
/// `exp`, signature); its header and claims.
async fn verify(sts: &DevSts, token: &str, aud: &str) -> (Header, Value) {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let text = client().get(sts.jwks_uri()).send().await.unwrap().text().await.unwrap();
    let jwks: JwkSet = serde_json::from_str(&text).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("kid is in the JWKS");
    let mut v = Validation::new(header.alg);
    v.set_audience(&[aud]);
    v.set_issuer(&[sts.issuer()]);
    v.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).expect("token verifies");
    (header, data.claims)
}

async fn metadata(sts: &DevSts) -> Value {
    let url = format!("{}/.well-known/oauth-authorization-server", sts.issuer());
    serde_json::from_str(&client().get(url).send().await.unwrap().text().await.unwrap()).unwrap()
}

fn grants(meta: &Value) -> Vec<&str> {
    meta["grant_types_supported"].as_array().unwrap().iter().filter_map(Value::as_str).collect()
}

// ---------------------------------------------------------------------------
// Transaction Tokens

/// A Txn-Token Service: `txn-gw` (private_key_jwt; the trust domain,
/// orders:read|orders:write) and `secret-gw` (client_secret; anything).
struct Txn {
    sts: DevSts,
    key: Vec<u8>,
}

impl Txn {
    async fn start(expires_in: Duration) -> Txn {
        let (key, pem) = client_key();
        let clients = vec![
            ClientSpec {
                id: "txn-gw".into(),
                public_key_pem: Some(pem),
                audiences: vec![TRUST_DOMAIN.into()],
                scopes: vec!["orders:read".into(), "orders:write".into()],
                ..Default::default()
            },
            ClientSpec::parse_flag("id=secret-gw,secret=s3cret,audiences=*,scopes=*").unwrap(),
        ];
        Txn { sts: start_trusting(clients, vec![], expires_in).await, key }
    }

    /// `txn-gw`'s private_key_jwt authentication (a fresh assertion).
    fn auth(&self) -> Auth<'static> {
        Auth::Assertion(client_assertion(&self.key, "txn-gw", &self.sts.token_endpoint()))
    }

    /// A Txn-Token request for `subject` as `txn-gw`, with `extra` parameters.
    async fn request(&self, subject: &str, extra: &[(&str, &str)]) -> Answer {
        token(&self.sts, self.auth(), &txn_form(subject, extra)).await
    }
}

fn txn_form<'a>(subject: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("requested_token_type", TXN_TOKEN_TYPE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
    ];
    f.extend_from_slice(extra);
    f
}

#[tokio::test]
async fn a_txn_token_carries_the_subject_and_the_request_context() {
    let t = Txn::start(HOUR).await;
    let user = t.sts.mint("alice", &["orders:read", "orders:write", "profile"], &["tokex"], HOUR);
    let rctx = json!({"req_ip": "192.0.2.7", "authn": "urn:ietf:rfc:8176:pwd", "req_wl": "tokex-gateway"});
    let tctx = json!({"method": "GET", "path": "/orders/42", "amount": 12.5, "items": [{"sku": "a"}]});
    let (rctx_text, tctx_text) = (rctx.to_string(), tctx.to_string());
    let before = now();
    let extra = [
        ("audience", TRUST_DOMAIN),
        ("scope", "orders:read"),
        ("request_context", rctx_text.as_str()),
        ("request_details", tctx_text.as_str()),
    ];
    let got = t.request(&user, &extra).await;
    let txn_token = ok(&got);
    assert_eq!(got.2["token_type"], "N_A");
    assert_eq!(got.2["issued_token_type"], TXN_TOKEN_TYPE);
    assert_eq!(got.2["expires_in"], 300, "the server's hour is capped at 5 minutes");
    assert_eq!(got.2["scope"], "orders:read");

    let (header, c) = verify(&t.sts, txn_token, TRUST_DOMAIN).await;
    assert_eq!(header.typ.as_deref(), Some(TXN_TOKEN_TYP));
    assert_eq!(header.typ.as_deref(), Some("txntoken+jwt"));
    assert_eq!(header.kid.as_deref(), Some(t.sts.kid()));
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(c["iss"], t.sts.issuer());
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], TRUST_DOMAIN, "one audience, as a string");
    assert_eq!(c["scope"], "orders:read");
    assert_eq!(c["rctx"], rctx, "request_context as given, req_ip and authn untouched");
    assert_eq!(c["tctx"], tctx, "request_details as given");
    let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
    assert!(iat >= before && iat <= now(), "iat {iat}");
    assert_eq!(exp - iat, 300);
    let txn = c["txn"].as_str().unwrap();
    assert_eq!(txn.len(), 22, "128 random bits, base64url");
    for absent in ["client_id", "cnf", "act"] {
        assert!(c.get(absent).is_none(), "{absent} in {c}");
    }

    // Another transaction: another id. Nothing requested: the subject's
    // scopes that the client may hold; no context, no rctx / tctx.
    let again = t.request(&user, &[("audience", TRUST_DOMAIN)]).await;
    let (_, c2) = verify(&t.sts, ok(&again), TRUST_DOMAIN).await;
    assert_ne!(c2["txn"], c["txn"]);
    assert_eq!(c2["scope"], "orders:read orders:write");
    assert!(c2.get("rctx").is_none() && c2.get("tctx").is_none(), "{c2}");
    assert_eq!(t.sts.txn_token_count(), 2);
    assert_eq!(t.sts.exchange_count(), 0, "Txn-Tokens are not counted as exchanges");
}

#[tokio::test]
async fn a_txn_token_ends_with_its_subject_and_the_server_lifetime() {
    let t = Txn::start(HOUR).await;
    // A subject without scope: the scope asked for is only checked against the client.
    let short = t.sts.mint("bob", &[], &["tokex"], Duration::from_secs(100));
    let subject_exp = verify(&t.sts, &short, "tokex").await.1["exp"].as_u64().unwrap();
    let got = t.request(&short, &[("audience", TRUST_DOMAIN), ("scope", "orders:write")]).await;
    let (_, c) = verify(&t.sts, ok(&got), TRUST_DOMAIN).await;
    assert_eq!(c["exp"].as_u64(), Some(subject_exp), "never after the subject token");
    assert!(got.2["expires_in"].as_u64().unwrap() <= 100);
    assert_eq!(c["scope"], "orders:write");

    // Without a scope asked for or held: no scope at all.
    let got = t.request(&short, &[("audience", TRUST_DOMAIN)]).await;
    let (_, c) = verify(&t.sts, ok(&got), TRUST_DOMAIN).await;
    assert!(c.get("scope").is_none() && got.2.get("scope").is_none(), "{c}");

    // A server issuing one-minute tokens issues one-minute Txn-Tokens.
    let t60 = Txn::start(Duration::from_secs(60)).await;
    let user = t60.sts.mint("alice", &["orders:read"], &["tokex"], HOUR);
    let got = t60.request(&user, &[("audience", TRUST_DOMAIN)]).await;
    ok(&got);
    assert_eq!(got.2["expires_in"], 60);
}

#[tokio::test]
async fn txn_token_requests_are_refused_when_they_break_a_rule() {
    let t = Txn::start(HOUR).await;
    let user = t.sts.mint("alice", &["orders:read"], &["tokex"], HOUR);
    let aud = ("audience", TRUST_DOMAIN);

    // Strong client authentication only.
    let got = token(&t.sts, Auth::Basic("secret-gw", "s3cret"), &txn_form(&user, &[aud])).await;
    refused(&got, 400, "unauthorized_client", "private_key_jwt");
    let got = token(&t.sts, Auth::Post("secret-gw", "s3cret"), &txn_form(&user, &[aud])).await;
    refused(&got, 400, "unauthorized_client", "private_key_jwt");
    let got = token(&t.sts, Auth::None, &txn_form(&user, &[aud])).await;
    refused(&got, 401, "invalid_client", "client authentication is required");

    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_CONTEXT_BYTES));
    // (extra parameters, error code, what the description says)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], "invalid_request", "audience (the trust domain) is required"),
        (vec![aud, ("audience", "other.example")], "invalid_request", "exactly one audience"),
        (vec![aud, ("resource", "https://api.example/")], "invalid_request", "not resource"),
        (vec![("audience", "other.example")], "invalid_target", "not allowed for this client"),
        (vec![aud, ("request_context", "{not json")], "invalid_request", "request_context is not valid JSON"),
        (vec![aud, ("request_context", "[1,2]")], "invalid_request", "request_context is not a JSON object"),
        (vec![aud, ("request_context", "\"192.0.2.7\"")], "invalid_request", "request_context is not a JSON object"),
        (vec![aud, ("request_context", big.as_str())], "invalid_request", "request_context is larger than 4096 bytes"),
        (vec![aud, ("request_details", "42")], "invalid_request", "request_details is not a JSON object"),
        (vec![aud, ("scope", "orders:write")], "invalid_scope", "not held by the subject token"),
        (
            vec![aud, ("actor_token", user.as_str()), ("actor_token_type", ACCESS_TOKEN_TYPE)],
            "invalid_request",
            "no actor_token",
        ),
    ];
    for (extra, code, says) in &cases {
        refused(&t.request(&user, extra).await, 400, code, says);
    }
    // Held by the subject, but not allowed for the client.
    let admin = t.sts.mint("alice", &["orders:read", "admin"], &["tokex"], HOUR);
    let got = t.request(&admin, &[aud, ("scope", "admin")]).await;
    refused(&got, 400, "invalid_scope", "scope admin is not allowed for this client");

    // The subject token: a token of this server, unexpired, not revoked.
    let expired = t.sts.mint("alice", &["orders:read"], &["tokex"], Duration::ZERO);
    let foreign = Txn::start(HOUR).await.sts.mint("alice", &["orders:read"], &["tokex"], HOUR);
    for subject in ["garbage", expired.as_str(), foreign.as_str()] {
        refused(&t.request(subject, &[aud]).await, 400, "invalid_grant", "not a valid, unexpired token");
    }
    let revoked = t.sts.mint("carol", &["orders:read"], &["tokex"], HOUR);
    ok(&t.request(&revoked, &[aud]).await);
    let (status, _, _) = post(&t.sts.revocation_endpoint(), t.auth(), &[("token", &revoked)]).await;
    assert_eq!(status, 200);
    refused(&t.request(&revoked, &[aud]).await, 400, "invalid_grant", "subject_token was revoked");
    t.sts.revoke_subject("dave");
    let dave = t.sts.mint("dave", &[], &["tokex"], HOUR);
    refused(&t.request(&dave, &[aud]).await, 400, "invalid_grant", "session was revoked");
    let no_subject = [("grant_type", TOKEN_EXCHANGE), ("requested_token_type", TXN_TOKEN_TYPE), aud];
    refused(&token(&t.sts, t.auth(), &no_subject).await, 400, "invalid_request", "subject_token is required");

    // No DPoP: a Txn-Token is not sender-constrained.
    let proof = ProofKey::generate(Algorithm::ES256).unwrap().proof("POST", &t.sts.token_endpoint(), None, None);
    let proof = proof.unwrap();
    let got = token_with(&t.sts, t.auth(), &txn_form(&user, &[aud]), &[("dpop", &proof)]).await;
    refused(&got, 400, "invalid_request", "a Txn-Token is not sender-constrained");

    assert_eq!(t.sts.txn_token_count(), 1, "only the one before the revocation");
}

#[tokio::test]
async fn a_txn_token_is_not_an_access_token() {
    let t = Txn::start(HOUR).await;
    let user = t.sts.mint("alice", &["orders:read"], &["tokex"], HOUR);
    let txn_token = ok(&t.request(&user, &[("audience", TRUST_DOMAIN)]).await).to_owned();
    // Neither as the subject of a token exchange nor of another Txn-Token.
    let exchange = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", txn_token.as_str()),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("audience", "orders-api"),
    ];
    let got = token(&t.sts, Auth::Basic("secret-gw", "s3cret"), &exchange).await;
    refused(&got, 400, "invalid_grant", "not a valid, unexpired token of this server");
    refused(&t.request(&txn_token, &[("audience", TRUST_DOMAIN)]).await, 400, "invalid_grant", "not a valid");
}

// ---------------------------------------------------------------------------
// JWT bearer grant (RFC 7523) and identity chaining

/// `home`: a dev-sts whose client `gw` may ask for any audience. `partner`:
/// a dev-sts trusting `home` and the fake IdP, with client `partner-gw`.
struct Chain {
    home: DevSts,
    partner: DevSts,
    idp_key: EcSigner,
}

const PARTNER_GW: &str =
    "id=partner-gw,secret=pw-secret,audiences=partner-api|other-api,scopes=orders:read|orders:write|profile";

fn partner_gw() -> Auth<'static> {
    Auth::Basic("partner-gw", "pw-secret")
}

async fn chain() -> Chain {
    let gw = ClientSpec::parse_flag("id=gw,secret=gw-secret,audiences=*,scopes=orders:read|orders:write").unwrap();
    let narrow = ClientSpec::parse_flag("id=narrow,secret=n-secret,audiences=orders-api,scopes=orders:read").unwrap();
    let home = start_trusting(vec![gw, narrow], vec![], HOUR).await;
    let idp_key = EcSigner::new("idp-1");
    let idp = JwksServer::start(vec![idp_key.jwk.clone()]).await;
    let trusted = vec![trust(&home), TrustedIssuer { issuer: IDP.into(), jwks_uri: idp.uri() }];
    let partner = start_trusting(vec![ClientSpec::parse_flag(PARTNER_GW).unwrap()], trusted, HOUR).await;
    Chain { home, partner, idp_key }
}

impl Chain {
    /// A JWT from `home` (token exchange of `user` for
    /// `requested_token_type=…:jwt`) for `audience`.
    async fn home_jwt(&self, user: &str, audience: &str, scope: &str) -> String {
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", user),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", JWT_TOKEN_TYPE),
            ("audience", audience),
            ("scope", scope),
        ];
        let got = token(&self.home, Auth::Basic("gw", "gw-secret"), &form).await;
        assert_eq!(got.2["issued_token_type"], JWT_TOKEN_TYPE, "{:?}", got.2);
        ok(&got).to_owned()
    }

    /// An assertion by the fake IdP: valid claims for the partner, `extra`
    /// overriding them (a `null` removes one), signed with its key.
    fn idp_assertion(&self, extra: Value) -> String {
        jws(&json!({"alg": "ES256", "kid": "idp-1"}), &self.idp_claims(extra), |m| self.idp_key.sign(m))
    }

    fn idp_claims(&self, extra: Value) -> Value {
        let now = now();
        let mut c = json!({"iss": IDP, "sub": "alice", "aud": self.partner.issuer(), "iat": now, "exp": now + 120});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    async fn present(&self, assertion: &str, extra: &[(&str, &str)]) -> Answer {
        token(&self.partner, partner_gw(), &bearer_form(assertion, extra)).await
    }
}

fn bearer_form<'a>(assertion: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![("grant_type", JWT_BEARER_GRANT), ("assertion", assertion)];
    f.extend_from_slice(extra);
    f
}

#[tokio::test]
async fn identity_chaining_from_one_dev_sts_to_another() {
    let ch = chain().await;
    let user = ch.home.mint("alice", &["orders:read", "orders:write"], &["tokex"], Duration::from_secs(120));

    // 1. At home: token exchange for a JWT whose audience is the partner's issuer.
    let grant = ch.home_jwt(&user, ch.partner.issuer(), "orders:read").await;
    let (header, g) = verify(&ch.home, &grant, ch.partner.issuer()).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!((g["sub"].as_str(), g["aud"].as_str()), (Some("alice"), Some(ch.partner.issuer())));
    assert_eq!(g["scope"], "orders:read");
    // A home client not allowed that audience cannot get such a JWT.
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", user.as_str()),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("requested_token_type", JWT_TOKEN_TYPE),
        ("audience", ch.partner.issuer()),
    ];
    refused(&token(&ch.home, Auth::Basic("narrow", "n-secret"), &form).await, 400, "invalid_target", "not allowed");

    // 2. At the partner: that JWT as an authorization grant.
    let got = ch.present(&grant, &[("audience", "partner-api"), ("scope", "orders:read")]).await;
    let access = ok(&got);
    assert_eq!(got.2["token_type"], "Bearer");
    assert!(got.2.get("issued_token_type").is_none(), "RFC 7523 is not token exchange: {:?}", got.2);
    assert_eq!(got.2["scope"], "orders:read");
    let (header, c) = verify(&ch.partner, access, "partner-api").await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.kid.as_deref(), Some(ch.partner.kid()));
    assert_eq!(c["iss"], ch.partner.issuer());
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], "partner-api");
    assert_eq!(c["scope"], "orders:read");
    assert_eq!(c["client_id"], "partner-gw");
    assert!(c["exp"].as_u64() <= g["exp"].as_u64(), "never after the assertion: {c} / {g}");
    assert!(c.get("cnf").is_none() && c.get("act").is_none(), "{c}");
    assert_eq!(ch.partner.jwt_bearer_count(), 1);
    assert_eq!(ch.partner.exchange_count(), 0);

    // The assertion's scope limits what the partner grants.
    let wider = ch.present(&grant, &[("scope", "orders:write")]).await;
    refused(&wider, 400, "invalid_scope", "scope orders:write is not held by the assertion");
    let refused_target = ch.present(&grant, &[("audience", "orders-api")]).await;
    refused(&refused_target, 400, "invalid_target", "not allowed for this client");
    // Nothing asked: the assertion's scopes, the client's audiences.
    let got = ch.present(&grant, &[]).await;
    let (_, c) = verify(&ch.partner, ok(&got), "other-api").await;
    assert_eq!(c["scope"], "orders:read");
    assert_eq!(c["aud"], json!(["partner-api", "other-api"]));

    // Discovery says which server takes the grant.
    assert!(grants(&metadata(&ch.partner).await).contains(&JWT_BEARER_GRANT));
    assert!(!grants(&metadata(&ch.home).await).contains(&JWT_BEARER_GRANT), "home trusts no issuer");
}

#[tokio::test]
async fn a_chained_token_keeps_act_and_binds_to_a_dpop_proof() {
    let ch = chain().await;
    let assertion = ch.idp_assertion(json!({"act": {"sub": "agent-7"}, "scope": "orders:read profile"}));
    let key = ProofKey::generate(Algorithm::ES256).unwrap();
    let proof = key.proof("POST", &ch.partner.token_endpoint(), None, None).unwrap();
    let form = bearer_form(&assertion, &[("audience", "partner-api")]);
    let got = token_with(&ch.partner, partner_gw(), &form, &[("dpop", &proof)]).await;
    let access = ok(&got);
    assert_eq!(got.2["token_type"], "DPoP");
    assert_eq!(got.2["scope"], "orders:read profile");
    let (_, c) = verify(&ch.partner, access, "partner-api").await;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["act"], json!({"sub": "agent-7"}), "the assertion's act is kept");
    assert_eq!(c["cnf"], json!({"jkt": key.jkt()}));
}

#[tokio::test]
async fn jwt_bearer_refusals_name_the_failed_check() {
    let ch = chain().await;
    let user = ch.home.mint("alice", &["orders:read"], &["tokex"], HOUR);
    let stranger = start_trusting(vec![], vec![], HOUR).await;
    let from_stranger = stranger.mint("alice", &["orders:read"], &[ch.partner.issuer()], HOUR);
    let wrong_aud = ch.home_jwt(&user, "someone-else", "orders:read").await;
    let forger = EcSigner::new("idp-1");
    let same_kid = jws(&json!({"alg": "ES256", "kid": "idp-1"}), &ch.idp_claims(json!({})), |m| forger.sign(m));
    let no_kid = jws(&json!({"alg": "ES256"}), &ch.idp_claims(json!({})), |m| ch.idp_key.sign(m));
    let unknown_kid = jws(&json!({"alg": "ES256", "kid": "idp-9"}), &ch.idp_claims(json!({})), |m| ch.idp_key.sign(m));
    let hs256 = jws(&json!({"alg": "HS256", "kid": "idp-1"}), &ch.idp_claims(json!({})), |m| hmac_sha256(b"k", m));
    let none = format!("{}.{}.", b64(json!({"alg": "none"}).to_string()), b64(ch.idp_claims(json!({})).to_string()));
    let now = now();
    let cases: Vec<(&str, String, &str)> = vec![
        ("untrusted issuer", from_stranger, "the assertion's iss is not a trusted issuer"),
        ("wrong aud", wrong_aud, "the assertion's aud names neither this issuer nor its token endpoint"),
        ("expired", ch.idp_assertion(json!({"exp": now - 60})), "the assertion has expired"),
        ("no exp", ch.idp_assertion(json!({"exp": null})), "the assertion has no exp"),
        ("nbf ahead", ch.idp_assertion(json!({"nbf": now + 120})), "nbf is in the future"),
        ("iat ahead", ch.idp_assertion(json!({"iat": now + 120})), "iat is in the future"),
        ("no sub", ch.idp_assertion(json!({"sub": null})), "the assertion has no sub"),
        ("no iss", ch.idp_assertion(json!({"iss": null})), "the assertion has no iss"),
        ("another key, same kid", same_kid, "the assertion's signature does not verify"),
        ("unknown kid", unknown_kid, "no key of the trusted issuer's JWKS matches"),
        ("no kid", no_kid, "names no kid"),
        ("HS256", hs256, "alg is not accepted"),
        ("alg none", none, "alg is not accepted"),
        ("garbage", "garbage-not-a-jwt".into(), "not a well-formed JWT"),
        ("expired within the leeway", ch.idp_assertion(json!({"exp": now - 2})), "the assertion has expired"),
    ];
    // Typed JWTs of other kinds are no grants, whoever signed them.
    for typ in [json!("txntoken+jwt"), json!("secevent+jwt"), json!("application/dpop+jwt"), json!(1)] {
        let typed = jws(&json!({"alg": "ES256", "kid": "idp-1", "typ": typ}), &ch.idp_claims(json!({})), |m| {
            ch.idp_key.sign(m)
        });
        refused(&ch.present(&typed, &[]).await, 400, "invalid_grant", "typ names another kind of JWT");
    }
    for (what, assertion, says) in &cases {
        let got = ch.present(assertion, &[]).await;
        refused(&got, 400, "invalid_grant", says);
        assert!(!got.2.to_string().contains(assertion.as_str()), "{what}: the assertion is echoed");
    }
    refused(&ch.present(&ch.idp_assertion(json!({})), &[("scope", "admin")]).await, 400, "invalid_scope", "admin");
    let missing = token(&ch.partner, partner_gw(), &[("grant_type", JWT_BEARER_GRANT)]).await;
    refused(&missing, 400, "invalid_request", "assertion is required");
    let anonymous = token(&ch.partner, Auth::None, &bearer_form(&ch.idp_assertion(json!({})), &[])).await;
    refused(&anonymous, 401, "invalid_client", "client authentication is required");
    assert_eq!(ch.partner.jwt_bearer_count(), 0);
    // A good one still passes.
    ok(&ch.present(&ch.idp_assertion(json!({})), &[]).await);
    for typ in ["JWT", "at+jwt", "application/at+jwt"] {
        let typed = jws(&json!({"alg": "ES256", "kid": "idp-1", "typ": typ}), &ch.idp_claims(json!({})), |m| {
            ch.idp_key.sign(m)
        });
        ok(&ch.present(&typed, &[]).await);
    }
}

#[tokio::test]
async fn an_assertion_revoked_at_the_partner_is_refused() {
    let ch = chain().await;
    let user = ch.home.mint("alice", &["orders:read"], &["tokex"], HOUR);
    let grant = ch.home_jwt(&user, ch.partner.issuer(), "orders:read").await;
    ok(&ch.present(&grant, &[]).await);
    let (status, _, _) = post(&ch.partner.revocation_endpoint(), partner_gw(), &[("token", &grant)]).await;
    assert_eq!(status, 200);
    assert_eq!(ch.partner.revocations().len(), 1);
    refused(&ch.present(&grant, &[]).await, 400, "invalid_grant", "the assertion was revoked");
    // Revoked at the partner only: home still takes the user token.
    ch.home_jwt(&user, ch.partner.issuer(), "orders:read").await;
}

#[tokio::test]
async fn own_tokens_are_assertions_only_when_the_own_issuer_is_listed() {
    let ch = chain().await;
    let own = ch.partner.mint("alice", &["orders:read"], &[ch.partner.issuer()], HOUR);
    refused(&ch.present(&own, &[]).await, 400, "invalid_grant", "not a trusted issuer");

    // A dev-sts that lists itself.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let cfg = DevStsConfig {
        clients: vec![ClientSpec::parse_flag(PARTNER_GW).unwrap()],
        trusted_issuers: vec![TrustedIssuer { issuer: issuer.clone(), jwks_uri: format!("{issuer}/jwks.json") }],
        ..Default::default()
    };
    let itself = dev_sts::start(cfg, listener).await.unwrap();
    // The token endpoint as the audience works too.
    let own = itself.mint("alice", &["orders:read"], &[itself.token_endpoint().as_str()], HOUR);
    let got = token(&itself, partner_gw(), &bearer_form(&own, &[("audience", "partner-api")])).await;
    let (_, c) = verify(&itself, ok(&got), "partner-api").await;
    assert_eq!((c["sub"].as_str(), c["scope"].as_str()), (Some("alice"), Some("orders:read")));
}

#[tokio::test]
async fn a_trusted_jwks_is_cached_and_unknown_kids_refetch_it_rarely() {
    let key = EcSigner::new("k1");
    let idp = JwksServer::start(vec![key.jwk.clone()]).await;
    let trusted = vec![TrustedIssuer { issuer: IDP.into(), jwks_uri: idp.uri() }];
    let partner = start_trusting(vec![ClientSpec::parse_flag(PARTNER_GW).unwrap()], trusted, HOUR).await;
    assert_eq!(idp.fetches(), 0, "fetched when first needed");
    let signed_by = |k: &EcSigner, kid: &str| {
        let now = now();
        let claims = json!({"iss": IDP, "sub": "alice", "aud": partner.issuer(), "exp": now + 60});
        jws(&json!({"alg": "ES256", "kid": kid}), &claims, |m| k.sign(m))
    };
    for _ in 0..3 {
        ok(&token(&partner, partner_gw(), &bearer_form(&signed_by(&key, "k1"), &[])).await);
    }
    assert_eq!(idp.fetches(), 1, "one fetch for three assertions");

    // A kid the issuer does not publish (yet): refused, and no refetch
    // within 10 s of the last fetch, so made-up kids cannot make the
    // server hammer the issuer.
    let rotated = EcSigner::new("k2");
    let got = token(&partner, partner_gw(), &bearer_form(&signed_by(&rotated, "k2"), &[])).await;
    refused(&got, 400, "invalid_grant", "no key of the trusted issuer's JWKS matches");
    idp.keys.lock().unwrap().push(rotated.jwk.clone());
    let got = token(&partner, partner_gw(), &bearer_form(&signed_by(&rotated, "k2"), &[])).await;
    refused(&got, 400, "invalid_grant", "no key of the trusted issuer's JWKS matches");
    assert_eq!(idp.fetches(), 1);

    // Once the interval has passed, an unknown kid fetches the set again:
    // the rotated key is found, then served from the cache.
    tokio::time::sleep(JWKS_REFETCH_INTERVAL + Duration::from_millis(200)).await;
    ok(&token(&partner, partner_gw(), &bearer_form(&signed_by(&rotated, "k2"), &[])).await);
    assert_eq!(idp.fetches(), 2);
    ok(&token(&partner, partner_gw(), &bearer_form(&signed_by(&rotated, "k2"), &[])).await);
    ok(&token(&partner, partner_gw(), &bearer_form(&signed_by(&key, "k1"), &[])).await);
    assert_eq!(idp.fetches(), 2);
    // Still unknown after that refetch: refused without another fetch.
    let got = token(&partner, partner_gw(), &bearer_form(&signed_by(&rotated, "k3"), &[])).await;
    refused(&got, 400, "invalid_grant", "no key of the trusted issuer's JWKS matches");
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn an_unreachable_jwks_is_named_in_the_refusal() {
    let key = EcSigner::new("k1");
    let idp = JwksServer::start(vec![key.jwk.clone()]).await;
    idp.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let trusted = vec![TrustedIssuer { issuer: IDP.into(), jwks_uri: idp.uri() }];
    let partner = start_trusting(vec![ClientSpec::parse_flag(PARTNER_GW).unwrap()], trusted, HOUR).await;
    let claims = json!({"iss": IDP, "sub": "alice", "aud": partner.issuer(), "exp": now() + 60});
    let assertion = jws(&json!({"alg": "ES256", "kid": "k1"}), &claims, |m| key.sign(m));
    let got = token(&partner, partner_gw(), &bearer_form(&assertion, &[])).await;
    refused(&got, 400, "invalid_grant", "the trusted issuer's JWKS could not be fetched");
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn without_trusted_issuers_the_grant_is_unsupported() {
    let sts = start_trusting(vec![ClientSpec::parse_flag(PARTNER_GW).unwrap()], vec![], HOUR).await;
    let own = sts.mint("alice", &[], &[sts.issuer()], HOUR);
    let got = token(&sts, partner_gw(), &bearer_form(&own, &[])).await;
    refused(&got, 400, "unsupported_grant_type", "--trust-issuer");
    assert_eq!(grants(&metadata(&sts).await), [TOKEN_EXCHANGE, "client_credentials"]);
}

// ---------------------------------------------------------------------------
// The command

#[tokio::test]
async fn the_command_trusts_the_issuers_of_its_flags() {
    let sts = DevStsProcess::start(
        &[
            "--client",
            "id=p,secret=p-secret,audiences=*,scopes=*",
            "--trust-issuer",
            "https://idp.example=https://idp.example/jwks.json",
        ],
        |line| line.contains("jwt-bearer"),
    )
    .await;
    let text = sts.banner.join("\n");
    assert!(text.contains("jwt-bearer      assertions of https://idp.example"), "{text}");
    assert!(text.contains(TXN_TOKEN_TYPE), "{text}");
    let url = format!("http://127.0.0.1:{}/.well-known/oauth-authorization-server", sts.port);
    let meta: Value = serde_json::from_str(&client().get(url).send().await.unwrap().text().await.unwrap()).unwrap();
    assert!(grants(&meta).contains(&JWT_BEARER_GRANT), "{meta}");
    sts.stop().await;
}

#[test]
fn a_bad_trust_issuer_flag_is_a_usage_error() {
    for bad in ["idp.example=https://idp.example/jwks.json", "https://idp.example", "https://idp.example=ftp://x/j"] {
        let out = std::process::Command::new(BIN)
            .args(["dev-sts", "--listen", "127.0.0.1:0", "--trust-issuer", bad])
            .env_remove("TOKEX_CONFIG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("trusted issuer"), "{bad}: {stderr}");
    }
}
