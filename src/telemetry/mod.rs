//! Logging set-up: `tracing` to stderr through a batching buffer (`sink`),
//! text or JSON, filtered by `TOKEX_LOG`; the access line's own formatter
//! (`access`).
//! Access lines use target `tokex::access`, exchange audit events
//! `tokex::audit`; neither ever carries a token, only an 8-hex fingerprint.
//! Also what logs and traces share: clipping caller text, error chains, and
//! the W3C `traceparent` parser.

use http::{HeaderMap, HeaderName};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub mod access;
pub mod sink;

/// Installs the global subscriber. `filter` uses `EnvFilter` syntax, e.g.
/// `info` or `info,tokex::access=off`. Lines are buffered (`sink.rs`): call
/// [`flush`] before the process exits.
pub fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("invalid TOKEX_LOG {filter:?}: {e}"))?;
    sink::start().map_err(|e| format!("cannot start the log writer: {e}"))?;
    access::set_format(format);
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(sink::Writer::new(false)).with_target(true);
    let result = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Writes the log lines still buffered (before the process exits).
pub fn flush() {
    sink::flush();
}

/// Longest caller-derived text (a token's `sub`, a request path, an
/// extension method) written to a log line as is; the rest is replaced by a
/// count.
pub const MAX_LOGGED_CLAIM: usize = 256;
pub const MAX_LOGGED_PATH: usize = 1024;
pub const MAX_LOGGED_METHOD: usize = 16;

/// Text from a caller, for a log field: at most `max` bytes (cut at a
/// character boundary, then `…(+N bytes)`), so a hostile value cannot flood
/// the log. Pass it as a string field: the text format quotes and escapes
/// it (control, bidi and line-separator characters included), JSON escapes
/// it, so it cannot forge a field or a line either. Borrowed when short.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…(+{} bytes)", &text[..end], text.len() - end))
}

/// Shows a value, or `-` when there is none (log fields), without
/// allocating.
pub struct OrDash<T>(pub Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// An error and its sources, `: `-joined, for logs. Callers pass errors whose
/// text names URLs and causes, never request bodies or tokens.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// W3C Trace Context: the `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The parts of the one valid `traceparent` (W3C Trace Context §3.2), as
/// lowercase hex text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent<'a> {
    pub trace_id: &'a str,
    pub parent_id: &'a str,
    pub flags: &'a str,
}

/// The caller's `traceparent` when there is exactly one and it is valid
/// (`VERSION-TRACEID-PARENTID-FLAGS`): lowercase hex, version not `ff`, ids
/// not all zeros; `00` exactly 55 characters, a later version at least
/// that, with `-` after the flags. Used by the access line and by tracing.
pub fn traceparent(headers: &HeaderMap) -> Option<TraceParent<'_>> {
    let mut all = headers.get_all(TRACEPARENT).iter();
    let (Some(v), None) = (all.next(), all.next()) else { return None };
    let b = v.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) = (&b[..2], &b[3..35], &b[36..52], &b[53..55]);
    let ok = hex(version)
        && version != b"ff"
        && hex(trace)
        && !zero(trace)
        && hex(parent)
        && !zero(parent)
        && hex(flags)
        && match version {
            b"00" => b.len() == 55,
            _ => b.len() == 55 || b[55] == b'-',
        };
    // Checked ASCII above.
    let text = |s| std::str::from_utf8(s).ok();
    ok.then(|| Some(TraceParent { trace_id: text(trace)?, parent_id: text(parent)?, flags: text(flags)? })).flatten()
}

/// The trace id (32 lowercase hex) of the caller's valid `traceparent`.
pub fn trace_id(headers: &HeaderMap) -> Option<&str> {
    traceparent(headers).map(|t| t.trace_id)
}

/// A header map with `values` under `name` (tests of header parsing).
#[cfg(test)]
pub(crate) fn headers_with(name: &HeaderName, values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(name.clone(), http::HeaderValue::from_str(v).unwrap());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::headers_with as with;
    use super::*;

    #[test]
    fn traceparent_gives_the_trace_id_only_when_valid() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let good = format!("00-{t}-00f067aa0ba902b7-01");
        assert_eq!(trace_id(&with(&TRACEPARENT, &[&good])), Some(t));
        assert_eq!(trace_id(&with(&TRACEPARENT, &[&format!("01-{t}-00f067aa0ba902b7-01-what")])), Some(t));
        for bad in [
            format!("ff-{t}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{t}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", t.to_uppercase()),
            format!("00-{t}-00f067aa0ba902b7-01-extra"),
            format!("01-{t}-00f067aa0ba902b7-01x"),
            "00-abc".to_owned(),
            String::new(),
        ] {
            assert_eq!(trace_id(&with(&TRACEPARENT, &[&bad])), None, "{bad}");
        }
        assert_eq!(trace_id(&with(&TRACEPARENT, &[&good, &good])), None, "two: ignored");
    }

    #[test]
    fn clip_bounds_long_text() {
        assert_eq!(clip("alice", 256), "alice");
        let long = "x".repeat(11_000);
        assert_eq!(clip(&long, 256), format!("{}…(+10744 bytes)", "x".repeat(256)));
        assert_eq!(clip("ééé", 3), "é…(+4 bytes)", "cut at a character boundary");
    }
}
