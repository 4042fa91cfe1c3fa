//! The request body as forwarded. On every route, trailers lose the fields
//! the head loses. On exchange routes the body is scanned for the caller's
//! token as it streams: raw, and percent-decoded for a form body
//! (`application/x-www-form-urlencoded`, RFC 6750 §2.2), across chunk
//! boundaries, and in trailers. The last bytes that could start a token are
//! held back until the next chunk proves they do not (or the body ends), so
//! when the token shows up none of it has been forwarded: the body stops
//! with an error, the backend sees an aborted request, and the forwarder
//! answers `400`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use memchr::memmem;

use super::credentials::{contains, MIN_SCANNED};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Guarded<B = Incoming> {
    inner: B,
    /// None for a body that has already ended (a GET): nothing to do.
    guard: Option<Box<Guard>>,
}

struct Guard {
    removed: Arc<[HeaderName]>,
    scan: Option<Scan>,
    /// Frames ready to go before the inner body is polled again.
    queued: VecDeque<Frame<Bytes>>,
    ended: bool,
}

/// What the scanner is told about the request.
pub struct ScanFor<'a> {
    pub token: &'a str,
    /// `Content-Type: application/x-www-form-urlencoded`: decode before looking.
    pub form: bool,
    /// Set when the token shows up: the forwarder answers `400`.
    pub found: Arc<AtomicBool>,
}

struct Scan {
    raw: memmem::Finder<'static>,
    /// Raw bytes held back: the last `keep` bytes of what has come.
    held: Bytes,
    keep: usize,
    form: Option<FormView>,
    found: Arc<AtomicBool>,
}

/// The percent-decoded stream of a form body, as far as it has come.
struct FormView {
    /// An escape cut by the end of the last chunk (at most 5 bytes).
    partial: Vec<u8>,
    /// The last `len - 1` decoded bytes, for a token across chunks.
    tail: Vec<u8>,
}

/// True for a form body (`application/x-www-form-urlencoded`, parameters aside).
pub fn is_form(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let essence = v.as_bytes().split(|&b| b == b';').next().unwrap_or_default();
        essence.trim_ascii().eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    })
}

/// The body stopped because it carried the caller's bearer token.
#[derive(Debug, thiserror::Error)]
#[error("the request body carries the caller's bearer token")]
pub struct TokenInBody;

impl<B: Body> Guarded<B> {
    pub fn new(inner: B, removed: Arc<[HeaderName]>, scan: Option<ScanFor<'_>>) -> Self {
        if inner.is_end_stream() {
            return Guarded { inner, guard: None };
        }
        let scan = scan.filter(|s| s.token.len() >= MIN_SCANNED).map(|s| {
            let n = s.token.len();
            Scan {
                raw: memmem::Finder::new(s.token.as_bytes()).into_owned(),
                held: Bytes::new(),
                // Percent-encoded, a character takes up to 6 bytes (`%uXXXX`).
                keep: if s.form { 6 * n - 1 } else { n - 1 },
                form: s.form.then(|| FormView { partial: Vec::new(), tail: Vec::new() }),
                found: s.found,
            }
        });
        let guard = Guard { removed, scan, queued: VecDeque::new(), ended: false };
        Guarded { inner, guard: Some(Box::new(guard)) }
    }
}

impl Scan {
    /// Looks at a new chunk; false when the token is in what has come so far.
    fn clean(&mut self, data: &[u8]) -> bool {
        let n = self.raw.needle().len();
        // Across the seam: the held bytes and the start of this chunk.
        let seam_end = data.len().min(n - 1);
        if !self.held.is_empty() {
            let from = self.held.len().saturating_sub(n - 1);
            let mut seam = self.held[from..].to_vec();
            seam.extend_from_slice(&data[..seam_end]);
            if self.raw.find(&seam).is_some() {
                return false;
            }
        }
        if self.raw.find(data).is_some() {
            return false;
        }
        match &mut self.form {
            Some(view) => view.clean(data, &self.raw),
            None => true,
        }
    }

    /// Takes `data` in: returns what may be forwarded now, keeps the rest.
    fn pass(&mut self, data: Bytes) -> (Bytes, Bytes) {
        if data.len() >= self.keep {
            let older = std::mem::replace(&mut self.held, data.slice(data.len() - self.keep..));
            (older, data.slice(..data.len() - self.keep))
        } else {
            let mut all = BytesMut::with_capacity(self.held.len() + data.len());
            all.extend_from_slice(&self.held);
            all.extend_from_slice(&data);
            let all = all.freeze();
            let cut = all.len().saturating_sub(self.keep);
            self.held = all.slice(cut..);
            (all.slice(..cut), Bytes::new())
        }
    }
}

impl FormView {
    fn clean(&mut self, data: &[u8], finder: &memmem::Finder<'static>) -> bool {
        let n = finder.needle().len();
        let mut input = std::mem::take(&mut self.partial);
        input.extend_from_slice(data);
        // An escape cut short at the end waits for the next chunk.
        let cut = input.len().saturating_sub(5);
        let keep_from = input[cut..].iter().rposition(|&b| b == b'%').map(|i| cut + i).filter(|&p| {
            let rest = &input[p..];
            let full = if rest.get(1).is_some_and(|b| *b == b'u' || *b == b'U') { 6 } else { 3 };
            rest.len() < full
        });
        let end = keep_from.unwrap_or(input.len());
        self.partial = input[end..].to_vec();
        let mut view = std::mem::take(&mut self.tail);
        view.extend_from_slice(&super::credentials::decode(&input[..end], true));
        let clean = finder.find(&view).is_none();
        let from = view.len().saturating_sub(n - 1);
        self.tail = view[from..].to_vec();
        clean
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
        for name in [AUTHORIZATION, PROXY_AUTHORIZATION].iter().chain(self.removed.iter()) {
            trailers.remove(name);
        }
        if let Some(scan) = &self.scan {
            let needle = scan.raw.needle();
            let lower = needle.to_ascii_lowercase();
            let leaks = trailers
                .iter()
                .any(|(k, v)| memmem::find(k.as_str().as_bytes(), &lower).is_some() || contains(v.as_bytes(), needle));
            if leaks {
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
                Poll::Pending => return Poll::Pending,
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    let Some(scan) = &mut g.scan else { return Poll::Ready(Some(Ok(Frame::data(data)))) };
                    if !scan.clean(&data) {
                        return g.trip();
                    }
                    let (older, now) = scan.pass(data);
                    for part in [older, now] {
                        if !part.is_empty() {
                            g.queued.push_back(Frame::data(part));
                        }
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
