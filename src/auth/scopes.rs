//! `require_scopes`: the scopes a caller's token grants, read from `scope`
//! (a space-separated string, RFC 8693 §4.2 / RFC 9068 §2.2.3) or, when the
//! token has no `scope`, from `scp` (an array, or a space-separated string),
//! and the check against a route's required scopes.

use std::sync::Arc;

use serde_json::Value;

use super::InboundError;

/// Scopes granted to the caller's token. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Granted(Arc<[String]>);

impl Granted {
    /// From the `scope` and `scp` claims (or introspection members).
    pub fn from_claims(scope: Option<&Value>, scp: Option<&Value>) -> Self {
        let source = scope.filter(|v| !v.is_null()).or(scp);
        let list: Vec<String> = match source {
            Some(Value::String(s)) => s.split(' ').filter(|x| !x.is_empty()).map(str::to_owned).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Granted(list.into())
    }

    /// Bytes held: the scopes' text and their `String`s.
    pub fn heap_bytes(&self) -> usize {
        self.0.iter().map(|s| s.len() + std::mem::size_of::<String>()).sum()
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.iter().any(|s| s == scope)
    }
}

/// A route's `require_scopes`, and the same space-joined for the
/// `insufficient_scope` challenge.
#[derive(Clone, Debug, Default)]
pub struct RequiredScopes {
    list: Vec<String>,
    joined: Arc<str>,
}

impl RequiredScopes {
    pub fn new(list: &[String]) -> Self {
        RequiredScopes { list: list.to_vec(), joined: list.join(" ").into() }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every required scope must be granted.
    pub fn check(&self, granted: &Granted) -> Result<(), InboundError> {
        if self.list.iter().all(|s| granted.contains(s)) {
            Ok(())
        } else {
            Err(InboundError::InsufficientScope(self.joined.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_scope_string_or_scp_array() {
        let g = Granted::from_claims(Some(&json!("orders:read  profile")), None);
        assert!(g.contains("orders:read") && g.contains("profile") && !g.contains(""));
        let g = Granted::from_claims(None, Some(&json!(["a", "b", 3])));
        assert!(g.contains("a") && g.contains("b"));
        let g = Granted::from_claims(None, Some(&json!("a b")));
        assert!(g.contains("b"));
        // `scope` wins when both are present.
        let g = Granted::from_claims(Some(&json!("a")), Some(&json!(["b"])));
        assert!(g.contains("a") && !g.contains("b"));
        assert_eq!(Granted::from_claims(Some(&json!(42)), None), Granted::default());
    }

    #[test]
    fn every_required_scope_must_be_granted() {
        let req = RequiredScopes::new(&["a".into(), "b".into()]);
        assert!(req.check(&Granted::from_claims(Some(&json!("b c a")), None)).is_ok());
        match req.check(&Granted::from_claims(Some(&json!("a")), None)) {
            Err(InboundError::InsufficientScope(s)) => assert_eq!(&*s, "a b"),
            other => panic!("{other:?}"),
        }
        assert!(RequiredScopes::default().check(&Granted::default()).is_ok());
        // Scope names are compared exactly: no prefix or case folding.
        assert!(RequiredScopes::new(&["orders".into()])
            .check(&Granted::from_claims(Some(&json!("orders:read ORDERS")), None))
            .is_err());
    }
}
