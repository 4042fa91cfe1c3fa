//! Transaction tokens and identity chaining end to end: tokex against real
//! dev-sts instances (a Txn-Token service; a home and a partner server
//! that trusts it), the backend verifying what it gets.

use std::time::{Duration, Instant};

use jsonwebtoken::{decode, decode_header, jwk::JwkSet, DecodingKey, Validation};
use serde_json::{json, Value};
use tokex::dev_sts::{ClientSpec, DevSts};

use crate::common::sts::{start_trusting, trust};
use crate::common::*;

const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa-2048.pem");
const PUBLIC_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa-2048.pub.pem");

/// The claims of `token`, its signature verified with `sts`'s JWKS.
async fn verified(sts: &DevSts, token: &str, audience: &str) -> (String, Value) {
    let jwks: JwkSet =
        serde_json::from_str(&client().get(sts.jwks_uri()).send().await.unwrap().text().await.unwrap()).unwrap();
    let header = decode_header(token).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let mut v = Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[sts.issuer()]);
    let data = decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).expect("signature and claims");
    (header.typ.unwrap_or_default(), data.claims)
}

#[tokio::test]
async fn transaction_tokens_from_dev_sts_reach_the_backend_one_per_request() {
    let pem = std::fs::read_to_string(PUBLIC_KEY).unwrap();
    let gw_client = ClientSpec {
        id: "edge".into(),
        public_key_pem: Some(pem),
        audiences: vec!["trust-domain.example".into()],
        scopes: vec!["orders.read".into()],
        ..Default::default()
    };
    let sts = start_trusting(vec![gw_client], Vec::new(), Duration::from_secs(300)).await;
    let backend = echo_backend().await;
    let auth = format!("{{ method: private_key_jwt, client_id: edge, private_key_file: {KEY} }}");
    let routes = format!(
        "  - name: internal\n    upstream: http://{backend}\n    auth: transaction_token\n    transaction_token: {{ authorization_server: corp, audience: trust-domain.example, scope: [orders.read] }}\n"
    );
    let gw = TestGateway::start(&config_with(&sts.token_endpoint(), &auth, &routes)).await;
    let alice = sts.mint("alice", &["orders.read", "orders.write"], &["edge"], Duration::from_secs(600));

    let mut txns = Vec::new();
    let mut took = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let (status, _, body) = get(&format!("{}/internal/orders/7?x=1", gw.url), Some(&alice)).await;
        took.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
        let echo = echoed(&body);
        assert!(seen(&echo, "authorization").is_empty() && !body.contains(&alice));
        let txn_token = seen(&echo, "txn-token").pop().expect("a Txn-Token");
        let (typ, claims) = verified(&sts, &txn_token, "trust-domain.example").await;
        assert_eq!(typ, "txntoken+jwt");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["scope"], "orders.read");
        assert_eq!(claims["rctx"]["req_ip"], "127.0.0.1");
        assert_eq!(claims["rctx"]["authn"], "urn:ietf:rfc:6750");
        assert_eq!(claims["rctx"]["sub"], "alice");
        assert_eq!(claims["tctx"], json!({"method": "GET", "path": "/internal/orders/7"}));
        assert!(claims["exp"].as_u64().unwrap() <= now() + 300);
        txns.push(claims["txn"].as_str().unwrap().to_owned());
    }
    txns.sort();
    txns.dedup();
    assert_eq!(txns.len(), 20, "one transaction per request");
    assert_eq!(sts.txn_token_count(), 20);
    took.sort();
    eprintln!("transaction token route, dev-sts on loopback: median {:?}, max {:?} per request", took[10], took[19]);

    // The service refuses a token that is not its own: 401 for the caller.
    let (status, _, _) = get(&format!("{}/internal/x", gw.url), Some(&fake_jwt(json!({"sub": "mallory"})))).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn identity_chaining_across_two_dev_sts_domains() {
    // Home: knows alice; issues JWT grants for any audience to tokex.
    let home = start_trusting(
        vec![ClientSpec::parse_flag("id=gw-home,secret=home-secret,audiences=*,scopes=read").unwrap()],
        Vec::new(),
        Duration::from_secs(300),
    )
    .await;
    // Partner: trusts home's grants.
    let partner = start_trusting(
        vec![ClientSpec::parse_flag("id=gw-partner,secret=partner-secret,audiences=partner-api,scopes=read").unwrap()],
        vec![trust(&home)],
        Duration::from_secs(120),
    )
    .await;
    let backend = echo_backend().await;
    let yaml = format!(
        "authorization_servers:\n  home:\n    token_endpoint: {}\n    client_auth: {{ method: client_secret_basic, client_id: gw-home, client_secret: home-secret }}\n  partner:\n    token_endpoint: {}\n    client_auth: {{ method: client_secret_post, client_id: gw-partner, client_secret: partner-secret }}\nroutes:\n  - name: partner-files\n    upstream: http://{backend}\n    exchange:\n      authorization_server: home\n      scope: [read]\n      chain: {{ authorization_server: partner, audience: [partner-api], scope: [read] }}\n",
        home.token_endpoint(),
        partner.token_endpoint()
    );
    let gw = TestGateway::start(&yaml).await;
    // The grant's scope bounds what the partner grants (RFC 7523 §3 leaves
    // it to the partner; dev-sts narrows to it).
    let alice = home.mint("alice", &["read", "write"], &["tokex"], Duration::from_secs(600));
    let mut took = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _, body) = get(&format!("{}/files/1", gw.url), Some(&alice)).await;
        took.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
        let auth = seen(&echoed(&body), "authorization").pop().unwrap();
        let token = auth.strip_prefix("Bearer ").unwrap();
        let (_, claims) = verified(&partner, token, "partner-api").await;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["scope"], "read");
        assert_eq!(claims["client_id"], "gw-partner");
    }
    assert_eq!((home.exchange_count(), partner.jwt_bearer_count()), (1, 1), "one of each leg, then the cache");
    eprintln!("identity chaining, two dev-sts on loopback: miss {:?}, hits {:?} {:?}", took[0], took[1], took[2]);

    // A token the home server refuses: 401, and the partner is not asked.
    let (status, _, _) = get(&format!("{}/files/1", gw.url), Some(&fake_jwt(json!({"sub": "mallory"})))).await;
    assert_eq!(status, 401);
    assert_eq!(partner.jwt_bearer_count(), 1);
    // A caller whose scope the home server will not grant: 403 from the first leg.
    let bob = home.mint("bob", &["other"], &["tokex"], Duration::from_secs(600));
    assert_eq!(get(&format!("{}/files/1", gw.url), Some(&bob)).await.0, 403);
    assert_eq!(partner.jwt_bearer_count(), 1);
}
