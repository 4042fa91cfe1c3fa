//! An upgraded connection (WebSocket and the like), relayed both ways until
//! either side closes it, or until no byte has moved either way for
//! `idle_timeout`: a silent tunnel must not hold its connection slot (and
//! an upstream connection) forever.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Relays between `client` and `upstream`; returns when the tunnel ends.
pub async fn relay<A, B>(client: A, upstream: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds since `start` of the last byte either way.
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Counted { io: client, start, last: last.clone() };
    let mut upstream = Counted { io: upstream, start, last: last.clone() };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let quiet_until = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            _ = &mut copy => return,
            _ = tokio::time::sleep_until(quiet_until.into()) => {
                let moved_since = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle > quiet_until;
                if !moved_since {
                    return tracing::debug!(?idle, "upgraded connection closed: idle");
                }
            }
        }
    }
}

/// I/O that notes when it last moved a byte.
struct Counted<T> {
    io: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    fn count<R>(&self, result: &Poll<std::io::Result<R>>, moved: bool) {
        if moved && matches!(result, Poll::Ready(Ok(_))) {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(ms, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        self.count(&result, buf.filled().len() > before);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(&result, matches!(result, Poll::Ready(Ok(n)) if n > 0));
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
