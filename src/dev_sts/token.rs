//! The two basic grants (`client_credentials` and RFC 8693 token exchange)
//! and the rules they share with the Txn-Token (`txn.rs`) and jwt-bearer
//! (`assertion.rs`) grants: subject-token checks, audience checks, scope
//! narrowing, `act` nesting, and the claims of an issued token.

use std::sync::atomic::Ordering;

use serde_json::{json, Map, Value};

use super::clients::{is_scope_token, Client};
use super::endpoint::{OAuthError, Params};
use super::State;

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const CLIENT_CREDENTIALS: &str = "client_credentials";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Token types accepted as subject, actor or requested type: this server's
/// tokens are JWT access tokens, so both names fit them.
const TOKEN_TYPES: &[&str] = &[ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE];

/// A token issued at the token endpoint.
pub(crate) struct Issued {
    pub access_token: String,
    /// Only for token exchange (RFC 8693 §2.2.1).
    pub issued_token_type: Option<&'static str>,
    /// `Bearer`, `DPoP` (bound to the proof's key) or `N_A` (a Txn-Token).
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: Vec<String>,
    /// For the log line.
    pub sub: String,
    pub aud: Vec<String>,
    /// A grant's own note for the log line (never a token).
    pub detail: Option<String>,
}

/// `token_type` of an access token: `DPoP` when bound to a proof's key.
pub(crate) fn token_type(jkt: Option<&str>) -> &'static str {
    if jkt.is_some() {
        "DPoP"
    } else {
        "Bearer"
    }
}

/// `client_credentials` (RFC 6749 §4.4): a token for the client itself,
/// `sub` = `client_id`. No scope requested → all the client's listed scopes.
/// With `jkt` (the thumbprint of the request's DPoP proof key) the token is
/// bound to that key (`cnf`).
pub(crate) fn client_credentials(
    state: &State,
    client: &Client,
    params: &Params,
    now: u64,
    jkt: Option<&str>,
) -> Result<Issued, OAuthError> {
    let aud = targets(client, params)?;
    let scope = match requested_scopes(params)? {
        Some(requested) => {
            if let Some(s) = requested.iter().find(|s| !client.allows_scope(s)) {
                return Err(OAuthError::InvalidScope(format!("scope {s} is not allowed for this client")));
            }
            requested
        }
        None => client.default_scopes(),
    };
    let exp = now.saturating_add(state.expires_in.as_secs());
    let mut claims = build_claims(&state.issuer, &client.id, &aud, &scope, Some(&client.id), now, exp, None);
    bind(&mut claims, jkt);
    let access_token = state.key.sign(&claims).map_err(|_| OAuthError::ServerError)?;
    Ok(Issued {
        access_token,
        issued_token_type: None,
        token_type: token_type(jkt),
        expires_in: exp - now,
        scope,
        sub: client.id.clone(),
        aud,
        detail: None,
    })
}

/// RFC 8693 token exchange. The subject (and actor) token must be one of
/// this server's own valid, unexpired JWTs, not revoked (nor the subject's
/// session, for a token issued before that). The new token narrows the
/// subject's: scopes are a subset of the subject's (and allowed for the
/// client), audiences are allowed for the client, and it expires no later
/// than the subject token. The new token is bound to `jkt`, the key of the
/// request's DPoP proof, when there is one, whatever the subject token's
/// `cnf` (possession of the subject token is not checked here).
pub(crate) fn token_exchange(
    state: &State,
    client: &Client,
    params: &Params,
    now: u64,
    jkt: Option<&str>,
) -> Result<Issued, OAuthError> {
    let subject_token = subject_param(params)?;
    let actor_token = match (params.one("actor_token")?, params.one("actor_token_type")?) {
        (Some(t), Some(ty)) if TOKEN_TYPES.contains(&ty) => Some(t),
        (Some(_), Some(_)) => return Err(OAuthError::InvalidRequest("unsupported actor_token_type".into())),
        (Some(_), None) => {
            return Err(OAuthError::InvalidRequest("actor_token_type is required with actor_token".into()))
        }
        (None, Some(_)) => return Err(OAuthError::InvalidRequest("actor_token_type without actor_token".into())),
        (None, None) => None,
    };
    let issued_token_type = match params.one("requested_token_type")? {
        None | Some(ACCESS_TOKEN_TYPE) => ACCESS_TOKEN_TYPE,
        Some(JWT_TOKEN_TYPE) => JWT_TOKEN_TYPE,
        Some(_) => return Err(OAuthError::InvalidRequest("unsupported requested_token_type".into())),
    };

    let subject = check_subject(state, subject_token, now)?;
    let actor = match actor_token {
        Some(t) => Some(
            state
                .key
                .verify_own(t, &state.issuer, now)
                .ok_or(OAuthError::InvalidGrant("actor_token is not a valid, unexpired token of this server"))?,
        ),
        None => None,
    };
    if actor_token.is_some_and(|t| state.revocations.token_revoked(t)) {
        return Err(OAuthError::InvalidGrant("actor_token was revoked"));
    }
    let (sub, subject) = (subject.sub.as_str(), &subject.claims);
    let actor_sub = match &actor {
        Some(a) => {
            Some(a.get("sub").and_then(Value::as_str).ok_or(OAuthError::InvalidGrant("actor_token has no sub"))?)
        }
        None => None,
    };
    if !may_act_allows(subject.get("may_act"), actor_sub) {
        return Err(OAuthError::InvalidGrant("the actor is not allowed to act for the subject (may_act)"));
    }

    let aud = targets(client, params)?;
    let held = scope_list(subject.get("scope"));
    let scope = narrow_scopes(requested_scopes(params)?, &held, |s| client.allows_scope(s))
        .map_err(|r| r.into_error("the subject token"))?;
    let act = match actor_sub {
        Some(a) => Some(nest_act(a, subject.get("act").cloned())),
        // Impersonation of an already-delegated token keeps its delegation chain.
        None => subject.get("act").cloned(),
    };
    let subject_exp = subject.get("exp").and_then(Value::as_u64).unwrap_or(now);
    let exp = now.saturating_add(state.expires_in.as_secs()).min(subject_exp);
    let mut claims = build_claims(&state.issuer, sub, &aud, &scope, Some(&client.id), now, exp, act);
    bind(&mut claims, jkt);
    let access_token = state.key.sign(&claims).map_err(|_| OAuthError::ServerError)?;
    state.exchanges.fetch_add(1, Ordering::Relaxed);
    Ok(Issued {
        access_token,
        issued_token_type: Some(issued_token_type),
        token_type: token_type(jkt),
        expires_in: exp.saturating_sub(now),
        scope,
        sub: sub.to_owned(),
        aud,
        detail: None,
    })
}

/// The `subject_token` of an RFC 8693 request (token exchange, a
/// Txn-Token), with a `subject_token_type` this server issues.
pub(crate) fn subject_param(params: &Params) -> Result<&str, OAuthError> {
    let required =
        |name: &'static str| params.one(name)?.ok_or_else(|| OAuthError::InvalidRequest(format!("{name} is required")));
    let subject_token = required("subject_token")?;
    if !TOKEN_TYPES.contains(&required("subject_token_type")?) {
        return Err(OAuthError::InvalidRequest("unsupported subject_token_type".into()));
    }
    Ok(subject_token)
}

/// A subject token that passed [`check_subject`]: its claims and `sub`.
pub(crate) struct Subject {
    pub claims: Value,
    pub sub: String,
}

/// A subject token must be one of this server's own valid, unexpired
/// access tokens, not revoked, and not issued at or before a revocation
/// of its subject (`invalid_grant` otherwise).
pub(crate) fn check_subject(state: &State, subject_token: &str, now: u64) -> Result<Subject, OAuthError> {
    let claims = state
        .key
        .verify_own(subject_token, &state.issuer, now)
        .ok_or(OAuthError::InvalidGrant("subject_token is not a valid, unexpired token of this server"))?;
    let sub = claims.get("sub").and_then(Value::as_str).ok_or(OAuthError::InvalidGrant("subject_token has no sub"))?;
    if state.revocations.token_revoked(subject_token) {
        return Err(OAuthError::InvalidGrant("subject_token was revoked"));
    }
    if let Some(at) = state.revocations.subject_revoked_at(sub) {
        // No `iat` counts as issued before any revocation.
        if claims.get("iat").and_then(Value::as_u64).unwrap_or(0) <= at {
            return Err(OAuthError::InvalidGrant("subject's session was revoked"));
        }
    }
    let sub = sub.to_owned();
    Ok(Subject { claims, sub })
}

/// The requested audiences and resources (RFC 8693 §2.1, RFC 8707), in
/// order, without repeats; each must be allowed for the client. None
/// requested → the client's listed audiences.
pub(crate) fn targets(client: &Client, params: &Params) -> Result<Vec<String>, OAuthError> {
    let mut out: Vec<String> = Vec::new();
    for a in params.all("audience") {
        if !out.iter().any(|o| o == a) {
            out.push(a.to_owned());
        }
    }
    for r in params.all("resource") {
        let ok = url::Url::parse(r).is_ok_and(|u| u.fragment().is_none());
        if !ok {
            return Err(OAuthError::InvalidTarget("resource must be an absolute URI without a fragment".into()));
        }
        if !out.iter().any(|o| o == r) {
            out.push(r.to_owned());
        }
    }
    if out.is_empty() {
        return Ok(client.default_audiences());
    }
    if let Some(t) = out.iter().find(|t| !client.allows_audience(t)) {
        return Err(OAuthError::InvalidTarget(format!("audience {} is not allowed for this client", shorten(t))));
    }
    Ok(out)
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(100).filter(|c| !c.is_control()).collect();
    if s.chars().count() > 100 {
        out.push('…');
    }
    out
}

/// The `scope` parameter as a list (space-delimited, RFC 6749 §3.3), or
/// `None` when absent or blank.
pub(crate) fn requested_scopes(params: &Params) -> Result<Option<Vec<String>>, OAuthError> {
    let Some(raw) = params.one("scope")? else { return Ok(None) };
    let mut out: Vec<String> = Vec::new();
    for s in raw.split(' ').filter(|s| !s.is_empty()) {
        if !is_scope_token(s) {
            return Err(OAuthError::InvalidScope("malformed scope value".into()));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// A token's `scope` claim: a space-delimited string (or an array).
pub(crate) fn scope_list(claim: Option<&Value>) -> Vec<String> {
    match claim {
        Some(Value::String(s)) => s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Why a requested scope is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScopeRefusal {
    NotHeld(String),
    NotAllowed(String),
}

impl ScopeRefusal {
    /// The `invalid_scope` answer; `holder` names the presented token
    /// ("the subject token", "the assertion").
    pub(crate) fn into_error(self, holder: &str) -> OAuthError {
        match self {
            ScopeRefusal::NotHeld(s) => OAuthError::InvalidScope(format!("scope {s} is not held by {holder}")),
            ScopeRefusal::NotAllowed(s) => {
                OAuthError::InvalidScope(format!("scope {s} is not allowed for this client"))
            }
        }
    }
}

/// Token-exchange scope narrowing: every requested scope must be held by
/// the subject token and allowed for the client. Nothing requested → the
/// subject's scopes that the client may hold.
pub(crate) fn narrow_scopes(
    requested: Option<Vec<String>>,
    held: &[String],
    allowed: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ScopeRefusal> {
    match requested {
        None => Ok(held.iter().filter(|s| allowed(s)).cloned().collect()),
        Some(requested) => {
            for s in &requested {
                if !held.contains(s) {
                    return Err(ScopeRefusal::NotHeld(s.clone()));
                }
                if !allowed(s) {
                    return Err(ScopeRefusal::NotAllowed(s.clone()));
                }
            }
            Ok(requested)
        }
    }
}

/// Scopes of a token issued on a user's behalf from a presented token that
/// may carry no `scope` (a Txn-Token's subject token, a jwt-bearer
/// assertion): every requested scope must be allowed for the client and,
/// when the presented token names scopes (`held`), held by it. Nothing
/// requested → the held scopes that the client may hold (none when the
/// presented token names none).
pub(crate) fn delegated_scopes(
    requested: Option<Vec<String>>,
    held: Option<&[String]>,
    allowed: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ScopeRefusal> {
    match (held, requested) {
        (Some(held), requested) => narrow_scopes(requested, held, allowed),
        (None, None) => Ok(Vec::new()),
        (None, Some(requested)) => match requested.iter().find(|s| !allowed(s)) {
            Some(s) => Err(ScopeRefusal::NotAllowed(s.clone())),
            None => Ok(requested),
        },
    }
}

/// RFC 8693 §4.1: the new `act` names the current actor; a prior actor of
/// the subject token is nested inside it.
pub(crate) fn nest_act(actor_sub: &str, subject_act: Option<Value>) -> Value {
    let mut act = Map::new();
    act.insert("sub".into(), Value::String(actor_sub.to_owned()));
    if let Some(prior) = subject_act {
        act.insert("act".into(), prior);
    }
    Value::Object(act)
}

/// RFC 8693 §4.4: when the subject token carries `may_act`, only that
/// party (by `sub`) may be the actor.
fn may_act_allows(may_act: Option<&Value>, actor_sub: Option<&str>) -> bool {
    match (may_act, actor_sub) {
        (Some(may), Some(actor)) => may.get("sub").and_then(Value::as_str) == Some(actor),
        _ => true,
    }
}

/// `aud`: absent for none, a string for one, an array for several.
pub(crate) fn audience_claim(aud: &[String]) -> Option<Value> {
    match aud {
        [] => None,
        [one] => Some(Value::String(one.clone())),
        many => Some(Value::Array(many.iter().cloned().map(Value::String).collect())),
    }
}

/// The claims of an issued access token (RFC 9068 shape).
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_claims(
    iss: &str,
    sub: &str,
    aud: &[String],
    scope: &[String],
    client_id: Option<&str>,
    iat: u64,
    exp: u64,
    act: Option<Value>,
) -> Value {
    let mut c = json!({
        "iss": iss,
        "sub": sub,
        "iat": iat,
        "exp": exp,
        "jti": format!("{:032x}", fastrand::u128(..)),
    });
    let Some(m) = c.as_object_mut() else { return c };
    if let Some(aud) = audience_claim(aud) {
        m.insert("aud".into(), aud);
    }
    if !scope.is_empty() {
        m.insert("scope".into(), Value::String(scope.join(" ")));
    }
    if let Some(id) = client_id {
        m.insert("client_id".into(), Value::String(id.to_owned()));
    }
    if let Some(act) = act {
        m.insert("act".into(), act);
    }
    c
}

/// Binds a token to a DPoP key: `cnf: {jkt}` (RFC 9449 §6.1).
pub(crate) fn bind(claims: &mut Value, jkt: Option<&str>) {
    if let (Some(m), Some(jkt)) = (claims.as_object_mut(), jkt) {
        m.insert("cnf".into(), json!({ "jkt": jkt }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn narrowing_keeps_a_subset() {
        let held = v(&["orders:read", "orders:write", "profile"]);
        let all = |_: &str| true;
        assert_eq!(narrow_scopes(Some(v(&["orders:read"])), &held, all), Ok(v(&["orders:read"])));
        assert_eq!(narrow_scopes(None, &held, all), Ok(held.clone()), "nothing requested: the subject's scopes");
        assert_eq!(
            narrow_scopes(Some(v(&["orders:read", "admin"])), &held, all),
            Err(ScopeRefusal::NotHeld("admin".into()))
        );
        let only_orders = |s: &str| s.starts_with("orders:");
        assert_eq!(narrow_scopes(None, &held, only_orders), Ok(v(&["orders:read", "orders:write"])));
        assert_eq!(
            narrow_scopes(Some(v(&["profile"])), &held, only_orders),
            Err(ScopeRefusal::NotAllowed("profile".into()))
        );
        assert_eq!(narrow_scopes(Some(v(&["x"])), &[], all), Err(ScopeRefusal::NotHeld("x".into())));
    }

    #[test]
    fn delegated_scopes_need_the_client_and_any_named_holding() {
        let only_orders = |s: &str| s.starts_with("orders:");
        let held = v(&["orders:read", "profile"]);
        assert_eq!(delegated_scopes(Some(v(&["orders:read"])), Some(&held), only_orders), Ok(v(&["orders:read"])));
        assert_eq!(delegated_scopes(None, Some(&held), only_orders), Ok(v(&["orders:read"])));
        assert_eq!(
            delegated_scopes(Some(v(&["orders:write"])), Some(&held), only_orders),
            Err(ScopeRefusal::NotHeld("orders:write".into()))
        );
        assert_eq!(
            delegated_scopes(Some(v(&["orders:write"])), None, only_orders),
            Ok(v(&["orders:write"])),
            "a token without scope limits nothing"
        );
        assert_eq!(
            delegated_scopes(Some(v(&["orders:read", "admin"])), None, only_orders),
            Err(ScopeRefusal::NotAllowed("admin".into()))
        );
        assert_eq!(delegated_scopes(None, None, only_orders), Ok(vec![]), "nothing requested, nothing named");
        assert_eq!(
            ScopeRefusal::NotHeld("x".into()).into_error("the assertion").description(),
            "scope x is not held by the assertion"
        );
    }

    #[test]
    fn act_nests_the_prior_actor() {
        assert_eq!(nest_act("agent", None), json!({"sub": "agent"}));
        let prior = json!({"sub": "gateway"});
        assert_eq!(nest_act("agent", Some(prior.clone())), json!({"sub": "agent", "act": {"sub": "gateway"}}));
        let twice = nest_act("tool", Some(nest_act("agent", Some(prior))));
        assert_eq!(twice, json!({"sub": "tool", "act": {"sub": "agent", "act": {"sub": "gateway"}}}));
    }

    #[test]
    fn may_act_restricts_the_actor() {
        let may = json!({"sub": "agent"});
        assert!(may_act_allows(Some(&may), Some("agent")));
        assert!(!may_act_allows(Some(&may), Some("intruder")));
        assert!(may_act_allows(Some(&may), None));
        assert!(may_act_allows(None, Some("anyone")));
    }

    #[test]
    fn audience_claim_shapes() {
        assert_eq!(audience_claim(&[]), None);
        assert_eq!(audience_claim(&v(&["a"])), Some(json!("a")));
        assert_eq!(audience_claim(&v(&["a", "b"])), Some(json!(["a", "b"])));
    }

    #[test]
    fn scope_claim_forms() {
        assert_eq!(scope_list(Some(&json!("a  b"))), v(&["a", "b"]));
        assert_eq!(scope_list(Some(&json!(["a", 1, "b"]))), v(&["a", "b"]));
        assert!(scope_list(None).is_empty());
    }

    #[test]
    fn claims_carry_the_rfc9068_members() {
        let c = build_claims("http://as", "alice", &v(&["api"]), &v(&["a", "b"]), Some("gw"), 10, 70, None);
        assert_eq!(c["iss"], "http://as");
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["aud"], "api");
        assert_eq!(c["scope"], "a b");
        assert_eq!(c["client_id"], "gw");
        assert_eq!(c["iat"], 10);
        assert_eq!(c["exp"], 70);
        assert_eq!(c["jti"].as_str().map(str::len), Some(32));
        assert!(c.get("act").is_none());
        let bare = build_claims("i", "s", &[], &[], None, 1, 2, Some(json!({"sub": "x"})));
        assert!(bare.get("aud").is_none() && bare.get("scope").is_none() && bare.get("client_id").is_none());
        assert_eq!(bare["act"]["sub"], "x");
        assert!(bare.get("cnf").is_none());
    }

    #[test]
    fn binding_adds_cnf_jkt() {
        let mut c = build_claims("i", "s", &[], &[], None, 1, 2, None);
        bind(&mut c, None);
        assert!(c.get("cnf").is_none());
        bind(&mut c, Some("jkt-value"));
        assert_eq!(c["cnf"], json!({"jkt": "jkt-value"}));
    }
}
