//! A raw HTTP/1.1 client (so no client library rewrites what a test
//! sends) and small helpers for gateway tests over real sockets.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// A minimal raw HTTP/1.1 client, so no client library rewrites what we send.

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Buffered reads over a TCP stream.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        Conn { stream: TcpStream::connect(addr).await.expect("connect to the gateway"), buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub async fn more(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            self.more().await?;
        }
    }

    pub async fn exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.more().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    pub async fn rest(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            match self.more().await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(std::mem::take(&mut self.buf)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Status line and headers; the body is left unread.
    pub async fn head(&mut self) -> std::io::Result<(u16, Vec<(String, String)>)> {
        let status_line = self.line().await?;
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, status_line.clone()))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Ok((status, headers));
            }
            let (k, v) = line.split_once(':').unwrap_or((&line, ""));
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }

    /// One whole response (Content-Length, chunked, or until close).
    pub async fn response(&mut self) -> std::io::Result<RawResponse> {
        let (status, headers) = self.head().await?;
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if status == 101 || status == 204 || status == 304 {
            Vec::new()
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                let size_line = self.line().await?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, size_line.clone()))?;
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    break;
                }
                body.extend(self.exact(size).await?);
                self.line().await?;
            }
            body
        } else if let Some(len) = get("content-length") {
            self.exact(len.parse().unwrap()).await?
        } else {
            self.rest().await?
        };
        Ok(RawResponse { status, headers, body })
    }
}

/// Sends `request` on a new connection and reads one response (5 s bound).
pub async fn raw(addr: SocketAddr, request: &str) -> std::io::Result<RawResponse> {
    tokio::time::timeout(IO_TIMEOUT, async {
        let mut c = Conn::open(addr).await;
        c.send(request.as_bytes()).await?;
        c.response().await
    })
    .await
    .expect("the gateway neither answered nor closed the connection within 5 s")
}

/// `GET path` with the given extra header lines, `Connection: close`.
pub async fn raw_get(addr: SocketAddr, path: &str, host: &str, extra: &[&str]) -> RawResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    raw(addr, &req).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

pub fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

/// One `auth: none` route.
pub fn open_route(name: &str, matcher: &str, upstream: &str) -> String {
    format!("  - name: {name}\n    match: {matcher}\n    upstream: {upstream}\n    auth: none\n")
}

/// A port nothing listens on.
pub fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

pub async fn gateway_with(auth_server: &RecordingAs, routes: &str) -> TestGateway {
    TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, routes)).await
}

pub async fn assert_still_serving(gw: &TestGateway) {
    let (status, _, body) = get(&format!("{}/still", gw.url), Some("still-serving")).await;
    assert_eq!(status, 200, "the gateway stopped serving: {body}");
}
