//! Shared Signals from the development authorization server: Security
//! Event Tokens (RFC 8417) about a subject, in the Shared Signals
//! Framework 1.0 shape: the subject only in the top-level `sub_id` (RFC
//! 9493 subject identifier), one event in `events`. Signed with the dev-sts
//! signing key (`typ: secevent+jwt`, the `kid` of its JWKS), so a receiver
//! configured with the dev-sts `jwks_uri` verifies them.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Map, Value};

/// `typ` of a Security Event Token (RFC 8417 §2.3).
pub const SET_TYP: &str = "secevent+jwt";

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// The events the dev-sts can emit (CAEP 1.0 and RISC 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SecurityEvent {
    /// CAEP `session-revoked`.
    #[default]
    SessionRevoked,
    /// CAEP `credential-change` (a password update).
    CredentialChange,
    /// RISC `account-disabled`.
    AccountDisabled,
    /// RISC `account-purged`.
    AccountPurged,
    /// RISC `tokens-revoked`.
    TokensRevoked,
}

impl SecurityEvent {
    pub const ALL: [SecurityEvent; 5] = [
        SecurityEvent::SessionRevoked,
        SecurityEvent::CredentialChange,
        SecurityEvent::AccountDisabled,
        SecurityEvent::AccountPurged,
        SecurityEvent::TokensRevoked,
    ];

    /// The short name (`session-revoked`), the last segment of the URI.
    pub fn name(self) -> &'static str {
        match self {
            SecurityEvent::SessionRevoked => "session-revoked",
            SecurityEvent::CredentialChange => "credential-change",
            SecurityEvent::AccountDisabled => "account-disabled",
            SecurityEvent::AccountPurged => "account-purged",
            SecurityEvent::TokensRevoked => "tokens-revoked",
        }
    }

    fn is_caep(self) -> bool {
        match self {
            SecurityEvent::SessionRevoked | SecurityEvent::CredentialChange => true,
            SecurityEvent::AccountDisabled | SecurityEvent::AccountPurged | SecurityEvent::TokensRevoked => false,
        }
    }

    /// The event type URI (the key in `events`).
    pub fn uri(self) -> String {
        format!("{}{}", if self.is_caep() { CAEP } else { RISC }, self.name())
    }

    /// The event's payload: CAEP events carry `event_timestamp` (and a
    /// credential change says which); RISC events carry nothing.
    fn payload(self, now: u64) -> Value {
        match self {
            SecurityEvent::SessionRevoked => json!({"event_timestamp": now}),
            SecurityEvent::CredentialChange => {
                json!({"event_timestamp": now, "credential_type": "password", "change_type": "update"})
            }
            SecurityEvent::AccountDisabled | SecurityEvent::AccountPurged | SecurityEvent::TokensRevoked => json!({}),
        }
    }
}

/// How the subject is identified in `sub_id` (RFC 9493 formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SubjectFormat {
    /// `{"format": "iss_sub", "iss": <dev-sts issuer>, "sub": <sub>}`.
    #[default]
    IssSub,
    /// `{"format": "email", "email": <sub>}`.
    Email,
    /// `{"format": "opaque", "id": <sub>}`.
    Opaque,
}

impl SubjectFormat {
    pub const ALL: [SubjectFormat; 3] = [SubjectFormat::IssSub, SubjectFormat::Email, SubjectFormat::Opaque];

    /// The RFC 9493 format name (`iss_sub`).
    pub fn name(self) -> &'static str {
        match self {
            SubjectFormat::IssSub => "iss_sub",
            SubjectFormat::Email => "email",
            SubjectFormat::Opaque => "opaque",
        }
    }

    /// The subject identifier of `sub`.
    pub fn sub_id(self, issuer: &str, sub: &str) -> Value {
        match self {
            SubjectFormat::IssSub => json!({"format": "iss_sub", "iss": issuer, "sub": sub}),
            SubjectFormat::Email => json!({"format": "email", "email": sub}),
            SubjectFormat::Opaque => json!({"format": "opaque", "id": sub}),
        }
    }
}

/// A name that is not one of the known events or formats.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?} (expected one of: {expected})")]
pub struct UnknownName {
    what: &'static str,
    given: String,
    expected: String,
}

fn parse_name<T: Copy>(
    what: &'static str,
    given: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, UnknownName> {
    all.iter().copied().find(|v| name(*v) == given).ok_or_else(|| UnknownName {
        what,
        given: given.chars().filter(|c| !c.is_control()).take(100).collect(),
        expected: all.iter().map(|v| name(*v)).collect::<Vec<_>>().join(", "),
    })
}

impl FromStr for SecurityEvent {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        parse_name("event", s, &Self::ALL, Self::name)
    }
}

impl FromStr for SubjectFormat {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        parse_name("format", s, &Self::ALL, Self::name)
    }
}

impl fmt::Display for SecurityEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for SubjectFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl clap::ValueEnum for SecurityEvent {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl clap::ValueEnum for SubjectFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// What a SET says: about whom, what happened, for which receiver.
pub(crate) struct SetContent<'a> {
    pub issuer: &'a str,
    pub sub: &'a str,
    pub event: SecurityEvent,
    pub audience: &'a str,
    pub format: SubjectFormat,
}

/// A fresh `jti`: 128 random bits, hex.
pub(crate) fn new_jti() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The claims of a SET issued at `now` with id `jti`.
pub(crate) fn set_claims(c: &SetContent<'_>, jti: &str, now: u64) -> Value {
    let mut events = Map::new();
    events.insert(c.event.uri(), c.event.payload(now));
    json!({
        "iss": c.issuer,
        "aud": c.audience,
        "iat": now,
        "jti": jti,
        "sub_id": c.format.sub_id(c.issuer, c.sub),
        "events": events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uris() {
        assert_eq!(
            SecurityEvent::SessionRevoked.uri(),
            "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
        );
        assert_eq!(
            SecurityEvent::CredentialChange.uri(),
            "https://schemas.openid.net/secevent/caep/event-type/credential-change"
        );
        for (e, uri) in [
            (SecurityEvent::AccountDisabled, "account-disabled"),
            (SecurityEvent::AccountPurged, "account-purged"),
            (SecurityEvent::TokensRevoked, "tokens-revoked"),
        ] {
            assert_eq!(e.uri(), format!("https://schemas.openid.net/secevent/risc/event-type/{uri}"));
        }
        for e in SecurityEvent::ALL {
            assert_eq!(e.name().parse::<SecurityEvent>(), Ok(e));
            assert!(e.uri().ends_with(&format!("/{e}")));
        }
        for f in SubjectFormat::ALL {
            assert_eq!(f.name().parse::<SubjectFormat>(), Ok(f));
        }
        let e = "session_revoked".parse::<SecurityEvent>().unwrap_err().to_string();
        assert!(e.contains("session-revoked, credential-change"), "{e}");
        assert!("ISS_SUB".parse::<SubjectFormat>().is_err(), "names are exact");
        assert_eq!(SecurityEvent::default(), SecurityEvent::SessionRevoked);
        assert_eq!(SubjectFormat::default(), SubjectFormat::IssSub);
    }

    #[test]
    fn claims_have_the_ssf_shape() {
        let content = SetContent {
            issuer: "http://sts",
            sub: "alice",
            event: SecurityEvent::CredentialChange,
            audience: "tokex",
            format: SubjectFormat::IssSub,
        };
        let c = set_claims(&content, "j1", 77);
        assert_eq!(
            c,
            json!({
                "iss": "http://sts", "aud": "tokex", "iat": 77, "jti": "j1",
                "sub_id": {"format": "iss_sub", "iss": "http://sts", "sub": "alice"},
                "events": {"https://schemas.openid.net/secevent/caep/event-type/credential-change":
                    {"event_timestamp": 77, "credential_type": "password", "change_type": "update"}},
            })
        );
        let risc = SetContent { event: SecurityEvent::AccountDisabled, format: SubjectFormat::Email, ..content };
        let c = set_claims(&risc, "j2", 77);
        assert_eq!(c["events"], json!({"https://schemas.openid.net/secevent/risc/event-type/account-disabled": {}}));
        assert_eq!(c["sub_id"], json!({"format": "email", "email": "alice"}));
        assert_eq!(SubjectFormat::Opaque.sub_id("i", "x"), json!({"format": "opaque", "id": "x"}));
        assert_eq!(new_jti().len(), 32);
        assert_ne!(new_jti(), new_jti());
    }
}
