//! Accepting connections: HTTP/1.1 and h2c (prior knowledge) on one port via
//! hyper-util's auto builder (h2 by ALPN with TLS), with upgrades; a cap on
//! open connections (beyond it, new ones wait in the kernel's backlog while
//! connections without a request in flight make room); deadlines for silent
//! and idle connections (`conn.rs`); and the shutdown phases: draining
//! (clients are told to move off), stopping (the listener closes, requests
//! finish within the grace period), then whatever is left is closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::conn::{ConnState, Expired, OpenConnection, Timeouts, Watched};
use super::reload::FileBacked;
use super::workers::Workers;

/// HTTP/2 streams a client may reset before the server has seen them
/// (the "rapid reset" flood, CVE-2023-44487), per connection; more closes it.
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// HTTP/2 streams the server may reset because of the client's protocol
/// errors, per connection; more closes it with `GOAWAY` (CVE-2024-27316 class).
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// HTTP/1.1 header fields in a request head at most.
pub const H1_MAX_HEADERS: usize = 200;

/// What a listener serves with besides its limits: TLS (re-read when its
/// files change) and, for the proxy listener, connection metrics.
pub struct Listening {
    pub tls: Option<Arc<FileBacked<tokio_rustls::TlsAcceptor>>>,
    /// `tokex_connections_open`, `tokex_connections_total`.
    pub connections: Option<(prometheus_client::metrics::gauge::Gauge, prometheus_client::metrics::counter::Counter)>,
    /// The runtimes that serve its connections (`runtime.workers` above
    /// one); none: the accept loop's own.
    pub workers: Option<Arc<Workers>>,
}

impl Listening {
    pub fn plain() -> Self {
        Listening { tls: None, connections: None, workers: None }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time to the first byte of a connection (or of a request head after
    /// it started), and to the end of a head; also bounds the TLS handshake.
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// A connection without a request in flight this long is closed.
    pub idle_timeout: Duration,
    /// Open connections (upgraded tunnels included) at most.
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
}

impl Limits {
    /// For the admin listener and the built-in development servers.
    pub fn internal(max_header_bytes: usize) -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes,
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            http2_max_concurrent_streams: 128,
        }
    }
}

/// Where a listener is in its life. `Serving` → `Draining` (SIGTERM: still
/// accepting, clients told to move off) → `Stopping` (listener closed,
/// in-flight requests finish within the grace period).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Draining,
    Stopping,
}

/// Something that answers requests: the gateway, or the admin endpoints.
pub trait Handler: Send + Sync + 'static {
    /// The answers' body: [`super::Body`] but for the gRPC check listener.
    type Body: http_body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static;

    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// Descriptors kept for the authorization servers, JWKS, files and logs.
const RESERVED_FDS: usize = 64;

/// What the open-files limit allows: the connection cap of each of
/// `listeners` (`max_connections` lowered, with a warning, to their share
/// of half the descriptors left after [`RESERVED_FDS`]: each client
/// connection may need an upstream one), and
/// how many requests may be at upstreams at once (the descriptors the client
/// connections leave: HTTP/2 puts many requests on one client connection,
/// each of which may need an upstream connection). No bound on the latter
/// when the limit is unknown.
pub fn fd_budget(max_connections: usize, listeners: usize) -> (usize, Option<usize>) {
    let Some(limit) = open_files_limit() else { return (max_connections, None) };
    // Each listener has its own cap; together they stay within the limit.
    let allowed = (limit.saturating_sub(RESERVED_FDS) / 2 / listeners.max(1)).max(1);
    if max_connections > allowed {
        tracing::warn!(
            max_connections,
            open_files_limit = limit,
            using = allowed,
            "the connection cap (listen.max_connections, or its default) is more than the open-files limit allows \
             each listener; raise the limit (ulimit -n) to use it"
        );
    }
    let cap = max_connections.min(allowed);
    let clients = cap.saturating_mul(listeners.max(1));
    (cap, Some(limit.saturating_sub(RESERVED_FDS).saturating_sub(clients).max(16)))
}

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits` (Linux).
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files            1024                 1048576              files"
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// What every connection of one listener shares.
struct Shared<H> {
    handler: Arc<H>,
    builder: auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    listening: Listening,
    /// Answers carry `Connection: close` (HTTP/1.1) or end with `GOAWAY`.
    draining: AtomicBool,
    /// The listener's phase, for connections to follow.
    phase: watch::Receiver<Phase>,
    /// Notified at the cap: connections without a request in flight make room.
    shed: Notify,
    /// Set once the grace period is over: remaining connections close now.
    killed: watch::Sender<bool>,
}

/// How often the accept loop, waiting at the cap, asks for room again.
const SHED_EVERY: Duration = Duration::from_millis(250);

/// Serves `listener` through its phases; returns once it has stopped and
/// its connections have finished (or `grace` has passed).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    listening: Listening,
    limits: Limits,
    handler: Arc<H>,
    mut phase: watch::Receiver<Phase>,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The head timeout is ours (conn.rs): hyper's would also end idle
        // keep-alive connections after header_read_timeout.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(H1_MAX_HEADERS)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let shared = Arc::new(Shared {
        handler,
        builder,
        timeouts: Timeouts { header_read: limits.header_read_timeout, idle: limits.idle_timeout },
        listening,
        draining: AtomicBool::new(*phase.borrow() != Phase::Serving),
        phase: phase.clone(),
        shed: Notify::new(),
        killed: watch::channel(false).0,
    });
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    'accept: loop {
        // A slot first: at the cap, new connections wait in the backlog
        // while connections without a request in flight make room.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(max = limits.max_connections, "connection cap reached: shedding idle connections");
                loop {
                    shared.shed.notify_waiters();
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => match slot {
                            Ok(slot) => break slot,
                            Err(_) => break 'accept,
                        },
                        _ = tokio::time::sleep(SHED_EVERY) => {}
                        stop = next_phase(&mut phase, &shared) => if stop { break 'accept },
                    }
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: make room and back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed; shedding idle connections");
                    shared.shed.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            stop = next_phase(&mut phase, &shared) => if stop { break } else { continue },
        };
        let _ = stream.set_nodelay(true);
        match &shared.listening.workers {
            None => drop(tokio::spawn(connection(shared.clone(), stream, peer, slot))),
            // Moved to the worker's own event loop (once per connection).
            Some(workers) => match stream.into_std() {
                Ok(stream) => {
                    let shared = shared.clone();
                    workers.spawn(async move {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => connection(shared, stream, peer, slot).await,
                            Err(e) => tracing::warn!(%peer, error = %e, "cannot hand the connection to a worker"),
                        }
                    });
                }
                Err(e) => tracing::warn!(%peer, error = %e, "cannot hand the connection to a worker"),
            },
        }
    }
    drop(listener);
    // The drain: connections (upgraded tunnels too: they hold their slot)
    // finish what they are doing, having been told to stop, bounded by the
    // grace period; then the rest are closed. Every slot back means done.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(grace, slots.acquire_many(all)).await;
    match drained {
        Ok(_) => tracing::debug!("all connections drained"),
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "drain grace period over; closing remaining connections"
            );
            let _ = shared.killed.send(true);
        }
    }
}

/// Waits for the listener's next phase; true once it must stop accepting.
async fn next_phase<H>(phase: &mut watch::Receiver<Phase>, shared: &Shared<H>) -> bool {
    if phase.changed().await.is_err() {
        return true; // the owner is gone
    }
    let now = *phase.borrow_and_update();
    if now != Phase::Serving {
        shared.draining.store(true, Ordering::Release);
    }
    now == Phase::Stopping
}

/// One connection: the TLS handshake (bounded), then HTTP until it ends.
async fn connection<H: Handler>(
    shared: Arc<Shared<H>>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
) {
    let open = shared.listening.connections.as_ref().map(|(open, total)| {
        total.inc();
        OpenConnection::new(open.clone())
    });
    let state = ConnState::new(slot, open);
    // The certificate of the moment: a rotation applies to new handshakes.
    match shared.listening.tls.as_ref().map(|t| t.get()) {
        None => serve_http(&shared, stream, peer, state).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(shared.timeouts.header_read, acceptor.accept(stream));
            let mut killed = shared.killed.subscribe();
            // A handshake that has not finished is a silent connection: shed
            // at the cap like one.
            let shed = async {
                loop {
                    shared.shed.notified().await;
                    if state.shed().is_some() {
                        return;
                    }
                }
            };
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => Some(s),
                    Ok(Err(e)) => { tracing::debug!(%peer, error = %e, "TLS handshake failed"); None }
                    Err(_) => { tracing::debug!(%peer, "TLS handshake timed out"); None }
                },
                _ = killed.wait_for(|k| *k) => None,
                _ = shed => { tracing::debug!(%peer, "TLS handshake shed at the cap"); None }
            };
            if let Some(stream) = stream {
                serve_http(&shared, stream, peer, state).await;
            }
        }
    }
}

async fn serve_http<H, I>(shared: &Arc<Shared<H>>, io: I, peer: SocketAddr, state: Arc<ConnState>)
where
    H: Handler,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let (shared, state) = (shared.clone(), state.clone());
        service_fn(move |req: Request<Incoming>| {
            let (shared, state) = (shared.clone(), state.clone());
            async move {
                let version = req.version();
                let request = state.begin();
                let mut resp = shared.handler.handle(req, peer).await;
                if shared.draining.load(Ordering::Acquire) {
                    if version == Version::HTTP_2 {
                        state.request_goaway();
                    } else if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                Ok::<_, Infallible>(resp.map(|body| request.track(body)))
            }
        })
    };
    let conn = shared.builder.serve_connection_with_upgrades(TokioIo::new(Watched::new(io, state.clone())), svc);
    let mut conn = std::pin::pin!(conn.into_owned());
    // The watching runs in a task of its own, so serving pays nothing for it.
    let (tell, mut told) = mpsc::channel(2);
    tokio::spawn(supervise(shared.clone(), state, peer, tell));
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection closed with an error");
                }
                return;
            }
            verdict = told.recv() => match verdict {
                // HTTP/2 `GOAWAY`; HTTP/1.1 closes once the current answer is sent.
                Some(Verdict::Graceful) => conn.as_mut().graceful_shutdown(),
                Some(Verdict::Close) | None => return,
            },
        }
    }
}

/// What a connection's supervisor tells the task that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Graceful,
    Close,
}

/// Watches one connection: its deadlines, shedding at the cap, the
/// listener's phase and the end of the grace period. Ends with it.
async fn supervise<H>(shared: Arc<Shared<H>>, state: Arc<ConnState>, peer: SocketAddr, tell: mpsc::Sender<Verdict>) {
    let mut phase = shared.phase.clone();
    let mut killed = shared.killed.subscribe();
    let t = shared.timeouts;
    // One watchdog for the connection's life: shed notifications and phase
    // changes must not restart its clock.
    let watchdog = state.watchdog(t);
    tokio::pin!(watchdog);
    // After a graceful shutdown: when to look again, and the I/O seen then.
    let mut winding_down: Option<(tokio::time::Instant, u64)> = None;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let verdict = tokio::select! {
            _ = tell.closed() => return,
            expired = &mut watchdog, if winding_down.is_none() => match expired {
                Expired::Silent => {
                    tracing::debug!(%peer, "connection closed: nothing received in time");
                    Verdict::Close
                }
                Expired::Stalled => {
                    tracing::debug!(%peer, "connection closed: the client stopped reading");
                    Verdict::Close
                }
                Expired::Idle => Verdict::Graceful,
            },
            _ = tokio::time::sleep_until(winding_down.map_or(far, |(at, _)| at)), if winding_down.is_some() => {
                let ops = state.io_ops();
                // Nothing left to finish, or nothing moving: it has had its time.
                if state.busy() && winding_down.is_some_and(|(_, seen)| seen != ops) {
                    winding_down = Some((tokio::time::Instant::now() + t.idle, ops));
                    continue;
                }
                tracing::debug!(%peer, "connection closed after its graceful shutdown");
                Verdict::Close
            }
            _ = shared.shed.notified() => match (winding_down, state.shed()) {
                (Some(_), _) if !state.busy() => Verdict::Close,
                (Some(_), _) | (None, None) => continue,
                (None, Some(Expired::Silent | Expired::Stalled)) => {
                    tracing::debug!(%peer, "connection shed at the cap");
                    Verdict::Close
                }
                (None, Some(Expired::Idle)) => {
                    tracing::debug!(%peer, "idle connection shed at the cap");
                    Verdict::Graceful
                }
            },
            changed = phase.changed(), if winding_down.is_none() => {
                let now = if changed.is_err() { Phase::Stopping } else { *phase.borrow_and_update() };
                match now {
                    Phase::Serving => continue,
                    // HTTP/1.1 answers say `Connection: close` from now on.
                    Phase::Draining if !state.is_h2() => continue,
                    Phase::Draining | Phase::Stopping => Verdict::Graceful,
                }
            },
            _ = killed.wait_for(|k| *k) => Verdict::Close,
        };
        if tell.send(verdict).await.is_err() || verdict == Verdict::Close {
            return;
        }
        winding_down = Some((tokio::time::Instant::now() + t.idle, state.io_ops()));
    }
}
