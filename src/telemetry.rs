//! Logging set-up: `tracing` to stderr, text or JSON, filtered by `TOKEX_LOG`.
//! Access lines use target `tokex::access`, exchange audit events
//! `tokex::audit`; neither ever carries a token, only an 8-hex fingerprint.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `filter` uses `EnvFilter` syntax, e.g.
/// `info` or `info,tokex::access=off`.
pub fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("invalid TOKEX_LOG {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(true);
    let result = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    result.map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_bounds_long_text() {
        assert_eq!(clip("alice", 256), "alice");
        let long = "x".repeat(11_000);
        assert_eq!(clip(&long, 256), format!("{}…(+10744 bytes)", "x".repeat(256)));
        assert_eq!(clip("ééé", 3), "é…(+4 bytes)", "cut at a character boundary");
    }
}
