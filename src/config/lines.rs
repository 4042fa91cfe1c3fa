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
        let Some((Seg::Key(want), rest)) = self.path.split_first() else {
            return found(self.path);
        };
        while let Some(is_it) = map.next_key_seed(Key { want, last: rest.is_empty() })? {
            if is_it {
                return map.next_value_seed(Seek { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
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

/// A mapping key: `Ok(true)` when it is the one sought (and, when it ends
/// the path, the marker error on the key itself).
struct Key<'w> {
    want: &'w str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        match key == self.want {
            true if self.last => Err(E::custom(FOUND)),
            same => Ok(same),
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.visit_str(if v { "true" } else { "false" })
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
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
    fn a_missing_node_gives_its_nearest_ancestor() {
        assert_eq!(line_of(YAML, "routes[0].exchange.max_rate.per_second"), Some(8));
        assert_eq!(line_of(YAML, "routes[1].match"), Some(11));
        assert_eq!(line_of(YAML, "routes[7]"), Some(5));
        assert_eq!(line_of(YAML, "nothing.here"), None);
        assert_eq!(line_of(YAML, ""), None);
        assert_eq!(line_of("[: bad", "a"), None);
    }
}
