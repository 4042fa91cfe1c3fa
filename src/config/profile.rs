//! Provider profiles (SPEC §7): the defaults an authorization server's
//! product needs — the grant shape, token type URNs, parameters left out —
//! and how its refusals map to the caller. Plain data: every default can be
//! overridden per server (`error_map`) or per route (`grant`,
//! `subject_token_type`, `requested_token_type`, `extra_params`).

use std::collections::BTreeMap;
use std::fmt;

use super::{ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE};

/// `authorization_servers.X.profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    #[default]
    Generic,
    Entra,
    Keycloak,
    Okta,
    Auth0,
    PingOne,
    GoogleSts,
    Zitadel,
}

/// The shape of a route's token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// RFC 8693: `subject_token`, `subject_token_type`, optional actor.
    TokenExchange,
    /// RFC 7523 §2.1: the caller's token as `assertion`.
    JwtBearer,
    /// Microsoft Entra ID on-behalf-of: the RFC 7523 grant with
    /// `requested_token_use=on_behalf_of`.
    OnBehalfOf,
}

/// What a refusal of the authorization server becomes for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `401 invalid_token` (and a short negative cache entry).
    InvalidToken,
    /// `401 insufficient_user_authentication`: the user must sign in again
    /// or satisfy a policy (MFA, consent); the AS's hints are passed on.
    StepUp,
    /// `403 insufficient_scope`.
    InsufficientScope,
    /// `502`: the gateway or the AS is misconfigured (logged at error).
    BadGateway,
    /// `503` with `Retry-After`.
    Unavailable,
}

/// Error code → outcome, looked up by the provider's own code first (e.g.
/// `AADSTS50076`), then a profile's rules on the description (Keycloak says
/// what it refused only there), then the sub-error, then the OAuth `error`.
/// Codes not in it follow SPEC §3.6.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorMap {
    codes: BTreeMap<String, Outcome>,
    described: Vec<Described>,
    /// Entra's `suberror` is read (other providers' means nothing).
    suberror: bool,
}

/// An `error` whose `error_description` is `text`, or starts with `text:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Described {
    pub error: &'static str,
    pub text: &'static str,
    pub outcome: Outcome,
}

impl Described {
    fn matches(&self, error: &str, description: &str) -> bool {
        error == self.error
            && description.strip_prefix(self.text).is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
    }
}

impl ErrorMap {
    pub fn get(&self, code: &str) -> Option<Outcome> {
        self.codes.get(code).copied()
    }

    /// The rule for `error` with `description`, if a profile has one.
    pub fn described(&self, error: &str, description: &str) -> Option<Outcome> {
        self.described.iter().find(|d| d.matches(error, description)).map(|d| d.outcome)
    }

    pub fn reads_suberror(&self) -> bool {
        self.suberror
    }

    /// `error_map:` of a server: its word over the profile's, including
    /// the profile's description rules for that code.
    pub fn set(&mut self, code: String, outcome: Outcome) {
        self.described.retain(|d| d.error != code);
        self.codes.insert(code, outcome);
    }

    /// Every code rule, in code order, then the description rules.
    pub fn rules(&self) -> (impl Iterator<Item = (&str, Outcome)>, &[Described]) {
        (self.codes.iter().map(|(k, v)| (k.as_str(), *v)), &self.described)
    }
}

/// A value of `exchange.extra_params`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ParamValue {
    /// `interpolated`: it came from `${VAR}` (it may be a credential), so
    /// `check --explain` does not show it.
    Static { value: String, interpolated: bool },
    /// A claim of the caller's token, read once the inbound check has
    /// verified it. Absent: the parameter is left out, or the request is
    /// refused (`401 invalid_token`) when `required`.
    Claim { name: String, required: bool },
}

/// Form parameters a route cannot set through `extra_params`: those of the
/// grants (RFC 6749, 7523, 8693, 8707, Entra on-behalf-of) and of client
/// authentication (RFC 6749 §2.3.1, RFC 7523 §2.2).
pub const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
    "audience",
    "resource",
    "scope",
    "assertion",
    "requested_token_use",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "code",
    "code_verifier",
    "redirect_uri",
    "refresh_token",
    "username",
    "password",
];

impl Profile {
    pub const NAMES: &'static str = "entra, keycloak, okta, auth0, pingone, google_sts, zitadel or generic";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "generic" => Profile::Generic,
            "entra" => Profile::Entra,
            "keycloak" => Profile::Keycloak,
            "okta" => Profile::Okta,
            "auth0" => Profile::Auth0,
            "pingone" => Profile::PingOne,
            "google_sts" => Profile::GoogleSts,
            "zitadel" => Profile::Zitadel,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Generic => "generic",
            Profile::Entra => "entra",
            Profile::Keycloak => "keycloak",
            Profile::Okta => "okta",
            Profile::Auth0 => "auth0",
            Profile::PingOne => "pingone",
            Profile::GoogleSts => "google_sts",
            Profile::Zitadel => "zitadel",
        }
    }

    /// The grant a route uses unless it sets `grant:`.
    pub fn grant(self) -> Grant {
        match self {
            Profile::Entra => Grant::OnBehalfOf,
            _ => Grant::TokenExchange,
        }
    }

    /// `subject_token_type` unless the route sets one. Auth0 has none: its
    /// Custom Token Exchange takes the profile's own URI (checked).
    pub fn subject_token_type(self) -> &'static str {
        match self {
            Profile::GoogleSts => JWT_TOKEN_TYPE,
            _ => ACCESS_TOKEN_TYPE,
        }
    }

    /// `requested_token_type` unless the route sets one (`""` leaves it out),
    /// given the route's `subject_token_type`.
    pub fn requested_token_type(self, subject_token_type: &str) -> Option<&'static str> {
        match self {
            // Google's STS requires it.
            Profile::GoogleSts => Some(ACCESS_TOKEN_TYPE),
            // Auth0's On-Behalf-Of exchange (an Auth0 access token) requires
            // it; its Custom Token Exchange (a type of your own) refuses it.
            Profile::Auth0 if subject_token_type.starts_with(IETF_TOKEN_TYPE) => Some(ACCESS_TOKEN_TYPE),
            _ => None,
        }
    }

    /// The profile's error mapping, before the server's `error_map`.
    pub fn error_map(self) -> ErrorMap {
        use Outcome::*;
        // Every profile: OpenID Connect's and RFC 9470's "the user must act"
        // codes, RFC 6749's `temporarily_unavailable`, and `access_denied`.
        let mut m: BTreeMap<String, Outcome> = [
            ("interaction_required", StepUp),
            ("login_required", StepUp),
            ("consent_required", StepUp),
            ("insufficient_user_authentication", StepUp),
            ("access_denied", InsufficientScope),
            ("temporarily_unavailable", Unavailable),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let extra: &[(&str, Outcome)] = match self {
            // Custom Token Exchange: an API setting, not the user (node-auth0
            // "consent_required: Enable Allow Skipping User Consent").
            Profile::Auth0 => {
                &[("mfa_required", StepUp), ("consent_required", BadGateway), ("too_many_attempts", Unavailable)]
            }
            // A disabled or missing workload identity pool or provider is
            // the gateway's configuration (google-github-actions/auth#202).
            Profile::GoogleSts => &[("invalid_target", BadGateway)],
            // https://learn.microsoft.com/entra/identity-platform/reference-error-codes
            Profile::Entra => &[
                ("AADSTS50013", InvalidToken),      // assertion signature / audience invalid
                ("AADSTS50027", InvalidToken),      // invalid JWT
                ("AADSTS500133", InvalidToken),     // assertion outside its validity window
                ("AADSTS240002", InvalidToken),     // an id_token used as the assertion
                ("AADSTS50076", StepUp),            // MFA required (location / policy change)
                ("AADSTS50079", StepUp),            // MFA registration required
                ("AADSTS50158", StepUp),            // external security challenge
                ("AADSTS65001", StepUp),            // consent required
                ("AADSTS70043", StepUp),            // sign-in frequency: token too old
                ("AADSTS53003", InsufficientScope), // blocked by Conditional Access
                ("AADSTS7000215", BadGateway),      // invalid client secret
                ("AADSTS7000222", BadGateway),      // client secret expired
                ("AADSTS700016", BadGateway),       // application not found in the tenant
                ("AADSTS901002", BadGateway),       // `resource` is not supported (v2.0)
                ("AADSTS70011", BadGateway),        // invalid scope: the route's configuration
                ("AADSTS700022", BadGateway),       // scopes of more than one resource
                ("AADSTS65005", BadGateway),        // API permission not requested by tokex's app
                ("AADSTS650057", BadGateway),       // the same
                ("AADSTS7000114", BadGateway),      // app not allowed on-behalf-of calls
                ("AADSTS7000218", BadGateway),      // no client credential sent
                ("AADSTS9001023", BadGateway),      // /common or /consumers endpoint
                ("AADSTS9010010", BadGateway),      // resource does not match the scopes
                ("AADSTS90002", BadGateway),        // tenant not found
                ("AADSTS50173", InvalidToken),      // the grant was revoked
            ],
            _ => &[],
        };
        m.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), *v)));
        // Keycloak answers `invalid_request` for a bad subject token and an
        // audience the user may not have, and `access_denied` for a subject
        // token not issued to tokex (StandardTokenExchangeProvider,
        // AbstractTokenExchangeProvider).
        let described = match self {
            Profile::Keycloak => vec![
                Described { error: "invalid_request", text: "Invalid token", outcome: InvalidToken },
                Described {
                    error: "invalid_request",
                    text: "Requested audience not available",
                    outcome: InsufficientScope,
                },
                Described {
                    error: "access_denied",
                    text: "Client is not within the token audience",
                    outcome: InvalidToken,
                },
            ],
            _ => Vec::new(),
        };
        ErrorMap { codes: m, described, suberror: self == Profile::Entra }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Grant {
    pub const NAMES: &'static str = "token_exchange, jwt_bearer or on_behalf_of";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "token_exchange" => Grant::TokenExchange,
            "jwt_bearer" => Grant::JwtBearer,
            "on_behalf_of" => Grant::OnBehalfOf,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Grant::TokenExchange => "token_exchange",
            Grant::JwtBearer => "jwt_bearer",
            Grant::OnBehalfOf => "on_behalf_of",
        }
    }

    /// The `grant_type` sent.
    pub fn grant_type(self) -> &'static str {
        match self {
            Grant::TokenExchange => super::TOKEN_EXCHANGE_GRANT,
            Grant::JwtBearer | Grant::OnBehalfOf => JWT_BEARER_GRANT,
        }
    }

    /// The audit event's `grant`.
    pub fn audit_name(self) -> &'static str {
        match self {
            Grant::TokenExchange => "token-exchange",
            Grant::JwtBearer => "jwt-bearer",
            Grant::OnBehalfOf => "on-behalf-of",
        }
    }
}

/// The RFC 8693 §3 token type namespace.
pub const IETF_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:";

/// RFC 7523 §2.1.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

impl Outcome {
    pub const NAMES: &'static str = "invalid_token, step_up, insufficient_scope, bad_gateway or unavailable";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "invalid_token" => Outcome::InvalidToken,
            "step_up" => Outcome::StepUp,
            "insufficient_scope" => Outcome::InsufficientScope,
            "bad_gateway" => Outcome::BadGateway,
            "unavailable" => Outcome::Unavailable,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::InvalidToken => "invalid_token",
            Outcome::StepUp => "step_up",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::BadGateway => "bad_gateway",
            Outcome::Unavailable => "unavailable",
        }
    }

    /// What the caller gets, for `check --explain`.
    pub fn answer(self) -> &'static str {
        match self {
            Outcome::InvalidToken => "401 invalid_token",
            Outcome::StepUp => "401 insufficient_user_authentication",
            Outcome::InsufficientScope => "403 insufficient_scope",
            Outcome::BadGateway => "502",
            Outcome::Unavailable => "503 + Retry-After",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in [
            Profile::Generic,
            Profile::Entra,
            Profile::Keycloak,
            Profile::Okta,
            Profile::Auth0,
            Profile::PingOne,
            Profile::GoogleSts,
            Profile::Zitadel,
        ] {
            assert_eq!(Profile::parse(p.name()), Some(p));
            assert!(Profile::NAMES.contains(p.name()));
        }
        for g in [Grant::TokenExchange, Grant::JwtBearer, Grant::OnBehalfOf] {
            assert_eq!(Grant::parse(g.name()), Some(g));
        }
        for o in [
            Outcome::InvalidToken,
            Outcome::StepUp,
            Outcome::InsufficientScope,
            Outcome::BadGateway,
            Outcome::Unavailable,
        ] {
            assert_eq!(Outcome::parse(o.name()), Some(o));
        }
    }

    #[test]
    fn entra_maps_its_codes_and_keeps_the_common_ones() {
        let m = Profile::Entra.error_map();
        assert_eq!(m.get("AADSTS50076"), Some(Outcome::StepUp));
        assert_eq!(m.get("interaction_required"), Some(Outcome::StepUp));
        assert_eq!(m.get("invalid_grant"), None, "SPEC §3.6 applies");
        assert_eq!(Profile::Generic.error_map().get("AADSTS50076"), None);
        assert_eq!(Profile::Auth0.error_map().get("mfa_required"), Some(Outcome::StepUp));
    }
}
