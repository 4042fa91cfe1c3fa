//! The access line (`tokex::access`), formatted straight into a reused
//! buffer — no `tracing` field visitors, no allocation per field — and
//! handed to the log buffer (`sink.rs`). Byte for byte what the `tracing`
//! formatters write for the same event, in text and in JSON (a test holds
//! the two side by side), so the format stays one contract.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::LogFormat;

/// One request, as the access line reports it. Text from a caller (method,
/// path) is clipped by the caller of [`write`].
pub struct AccessLine<'a> {
    pub client: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub latency_us: u64,
    pub upstream_us: Option<u64>,
    pub cache: &'static str,
    pub exchange_us: Option<u64>,
    /// The caller's token's fingerprint (first 4 bytes of its SHA-256).
    pub token: Option<[u8; 4]>,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
    pub evicted: bool,
    pub retried: bool,
    pub error: Option<&'a str>,
}

/// The format `init` chose: 0 text, 1 JSON.
static FORMAT: AtomicU8 = AtomicU8::new(0);

pub(super) fn set_format(format: LogFormat) {
    FORMAT.store(matches!(format, LogFormat::Json) as u8, Ordering::Relaxed);
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// The second this thread last formatted, and its RFC 3339 text.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Writes the line (when `tokex::access` is enabled: the caller checks).
pub fn write(line: &AccessLine<'_>) {
    let json = FORMAT.load(Ordering::Relaxed) == 1;
    LINE.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else { return };
        buf.clear();
        format(&mut buf, line, SystemTime::now(), json);
        super::sink::push(&buf, false);
    });
}

/// The line for `now`, in text or JSON, with its newline.
pub fn format(out: &mut Vec<u8>, l: &AccessLine<'_>, now: SystemTime, json: bool) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    if json {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(out, since);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
    } else {
        timestamp(out, since);
        out.extend_from_slice(b"  INFO tokex::access: request");
    }
    // One copy per format: no branch on the format per field.
    if json {
        fields(&mut Fields::<true> { out, num: itoa::Buffer::new() }, l);
    } else {
        fields(&mut Fields::<false> { out, num: itoa::Buffer::new() }, l);
    }
}

fn fields<const JSON: bool>(f: &mut Fields<'_, JSON>, l: &AccessLine<'_>) {
    f.raw("client", |o| ip(o, l.client));
    f.shown("method", l.method);
    f.shown("path", l.path);
    f.str("route", l.route);
    f.num("status", u64::from(l.status));
    f.num("latency_us", l.latency_us);
    if let Some(us) = l.upstream_us {
        f.num("upstream_us", us);
    }
    f.str("cache", l.cache);
    if let Some(us) = l.exchange_us {
        f.num("exchange_us", us);
    }
    f.raw("token", |o| fingerprint(o, l.token));
    f.str("request_id", l.request_id);
    if let Some(t) = l.trace_id {
        f.str("trace_id", t);
    }
    f.bool("evicted", l.evicted);
    if l.retried {
        f.bool("retried", true);
    }
    if let Some(e) = l.error {
        f.str("error", e);
    }
    f.out.extend_from_slice(if JSON { b",\"target\":\"tokex::access\"}\n" as &[u8] } else { b"\n" });
}

/// The fields of one line: ` name=value` in text, `,"name":value` in JSON,
/// each value written as that format's `tracing` formatter does.
struct Fields<'o, const JSON: bool> {
    out: &'o mut Vec<u8>,
    num: itoa::Buffer,
}

impl<const JSON: bool> Fields<'_, JSON> {
    fn name(&mut self, name: &str) {
        if JSON {
            self.out.extend_from_slice(b",\"");
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b"\":");
        } else {
            self.out.push(b' ');
            self.out.extend_from_slice(name.as_bytes());
            self.out.push(b'=');
        }
    }

    /// A string field: quoted and escaped (`{:?}` in text, JSON's rules).
    fn str(&mut self, name: &str, v: &str) {
        self.name(name);
        if JSON {
            json_str(self.out, v);
        } else {
            debug_str(self.out, v);
        }
    }

    /// A `Display` field: bare in text, an escaped string in JSON.
    fn shown(&mut self, name: &str, v: &str) {
        self.name(name);
        if JSON {
            json_str(self.out, v);
        } else {
            self.out.extend_from_slice(v.as_bytes());
        }
    }

    /// A `Display` field whose text needs no escaping (an address, a fingerprint).
    fn raw(&mut self, name: &str, write: impl FnOnce(&mut Vec<u8>)) {
        self.name(name);
        if JSON {
            self.out.push(b'"');
        }
        write(self.out);
        if JSON {
            self.out.push(b'"');
        }
    }

    fn num(&mut self, name: &str, v: u64) {
        self.name(name);
        let text = self.num.format(v);
        self.out.extend_from_slice(text.as_bytes());
    }

    fn bool(&mut self, name: &str, v: bool) {
        self.name(name);
        self.out.extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
    }
}

/// `2026-11-30T09:35:08.197492Z` (what `tracing-subscriber` writes); the
/// part up to the second is made once per second and thread.
fn timestamp(out: &mut Vec<u8>, since: std::time::Duration) {
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != secs {
            let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs));
            cell.1.clear();
            let _ = write!(cell.1, "{text}");
            // "…:SSZ": the fraction goes before the zone.
            cell.1.pop();
            cell.0 = secs;
        }
        out.extend_from_slice(cell.1.as_bytes());
    });
    let micros = since.subsec_micros();
    let _ = write!(out, ".{micros:06}Z");
}

/// An address as `Display` writes it; IPv4 without `core::fmt` (it is on
/// every request: the access line and `X-Forwarded-For`).
pub fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut num = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(num.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn fingerprint(out: &mut Vec<u8>, token: Option<[u8; 4]>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match token {
        Some(bytes) => {
            for b in bytes {
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
        }
        None => out.push(b'-'),
    }
}

/// A string field in text: quoted and escaped as `{:?}` does.
fn debug_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// A string field in JSON, escaped as `serde_json` does.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the `tracing` formatters write for the same line (the format
    /// this module must keep), timestamps aside.
    fn reference(l: &AccessLine<'_>, json: bool) -> String {
        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Capture(Arc::new(Mutex::new(Vec::new())));
        let writer = out.clone();
        let builder = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_target(true);
        let event = || {
            tracing::info!(
                target: "tokex::access",
                client = %l.client,
                method = %l.method,
                path = %l.path,
                route = l.route,
                status = l.status,
                latency_us = l.latency_us,
                upstream_us = l.upstream_us,
                cache = l.cache,
                exchange_us = l.exchange_us,
                token = %l.token.map_or("-".to_owned(), |t| t.iter().map(|b| format!("{b:02x}")).collect()),
                request_id = l.request_id,
                trace_id = l.trace_id,
                evicted = l.evicted,
                retried = l.retried.then_some(true),
                error = l.error,
                "request"
            )
        };
        if json {
            let sub = builder.json().flatten_event(true).with_current_span(false).finish();
            tracing::subscriber::with_default(sub, event);
        } else {
            let sub = builder.with_ansi(false).finish();
            tracing::subscriber::with_default(sub, event);
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    fn ours(l: &AccessLine<'_>, json: bool) -> String {
        let mut out = Vec::new();
        format(&mut out, l, SystemTime::now(), json);
        String::from_utf8(out).unwrap()
    }

    /// The line without its timestamp (the two were made at different times).
    fn untimed(line: &str, json: bool) -> String {
        if json {
            let (head, rest) = line.split_once("\",\"level\"").unwrap();
            assert!(head.starts_with("{\"timestamp\":\"") && head.ends_with('Z'), "{line}");
            rest.to_owned()
        } else {
            let (stamp, rest) = line.split_once(' ').unwrap();
            assert_eq!(stamp.len(), "2026-11-30T09:35:08.197492Z".len(), "{line}");
            assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
            rest.to_owned()
        }
    }

    #[test]
    fn lines_are_what_the_tracing_formatters_write() {
        let full = AccessLine {
            client: "10.1.2.3".parse().unwrap(),
            method: "GET",
            path: "/orders/42",
            route: "orders",
            status: 200,
            latency_us: 1163,
            upstream_us: Some(361),
            cache: "miss",
            exchange_us: Some(733),
            token: Some([0xb7, 0x6a, 0xe3, 0x4d]),
            request_id: "31277dad-d6cd-4fd0-b390-78bfb1283f57",
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            evicted: true,
            retried: true,
            error: None,
        };
        let bare = AccessLine {
            client: "::1".parse().unwrap(),
            method: "(redacted)",
            path: "/a\"b\\c/é…(+12 bytes)",
            route: "-",
            status: 404,
            latency_us: 0,
            upstream_us: None,
            cache: "-",
            exchange_us: None,
            token: None,
            request_id: "abc",
            trace_id: None,
            evicted: false,
            retried: false,
            error: Some("no_route"),
        };
        let odd = AccessLine { route: "r\"oute\u{7f}\n", request_id: "", error: Some("x\ty"), ..bare };
        for line in [&full, &bare, &odd] {
            for json in [false, true] {
                let (want, got) = (reference(line, json), ours(line, json));
                assert!(got.ends_with('\n') && got.matches('\n').count() == 1, "{got}");
                assert_eq!(untimed(&got, json), untimed(&want, json), "json: {json}");
                if json {
                    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
                    assert_eq!(v["target"], "tokex::access");
                }
            }
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let mut out = Vec::new();
        let t = UNIX_EPOCH + std::time::Duration::new(1_780_000_000, 123_456_789);
        timestamp(&mut out, t.duration_since(UNIX_EPOCH).unwrap());
        assert_eq!(out, humantime::format_rfc3339_micros(t).to_string().into_bytes());
        // The cached second is not reused for another one.
        out.clear();
        timestamp(&mut out, std::time::Duration::new(1_780_000_001, 5_000));
        assert!(out.ends_with(b":41.000005Z"), "{}", String::from_utf8_lossy(&out));
    }
}
