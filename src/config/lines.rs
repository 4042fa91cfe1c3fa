//! The YAML line of a validation error's path (`routes[1].exchange.audience[0]`).
//! serde_yaml keeps no positions in parsed values, but its errors carry one:
//! the text is walked along the path and an error is raised on the node
//! itself, whose location is the answer. Only run for diagnostics.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `a.b[2].c` → `[a, b, 2, c]`; `None` for a path this cannot name.
fn segments(path: &str) -> Option<Vec<Seg>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key.to_owned()));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped.find(']')?;
            out.push(Seg::Index(stripped[..end].parse().ok()?));
            rest = &stripped[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// The marker error: the walk reached the node (`FOUND`) or the path is
/// not in the text (anything else).
const FOUND: &str = "tokex: found";

/// Line (1-based) of the node at `path`, or of its nearest ancestor in the
/// text when the node itself is absent (a missing key).
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let segs = segments(path)?;
    for len in (1..=segs.len()).rev() {
        let seek = Seek { path: &segs[..len] };
        if let Err(e) = seek.deserialize(serde_yaml::Deserializer::from_str(text)) {
            // serde_yaml puts the path before the message.
            if e.to_string().contains(FOUND) {
                return e.location().map(|l| l.line());
            }
        }
    }
    None
}

/// Walks to `path`, failing on the node at its end. A key is failed on as
/// a key, so a section's line is its key's, not its first child's.
struct Seek<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // A key may itself hold dots (a server named `corp.example`): the
        // next one, two, ... key segments joined are each a candidate.
        let mut candidates = Vec::new();
        let mut joined = String::new();
        for (i, seg) in self.path.iter().enumerate() {
            let Seg::Key(k) = seg else { break };
            if i > 0 {
                joined.push('.');
            }
            joined.push_str(k);
            candidates.push((joined.clone(), i + 1));
        }
        if candidates.is_empty() {
            return found(self.path);
        }
        let key = Key { candidates: &candidates, len: self.path.len() };
        while let Some(taken) = map.next_key_seed(key)? {
            match taken {
                Some(n) => return map.next_value_seed(Seek { path: &self.path[n..] }),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Err(de::Error::custom("absent"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(want), rest)) = self.path.split_first() else {
            return found(self.path);
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom("absent"));
            }
        }
        // The element, when there, fails with the marker.
        seq.next_element_seed(Seek { path: rest })?;
        Err(de::Error::custom("absent"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        found(self.path)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        found(self.path)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        found(self.path)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        found(self.path)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        found(self.path)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        found(self.path)
    }
}

/// At the end of the path: the marker error; a scalar in the middle of it:
/// the path is not in the text.
fn found<E: de::Error>(rest: &[Seg]) -> Result<(), E> {
    Err(E::custom(if rest.is_empty() { FOUND } else { "absent" }))
}

/// A mapping key: `Ok(Some(n))` when it is the first `n` segments sought
/// (and, when those end the path, the marker error on the key itself).
#[derive(Clone, Copy)]
struct Key<'c> {
    candidates: &'c [(String, usize)],
    len: usize,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        match self.candidates.iter().find(|(c, _)| c == key) {
            Some(&(_, n)) if n == self.len => Err(E::custom(FOUND)),
            Some(&(_, n)) => Ok(Some(n)),
            None => Ok(None),
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<usize>, E> {
        self.visit_str(if v { "true" } else { "false" })
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<usize>, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<usize>, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<usize>, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<usize>, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<usize>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<usize>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "listen: { address: \"0.0.0.0:8080\" }
authorization_servers:
  corp:
    token_endpoint: not a url
routes:
  - name: a
    upstream: http://x
    exchange:
      authorization_server: nowhere
      audience: [a, b]
  - { name: b, upstream: x }
";

    #[test]
    fn paths_resolve_to_their_key_or_element() {
        assert_eq!(line_of(YAML, "listen.address"), Some(1));
        assert_eq!(line_of(YAML, "authorization_servers.corp"), Some(3));
        assert_eq!(line_of(YAML, "authorization_servers.corp.token_endpoint"), Some(4));
        assert_eq!(line_of(YAML, "routes[0]"), Some(6));
        assert_eq!(line_of(YAML, "routes[0].exchange"), Some(8));
        assert_eq!(line_of(YAML, "routes[0].exchange.authorization_server"), Some(9));
        assert_eq!(line_of(YAML, "routes[0].exchange.audience[1]"), Some(10));
        assert_eq!(line_of(YAML, "routes[1].upstream"), Some(11));
    }

    #[test]
    fn keys_with_dots() {
        let yaml = "servers:\n  a: 1\n  corp.example:\n    url: x\n  corp: { url: y }\n";
        assert_eq!(line_of(yaml, "servers.corp.example.url"), Some(4));
        assert_eq!(line_of(yaml, "servers.corp.example"), Some(3));
        assert_eq!(line_of(yaml, "servers.corp.url"), Some(5));
    }

    #[test]
    fn a_missing_node_gives_its_nearest_ancestor() {
        assert_eq!(line_of(YAML, "routes[0].exchange.max_rate.per_second"), Some(8));
        assert_eq!(line_of(YAML, "routes[1].match"), Some(11));
        assert_eq!(line_of(YAML, "routes[7]"), Some(5));
        assert_eq!(line_of(YAML, "nothing.here"), None);
        assert_eq!(line_of(YAML, ""), None);
        assert_eq!(line_of("[: bad", "a"), None);
    }
}
