//! Keeping the caller's credentials away from the backend, wherever they
//! could ride along:
//!
//! - **Headers** removed before forwarding on every route: `Authorization`,
//!   `Proxy-Authorization` (hop-by-hop) and the route's
//!   `forward.remove_headers` (by default `Cookie` and `Forwarded`).
//! - **The URL**: a query (or `;` path) parameter *named* `access_token`
//!   (RFC 6750 §2.3) refuses the request on every route. Names are compared
//!   the way servers read them: percent-decoded (repeatedly), `+` as space,
//!   case-insensitively, with PHP's folding of ` `, `.` and `[` into `_` and
//!   its `name[]` arrays; parameters split on `&` and `;`.
//! - **Exchange routes** know the caller's bearer token, and refuse a request
//!   that carries its *value* anywhere that would be forwarded: the request
//!   target (raw or percent-decoded), any other header or cookie that is not
//!   removed, the body and trailers ([`Guarded`]). The check costs a length
//!   comparison per header unless a value is at least as long as the token.
//!   Tokens shorter than [`MIN_SCANNED`] bytes are not looked for: they
//!   would turn up by chance in ordinary URLs and bodies.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use memchr::memmem;

/// Shortest caller token whose value is looked for elsewhere in a request.
pub const MIN_SCANNED: usize = 16;

/// `forward.remove_headers` when a route does not say.
pub const DEFAULT_REMOVED: [HeaderName; 2] = [COOKIE, HeaderName::from_static("forwarded")];

/// True when the query string, or a `;` parameter of a path segment, names
/// `access_token` in any of the forms a server would decode to it.
pub fn url_names_token(uri: &Uri) -> bool {
    let query = uri.query().is_some_and(|q| q.split(['&', ';']).any(|p| is_token_name(param_name(p))));
    let path = uri.path();
    query
        || (path.contains(';')
            && path.split('/').flat_map(|seg| seg.split(';').skip(1)).any(|p| is_token_name(param_name(p))))
}

fn param_name(pair: &str) -> &[u8] {
    pair.split('=').next().unwrap_or_default().as_bytes()
}

const TOKEN_NAME: &[u8] = b"access_token";

fn is_token_name(raw: &[u8]) -> bool {
    // Decoding only shortens a name: shorter than "access_token" never is.
    if raw.len() < TOKEN_NAME.len() {
        return false;
    }
    let mut name = raw.to_vec();
    // A backend may decode more than once (`access%255Ftoken`); stop when stable.
    for _ in 0..3 {
        if !name.contains(&b'%') {
            break;
        }
        name = percent_encoding::percent_decode(&name).collect();
    }
    // PHP: `access_token[]` is the array `access_token`.
    if let Some(open) = name.iter().position(|&c| c == b'[') {
        if name[open..].contains(&b']') {
            name.truncate(open);
        }
    }
    let folded = name.iter().map(|&c| match c {
        b'+' | b' ' | b'.' | b'[' => b'_',
        c => c.to_ascii_lowercase(),
    });
    folded.eq(TOKEN_NAME.iter().copied())
}

/// Where the caller's `token` would still reach the backend, if anywhere:
/// the request target, or a header that is neither removed (`removed`,
/// `Authorization`, `Proxy-Authorization`) nor replaced (`replaced`, the
/// route's forward header).
pub fn token_elsewhere(
    uri: &Uri,
    headers: &HeaderMap,
    (removed, replaced): (&[HeaderName], &HeaderName),
    token: &str,
) -> Option<&'static str> {
    let needle = token.as_bytes();
    if needle.len() < MIN_SCANNED {
        return None;
    }
    if uri.path_and_query().is_some_and(|pq| contains(pq.as_str().as_bytes(), needle)) {
        return Some("the bearer token is also in the request URL");
    }
    for (name, value) in headers {
        // Values shorter than the token cannot hold it, decoded or not.
        if value.len() < needle.len() || name == AUTHORIZATION || name == PROXY_AUTHORIZATION || name == replaced {
            continue;
        }
        if !removed.contains(name) && contains(value.as_bytes(), needle) {
            return Some("the bearer token is also in another header");
        }
    }
    None
}

/// `needle` in `haystack` as sent, or after percent-decoding.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    if haystack.len() < needle.len() {
        return false;
    }
    if memmem::find(haystack, needle).is_some() {
        return true;
    }
    let mut decoded: Vec<u8> = haystack.to_vec();
    for _ in 0..3 {
        if !decoded.contains(&b'%') {
            return false;
        }
        decoded = percent_encoding::percent_decode(&decoded).collect();
        if memmem::find(&decoded, needle).is_some() {
            return true;
        }
    }
    false
}

/// The request body as forwarded: on exchange routes, scanned for the
/// caller's token (data, across chunk boundaries, and trailers); on every
/// route, trailers lose the fields the head loses.
pub struct Guarded<B = Incoming> {
    inner: B,
    removed: Arc<[HeaderName]>,
    scan: Option<Box<Scan>>,
}

struct Scan {
    finder: memmem::Finder<'static>,
    /// The last `len - 1` bytes seen, for a token split across chunks.
    tail: Vec<u8>,
    /// Set when the token was found: the forwarder answers `400`.
    found: Arc<AtomicBool>,
}

/// The body stopped because it carried the caller's token.
#[derive(Debug, thiserror::Error)]
#[error("the request body carries the caller's bearer token")]
pub struct TokenInBody;

impl<B: Body> Guarded<B> {
    /// `token`: scan for it, setting `found` when it shows up.
    pub fn new(inner: B, removed: Arc<[HeaderName]>, token: Option<(&str, Arc<AtomicBool>)>) -> Self {
        let scan = token.filter(|(t, _)| t.len() >= MIN_SCANNED && !inner.is_end_stream()).map(|(t, found)| {
            Box::new(Scan { finder: memmem::Finder::new(t.as_bytes()).into_owned(), tail: Vec::new(), found })
        });
        Guarded { inner, removed, scan }
    }
}

impl Scan {
    fn hit(&mut self, data: &[u8]) -> bool {
        let keep = self.finder.needle().len().saturating_sub(1);
        // A token across the seam starts in the tail and ends within the
        // first `keep` bytes of this chunk.
        if !self.tail.is_empty() {
            let old = self.tail.len();
            self.tail.extend_from_slice(&data[..data.len().min(keep)]);
            if self.finder.find(&self.tail).is_some() {
                return true;
            }
            self.tail.truncate(old);
        }
        if self.finder.find(data).is_some() {
            return true;
        }
        // Keep the last `keep` bytes of everything seen.
        if data.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - keep..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
        false
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
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if let Some(scan) = &mut this.scan {
                    if scan.hit(&data) {
                        scan.found.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(TokenInBody.into())));
                    }
                }
                Frame::data(data)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    for name in [AUTHORIZATION, PROXY_AUTHORIZATION].iter().chain(this.removed.iter()) {
                        trailers.remove(name);
                    }
                    if let Some(scan) = &this.scan {
                        if trailers.values().any(|v| scan.finder.find(v.as_bytes()).is_some()) {
                            scan.found.store(true, Ordering::Release);
                            return Poll::Ready(Some(Err(TokenInBody.into())));
                        }
                    }
                    Frame::trailers(trailers)
                }
                Err(other) => other,
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(target: &str) -> bool {
        url_names_token(&target.parse().unwrap())
    }

    #[test]
    fn access_token_is_found_in_every_spelling() {
        for t in [
            "/x?access_token=t",
            "/x?a=1&access_token=t",
            "/x?access%5Ftoken=t",
            "/x?access%5ftoken=t",
            "/x?%61ccess_token=t",
            "/x?access%255Ftoken=t",
            "/x?ACCESS_TOKEN=t",
            "/x?Access_Token=t",
            "/x?a=1;access_token=t",
            "/x?access.token=t",
            "/x?access+token=t",
            "/x?access%20token=t",
            "/x?access_token[]=t",
            "/x?access_token%5B%5D=t",
            "/x?access[token=t",
            "/x?access_token",
            "/x;access_token=t",
            "/x;v=1;access_token=t/y",
        ] {
            assert!(named(t), "{t}");
        }
        for t in [
            "/x",
            "/x?my_access_token_count=1",
            "/x?access_tokens=1",
            "/x?token=t",
            "/access_token",
            "/x?a=access_token",
        ] {
            assert!(!named(t), "{t}");
        }
    }

    #[test]
    fn the_token_value_is_found_raw_or_encoded() {
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";
        assert!(
            token_elsewhere(&"/x/ab".parse().unwrap(), &HeaderMap::new(), (&[], &AUTHORIZATION), "ab").is_none(),
            "too short"
        );
        let uri = |s: &str| -> Uri { s.parse().unwrap() };
        let none = HeaderMap::new();
        let removed = DEFAULT_REMOVED.to_vec();
        assert!(token_elsewhere(&uri(&format!("/x?t={token}")), &none, (&removed, &AUTHORIZATION), token).is_some());
        assert!(token_elsewhere(&uri(&format!("/x/{token}")), &none, (&removed, &AUTHORIZATION), token).is_some());
        let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
        assert!(token_elsewhere(&uri(&format!("/x?t={encoded}")), &none, (&removed, &AUTHORIZATION), token).is_some());
        assert!(token_elsewhere(&uri("/x?t=1"), &none, (&removed, &AUTHORIZATION), token).is_none());

        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h.insert(COOKIE, format!("session={token}").parse().unwrap());
        assert!(
            token_elsewhere(&uri("/x"), &h, (&removed, &AUTHORIZATION), token).is_none(),
            "removed headers do not count"
        );
        assert!(token_elsewhere(&uri("/x"), &h, (&[], &AUTHORIZATION), token).is_some(), "a kept cookie does");
        h.insert("x-api-token", token.parse().unwrap());
        assert!(token_elsewhere(&uri("/x"), &h, (&removed, &AUTHORIZATION), token).is_some());
    }

    /// Frames of a body, then what `Guarded` lets through.
    async fn guarded(frames: Vec<Frame<Bytes>>, token: Option<&str>) -> (Vec<Frame<Bytes>>, bool, bool) {
        use http_body_util::BodyExt;
        let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>));
        let found = Arc::new(AtomicBool::new(false));
        let mut body = Guarded::new(
            http_body_util::StreamBody::new(stream),
            DEFAULT_REMOVED.to_vec().into(),
            token.map(|t| (t, found.clone())),
        );
        let (mut out, mut failed) = (Vec::new(), false);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.push(f),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        (out, failed, found.load(Ordering::Acquire))
    }

    #[tokio::test]
    async fn bodies_and_trailers_are_guarded() {
        let data = |s: &'static str| Frame::data(Bytes::from_static(s.as_bytes()));
        let trailers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, v.parse().unwrap());
            }
            Frame::trailers(h)
        };
        // The token split across two chunks stops the body before the second.
        let (out, failed, found) =
            guarded(vec![data("{\"t\":\"SECRET"), data("-TOKEN-4242\"}")], Some("SECRET-TOKEN-4242")).await;
        assert!(failed && found);
        assert_eq!(out.len(), 1);
        // Credential trailers are dropped on every route; others pass.
        let t = trailers(&[("authorization", "Bearer x"), ("cookie", "s=1"), ("x-checksum", "abc")]);
        let (out, failed, _) = guarded(vec![data("ok"), t], None).await;
        assert!(!failed);
        let kept = out[1].trailers_ref().unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept.get("x-checksum").unwrap(), "abc");
        // The token in a trailer stops the body too.
        let (_, failed, found) =
            guarded(vec![data("ok"), trailers(&[("x-t", "SECRET-TOKEN-4242")])], Some("SECRET-TOKEN-4242")).await;
        assert!(failed && found);
    }

    #[test]
    fn the_scan_sees_a_token_split_across_chunks() {
        let found = Arc::new(AtomicBool::new(false));
        let mk = || Scan {
            finder: memmem::Finder::new(b"SECRET-TOKEN").into_owned(),
            tail: Vec::new(),
            found: found.clone(),
        };
        let mut s = mk();
        assert!(!s.hit(b"hello SECR"));
        assert!(s.hit(b"ET-TOKEN world"));
        let mut s = mk();
        for b in b"xxSECRET-TOKENyy".chunks(1).take(13) {
            assert!(!s.hit(b));
        }
        assert!(s.hit(b"N"));
        let mut s = mk();
        assert!(!s.hit(b"SECRET-TOKE"));
        assert!(!s.hit(b"x SECRET-TOKE"));
        assert!(!s.hit(b"n"));
    }
}
