//! Property tests of the parsers and matchers that see caller-controlled
//! input: route matching, `Authorization` parsing, hop-by-hop removal and
//! config interpolation. Each property is checked against the documented
//! contract, most against a small reference model written here.

use std::collections::BTreeMap;

use http::header::{AUTHORIZATION, CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use proptest::sample::select;

use tokex::config::interpolate;
use tokex::config::matcher::{HostMatch, PathMatch};
use tokex::error::GatewayError;
use tokex::proxy::bearer::{self, MAX_TOKEN_BYTES};
use tokex::proxy::headers::{is_hop_by_hop, strip_hop_by_hop};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, ..ProptestConfig::default() }
}

// Route matching

/// A path built from segments that share prefixes (`order`, `orders`,
/// `ordersx`), so prefix and segment boundaries are exercised.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(select(vec!["orders", "ordersx", "order", "a", "", "x.json"]), 0..4)
        .prop_map(|segs| format!("/{}", segs.join("/")))
}

/// The reference model of a segment-aware prefix: `p` itself, or `p`
/// followed by `/...`; a prefix ending in `/` matches what starts with it.
fn prefix_model(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix || path.starts_with(&format!("{prefix}/"))
    }
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9-]{0,5}"
}

fn host_name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
}

/// Random ASCII case.
fn recase(s: &str, flips: &[bool]) -> String {
    s.chars().zip(flips.iter().cycle()).map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c }).collect()
}

/// One route of a generated table, and the reference model of its matcher.
#[derive(Clone, Debug)]
struct RouteSpec {
    host: Option<&'static str>,
    /// (exact?, path)
    path: Option<(bool, &'static str)>,
    methods: Vec<&'static str>,
    tenant: Option<&'static str>,
}

const HOSTS: [&str; 3] = ["api.example.com", "*.example.com", "other.test"];
const PATHS: [&str; 5] = ["/", "/orders", "/orders/", "/orders/1", "/ordersx"];
const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];
const TENANTS: [&str; 2] = ["acme", "globex"];

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    (
        prop::option::of(select(HOSTS.to_vec())),
        prop::option::of((any::<bool>(), select(PATHS.to_vec()))),
        prop::sample::subsequence(METHODS.to_vec(), 0..=2),
        prop::option::of(select(TENANTS.to_vec())),
    )
        .prop_map(|(host, path, methods, tenant)| RouteSpec { host, path, methods, tenant })
}

impl RouteSpec {
    fn yaml(&self, i: usize) -> String {
        let mut m = Vec::new();
        if let Some(h) = self.host {
            m.push(format!("host: \"{h}\""));
        }
        match self.path {
            Some((true, p)) => m.push(format!("path: \"{p}\"")),
            Some((false, p)) => m.push(format!("path_prefix: \"{p}\"")),
            None => {}
        }
        if !self.methods.is_empty() {
            m.push(format!("methods: [{}]", self.methods.join(", ")));
        }
        if let Some(t) = self.tenant {
            m.push(format!("headers: {{ x-tenant: {t} }}"));
        }
        format!("  - name: r{i}\n    match: {{ {} }}\n    upstream: http://127.0.0.1:1\n    auth: none\n", m.join(", "))
    }

    fn matches(&self, req: &Req) -> bool {
        let host_ok = match (self.host, req.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(h), Some(r)) => match h.strip_prefix('*') {
                Some(suffix) => r.len() > suffix.len() && r.to_ascii_lowercase().ends_with(suffix),
                None => r.eq_ignore_ascii_case(h),
            },
        };
        let path_ok = match self.path {
            None => true,
            Some((true, p)) => req.path == p,
            Some((false, p)) => prefix_model(p, &req.path),
        };
        let method_ok = self.methods.is_empty() || self.methods.contains(&req.method);
        let tenant_ok = match self.tenant {
            None => true,
            Some(t) => req.tenants.contains(&t),
        };
        host_ok && path_ok && method_ok && tenant_ok
    }
}

#[derive(Clone, Debug)]
struct Req {
    method: &'static str,
    path: String,
    host: Option<&'static str>,
    tenants: Vec<&'static str>,
}

fn req() -> impl Strategy<Value = Req> {
    (
        select(vec!["GET", "POST", "DELETE", "PUT"]),
        prop_oneof![select(PATHS.to_vec()).prop_map(str::to_owned), path()],
        prop::option::of(select(vec![
            "api.example.com",
            "API.Example.COM",
            "a.example.com",
            "example.com",
            "badexample.com",
            "other.test",
            "x.other.test",
        ])),
        prop::sample::subsequence(TENANTS.to_vec(), 0..=2),
    )
        .prop_map(|(method, path, host, tenants)| Req { method, path, host, tenants })
}

proptest! {
    #![proptest_config(config())]

    /// A prefix matches itself and its sub-paths, never a longer segment
    /// (`/orders` never matches `/ordersx`), as the reference model says.
    #[test]
    fn path_prefix_is_segment_aware(prefix in path(), p in path(), tail in "[a-z]{1,4}") {
        let m = PathMatch::Prefix(prefix.clone());
        prop_assert_eq!(m.matches(&p), prefix_model(&prefix, &p), "prefix {:?} path {:?}", prefix, p);
        prop_assert!(m.matches(&prefix));
        let below = if prefix.ends_with('/') { format!("{prefix}{tail}") } else { format!("{prefix}/{tail}") };
        prop_assert!(m.matches(&below));
        let longer = format!("{prefix}{tail}");
        if !prefix.ends_with('/') {
            prop_assert!(!m.matches(&longer), "{:?} matched {:?}", prefix, longer);
        }
        prop_assert_eq!(PathMatch::Exact(prefix.clone()).matches(&p), prefix == p);
    }

    /// An exact host matches itself in any case (the pattern's case and
    /// surrounding spaces do not matter), and no subdomain, no absent host.
    #[test]
    fn exact_host_matches_in_any_case(name in host_name(), flips in prop::collection::vec(any::<bool>(), 1..8),
                                      pad in "[ ]{0,2}", sub in label()) {
        let m = HostMatch::parse(&format!("{pad}{}{pad}", recase(&name, &flips))).unwrap();
        prop_assert_eq!(&m, &HostMatch::Exact(name.clone()));
        prop_assert!(m.matches(Some(&name)));
        prop_assert!(m.matches(Some(&name.to_ascii_uppercase())));
        let subdomain = format!("{sub}.{name}");
        prop_assert!(!m.matches(Some(&subdomain)));
        prop_assert!(!m.matches(None));
    }

    /// `*.suffix` matches any subdomain in any case, never the apex, and
    /// never a host that merely ends with the same letters.
    #[test]
    fn suffix_host_matches_subdomains_only(name in host_name(), sub in host_name(), glued in label(),
                                           flips in prop::collection::vec(any::<bool>(), 1..8)) {
        let m = HostMatch::parse(&format!("*.{name}")).unwrap();
        let subdomain = format!("{sub}.{name}");
        prop_assert!(m.matches(Some(&subdomain)));
        prop_assert!(m.matches(Some(&recase(&subdomain, &flips))));
        prop_assert!(!m.matches(Some(&name)));
        let glued = format!("{glued}{name}");
        prop_assert!(!m.matches(Some(&glued)));
        prop_assert!(!m.matches(None));
    }

    /// Arbitrary hosts (non-ASCII included) never panic and agree with the
    /// reference model of exact and suffix matching.
    #[test]
    fn host_matching_agrees_with_the_model(name in host_name(), random in "[a-zA-Z0-9.é-]{0,20}",
                                           before in "[a-zé.-]{0,3}", flips in prop::collection::vec(any::<bool>(), 1..8),
                                           derived in any::<bool>()) {
        // Hosts near the pattern (`x.NAME`, `xNAME`, `éNAME`, `NAME`) or anything.
        let host = if derived { format!("{before}{}", recase(&name, &flips)) } else { random };
        let exact = HostMatch::parse(&name).unwrap();
        prop_assert_eq!(exact.matches(Some(&host)), host.to_ascii_lowercase() == name);
        let suffix = HostMatch::parse(&format!("*.{name}")).unwrap();
        let dotted = format!(".{name}");
        let lower = host.to_ascii_lowercase();
        prop_assert_eq!(suffix.matches(Some(&host)), lower.len() > dotted.len() && lower.ends_with(&dotted));
    }

    /// Patterns with a port, an inner wildcard or an empty label are refused.
    #[test]
    fn invalid_host_patterns_are_refused(name in host_name(), port in 1u16.., bad in select(vec![
        "{}:{}", "a.*.{}{}", "*{}{}", "{}..x{}", ".{}{}", "{}/x{}", "{} x{}",
    ])) {
        let pattern = bad.replacen("{}", &name, 1).replacen("{}", &if bad.contains(':') { port.to_string() } else { String::new() }, 1);
        prop_assert!(HostMatch::parse(&pattern).is_err(), "{:?} was accepted", pattern);
    }

    /// `RouteTable::find` returns the FIRST route whose matcher accepts the
    /// request (routes built through `config::parse`), as the model says.
    #[test]
    fn route_table_finds_the_first_match(specs in prop::collection::vec(route_spec(), 1..6),
                                         reqs in prop::collection::vec(req(), 1..8)) {
        let yaml = format!(
            "listen: {{ address: 127.0.0.1:0 }}\nroutes:\n{}",
            specs.iter().enumerate().map(|(i, s)| s.yaml(i)).collect::<String>()
        );
        let config = tokex::config::parse(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        let metrics = tokex::metrics::Metrics::new();
        let runtime = tokex::app::build_runtime(&config, &metrics, None).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for r in &reqs {
            let mut headers = HeaderMap::new();
            for t in &r.tenants {
                headers.append("x-tenant", HeaderValue::from_static(t));
            }
            let method = Method::from_bytes(r.method.as_bytes()).unwrap();
            let found = runtime.routes.find(&method, &r.path, r.host, &headers).map(|route| route.name.clone());
            let want = specs.iter().position(|s| s.matches(r)).map(|i| format!("r{i}"));
            prop_assert_eq!(found, want, "request {:?}\n{}", r, yaml);
        }
    }
}

// Authorization: Bearer

fn b64token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~+/-]{1,48}={0,3}"
}

fn auth(values: &[&[u8]]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
    }
    h
}

/// Bytes that are allowed in a header value but not in a b64token (`=`
/// is left out: it is padding at the end).
fn not_b64token() -> impl Strategy<Value = u8> {
    any::<u8>().prop_filter("a header byte outside b64token", |&b| {
        (b == b'\t' || b >= 0x20) && b != 0x7f && !(b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    })
}

proptest! {
    #![proptest_config(config())]

    /// `Bearer t`, the scheme in any case, one or more spaces before the
    /// token and optional whitespace (SP, HTAB) around the field value,
    /// yields exactly t.
    #[test]
    fn bearer_token_is_extracted_exactly(t in b64token(), flips in prop::collection::vec(any::<bool>(), 6),
                                         lead in "[ \t]{0,3}", sep in " {1,4}", trail in "[ \t]{0,3}") {
        let value = format!("{lead}{}{sep}{t}{trail}", recase("bearer", &flips));
        let headers = auth(&[value.as_bytes()]);
        prop_assert_eq!(bearer::extract(&headers).ok(), Some(t.as_str()), "{:?}", value);
    }

    /// Two `Authorization` headers are refused, whatever they hold.
    #[test]
    fn two_authorization_headers_are_refused(a in b64token(), b in b64token()) {
        let (a, b) = (format!("Bearer {a}"), format!("Bearer {b}"));
        let headers = auth(&[a.as_bytes(), b.as_bytes()]);
        prop_assert!(matches!(bearer::extract(&headers), Err(GatewayError::InvalidRequest(_))));
    }

    /// A byte outside b64token inside the token refuses it (SP and HTAB only
    /// where they cannot be taken for surrounding whitespace).
    #[test]
    fn non_b64token_bytes_are_refused(t in b64token(), bad in not_b64token(), at in any::<prop::sample::Index>()) {
        let body = t.trim_end_matches('=');
        let mut token = t.clone().into_bytes();
        let pos = if bad == b' ' || bad == b'\t' {
            // Strictly inside the token, before any padding.
            prop_assume!(body.len() >= 2);
            1 + at.index(body.len() - 1)
        } else {
            at.index(token.len() + 1)
        };
        token.insert(pos, bad);
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(&token);
        let headers = auth(&[&value]);
        prop_assert!(bearer::extract(&headers).is_err(), "{:?} accepted", String::from_utf8_lossy(&value));
    }

    /// Any bytes: no panic, and an accepted token is a non-empty b64token of
    /// at most MAX_TOKEN_BYTES taken from a `Bearer` value.
    #[test]
    fn arbitrary_authorization_never_panics(values in prop::collection::vec(
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            ("[bB][eE][aA][rR][eE][rR]", "[ \t]{0,2}", prop::collection::vec(any::<u8>(), 0..30))
                .prop_map(|(s, w, rest)| [s.into_bytes(), w.into_bytes(), rest].concat()),
        ],
        0..3,
    )) {
        let mut headers = HeaderMap::new();
        for v in &values {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.append(AUTHORIZATION, v);
            }
        }
        if let Ok(t) = bearer::extract(&headers) {
            prop_assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
            let value = headers[AUTHORIZATION].as_bytes().to_ascii_lowercase();
            let value = String::from_utf8_lossy(&value);
            prop_assert!(value.trim_start_matches([' ', '\t']).starts_with("bearer "));
            prop_assert!(!t.is_empty() && t.len() <= MAX_TOKEN_BYTES);
            let body = t.trim_end_matches('=');
            prop_assert!(!body.is_empty());
            prop_assert!(body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)));
            prop_assert!(value.contains(&t.to_ascii_lowercase()));
        }
    }
}

// Hop-by-hop headers (RFC 9110 §7.6.1)

/// Hop-by-hop by definition, plus the de facto ones (`Keep-Alive`,
/// `Proxy-Connection`) and the proxy authentication fields.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

const END_TO_END: [&str; 8] =
    ["x-a", "x-b", "x-secret", "accept", "content-type", "cookie", "x-forwarded-for", "cache-control"];

/// One item of a `Connection` list: a header name in any case (either
/// kind), `close`, junk that is not a header name, or spaces.
fn connection_item() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (select([&HOP_BY_HOP[..], &END_TO_END[..]].concat()), prop::collection::vec(any::<bool>(), 1..4))
            .prop_map(|(n, f)| recase(n, &f).into_bytes()),
        Just(b"close".to_vec()),
        Just(b"bad name".to_vec()),
        Just("caf\u{e9}".as_bytes().to_vec()),
        Just(vec![0xff, b'x']),
        Just(Vec::new()),
    ]
}

fn connection_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((connection_item(), "[ \t]{0,2}"), 1..4).prop_map(|items| {
        let mut out = Vec::new();
        for (i, (item, ws)) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(ws.as_bytes());
            out.extend_from_slice(&item);
        }
        out
    })
}

fn message_headers() -> impl Strategy<Value = HeaderMap> {
    (
        prop::collection::vec((select([&HOP_BY_HOP[1..], &END_TO_END[..]].concat()), "[a-z0-9=,; ]{0,8}"), 0..10),
        prop::collection::vec(connection_value(), 0..3),
    )
        .prop_map(|(fields, connection)| {
            let mut h = HeaderMap::new();
            for (name, value) in fields {
                h.append(HeaderName::from_static(name), HeaderValue::from_str(&value).unwrap());
            }
            for v in connection {
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    h.append(CONNECTION, v);
                }
            }
            h
        })
}

/// The names listed in the `Connection` values, lower-case and trimmed.
fn named_in_connection(h: &HeaderMap) -> Vec<String> {
    h.get_all(CONNECTION)
        .iter()
        .flat_map(|v| {
            v.as_bytes().split(|&b| b == b',').map(|t| String::from_utf8_lossy(t.trim_ascii()).to_lowercase())
        })
        .collect()
}

fn check_stripped(before: &HeaderMap, after: &HeaderMap, upgrade: Option<&HeaderValue>) -> Result<(), TestCaseError> {
    let named = named_in_connection(before);
    for (name, _) in after {
        let kept_for_upgrade = upgrade.is_some() && (name == CONNECTION || name == UPGRADE);
        if kept_for_upgrade {
            continue;
        }
        prop_assert!(!is_hop_by_hop(name), "{} kept", name);
        prop_assert!(!named.contains(&name.as_str().to_owned()), "{} named in Connection but kept", name);
    }
    for name in before.keys() {
        if is_hop_by_hop(name) || named.contains(&name.as_str().to_owned()) {
            continue;
        }
        let was: Vec<_> = before.get_all(name).iter().collect();
        let is: Vec<_> = after.get_all(name).iter().collect();
        prop_assert_eq!(was, is, "{} changed", name);
    }
    match upgrade {
        Some(u) => {
            prop_assert_eq!(after.get_all(CONNECTION).iter().collect::<Vec<_>>(), vec!["upgrade"]);
            prop_assert_eq!(after.get_all(UPGRADE).iter().collect::<Vec<_>>(), vec![u]);
        }
        None => prop_assert!(!after.contains_key(CONNECTION) && !after.contains_key(UPGRADE)),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// `is_hop_by_hop` is exactly the list above, whatever the case the name
    /// was written in.
    #[test]
    fn hop_by_hop_names(name in select([&HOP_BY_HOP[..], &END_TO_END[..]].concat()),
                        flips in prop::collection::vec(any::<bool>(), 1..4)) {
        let parsed = HeaderName::from_bytes(recase(name, &flips).as_bytes()).unwrap();
        prop_assert_eq!(is_hop_by_hop(&parsed), HOP_BY_HOP.contains(&name));
    }

    /// After stripping, no hop-by-hop header and no header named in a
    /// `Connection` value is left; every other header is kept unchanged.
    #[test]
    fn strip_removes_hop_by_hop_and_connection_named(before in message_headers()) {
        let mut after = before.clone();
        strip_hop_by_hop(&mut after, None);
        check_stripped(&before, &after, None)?;
    }

    /// The same with an upgrade: only `Connection: upgrade` and the upgrade
    /// protocol are put back.
    #[test]
    fn strip_keeps_only_the_upgrade_handshake(before in message_headers(), proto in "[a-z0-9/.]{1,12}") {
        let upgrade = HeaderValue::from_str(&proto).unwrap();
        let mut after = before.clone();
        strip_hop_by_hop(&mut after, Some(upgrade.clone()));
        check_stripped(&before, &after, Some(&upgrade))?;
    }
}

// Config interpolation

/// A piece of interpolated text and what it becomes.
#[derive(Clone, Debug)]
enum Piece {
    /// Text without `$`.
    Literal(String),
    /// `$$`: a literal `$`.
    Escape,
    /// A `$` followed by something other than `{` or `$`: kept.
    Lone(char),
    /// `${NAME}` or `${NAME:-default}` (defaults without `$` or `}`).
    Var(String, Option<String>),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => "[^$]{1,8}".prop_map(Piece::Literal),
        1 => Just(Piece::Escape),
        1 => select(vec!['a', ' ', '}', '-', '5']).prop_map(Piece::Lone),
        3 => ("[A-Z][A-Z0-9_]{0,3}|[a-z_0-9]{1,3}", prop::option::of("[^$}]{0,6}"))
            .prop_map(|(n, d)| Piece::Var(n, d)),
    ]
}

/// Values for some names (empty counts as unset); values may hold `${`,
/// which must be inserted verbatim.
fn environment() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[A-Z][A-Z0-9_]{0,3}|[a-z_0-9]{1,3}", "[^}]{0,6}|\\$\\{X\\}", 0..12)
}

/// The reference model: the output, or the first unset name without default.
fn interpolate_model(pieces: &[Piece], env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Literal(s) => out.push_str(s),
            Piece::Escape => out.push('$'),
            Piece::Lone(c) => {
                out.push('$');
                out.push(*c);
            }
            Piece::Var(name, default) => match (env.get(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(name.clone()),
            },
        }
    }
    Ok(out)
}

fn render(pieces: &[Piece]) -> String {
    let mut s = String::new();
    for p in pieces {
        match p {
            Piece::Literal(l) => s.push_str(l),
            Piece::Escape => s.push_str("$$"),
            Piece::Lone(c) => {
                s.push('$');
                s.push(*c);
            }
            Piece::Var(n, None) => s.push_str(&format!("${{{n}}}")),
            Piece::Var(n, Some(d)) => s.push_str(&format!("${{{n}:-{d}}}")),
        }
    }
    s
}

proptest! {
    #![proptest_config(config())]

    /// Text without `$` comes back unchanged, whatever the environment.
    #[test]
    fn text_without_dollar_is_unchanged(s in "[^$]{0,40}", env in environment()) {
        prop_assert_eq!(interpolate(&s, |n| env.get(n).cloned()), Ok(s.clone()));
    }

    /// Well-formed text interpolates as the model says: variables replaced
    /// by their values (not re-interpolated), defaults used when a variable
    /// is unset or empty, `$$` a `$`, and an unset variable without a
    /// default an error that names it.
    #[test]
    fn interpolation_follows_the_model(pieces in prop::collection::vec(piece(), 0..8), env in environment()) {
        let input = render(&pieces);
        let got = interpolate(&input, |n| env.get(n).cloned());
        match interpolate_model(&pieces, &env) {
            Ok(want) => prop_assert_eq!(got, Ok(want), "input {:?}", input),
            Err(name) => match got {
                Ok(out) => prop_assert!(false, "{:?} -> {:?}: {} is unset", input, out, name),
                Err(e) => prop_assert!(e.contains(&name), "{:?} does not name {}", e, name),
            },
        }
    }

    /// No `${` is left unreplaced: without `$$` escapes, and with values and
    /// defaults free of `$`, a successful result holds no `${`.
    #[test]
    fn no_unreplaced_variables(pieces in prop::collection::vec(piece(), 0..8), env in environment()) {
        prop_assume!(!pieces.iter().any(|p| matches!(p, Piece::Escape)));
        let input = render(&pieces);
        if let Ok(out) = interpolate(&input, |n| env.get(n).filter(|v| !v.contains('$')).cloned()) {
            prop_assert!(!out.contains("${"), "{:?} -> {:?}", input, out);
        }
    }

    /// Arbitrary text (unterminated and malformed `${` included) never
    /// panics; a successful result of text without `${` or `$$` is the text.
    #[test]
    fn arbitrary_text_never_panics(s in prop_oneof![
        "([^$]{0,4}(\\$|\\$\\$|\\$\\{|\\}|:-)?){0,8}",
        any::<String>(),
    ], env in environment()) {
        let got = interpolate(&s, |n| env.get(n).cloned());
        if !s.contains("${") && !s.contains("$$") {
            prop_assert_eq!(got, Ok(s.clone()));
        }
    }

    /// Malformed references are errors: unterminated, empty or invalid names.
    #[test]
    fn malformed_references_are_errors(prefix in "[^$]{0,6}", name in "[A-Z_]{0,4}[ .\\-/é][A-Z_]{0,4}") {
        let (unterminated, empty, invalid) =
            (format!("{prefix}${{X"), format!("{prefix}${{}}"), format!("{prefix}${{{name}}}"));
        prop_assert!(interpolate(&unterminated, |_| None).is_err());
        prop_assert!(interpolate(&empty, |_| Some("v".into())).is_err());
        prop_assert!(interpolate(&invalid, |_| Some("v".into())).is_err());
    }
}
