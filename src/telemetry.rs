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

/// Longest caller-derived text (a token's `sub`, a request path) written to
/// a log line as is; the rest is replaced by a count.
pub const MAX_LOGGED_CLAIM: usize = 256;
pub const MAX_LOGGED_PATH: usize = 1024;

/// Text from a caller, for a log field: at most `max` bytes (cut at a
/// character boundary, then `…(+N bytes)`), control characters escaped, so
/// a hostile value can neither flood the log nor forge a line of its own.
pub struct Clipped<'a>(pub &'a str, pub usize);

impl std::fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Clipped(text, max) = *self;
        let mut end = text.len().min(max);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        // Runs without control characters are written whole (usually one run).
        let body = &text[..end];
        let mut start = 0;
        for (i, c) in body.char_indices().filter(|(_, c)| c.is_control()) {
            f.write_str(&body[start..i])?;
            write!(f, "{}", c.escape_unicode())?;
            start = i + c.len_utf8();
        }
        f.write_str(&body[start..])?;
        if end < text.len() {
            write!(f, "…(+{} bytes)", text.len() - end)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_bounds_and_escapes() {
        assert_eq!(Clipped("alice", 256).to_string(), "alice");
        let long = "x".repeat(11_000);
        assert_eq!(Clipped(&long, 256).to_string(), format!("{}…(+10744 bytes)", "x".repeat(256)));
        assert_eq!(Clipped("ééé", 3).to_string(), "é…(+4 bytes)", "cut at a character boundary");
        assert_eq!(Clipped("a\nfake line\u{1b}[31m", 64).to_string(), "a\\u{a}fake line\\u{1b}[31m");
    }
}
