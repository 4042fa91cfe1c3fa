//! One client connection's life: what it is doing (fresh, reading a request
//! head, busy, idle between requests, HTTP/2), the deadlines that follow
//! from that, and the signals that end it.
//!
//! - **Silent**: no first byte within `header_read_timeout` of accept, or a
//!   request head (or the HTTP/2 preface) started and not finished within
//!   `header_read_timeout` of its first byte: closed at once.
//! - **Idle**: no request in flight for `idle_timeout` (between HTTP/1.1
//!   requests, or an HTTP/2 connection without streams): closed gracefully
//!   (HTTP/2 `GOAWAY`).
//! - **Shed**: at the connection cap, connections without a request in flight
//!   make room — idle ones (gracefully) and silent ones at least
//!   [`SHED_MIN_AGE`] old; a connection busy with a request is never shed.
//! - **Draining** (the shutdown delay): HTTP/1.1 answers carry
//!   `Connection: close`, HTTP/2 connections get `GOAWAY`, so clients move
//!   off before the listener closes. **Stopping**: every connection is shut
//!   down gracefully. **Killed** (the grace period is over): closed.
//! - **Stalled**: a write that cannot proceed for `idle_timeout`, or an
//!   answer not taken for as long (an HTTP/2 window held at zero), closes the
//!   connection: the client stopped reading.
//! - **Winding down** (after a graceful shutdown): closed after
//!   `idle_timeout` once nothing is in flight, or when nothing moved for as
//!   long; and at once when shed.
//!
//! A request is in flight from its head until its answer's body is done.
//! The request path pays an atomic increment and decrement per request and a
//! counter bump per read or write; deadlines are re-armed lazily by the
//! watchdog, which wakes at most once per `idle_timeout` on a busy connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit};

/// Silent connections younger than this are not shed: a legitimate client's
/// first bytes may still be on their way.
pub const SHED_MIN_AGE: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The timeouts a connection lives by.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// What a connection is doing, shared by its I/O, its requests and its
/// watchdog. Holds the connection's slot under the cap until the last
/// reference is gone (an upgraded tunnel keeps it).
pub struct ConnState {
    started: Instant,
    /// Requests whose handler has not returned.
    in_flight: AtomicU32,
    /// Milliseconds since `started` when the last request ended (0: none yet).
    idle_since: AtomicU64,
    /// Milliseconds since `started`, plus one, of the first byte read while
    /// no request was in flight (0: none): a request head being read.
    head_since: AtomicU64,
    /// The client sent the HTTP/2 preface.
    h2: AtomicBool,
    /// A request asked for the connection to end after it (draining, HTTP/2).
    goaway: AtomicBool,
    /// Reads and writes that moved bytes.
    io_ops: AtomicU64,
    /// Milliseconds since `started`, plus one, since writes have been
    /// blocked without progress (0: not blocked).
    write_blocked: AtomicU64,
    /// The watchdog's looks at a busy connection, counted.
    epoch: AtomicU64,
    /// Answers that handed a piece out and wait to be asked for the next
    /// (an HTTP/2 stream held at a zero window never is), by the epoch (mod
    /// 3) in which they started waiting. One that still waits two looks
    /// later has waited a whole `idle_timeout`.
    owing: [AtomicU32; 3],
    /// Wakes the watchdog for a request to end the connection (draining).
    wake: Notify,
    _slot: (OwnedSemaphorePermit, Option<OpenConnection>),
}

/// Counts a connection in `tokex_connections_open` while it lives (an
/// upgraded tunnel included).
pub struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    pub fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why the watchdog ends (or winds down) a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Nothing, or an unfinished head, within `header_read_timeout`: close now.
    Silent,
    /// No request for `idle_timeout`, or a request asked to end it: close gracefully.
    Idle,
    /// The client has not taken any of an answer for `idle_timeout`: close now.
    Stalled,
}

impl ConnState {
    pub fn new(slot: OwnedSemaphorePermit, open: Option<OpenConnection>) -> Arc<Self> {
        Arc::new(ConnState {
            started: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            goaway: AtomicBool::new(false),
            io_ops: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            owing: [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)],
            wake: Notify::new(),
            _slot: (slot, open),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// Marks a request as started; the returned guard ends it when dropped
    /// (with the answer's body, see [`RequestGuard::track`]).
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
        RequestGuard(self.clone())
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Acquire)
    }

    /// Asks the watchdog to end the connection gracefully after the current
    /// requests (HTTP/2 `GOAWAY` while draining).
    pub fn request_goaway(&self) {
        self.goaway.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// True while a request (or its answer) is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    pub fn io_ops(&self) -> u64 {
        self.io_ops.load(Ordering::Relaxed)
    }

    /// What shedding does to this connection now: `None` keeps it.
    pub fn shed(&self) -> Option<Expired> {
        if self.busy() {
            return None;
        }
        let had_request = self.idle_since.load(Ordering::Acquire) > 0;
        let head = self.head_since.load(Ordering::Acquire);
        if self.is_h2() || (had_request && head == 0) {
            return Some(Expired::Idle);
        }
        // Silent since accept, or since the first byte of an unfinished head.
        let since = head.saturating_sub(1);
        let waited = Duration::from_millis(self.now_ms().saturating_sub(since));
        (waited >= SHED_MIN_AGE).then_some(Expired::Silent)
    }

    /// The next deadline and what happens there (`None`: just look again).
    fn next(&self, t: Timeouts) -> (Instant, Option<Expired>) {
        if self.goaway.load(Ordering::Acquire) {
            return (Instant::now(), Some(Expired::Idle));
        }
        if let since @ 1.. = self.write_blocked.load(Ordering::Acquire) {
            return (self.at(since - 1) + t.idle, Some(Expired::Stalled));
        }
        if self.busy() {
            return (Instant::now() + t.idle, None);
        }
        let idle_since = self.idle_since.load(Ordering::Acquire);
        if self.is_h2() {
            return (self.at(idle_since) + t.idle, Some(Expired::Idle));
        }
        match self.head_since.load(Ordering::Acquire) {
            // A head (or the first bytes) being read.
            since @ 1.. => (self.at(since - 1) + t.header_read, Some(Expired::Silent)),
            // Nothing read yet: the first byte is due.
            0 if idle_since == 0 => (self.started + t.header_read, Some(Expired::Silent)),
            // Between requests. The next head may start any time without
            // waking the watchdog (that would cost every request a task
            // wake-up), so it looks again at least every header_read_timeout,
            // which still ends a stalled head exactly on its deadline.
            0 => {
                let idle = self.at(idle_since) + t.idle;
                let look = Instant::now() + t.header_read;
                if idle <= look {
                    (idle, Some(Expired::Idle))
                } else {
                    (look, None)
                }
            }
        }
    }

    /// Resolves when the connection should end, and why. Keep one alive
    /// for the connection's life (it counts its looks).
    pub async fn watchdog(&self, t: Timeouts) -> Expired {
        loop {
            let (deadline, _) = self.next(t);
            let timer = tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => true,
                _ = self.wake.notified() => false,
            };
            // The state may have moved the deadline since it was armed.
            match self.next(t) {
                (deadline, Some(why)) if deadline <= Instant::now() => return why,
                // An answer that has waited to be taken since two looks ago (a
                // whole `idle_timeout` at least): its client holds it back
                // (HTTP/2 flow control at zero, which no socket write shows),
                // whatever its other streams do.
                (_, None) if timer && self.busy() => {
                    let now = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                    if self.owing[slot(now + 1)].load(Ordering::Acquire) > 0 {
                        return Expired::Stalled;
                    }
                }
                _ => {}
            }
        }
    }

    /// A write made progress, or is blocked (the client is not reading).
    fn on_write(&self, result: &Poll<std::io::Result<usize>>) {
        match result {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.io_ops.fetch_add(1, Ordering::Relaxed);
                if self.write_blocked.load(Ordering::Relaxed) != 0 {
                    self.write_blocked.store(0, Ordering::Release);
                }
            }
            Poll::Pending if self.write_blocked.load(Ordering::Relaxed) == 0 => {
                self.write_blocked.store(self.now_ms() + 1, Ordering::Release);
            }
            _ => {}
        }
    }

    /// Bytes were read: spot the HTTP/2 preface, and the start of a head.
    fn on_read(&self, bytes: &[u8], preface: &mut usize) {
        self.io_ops.fetch_add(1, Ordering::Relaxed);
        if *preface < H2_PREFACE.len() {
            let want = &H2_PREFACE[*preface..];
            let n = want.len().min(bytes.len());
            if bytes[..n] == want[..n] {
                *preface += n;
                if *preface == H2_PREFACE.len() {
                    self.h2.store(true, Ordering::Release);
                    self.head_since.store(0, Ordering::Release);
                    self.idle_since.store(self.now_ms().max(1), Ordering::Release);
                    return;
                }
            } else {
                *preface = usize::MAX; // not HTTP/2: stop looking
            }
        }
        if !self.is_h2() && !self.busy() && self.head_since.load(Ordering::Acquire) == 0 {
            self.head_since.store(self.now_ms() + 1, Ordering::Release);
        }
    }
}

/// The `owing` slot of an epoch.
fn slot(epoch: u64) -> usize {
    (epoch % 3) as usize
}

/// A request in flight, until its answer has been sent (or abandoned): its
/// end makes the connection idle.
pub struct RequestGuard(Arc<ConnState>);

/// An answer's body that keeps its request in flight until it is done, so a
/// long download is neither idle nor a stalled head; it also tells the
/// connection when a piece it handed out has not been taken.
pub struct Tracked<B> {
    body: B,
    /// A piece was handed out and the next has not been asked for: the
    /// `owing` slot it is counted in.
    owes: Option<usize>,
    request: RequestGuard,
}

impl RequestGuard {
    pub fn track<B>(self, body: B) -> Tracked<B> {
        Tracked { body, owes: None, request: self }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if let Some(s) = self.owes {
            self.request.0.owing[s].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let state = &this.request.0;
        if let Some(s) = this.owes.take() {
            state.owing[s].fetch_sub(1, Ordering::AcqRel);
        }
        let result = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &result {
            if frame.is_data() {
                let s = slot(state.epoch.load(Ordering::Acquire));
                state.owing[s].fetch_add(1, Ordering::AcqRel);
                this.owes = Some(s);
            }
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.0;
        if s.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            s.idle_since.store(s.now_ms().max(1), Ordering::Release);
        }
    }
}

/// The connection's I/O, reporting what it reads to the [`ConnState`].
pub struct Watched<T> {
    io: T,
    state: Arc<ConnState>,
    /// Bytes of the HTTP/2 preface matched so far (`usize::MAX`: not HTTP/2).
    preface: usize,
}

impl<T> Watched<T> {
    pub fn new(io: T, state: Arc<ConnState>) -> Self {
        Watched { io, state, preface: 0 }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.state.on_read(read, &mut this.preface);
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.state.on_write(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.state.on_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    const T: Timeouts = Timeouts { header_read: Duration::from_millis(200), idle: Duration::from_millis(600) };

    fn state() -> Arc<ConnState> {
        ConnState::new(Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(), None)
    }

    #[tokio::test]
    async fn a_silent_connection_expires_after_the_header_timeout() {
        let s = state();
        let started = Instant::now();
        assert_eq!(s.watchdog(T).await, Expired::Silent);
        assert!(started.elapsed() >= Duration::from_millis(190));
    }

    #[tokio::test]
    async fn a_partial_head_is_bounded_from_its_first_byte() {
        let s = state();
        let mut p = 0;
        s.on_read(b"GET / HT", &mut p);
        assert_eq!(s.next(T).1, Some(Expired::Silent));
        // Half the HTTP/2 preface is a head in progress too.
        let s = state();
        let mut p = 0;
        s.on_read(&H2_PREFACE[..14], &mut p);
        assert!(!s.is_h2());
        assert_eq!(s.next(T).1, Some(Expired::Silent));
        s.on_read(&H2_PREFACE[14..], &mut p);
        assert!(s.is_h2());
        assert_eq!(s.next(T).1, Some(Expired::Idle), "a whole preface: an idle HTTP/2 connection");
    }

    #[tokio::test]
    async fn requests_make_a_connection_busy_then_idle() {
        let s = state();
        let mut p = 0;
        s.on_read(b"GET / HTTP/1.1\r\n", &mut p);
        let guard = s.begin();
        assert_eq!(s.next(T).1, None, "busy: no deadline");
        assert_eq!(s.shed(), None, "busy connections are never shed");
        drop(guard);
        assert_eq!(s.next(T).1, None, "idle: it looks again within header_read_timeout");
        let short_idle = Timeouts { header_read: Duration::from_millis(600), idle: Duration::from_millis(200) };
        assert_eq!(s.next(short_idle).1, Some(Expired::Idle));
        assert_eq!(s.shed(), Some(Expired::Idle));
        // The next request's first byte starts the header timeout again.
        s.on_read(b"G", &mut p);
        assert_eq!(s.next(T).1, Some(Expired::Silent));
    }

    #[tokio::test]
    async fn young_silent_connections_are_not_shed() {
        let s = state();
        assert_eq!(s.shed(), None);
        s.request_goaway();
        assert_eq!(s.watchdog(T).await, Expired::Idle);
    }
}

#[cfg(test)]
mod stall_tests {
    use super::*;
    use http_body::Body as _;
    use tokio::sync::Semaphore;

    /// A body with an endless supply of one-byte pieces.
    struct Endless;

    impl http_body::Body for Endless {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"x")))))
        }
    }

    fn poll_once(body: &mut Tracked<Endless>) {
        let waker = futures_util::task::noop_waker();
        let _ = Pin::new(body).poll_frame(&mut Context::from_waker(&waker));
    }

    /// Found by review: one stream that keeps being read must not keep
    /// another, held at a zero window, alive.
    #[tokio::test]
    async fn an_answer_not_taken_is_found_whatever_other_streams_do() {
        let t = Timeouts { header_read: Duration::from_millis(100), idle: Duration::from_millis(200) };
        let s = ConnState::new(Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(), None);
        let mut held = s.begin().track(Endless);
        poll_once(&mut held); // handed a piece out; never asked again
        let mut reading = s.begin().track(Endless);
        let started = Instant::now();
        let watchdog = s.watchdog(t);
        tokio::pin!(watchdog);
        let expired = loop {
            tokio::select! {
                why = &mut watchdog => break why,
                _ = tokio::time::sleep(Duration::from_millis(20)) => poll_once(&mut reading),
            }
        };
        assert_eq!(expired, Expired::Stalled);
        assert!(started.elapsed() < Duration::from_millis(700), "{:?}", started.elapsed());
        // Taken in time, nothing is stalled.
        drop(held);
        let s2 = ConnState::new(Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(), None);
        let mut only = s2.begin().track(Endless);
        let watchdog = s2.watchdog(t);
        tokio::pin!(watchdog);
        let quiet = tokio::time::timeout(Duration::from_millis(800), async {
            loop {
                tokio::select! {
                    why = &mut watchdog => return why,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => poll_once(&mut only),
                }
            }
        })
        .await;
        assert!(quiet.is_err(), "a stream being read was called stalled");
        drop(reading);
    }
}
