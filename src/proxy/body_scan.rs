//! The request body as forwarded. On every route, trailers lose the fields
//! the head loses, and a body longer than the route's `max_body_bytes`
//! stops with an error as the byte past the limit arrives (the forwarder
//! answers `413`); nothing is buffered to count it. On exchange routes the body is scanned for the caller's
//! token as it streams (`token_scan.rs`: raw, and percent-decoded for a form
//! body, across chunk boundaries), and trailers too. Bytes that could still
//! be the beginning of the token are held back until the next chunk shows
//! they are not, so when the token shows up none of it has left: the body
//! stops with an error, the backend sees an aborted request, and the
//! forwarder answers `400`. A short possible beginning (less than half the
//! token: harmless alone, the rest of the token carries its secret) goes
//! anyway after [`HOLD_AT_MOST`] without more data, so an interactive
//! stream never waits on a guess; a longer one waits for the next chunk.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::HeaderName as Name;

/// The caller's DPoP proof (RFC 9449) is for tokex, in a trailer too.
const DPOP: Name = Name::from_static(crate::dpop::HEADER);
use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::credentials::{header_holds, MIN_SCANNED};
use super::token_scan::{Step, TokenScan};

/// Longest a short possible beginning of the token is held back without
/// more data.
pub const HOLD_AT_MOST: Duration = Duration::from_millis(200);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Guarded<B = Incoming> {
    inner: B,
    /// None for a body that has already ended (a GET): nothing to do.
    guard: Option<Box<Guard>>,
}

struct Guard {
    removed: Arc<[HeaderName]>,
    scan: Option<Scan>,
    limit: Option<Limit>,
    /// Frames ready to go before the inner body is polled again.
    queued: VecDeque<Frame<Bytes>>,
    ended: bool,
}

/// `max_body_bytes`: bytes allowed, bytes seen, and the flag set when the
/// body went past the limit.
struct Limit {
    max: u64,
    seen: u64,
    over: Arc<AtomicBool>,
}

/// The body went past the route's `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the route allows")]
pub struct BodyTooLarge;

/// What the scanner is told about the request.
pub struct ScanFor<'a> {
    pub token: &'a str,
    /// A form body (see [`is_form`]): decode before looking.
    pub form: bool,
    /// Set when the token shows up: the forwarder answers `400`.
    pub found: Arc<AtomicBool>,
}

struct Scan {
    tokens: TokenScan,
    /// Bytes not forwarded yet: the end of what has come.
    held: Bytes,
    /// Sends `held` when no more data comes in time.
    release: Option<Pin<Box<tokio::time::Sleep>>>,
    found: Arc<AtomicBool>,
}

/// True for a body a form parser could read: a `Content-Type` whose media
/// type (cut at `;`, `,` or a space, as PHP and Rack cut it) is
/// `application/x-www-form-urlencoded`, on any of its lines — or none at
/// all, or an empty one (Rack reads such a POST as a form).
pub fn is_form(headers: &HeaderMap) -> bool {
    let mut lines = headers.get_all(http::header::CONTENT_TYPE).iter().peekable();
    if lines.peek().is_none() {
        return true;
    }
    lines.any(|v| {
        let v = v.as_bytes();
        let end = v.iter().position(|&b| matches!(b, b';' | b',' | b' ' | b'\t')).unwrap_or(v.len());
        let media = &v[..end];
        media.is_empty() || media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    })
}

/// The body stopped because it carried the caller's bearer token.
#[derive(Debug, thiserror::Error)]
#[error("the request body carries the caller's bearer token")]
pub struct TokenInBody;

impl<B: Body> Guarded<B> {
    /// `limit`: the most bytes the body may have, and the flag to set when it has more.
    pub fn new(
        inner: B,
        removed: Arc<[HeaderName]>,
        scan: Option<ScanFor<'_>>,
        limit: Option<(u64, Arc<AtomicBool>)>,
    ) -> Self {
        if inner.is_end_stream() {
            return Guarded { inner, guard: None };
        }
        let scan = scan.filter(|s| s.token.len() >= MIN_SCANNED).map(|s| Scan {
            tokens: TokenScan::new(s.token.as_bytes(), s.form),
            held: Bytes::new(),
            release: None,
            found: s.found,
        });
        let limit = limit.map(|(max, over)| Limit { max, seen: 0, over });
        let guard = Guard { removed, scan, limit, queued: VecDeque::new(), ended: false };
        Guarded { inner, guard: Some(Box::new(guard)) }
    }
}

impl Scan {
    /// Takes a chunk in and queues what may be forwarded now, in order;
    /// false when the token is in the stream.
    fn take(&mut self, data: Bytes, out: &mut VecDeque<Frame<Bytes>>) -> bool {
        self.release = None;
        let held = std::mem::take(&mut self.held);
        let data_start = self.tokens.seen();
        let held_start = data_start - held.len() as u64;
        let hold_from = match self.tokens.feed(&data) {
            Step::Found => return false,
            Step::Clean { hold_from } => hold_from.clamp(held_start, data_start + data.len() as u64),
        };
        // `held` then `data` cover [held_start, seen): send what is before `hold_from`.
        let offset = |from: u64, len: usize| usize::try_from(hold_from - from).map_or(len, |c| c.min(len));
        if hold_from <= data_start {
            let cut = offset(held_start, held.len());
            if cut > 0 {
                out.push_back(Frame::data(held.slice(..cut)));
            }
            self.held = if cut == held.len() {
                data
            } else {
                let mut rest = BytesMut::with_capacity(held.len() - cut + data.len());
                rest.extend_from_slice(&held[cut..]);
                rest.extend_from_slice(&data);
                rest.freeze()
            };
        } else {
            if !held.is_empty() {
                out.push_back(Frame::data(held));
            }
            let cut = offset(data_start, data.len());
            if cut > 0 {
                out.push_back(Frame::data(data.slice(..cut)));
            }
            self.held = data.slice(cut..);
        }
        true
    }
}

impl Guard {
    fn trip(&self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(scan) = &self.scan {
            scan.found.store(true, Ordering::Release);
        }
        Poll::Ready(Some(Err(TokenInBody.into())))
    }

    /// Trailers lose the removed fields; on exchange routes, one that names
    /// or holds the token stops the body.
    fn trailers(&self, mut trailers: HeaderMap) -> Option<HeaderMap> {
        for name in [AUTHORIZATION, PROXY_AUTHORIZATION, DPOP].iter().chain(self.removed.iter()) {
            trailers.remove(name);
        }
        if let Some(scan) = &self.scan {
            if trailers.iter().any(|(k, v)| header_holds(k, v.as_bytes(), scan.tokens.token())) {
                return None;
            }
        }
        Some(trailers)
    }

    /// What was held back goes now (the body ended).
    fn release(&mut self) {
        if let Some(scan) = &mut self.scan {
            let held = std::mem::take(&mut scan.held);
            if !held.is_empty() {
                self.queued.push_back(Frame::data(held));
            }
        }
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(g) = this.guard.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_frame(cx).map(|f| f.map(|r| r.map_err(Into::into)));
        };
        loop {
            if let Some(frame) = g.queued.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if g.ended {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    g.ended = true;
                    g.release();
                    continue;
                }
                Poll::Pending => {
                    // A short possible beginning of the token, and nothing more
                    // for a while: it goes (an interactive stream must not
                    // wait). Half the token or more waits for the rest.
                    if let Some(scan) =
                        g.scan.as_mut().filter(|s| !s.held.is_empty() && s.held.len() < s.tokens.token().len() / 2)
                    {
                        let timer = scan.release.get_or_insert_with(|| Box::pin(tokio::time::sleep(HOLD_AT_MOST)));
                        if timer.as_mut().poll(cx).is_ready() {
                            scan.release = None;
                            return Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut scan.held)))));
                        }
                    }
                    return Poll::Pending;
                }
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    if let Some(l) = &mut g.limit {
                        l.seen += data.len() as u64;
                        if l.seen > l.max {
                            l.over.store(true, Ordering::Release);
                            return Poll::Ready(Some(Err(BodyTooLarge.into())));
                        }
                    }
                    let Some(scan) = &mut g.scan else { return Poll::Ready(Some(Ok(Frame::data(data)))) };
                    if !scan.take(data, &mut g.queued) {
                        return g.trip();
                    }
                    continue;
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => match g.trailers(trailers) {
                        None => return g.trip(),
                        Some(trailers) => {
                            // Trailers end the body: what was held back goes first.
                            g.release();
                            Frame::trailers(trailers)
                        }
                    },
                    Err(other) => other,
                },
            };
            g.queued.push_back(frame);
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.guard {
            None => self.inner.is_end_stream(),
            Some(g) => {
                g.queued.is_empty()
                    && g.scan.as_ref().map_or(true, |s| s.held.is_empty())
                    && (g.ended || self.inner.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        let Some(g) = &self.guard else { return self.inner.size_hint() };
        let waiting = g.queued.iter().filter_map(|f| f.data_ref()).map(Bytes::len).sum::<usize>()
            + g.scan.as_ref().map_or(0, |s| s.held.len());
        let mut hint = if g.ended { SizeHint::with_exact(0) } else { self.inner.size_hint() };
        let waiting = waiting as u64;
        match hint.upper() {
            Some(upper) if hint.lower() == upper => hint.set_exact(upper + waiting),
            upper => {
                hint.set_lower(hint.lower() + waiting);
                if let Some(u) = upper {
                    hint.set_upper(u + waiting);
                }
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    const TOKEN: &str = "SECRET-TOKEN-4242";

    /// Frames of a body, then what `Guarded` lets through: the data
    /// forwarded, the trailers, whether it stopped, whether it saw the token.
    async fn guarded(frames: Vec<Frame<Bytes>>, form: bool, scan: bool) -> (Vec<u8>, Option<HeaderMap>, bool, bool) {
        use http_body_util::BodyExt;
        let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>));
        let found = Arc::new(AtomicBool::new(false));
        let mut body = Guarded::new(
            http_body_util::StreamBody::new(stream),
            super::super::credentials::DEFAULT_REMOVED.to_vec().into(),
            scan.then(|| ScanFor { token: TOKEN, form, found: found.clone() }),
            None,
        );
        let (mut data, mut trailers, mut failed) = (Vec::new(), None, false);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        (data, trailers, failed, found.load(Ordering::Acquire))
    }

    fn chunks(parts: &[&'static str]) -> Vec<Frame<Bytes>> {
        parts.iter().map(|p| Frame::data(Bytes::from_static(p.as_bytes()))).collect()
    }

    #[tokio::test]
    async fn a_token_split_across_chunks_is_stopped_before_any_of_it_leaves() {
        let (data, _, failed, found) = guarded(chunks(&["{\"t\":\"SECRET", "-TOKEN-4242\"}"]), false, true).await;
        assert!(failed && found);
        assert!(!String::from_utf8_lossy(&data).contains("SECRET"), "forwarded: {:?}", String::from_utf8_lossy(&data));
        // One byte at a time, too.
        let one_by_one: Vec<&'static str> =
            ["x", "S", "E", "C", "R", "E", "T", "-", "T", "O", "K", "E", "N", "-", "4", "2", "4", "2"].to_vec();
        let (data, _, failed, _) = guarded(chunks(&one_by_one), false, true).await;
        assert!(failed);
        assert_eq!(data, b"x");
    }

    #[tokio::test]
    async fn a_clean_body_arrives_whole_and_in_order() {
        let parts = ["hello ", "SECRET-TOKE", "N-424", "1 world", "", "!"];
        let (data, _, failed, found) = guarded(chunks(&parts), false, true).await;
        assert!(!failed && !found);
        assert_eq!(data, parts.concat().as_bytes());
        let (data, _, failed, _) = guarded(chunks(&parts), true, true).await;
        assert!(!failed);
        assert_eq!(data, parts.concat().as_bytes());
    }

    /// A body fed by hand, chunk by chunk, staying open in between.
    fn open_body(
    ) -> (tokio::sync::mpsc::Sender<Bytes>, Guarded<impl Body<Data = Bytes, Error = std::convert::Infallible>>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
        });
        let found = Arc::new(AtomicBool::new(false));
        let body = Guarded::new(
            http_body_util::StreamBody::new(Box::pin(stream)),
            super::super::credentials::DEFAULT_REMOVED.to_vec().into(),
            Some(ScanFor { token: TOKEN, form: false, found }),
            None,
        );
        (tx, body)
    }

    #[tokio::test]
    async fn an_interactive_stream_is_not_kept_waiting() {
        use http_body_util::BodyExt;
        // Nothing that could begin the token: forwarded at once.
        let (tx, mut body) = open_body();
        tx.send(Bytes::from_static(b"hello")).await.unwrap();
        let first = tokio::time::timeout(Duration::from_millis(50), body.frame()).await.expect("held back");
        assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "hello");
        // A possible beginning ("SEC") waits for the next chunk, at most HOLD_AT_MOST.
        tx.send(Bytes::from_static(b"next SEC")).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut got = Vec::new();
        while got.len() < 8 {
            let frame = tokio::time::timeout(Duration::from_secs(1), body.frame()).await.expect("stuck");
            got.extend_from_slice(&frame.unwrap().unwrap().into_data().unwrap());
        }
        assert_eq!(got, b"next SEC");
        assert!(started.elapsed() >= HOLD_AT_MOST - Duration::from_millis(20), "{:?}", started.elapsed());
        // Half the token or more is not let go on a timer: it waits for the rest.
        tx.send(Bytes::from_static(b" SECRET-TOK")).await.unwrap();
        let first = tokio::time::timeout(Duration::from_millis(100), body.frame()).await.unwrap();
        assert_eq!(first.unwrap().unwrap().into_data().unwrap(), " ");
        assert!(tokio::time::timeout(Duration::from_millis(500), body.frame()).await.is_err(), "let go");
        tx.send(Bytes::from_static(b"EN-4242")).await.unwrap();
        assert!(body.frame().await.unwrap().is_err(), "the token, completed, stops the body");
    }

    #[tokio::test]
    async fn a_form_body_is_decoded_before_looking() {
        let parts = ["a=1&access_token=SECRET%2D", "TOKEN%2", "D42%34%u0032"];
        let (data, _, failed, found) = guarded(chunks(&parts), true, true).await;
        assert!(failed && found);
        assert!(!String::from_utf8_lossy(&data).contains("SECRET"), "{:?}", String::from_utf8_lossy(&data));
        // Not a form: encoded bytes are just bytes.
        let (_, _, failed, _) = guarded(chunks(&parts), false, true).await;
        assert!(!failed);
    }

    #[tokio::test]
    async fn trailers_are_cleaned_or_stop_the_body() {
        let trailers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, v.parse().unwrap());
            }
            Frame::trailers(h)
        };
        let t = trailers(&[("authorization", "Bearer x"), ("cookie", "s=1"), ("x-checksum", "abc")]);
        let (data, kept, failed, _) = guarded(vec![Frame::data(Bytes::from_static(b"ok")), t], false, false).await;
        assert!(!failed);
        assert_eq!(data, b"ok");
        let kept = kept.unwrap();
        assert_eq!((kept.len(), kept.get("x-checksum").unwrap().to_str().unwrap()), (1, "abc"));
        let t = trailers(&[("x-t", "SECRET%2DTOKEN-4242")]);
        let (_, _, failed, found) = guarded(vec![Frame::data(Bytes::from_static(b"ok")), t], false, true).await;
        assert!(failed && found, "an encoded token in a trailer");
    }
}
