//! The form of a route's token request, decided once per configuration: a
//! list of parameters whose values are fixed, or filled per request (the
//! caller's token, the actor token, a claim of the caller's token). The
//! request path and `tokex check --explain` read the same list.

use serde_json::Value;

use super::{unverified, ExchangeError};
use crate::config::{ExchangeConfig, Grant, MachineConfig, ParamValue};

/// A parameter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Fixed(String),
    /// Fixed, from the environment (`${VAR}`): not shown by `--explain`.
    Hidden(String),
    /// The caller's token (`subject_token`, or `assertion`).
    Subject,
    /// The actor token (RFC 8693 delegation).
    Actor,
    /// A claim of the caller's token (verified by the inbound check before
    /// any exchange); absent: left out, or refused when `required`.
    Claim {
        name: String,
        required: bool,
    },
}

/// The parameters of a token request, in the order sent (client
/// authentication is added after them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    params: Vec<(String, Slot)>,
    /// Whether any value comes from the caller's claims.
    claims: bool,
}

/// Longest claim value sent, in bytes.
const MAX_CLAIM_BYTES: usize = 4096;

impl Template {
    /// A route's exchange: RFC 8693 (§2.1), or the RFC 7523 grant with the
    /// caller's token as the assertion (Entra's on-behalf-of adds
    /// `requested_token_use`).
    pub fn exchange(cfg: &ExchangeConfig) -> Self {
        let mut t = Template { params: Vec::with_capacity(8 + cfg.extra_params.len()), claims: false };
        t.fixed("grant_type", cfg.grant.grant_type());
        match cfg.grant {
            Grant::TokenExchange => {
                t.push("subject_token", Slot::Subject);
                t.fixed("subject_token_type", &cfg.subject_token_type);
            }
            Grant::JwtBearer | Grant::OnBehalfOf => t.push("assertion", Slot::Subject),
        }
        if cfg.grant == Grant::OnBehalfOf {
            t.fixed("requested_token_use", "on_behalf_of");
        }
        t.target(&cfg.audience, &cfg.resource, &cfg.scope);
        if let Some(r) = &cfg.requested_token_type {
            t.fixed("requested_token_type", r);
        }
        if let Some(actor) = &cfg.actor {
            t.push("actor_token", Slot::Actor);
            t.fixed("actor_token_type", &actor.token_type);
        }
        for (name, value) in &cfg.extra_params {
            let slot = match value {
                ParamValue::Static { value, interpolated: false } => Slot::Fixed(value.clone()),
                ParamValue::Static { value, interpolated: true } => Slot::Hidden(value.clone()),
                ParamValue::Claim { name, required } => {
                    t.claims = true;
                    Slot::Claim { name: name.clone(), required: *required }
                }
            };
            t.push(name, slot);
        }
        t
    }

    /// A Txn-Token (draft-ietf-oauth-transaction-tokens §7.1): RFC 8693
    /// with `requested_token_type` txn_token; the request's context and
    /// details are added per request.
    pub fn transaction(cfg: &crate::config::TransactionTokenConfig) -> Self {
        let mut t = Template { params: Vec::with_capacity(6), claims: false };
        t.fixed("grant_type", crate::config::TOKEN_EXCHANGE_GRANT);
        t.fixed("requested_token_type", crate::config::TXN_TOKEN_TYPE);
        t.push("subject_token", Slot::Subject);
        t.fixed("subject_token_type", &cfg.subject_token_type);
        t.target(std::slice::from_ref(&cfg.audience), &[], &cfg.scope);
        t
    }

    /// tokex's own token (RFC 6749 §4.4).
    pub fn machine(cfg: &MachineConfig) -> Self {
        let mut t = Template { params: Vec::with_capacity(4), claims: false };
        t.fixed("grant_type", "client_credentials");
        t.target(&cfg.audience, &cfg.resource, &cfg.scope);
        t
    }

    /// Repeated `audience` and `resource` (RFC 8693 §2.1, RFC 8707), and
    /// the space-joined `scope` when there is one.
    fn target(&mut self, audience: &[String], resource: &[String], scope: &[String]) {
        for a in audience {
            self.fixed("audience", a);
        }
        for r in resource {
            self.fixed("resource", r);
        }
        if !scope.is_empty() {
            self.fixed("scope", &scope.join(" "));
        }
    }

    fn fixed(&mut self, name: &str, value: &str) {
        self.push(name, Slot::Fixed(value.to_owned()));
    }

    fn push(&mut self, name: &str, slot: Slot) {
        self.params.push((name.to_owned(), slot));
    }

    pub fn params(&self) -> &[(String, Slot)] {
        &self.params
    }

    /// The first `required` claim that `subject` does not carry in a usable form.
    pub fn missing_claim(&self, subject: &str) -> Option<String> {
        // Optional claims only: nothing to refuse, and no payload to parse
        // twice (`form` reads it).
        if !self.params.iter().any(|(_, s)| matches!(s, Slot::Claim { required: true, .. })) {
            return None;
        }
        let claims = unverified::claims_json(subject);
        self.params.iter().find_map(|(_, slot)| match slot {
            Slot::Claim { name, required: true }
                if claims.as_ref().and_then(|c| claim_text(c.get(name)?)).is_none() =>
            {
                Some(name.clone())
            }
            _ => None,
        })
    }

    /// The form-encoded request for `subject` (and `actor`, when the
    /// policy has one).
    pub fn form(&self, subject: &str, actor: Option<&str>) -> Result<String, ExchangeError> {
        let claims = if self.claims { unverified::claims_json(subject) } else { None };
        let mut f = form_urlencoded::Serializer::new(String::with_capacity(subject.len() + 512));
        for (name, slot) in &self.params {
            match slot {
                Slot::Fixed(v) | Slot::Hidden(v) => {
                    f.append_pair(name, v);
                }
                Slot::Subject => {
                    f.append_pair(name, subject);
                }
                Slot::Actor => {
                    if let Some(a) = actor {
                        f.append_pair(name, a);
                    }
                }
                Slot::Claim { name: claim, required } => {
                    match claims.as_ref().and_then(|c| claim_text(c.get(claim)?)) {
                        Some(v) => {
                            f.append_pair(name, &v);
                        }
                        None if *required => return Err(ExchangeError::MissingClaim(claim.clone())),
                        None => {}
                    }
                }
            }
        }
        Ok(f.finish())
    }
}

/// A claim as a form value: a string as is, a number or boolean as its
/// JSON text, an array of strings space-joined. Anything else (objects,
/// nulls, mixed arrays) or a value over [`MAX_CLAIM_BYTES`] is not sent.
fn claim_text(v: &Value) -> Option<String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        Value::Array(items) => {
            let parts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            parts?.join(" ")
        }
        Value::Null | Value::Object(_) => return None,
    };
    (!text.is_empty() && text.len() <= MAX_CLAIM_BYTES).then_some(text)
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    use super::*;

    fn cfg(yaml_exchange: &str, profile: &str) -> ExchangeConfig {
        let yaml = format!(
            "listen: {{ address: \"127.0.0.1:0\" }}\ninbound: {{ jwt: {{ issuer: https://as.example.com, jwks_uri: https://as.example.com/jwks, audiences: [tokex] }} }}\nauthorization_servers:\n  corp: {{ token_endpoint: \"https://as.example.com/token\", profile: {profile}, client_auth: {{ method: client_secret_post, client_id: tokex, client_secret: s }} }}\nroutes:\n  - name: r\n    upstream: http://127.0.0.1:2\n    exchange: {{ authorization_server: corp, {yaml_exchange} }}\n"
        );
        crate::config::parse(&yaml).unwrap().routes[0].exchange.clone().unwrap()
    }

    fn decoded(form: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(form.as_bytes()).into_owned().collect()
    }

    fn jwt(claims: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims))
    }

    #[test]
    fn on_behalf_of_sends_the_assertion_and_no_rfc8693_names() {
        let t = Template::exchange(&cfg("scope: [https://graph.microsoft.com/.default]", "entra"));
        let form = decoded(&t.form("caller-token", None).unwrap());
        assert_eq!(
            form,
            [
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", "caller-token"),
                ("requested_token_use", "on_behalf_of"),
                ("scope", "https://graph.microsoft.com/.default"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn extra_params_static_and_from_claims() {
        let x = cfg(
            "audience: [api], extra_params: { tenant_hint: contoso, options: '{\"userProject\":\"p\"}', tid: { claim: tid }, groups: { claim: groups }, org: { claim: org_id, required: true } }",
            "generic",
        );
        let t = Template::exchange(&x);
        let token = jwt(r#"{"tid":"t-1","groups":["a","b"],"org_id":42}"#);
        let form = decoded(&t.form(&token, None).unwrap());
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("tenant_hint"), Some("contoso"));
        assert_eq!(get("options"), Some("{\"userProject\":\"p\"}"));
        assert_eq!(get("tid"), Some("t-1"));
        assert_eq!(get("groups"), Some("a b"));
        assert_eq!(get("org"), Some("42"));
        // Optional claims absent or unusable are left out; a required one refuses.
        let form = decoded(&t.form(&jwt(r#"{"org_id":"o","tid":{"x":1},"groups":[1]}"#), None).unwrap());
        assert!(form.iter().all(|(n, _)| n != "tid" && n != "groups"), "{form:?}");
        let e = t.form(&jwt(r#"{"tid":"t"}"#), None).unwrap_err();
        assert!(matches!(e, ExchangeError::MissingClaim(ref c) if c == "org_id"), "{e:?}");
        assert!(matches!(t.form("opaque", None), Err(ExchangeError::MissingClaim(_))));
        assert_eq!(t.missing_claim("opaque").as_deref(), Some("org_id"));
        assert_eq!(t.missing_claim(&token), None);
    }

    #[test]
    fn profiles_set_token_types_and_an_empty_value_leaves_one_out() {
        let g = Template::exchange(&cfg("audience: [//iam.googleapis.com/x], scope: [s]", "google_sts"));
        let form = decoded(&g.form("t", None).unwrap());
        assert!(form.contains(&("subject_token_type".into(), crate::config::JWT_TOKEN_TYPE.into())));
        assert!(form.contains(&("requested_token_type".into(), crate::config::ACCESS_TOKEN_TYPE.into())));
        let none = Template::exchange(&cfg("requested_token_type: ''", "google_sts"));
        assert!(decoded(&none.form("t", None).unwrap()).iter().all(|(n, _)| n != "requested_token_type"));
        // Auth0: its On-Behalf-Of exchange asks for an access token; a Custom
        // Token Exchange type sends none.
        let obo = Template::exchange(&cfg("audience: [api]", "auth0"));
        assert!(decoded(&obo.form("t", None).unwrap()).iter().any(|(n, _)| n == "requested_token_type"));
        let cte = Template::exchange(&cfg("subject_token_type: 'urn:acme:legacy-token'", "auth0"));
        assert!(decoded(&cte.form("t", None).unwrap()).iter().all(|(n, _)| n != "requested_token_type"));
    }
}
