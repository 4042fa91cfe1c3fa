//! An upgraded connection (WebSocket and the like), relayed both ways until
//! either side closes it, or until no byte has moved either way for
//! `idle_timeout`: a silent tunnel must not hold its connection slot (and
//! an upstream connection) forever.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Relays between `client` and `upstream`; returns when the tunnel ends.
pub async fn relay<A, B>(client: A, upstream: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = Arc::new(AtomicU64::new(0));
    let mut client = Counted { io: client, moved: moved.clone() };
    let mut upstream = Counted { io: upstream, moved: moved.clone() };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = &mut copy => return,
            _ = tokio::time::sleep(idle) => {
                let now = moved.load(Ordering::Relaxed);
                if now == seen {
                    return tracing::debug!(?idle, "upgraded connection closed: idle");
                }
                seen = now;
            }
        }
    }
}

/// I/O that counts the reads and writes that moved bytes.
struct Counted<T> {
    io: T,
    moved: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    fn count<R>(&self, result: &Poll<std::io::Result<R>>, moved: bool) {
        if moved && matches!(result, Poll::Ready(Ok(_))) {
            self.moved.fetch_add(1, Ordering::Relaxed);
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
