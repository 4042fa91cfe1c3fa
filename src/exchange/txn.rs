//! Transaction tokens (draft-ietf-oauth-transaction-tokens-10): one
//! Txn-Token per incoming request from the trust domain's token service,
//! for the caller's token, the request's context and details. Never cached:
//! a Txn-Token names one transaction.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::audit::Audit;
use super::client::{AsClient, Issued};
use super::index::Meta;
use super::rate::RateLimit;
use super::request::Template;
use super::{unverified, ExchangeError, Exchanger, Fingerprint, Lookup};
use crate::config::{TransactionTokenConfig, TXN_TOKEN_TYPE};

/// A route's Txn-Token request, built once per configuration.
pub struct TxnPolicy {
    pub route: String,
    pub client: Arc<AsClient>,
    pub cfg: TransactionTokenConfig,
    /// `scope` space-joined.
    pub scope: String,
    template: Template,
    /// `max_rate`, when set.
    limit: Option<Arc<RateLimit>>,
}

impl TxnPolicy {
    /// `previous` is the route's policy before a reload: its rate limit
    /// carries over when unchanged.
    pub fn new(route: &str, cfg: TransactionTokenConfig, client: Arc<AsClient>, previous: Option<&TxnPolicy>) -> Self {
        let limit = RateLimit::carried(cfg.max_rate, previous.and_then(|p| p.limit.as_ref()));
        let template = Template::transaction(&cfg);
        TxnPolicy { route: route.to_owned(), client, scope: cfg.scope.join(" "), template, limit, cfg }
    }
}

/// What the token service is told about the incoming request.
pub struct TxnRequest<'a> {
    pub client: IpAddr,
    pub request_id: &'a str,
    /// The caller proved possession of a DPoP key (RFC 9449), else Bearer.
    pub dpop: bool,
    pub method: &'a str,
    /// The path, without the query nor segment parameters (`;jsessionid=…`),
    /// which may hold anything.
    pub path: &'a str,
}

/// Longest path sent in `request_details`, in bytes.
const MAX_PATH: usize = 2048;

impl TxnRequest<'_> {
    /// `request_context` (the Txn-Token's `rctx`): where the request came
    /// from and how its caller authenticated: `req_ip`, `authn` (the RFC
    /// of the scheme), and the caller's `sub` and `client_id` as its token
    /// names them (the token service verifies that token).
    fn context(&self, subject: &str) -> String {
        let mut rctx = Map::new();
        rctx.insert("req_ip".into(), Value::String(self.client.to_string()));
        let authn = if self.dpop { "urn:ietf:rfc:9449" } else { "urn:ietf:rfc:6750" };
        rctx.insert("authn".into(), Value::String(authn.into()));
        if let Some(claims) = unverified::claims_json(subject) {
            for (member, claim) in [("sub", "sub"), ("client_id", "client_id"), ("client_id", "azp")] {
                if let (false, Some(Value::String(v))) = (rctx.contains_key(member), claims.get(claim)) {
                    if v.len() <= 256 {
                        rctx.insert(member.into(), Value::String(v.clone()));
                    }
                }
            }
        }
        Value::Object(rctx).to_string()
    }

    /// `request_details` (the Txn-Token's `tctx`): the method and path,
    /// the path cut so that its JSON form stays within [`MAX_PATH`] bytes.
    fn details(&self) -> String {
        let mut used = 0;
        let end = self
            .path
            .char_indices()
            .find(|(_, c)| {
                // What serde_json writes for it: `\"`, `\\`, `\u00XX` or itself.
                used += match c {
                    '"' | '\\' => 2,
                    c if c.is_control() => 6,
                    c => c.len_utf8(),
                };
                used > MAX_PATH
            })
            .map_or(self.path.len(), |(i, _)| i);
        json!({ "method": self.method, "path": &self.path[..end] }).to_string()
    }
}

impl Exchanger {
    /// A Txn-Token for this request (`auth: transaction_token`): one
    /// request to the token service, audited and mapped like an exchange,
    /// never cached, never shared.
    pub async fn transaction_token(
        &self,
        p: &TxnPolicy,
        subject: &str,
        r: TxnRequest<'_>,
    ) -> Result<Lookup, ExchangeError> {
        let started = Instant::now();
        let peeked = unverified::peek(subject);
        // A sender-constrained token from a caller that proved nothing is a
        // stolen copy; an open breaker refuses before any call (and before
        // the route's rate limit spends anything on it).
        let admitted = p.client.guard().check().and_then(|()| match &p.limit {
            Some(limit) => limit.admit(r.client),
            None => Ok(()),
        });
        let result = match (!r.dpop && unverified::dpop_bound(subject), admitted) {
            (true, _) => Err(ExchangeError::BoundAsBearer),
            (false, Err(e)) => Err(e),
            (false, Ok(())) => match p.template.form(subject, None) {
                Ok(form) => {
                    // The form starts at 0: pairs are appended after an `&`.
                    let form = form_urlencoded::Serializer::for_suffix(form, 0)
                        .append_pair("request_context", &r.context(subject))
                        .append_pair("request_details", &r.details())
                        .finish();
                    p.client.request(form, (started + p.client.timeout()).into()).await.and_then(txn_token)
                }
                Err(e) => Err(e),
            },
        };
        let audit = Audit {
            grant: "transaction-token",
            route: &p.route,
            server: &p.client.name,
            sub: peeked.as_ref().and_then(|c| c.sub.as_deref()),
            actor: None,
            audience: std::slice::from_ref(&p.cfg.audience),
            scope: &p.scope,
            token: Some(Fingerprint::of(&Sha256::digest(subject.as_bytes()))),
            request_id: Some(r.request_id),
        };
        // Nothing is kept: an `invalid_grant` (a "rejected" entry here) is
        // the caller's answer, not a negative cache entry.
        let meta = |_: Option<&str>| Meta::new(0, None, None, None);
        let ttl = Duration::from_secs(60);
        let entry = self.finish(audit, started, result, (ttl, ttl), None, meta)?;
        Self::hit(entry, false, Some(started.elapsed()))
    }
}

/// The token service's answer must be a Txn-Token (`issued_token_type`),
/// and a Txn-Token is not sender-constrained.
fn txn_token(issued: Issued) -> Result<Issued, ExchangeError> {
    match (issued.issued_token_type.as_deref(), issued.dpop) {
        (Some(TXN_TOKEN_TYPE), false) => Ok(issued),
        (_, true) => Err(ExchangeError::BadAnswer("a DPoP-bound answer to a Txn-Token request".into())),
        (Some(_), false) => Err(ExchangeError::BadAnswer("issued_token_type is not a Txn-Token".into())),
        (None, false) => Err(ExchangeError::BadAnswer("no issued_token_type (a Txn-Token service names it)".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_and_details() {
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"alice","azp":"agent-7","client_id":{"not":"a string"}}"#);
        let subject = format!("e30.{payload}.sig");
        let r = TxnRequest {
            client: "203.0.113.7".parse().unwrap(),
            request_id: "r1",
            dpop: false,
            method: "POST",
            path: "/internal/orders",
        };
        let rctx: Value = serde_json::from_str(&r.context(&subject)).unwrap();
        assert_eq!(
            rctx,
            json!({"req_ip": "203.0.113.7", "authn": "urn:ietf:rfc:6750", "sub": "alice", "client_id": "agent-7"})
        );
        let opaque: Value = serde_json::from_str(&TxnRequest { dpop: true, ..r }.context("opaque")).unwrap();
        assert_eq!(opaque, json!({"req_ip": "203.0.113.7", "authn": "urn:ietf:rfc:9449"}));
        for long in ["/é".repeat(2000), "\"".repeat(3000), "\u{1}".repeat(3000)] {
            let text = TxnRequest { path: &long, ..r_clone() }.details();
            assert!(text.len() <= MAX_PATH + 40, "{}", text.len());
            let details: Value = serde_json::from_str(&text).unwrap();
            assert!(long.starts_with(details["path"].as_str().unwrap()));
            assert_eq!(details["method"], "GET");
        }
    }

    fn r_clone() -> TxnRequest<'static> {
        TxnRequest { client: "::1".parse().unwrap(), request_id: "-", dpop: false, method: "GET", path: "/" }
    }

    #[test]
    fn only_txn_tokens_are_taken() {
        let issued = |t: Option<&str>, dpop| Issued {
            access_token: crate::secret::SecretString::new("t"),
            dpop,
            bound: None,
            issued_token_type: t.map(str::to_owned),
            expires_in: None,
            scope: None,
        };
        assert!(txn_token(issued(Some(TXN_TOKEN_TYPE), false)).is_ok());
        assert!(txn_token(issued(Some(TXN_TOKEN_TYPE), true)).is_err());
        assert!(txn_token(issued(Some(crate::config::ACCESS_TOKEN_TYPE), false)).is_err());
        assert!(txn_token(issued(None, false)).is_err());
    }
}
