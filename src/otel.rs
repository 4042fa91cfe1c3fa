//! Optional OpenTelemetry trace export: a SERVER span per request and CLIENT
//! spans for its calls, sent as OTLP over HTTP with protobuf through our own
//! reqwest client (rustls with ring, webpki roots plus an optional CA file).
//!
//! Ending a span never waits for the network: it goes into a bounded queue
//! (dropped, and counted, when full). A tokio task exports the queue in
//! batches: at once when [`MAX_BATCH`] are waiting, else every [`EXPORT_DELAY`],
//! each export bounded by the configured timeout; [`Tracer::shutdown`]
//! exports what is left within that timeout. Attributes are values tokex
//! chooses; never a header value, a token or a query string.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::exchange::client::tls_config;
use crate::telemetry;

/// Spans waiting for export; past this, ended spans are dropped (and counted).
pub const MAX_QUEUE: usize = 2048;
/// Most spans in one export request.
pub const MAX_BATCH: usize = 512;
/// Longest time an ended span waits for its batch to fill before export.
pub const EXPORT_DELAY: Duration = Duration::from_secs(5);
/// Longest `url.path` attribute, in bytes.
const MAX_PATH: usize = 1024;

pub use crate::config::OtlpConfig;

/// Starts request spans and exports them in the background. Cheap to clone.
#[derive(Clone)]
pub struct Tracer {
    tracer: SdkTracer,
    worker: Arc<Worker>,
}

/// The background export task of one [`Tracer`].
struct Worker {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("timeout", &self.worker.timeout).finish_non_exhaustive()
    }
}

impl Tracer {
    /// Starts the exporter (call inside a tokio runtime). Errors are plain text naming the cause.
    pub fn start(cfg: &OtlpConfig) -> Result<Tracer, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "OTLP exporter: must be started inside a tokio runtime".to_owned())?;
        if !matches!(cfg.endpoint.scheme(), "http" | "https") {
            return Err(format!("OTLP endpoint {}: the scheme must be http or https", cfg.endpoint));
        }
        if !cfg.endpoint.username().is_empty() || cfg.endpoint.password().is_some() {
            return Err("OTLP endpoint: credentials in the URL are not supported".to_owned());
        }
        if !(0.0..=1.0).contains(&cfg.sample_ratio) {
            return Err(format!("OTLP sample ratio {} is not within 0.0..=1.0", cfg.sample_ratio));
        }
        if cfg.timeout.is_zero() {
            return Err("OTLP timeout must be more than zero".to_owned());
        }
        let tls = tls_config(cfg.ca_file.as_deref()).map_err(|e| format!("OTLP exporter: {e}"))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokex/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(http)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.endpoint.as_str())
            .with_timeout(cfg.timeout)
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let resource = Resource::builder_empty()
            .with_service_name(cfg.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        exporter.set_resource(&resource);

        let (queue, spans) = mpsc::channel(MAX_QUEUE);
        let (stop, stopped) = oneshot::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let processor = Enqueue { queue, dropped: dropped.clone() };
        let batch = Vec::with_capacity(MAX_BATCH);
        let out = Batcher { exporter, batch, timeout: cfg.timeout, failing: false, dropped };
        let task = runtime.spawn(export_loop(out, spans, stopped));
        Ok(Tracer {
            tracer: sdk_tracer(processor, cfg.sample_ratio, resource),
            worker: Arc::new(Worker {
                stop: Mutex::new(Some(stop)),
                task: Mutex::new(Some(task)),
                timeout: cfg.timeout,
            }),
        })
    }

    /// Flushes what is buffered and stops the exporter (bounded by cfg.timeout; never hangs).
    /// Spans ended afterwards are dropped. A second call returns at once.
    pub async fn shutdown(&self) {
        if let Some(stop) = lock(&self.worker.stop).take() {
            let _ = stop.send(());
        }
        let Some(mut task) = lock(&self.worker.task).take() else { return };
        if tokio::time::timeout(self.worker.timeout, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(timeout = ?self.worker.timeout, "OTLP export: the last spans were not sent in time");
        }
    }

    /// Starts the SERVER span of one request. Its parent is the W3C `traceparent`
    /// (+ `tracestate`) of `headers` when valid (then the trace id is the caller's);
    /// otherwise a new root trace. Span name: "{method} {route}" is set at end; start it as "request".
    pub fn request(&self, headers: &HeaderMap, method: &Method) -> RequestSpan {
        let parent = match remote_parent(headers) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let method = known_method(method);
        let span = self
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method.unwrap_or("_OTHER"))])
            .start_with_context(&self.tracer, &parent);
        RequestSpan(Box::new(RequestInner { cx: Context::new().with_span(span), tracer: self.tracer.clone(), method }))
    }
}

/// The SERVER span of one request; ended by [`RequestSpan::end`], or when dropped.
pub struct RequestSpan(Box<RequestInner>);

/// Boxed, for the reason given at [`ChildSpan`]: the request future carries
/// an `Option<RequestSpan>` of one pointer.
struct RequestInner {
    /// Holds the span, so that children name it as their (local) parent.
    cx: Context,
    tracer: SdkTracer,
    /// The method when it is a standard one.
    method: Option<&'static str>,
}

/// What is known of a request when its span ends.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    /// The route name, or "-".
    pub route: &'a str,
    /// The request path; anything from a `?` or `#` on is never recorded.
    pub path: &'a str,
    pub status: u16,
    pub client: IpAddr,
    /// `Some(true)`: the exchanged token came from the cache; `Some(false)`: it did not.
    pub cache: Option<bool>,
    pub request_id: &'a str,
}

impl RequestSpan {
    /// The trace id as 32 lowercase hex chars.
    pub fn trace_id(&self) -> String {
        self.0.cx.span().span_context().trace_id().to_string()
    }

    /// A CLIENT child span, e.g. "token exchange" or "upstream".
    pub fn child(&self, name: &'static str) -> ChildSpan {
        let span =
            self.0.tracer.span_builder(name).with_kind(SpanKind::Client).start_with_context(&self.0.tracer, &self.0.cx);
        ChildSpan { span: Box::new(span) }
    }

    /// Ends the span. Attributes set: http.request.method, url.path (never the query), http.route
    /// (the route name or "-"), http.response.status_code, client.address, tokex.cache ("hit"/"miss"/absent),
    /// tokex.request_id; span status Error for 5xx (OTel HTTP server semantic conventions).
    pub fn end(self, attrs: RequestAttrs<'_>) {
        let span = self.0.cx.span();
        if !span.is_recording() {
            return; // not sampled: nothing to record (dropping it is ending it)
        }
        let route = if attrs.route.is_empty() { "-" } else { attrs.route };
        // HTTP server semantic conventions: "HTTP" stands for a method that is not a standard one.
        span.update_name(format!("{} {route}", self.0.method.unwrap_or("HTTP")));
        let path = attrs.path.split(['?', '#']).next().unwrap_or_default();
        span.set_attributes([
            KeyValue::new("url.path", clip(path, MAX_PATH).to_owned()),
            KeyValue::new("http.route", route.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(attrs.status)),
            KeyValue::new("client.address", attrs.client.to_canonical().to_string()),
            KeyValue::new("tokex.request_id", attrs.request_id.to_owned()),
        ]);
        if let Some(hit) = attrs.cache {
            span.set_attribute(KeyValue::new("tokex.cache", if hit { "hit" } else { "miss" }));
        }
        if attrs.status >= 500 {
            span.set_attribute(KeyValue::new("error.type", attrs.status.to_string()));
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// A CLIENT span (a call made for a request); ended by [`ChildSpan::end`], or when dropped.
pub struct ChildSpan {
    /// Boxed: a span is 384 bytes aligned to 16, and a request future that
    /// holds one across an await (even as `None`, tracing off) is aligned to
    /// 16 too, which made hyper copy the whole ~18 KiB future three times
    /// per request (+56,000 instructions a request, callgrind).
    span: Box<opentelemetry_sdk::trace::Span>,
}

impl ChildSpan {
    /// The `traceparent` value to send to the backend: same trace id, this span as parent, sampled flag kept.
    pub fn traceparent(&self) -> HeaderValue {
        let sc = self.span.span_context();
        let flags = if sc.is_sampled() { "01" } else { "00" };
        let value = format!("00-{}-{}-{flags}", sc.trace_id(), sc.span_id());
        // Only hex digits and dashes: always a valid header value.
        HeaderValue::from_str(&value)
            .unwrap_or_else(|_| HeaderValue::from_static("00-00000000000000000000000000000000-0000000000000000-00"))
    }

    /// Adds a string attribute (e.g. "tokex.as.server", "server.address", "tokex.outcome").
    pub fn set(&mut self, key: &'static str, value: String) {
        self.span.set_attribute(KeyValue::new(key, value));
    }

    /// Ends it; `error`: a short reason (span status Error with that description) or None (Ok/unset).
    pub fn end(mut self, status: Option<u16>, error: Option<&'static str>) {
        if let Some(status) = status {
            self.span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        }
        if let Some(reason) = error {
            self.span.set_attribute(KeyValue::new("error.type", reason));
            self.span.set_status(Status::error(reason));
        }
        self.span.end();
    }
}

// ---------------------------------------------------------------------------
// Parenting

/// The caller's span from its valid W3C `traceparent` ([`telemetry::traceparent`]).
/// The caller's `tracestate` is not taken: it is text from the request, and
/// a request refused for carrying its token there must not export it. (The
/// header itself still reaches the backend, checked like every header.)
fn remote_parent(headers: &HeaderMap) -> Option<SpanContext> {
    let tp = telemetry::traceparent(headers)?;
    let trace_id = u128::from_str_radix(tp.trace_id, 16).ok()?;
    let span_id = u64::from_str_radix(tp.parent_id, 16).ok()?;
    let flags = u8::from_str_radix(tp.flags, 16).ok()?;
    let sampled = if flags & 1 == 1 { TraceFlags::SAMPLED } else { TraceFlags::default() };
    let sc = SpanContext::new(TraceId::from(trace_id), SpanId::from(span_id), sampled, true, TraceState::NONE);
    sc.is_valid().then_some(sc)
}

/// The method's name when it is one of the standard ones (semantic conventions).
fn known_method(method: &Method) -> Option<&'static str> {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    KNOWN.into_iter().find(|m| *m == method.as_str())
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Batching and export

/// A tracer whose ended spans go to `processor`; root spans sampled at
/// `ratio`, children following their parent.
fn sdk_tracer(processor: impl SpanProcessor + 'static, ratio: f64, resource: Resource) -> SdkTracer {
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(resource)
        .with_span_processor(processor)
        .build();
    let scope = InstrumentationScope::builder("tokex").with_version(env!("CARGO_PKG_VERSION")).build();
    provider.tracer_with_scope(scope)
}

/// The span processor: puts each ended, sampled span in the export queue
/// without waiting; a full queue drops the span.
#[derive(Debug)]
struct Enqueue {
    queue: mpsc::Sender<SpanData>,
    dropped: Arc<AtomicU64>,
}

impl SpanProcessor for Enqueue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() && self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Flushing is [`Tracer::shutdown`]'s work: done here it would block.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    /// The export task stops with [`Tracer::shutdown`], or by itself once
    /// every span and tracer is gone; nothing to wait for here.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The background task: exports full batches at once, others after
/// [`EXPORT_DELAY`]; on `stop`, exports what is queued and ends. When the
/// `stop` sender is dropped without a send, it goes on until the queue closes.
async fn export_loop(mut out: Batcher, mut spans: mpsc::Receiver<SpanData>, mut stop: oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EXPORT_DELAY, EXPORT_DELAY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop_armed = true;
    loop {
        tokio::select! {
            biased;
            asked = &mut stop, if stop_armed => match asked {
                Ok(()) => break,
                Err(_) => stop_armed = false,
            },
            _ = tick.tick() => {
                out.flush().await;
                out.report_dropped();
            }
            span = spans.recv() => match span {
                Some(span) => out.push(span).await,
                None => break,
            },
        }
    }
    spans.close();
    while let Ok(span) = spans.try_recv() {
        out.push(span).await;
    }
    out.flush().await;
    out.report_dropped();
    let _ = out.exporter.shutdown();
}

/// The spans waiting for export, and the exporter. Logs when export starts
/// failing and when it works again, not each failure.
struct Batcher {
    exporter: opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    timeout: Duration,
    failing: bool,
    /// Spans the full queue refused, counted by [`Enqueue`].
    dropped: Arc<AtomicU64>,
}

impl Batcher {
    async fn push(&mut self, span: SpanData) {
        self.batch.push(span);
        if self.batch.len() >= MAX_BATCH {
            self.flush().await;
        }
    }

    fn report_dropped(&self) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(spans = dropped, "OTLP export: spans dropped, the export queue was full");
        }
    }

    async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let (spans, timeout) = (self.batch.len(), self.timeout);
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(MAX_BATCH));
        let result = match tokio::time::timeout(timeout, self.exporter.export(batch)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let failed = result.is_err();
        match result {
            Ok(()) if self.failing => tracing::info!("OTLP export works again"),
            Err(error) if !self.failing => {
                tracing::warn!(%error, spans, "OTLP export failed; spans are lost until the collector answers")
            }
            _ => {}
        }
        self.failing = failed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    /// Keeps the sampled spans the tracer ends.
    #[derive(Debug, Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Recorder {
        fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}
        fn on_end(&self, span: SpanData) {
            lock(&self.0).extend(span.span_context.is_sampled().then_some(span));
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn tracer(ratio: f64) -> (Tracer, Recorder) {
        let rec = Recorder::default();
        let tracer = sdk_tracer(rec.clone(), ratio, Resource::builder_empty().build());
        let timeout = Duration::from_secs(1);
        (Tracer { tracer, worker: Arc::new(Worker { stop: Mutex::new(None), task: Mutex::new(None), timeout }) }, rec)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v.as_bytes()).unwrap());
        }
        h
    }

    fn caller(flags: &str) -> HeaderMap {
        headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-{flags}"))])
    }

    fn end(span: RequestSpan) {
        let client = IpAddr::from([127, 0, 0, 1]);
        span.end(RequestAttrs { route: "r", path: "/", status: 200, client, cache: None, request_id: "1" });
    }

    #[test]
    fn a_valid_traceparent_is_the_parent() {
        let (t, rec) = tracer(1.0);
        for tp in [format!("00-{TRACE}-{SPAN}-01"), format!("cc-{TRACE}-{SPAN}-03-later-fields")] {
            let span = t.request(&headers(&[("traceparent", &tp)]), &Method::GET);
            assert_eq!(span.trace_id(), TRACE);
            end(span);
            let s = rec.0.lock().unwrap().pop().unwrap();
            assert_eq!((s.parent_span_id.to_string().as_str(), s.parent_span_is_remote), (SPAN, true));
            assert_eq!(s.span_kind, SpanKind::Server);
        }
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_root() {
        let (t, rec) = tracer(1.0);
        let (zeros32, zeros16, upper) = ("0".repeat(32), "0".repeat(16), TRACE.to_uppercase());
        let bad = [
            "garbage".to_owned(),
            String::new(),
            "00-abc-def-01".to_owned(),
            format!("00-{zeros32}-{SPAN}-01"),
            format!("00-{TRACE}-{zeros16}-01"),
            format!("00-{upper}-{SPAN}-01"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00-{TRACE}-{SPAN}-0x"),
            format!("00_{TRACE}_{SPAN}_01"),
            format!("00-+{}-{SPAN}-01", &TRACE[1..]),
            format!("cc-{TRACE}-{SPAN}-01x"),
            format!("00-{TRACE}-{SPAN}-01\u{e9}"),
        ];
        for tp in &bad {
            let span = t.request(&headers(&[("traceparent", tp)]), &Method::GET);
            let id = span.trace_id();
            assert!(id != TRACE && id != zeros32 && id.len() == 32, "{tp:?}");
            end(span);
            assert_eq!(rec.0.lock().unwrap().pop().unwrap().parent_span_id, SpanId::INVALID, "{tp:?}");
        }
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let two = headers(&[("traceparent", &tp), ("traceparent", &tp)]);
        assert_ne!(t.request(&two, &Method::GET).trace_id(), TRACE);
    }

    #[test]
    fn the_callers_tracestate_is_never_exported() {
        let (t, rec) = tracer(1.0);
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let cases = [
            vec![("traceparent", tp.as_str()), ("tracestate", "a=1, b@v=2"), ("tracestate", "c=3")],
            vec![("traceparent", &tp), ("tracestate", "vendor=SECRET-TOKEN-VALUE")],
            vec![("tracestate", "a=1")],
        ];
        for pairs in cases {
            end(t.request(&headers(&pairs), &Method::GET));
            let span = rec.0.lock().unwrap().pop().unwrap();
            assert_eq!(span.span_context.trace_state().header(), "", "{pairs:?}");
        }
    }

    #[test]
    fn the_child_traceparent_names_the_child_and_keeps_the_flag() {
        let (t, rec) = tracer(1.0);
        for flags in ["01", "00"] {
            let req = t.request(&caller(flags), &Method::POST);
            let child = req.child("upstream");
            let tp = child.traceparent().to_str().unwrap().to_owned();
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 32, 16, 2], "{tp}");
            assert!(tp.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{tp}");
            assert_eq!([parts[0], parts[1], parts[3]], ["00", TRACE, flags]);
            assert_eq!(parts[2], child.span.span_context().span_id().to_string());
            child.end(Some(200), None);
            end(req);
        }
        let spans = rec.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 2, "the unsampled caller's spans are not recorded");
        let (c, r) = (&spans[0], &spans[1]);
        assert_eq!((c.parent_span_id, c.parent_span_is_remote), (r.span_context.span_id(), false));
        assert_eq!((c.span_kind.clone(), c.name.as_ref()), (SpanKind::Client, "upstream"));
    }

    #[test]
    fn ratio_zero_drops_roots_but_follows_a_sampled_parent() {
        let (t, rec) = tracer(0.0);
        for _ in 0..50 {
            let req = t.request(&HeaderMap::new(), &Method::GET);
            assert!(req.trace_id().len() == 32 && req.trace_id() != "0".repeat(32));
            let child = req.child("upstream");
            assert!(child.traceparent().to_str().unwrap().ends_with("-00"));
            child.end(None, None);
            end(req);
        }
        assert!(rec.0.lock().unwrap().is_empty());
        let req = t.request(&caller("01"), &Method::GET);
        req.child("upstream").end(Some(204), None);
        end(req);
        assert_eq!(rec.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn ratio_one_follows_an_unsampled_parent() {
        let (t, rec) = tracer(1.0);
        end(t.request(&caller("00"), &Method::GET));
        end(t.request(&HeaderMap::new(), &Method::GET));
        assert_eq!(rec.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn dropped_spans_are_still_ended() {
        let (t, rec) = tracer(1.0);
        let req = t.request(&caller("01"), &Method::GET);
        drop(req.child("upstream"));
        drop(req);
        let names: Vec<String> = rec.0.lock().unwrap().iter().map(|s| s.name.to_string()).collect();
        assert_eq!(names, ["upstream", "request"]);
    }
}
