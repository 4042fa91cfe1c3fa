//! `${VAR}` / `${VAR:-default}` interpolation and the string-like config types
//! that apply it while deserializing, so an error keeps its YAML path and line.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Replaces `${VAR}` and `${VAR:-default}` in `input` using `lookup`.
/// `$$` is a literal `$`. An unset variable without a default is an error.
pub fn interpolate(input: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?}"));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

thread_local! {
    /// `Some` while an offline parse runs on this thread: the variables that
    /// were not set (deserializing cannot carry context, so this does).
    static OFFLINE: RefCell<Option<BTreeSet<String>>> = const { RefCell::new(None) };
}

/// Runs `f` with offline interpolation: an unset `${VAR}` is no error; the
/// value that holds it is marked `unresolved` and its checks are skipped.
/// Returns the names of the unset variables too.
pub(super) fn offline<T>(f: impl FnOnce() -> T) -> (T, BTreeSet<String>) {
    /// Puts back what was there before, even when `f` panics: a later
    /// parse on this thread must not be offline by accident.
    struct Restore(Option<BTreeSet<String>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            OFFLINE.with(|o| *o.borrow_mut() = before);
        }
    }
    let _restore = Restore(OFFLINE.with(|o| o.replace(Some(BTreeSet::new()))));
    let out = f();
    let unset = OFFLINE.with(|o| o.borrow_mut().take()).unwrap_or_default();
    (out, unset)
}

/// Offline: the YAML paths (`routes[0].upstream`) of the strings that name
/// a variable that is not set, with the text, so errors on them can be left
/// out and the warning can say where each variable is used.
pub(super) fn unresolved_paths(text: &str) -> BTreeMap<String, String> {
    fn walk(v: &serde_yaml::Value, path: &str, out: &mut BTreeMap<String, String>) {
        match v {
            serde_yaml::Value::String(s) if s.contains("${") && interpolate(s, env_lookup).is_err() => {
                out.insert(path.to_owned(), s.clone());
            }
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    let key = match k {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_owned(),
                    };
                    let child = if path.is_empty() { key } else { format!("{path}.{key}") };
                    walk(v, &child, out);
                }
            }
            serde_yaml::Value::Sequence(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), out);
                }
            }
            serde_yaml::Value::Tagged(t) => walk(&t.value, path, out),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        walk(&v, "", &mut out);
    }
    out
}

/// Interpolates `raw` from the environment; offline, an unset variable
/// leaves the text as written and reports `false` (not resolved).
fn resolve(raw: &str) -> Result<(String, bool), String> {
    match interpolate(raw, env_lookup) {
        Ok(v) => Ok((v, true)),
        Err(e) => OFFLINE.with(|o| match o.borrow_mut().as_mut() {
            Some(unset) => {
                let mut missing = |name: &str| {
                    unset.insert(name.to_owned());
                    Some("unset".to_owned())
                };
                // Only unset variables are forgiven: a malformed `${` is still an error.
                interpolate(raw, |n| env_lookup(n).or_else(|| missing(n))).map(|_| (raw.to_owned(), false))
            }
            None => Err(e),
        }),
    }
}

/// A config string after interpolation. Also records whether the YAML text
/// held the value literally (no `${..}`), for `TOKEX_STRICT` secret checks.
#[derive(Clone, PartialEq, Eq)]
pub struct Text {
    pub value: String,
    pub literal: bool,
    /// Offline only: it names a variable that is not set, so `value` is the
    /// text as written and checks of its form are skipped.
    pub unresolved: bool,
}

impl Text {
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.value, f)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let literal = !raw.contains("${");
        let (value, resolved) = resolve(&raw).map_err(serde::de::Error::custom)?;
        Ok(Text { value, literal, unresolved: !resolved })
    }
}

/// A duration written as a string (`250ms`, `30s`, `5m`), interpolated first.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Text::deserialize(d)?;
        if text.unresolved {
            // Offline and unset: any value would do; one second passes every range.
            return Ok(Dur(Duration::from_secs(1)));
        }
        humantime::parse_duration(text.as_str().trim())
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {:?}: {e}", text.value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables_and_defaults() {
        assert_eq!(interpolate("a ${SET} b", env).unwrap(), "a value b");
        assert_eq!(interpolate("${UNSET:-dflt}", env).unwrap(), "dflt");
        assert_eq!(interpolate("${EMPTY:-dflt}", env).unwrap(), "dflt");
        assert_eq!(interpolate("${SET:-dflt}", env).unwrap(), "value");
        assert_eq!(interpolate("${UNSET:-}", env).unwrap(), "");
        assert_eq!(interpolate("cost $$5 $x", env).unwrap(), "cost $5 $x");
        assert_eq!(interpolate("plain", env).unwrap(), "plain");
    }

    #[test]
    fn rejects_unset_and_malformed() {
        assert!(interpolate("${UNSET}", env).unwrap_err().contains("UNSET"));
        assert!(interpolate("${SET", env).is_err());
        assert!(interpolate("${BAD NAME}", env).is_err());
        assert!(interpolate("${}", env).is_err());
    }

    #[test]
    fn durations_parse() {
        let d: Dur = serde_yaml::from_str("250ms").unwrap();
        assert_eq!(d.0, Duration::from_millis(250));
        let d: Dur = serde_yaml::from_str("5m").unwrap();
        assert_eq!(d.0, Duration::from_secs(300));
        assert!(serde_yaml::from_str::<Dur>("soon").is_err());
    }
}
