//! A fault-injecting HTTP/1.1 server over a raw `TcpListener` on
//! 127.0.0.1:0: it reads each request (head and `Content-Length` body),
//! counts it, then answers as the current [`Mode`] says — well, late, cut
//! off, reset, oversized — or not at all ([`Faulty::down`] closes the
//! listener, so the port refuses connections). Every answer closes its
//! connection, so no client reuses one across a mode switch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head and body read.
const MAX_REQUEST: usize = 1 << 20;

#[derive(Clone, Debug)]
pub enum Mode {
    /// A valid token answer: `good-N` (N: the request number), Bearer, 60 s.
    Good,
    /// A complete answer, `Connection: close`.
    Answer { status: u16, content_type: &'static str, headers: Vec<(&'static str, String)>, body: Vec<u8> },
    /// Waits, then behaves as the inner mode.
    Slow(Duration, Box<Mode>),
    /// Sends the status line, headers and part of a `Content-Length: 200`
    /// body, then holds the connection open for this long.
    SlowBody(Duration),
    /// Part of the status line and headers, then a TCP reset (SO_LINGER 0).
    ResetInHead,
    /// The head and part of a `Content-Length: 200` body, then a reset.
    ResetMidBody,
    /// The head and part of a `Content-Length: 200` body, then a clean close (FIN).
    ShortBody,
    /// A 200 answer of this many bytes, with `Content-Length` or chunked.
    Huge { bytes: usize, chunked: bool },
}

impl Mode {
    pub fn json(status: u16, body: &str) -> Mode {
        Mode::Answer { status, content_type: "application/json", headers: vec![], body: body.as_bytes().to_vec() }
    }

    pub fn raw(status: u16, content_type: &'static str, body: &str) -> Mode {
        Mode::Answer { status, content_type, headers: vec![], body: body.as_bytes().to_vec() }
    }

    /// A token answer `{"access_token": token, "token_type": "Bearer", <extra>}`;
    /// `extra` is raw JSON members (e.g. `"expires_in": 1e12`), so numbers
    /// keep the exact spelling under test.
    pub fn token(token: &str, extra: &str) -> Mode {
        let sep = if extra.is_empty() { "" } else { "," };
        Mode::json(200, &format!(r#"{{"access_token":"{token}","token_type":"Bearer"{sep}{extra}}}"#))
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Mode {
        if let Mode::Answer { headers, .. } = &mut self {
            headers.push((name, value.to_owned()));
        }
        self
    }
}

pub struct Faulty {
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    count: Arc<AtomicUsize>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Faulty {
    pub async fn start(mode: Mode) -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let faulty = Faulty {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(Mutex::new(mode)),
            count: Arc::new(AtomicUsize::new(0)),
            accept: Mutex::new(None),
        };
        faulty.serve(listener);
        faulty
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Requests read so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Closes the listener: connections to the port are refused until [`Faulty::up`].
    pub async fn down(&self) {
        let task = self.accept.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await; // the listener is dropped once the task is
        }
    }

    /// Listens on the same port again.
    pub async fn up(&self) {
        if self.accept.lock().unwrap().is_some() {
            return;
        }
        let listener = TcpListener::bind(self.addr).await.expect("rebind the faulty server's port");
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let (mode, count) = (self.mode.clone(), self.count.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (mode, count) = (mode.clone(), count.clone());
                tokio::spawn(async move {
                    let mut stream = stream;
                    if read_request(&mut stream).await.is_none() {
                        return;
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    let mode = mode.lock().unwrap().clone();
                    let _ = answer(stream, mode, n).await;
                });
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }
}

/// Reads one request: the head, then `Content-Length` bytes of body.
async fn read_request(s: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

fn head(status: u16, content_type: &str, framing: &str, extra: &[(&str, String)]) -> String {
    let mut h = format!("HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n{framing}\r\nconnection: close\r\n");
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

const PARTIAL: &str = r#"{"access_token":"cut-off","#;

async fn answer(mut s: TcpStream, mode: Mode, n: usize) -> std::io::Result<()> {
    let mut mode = mode;
    while let Mode::Slow(d, next) = mode {
        tokio::time::sleep(d).await;
        mode = *next;
    }
    match mode {
        Mode::Slow(..) => unreachable!(),
        Mode::Good => {
            let body = format!(r#"{{"access_token":"good-{n}","token_type":"Bearer","expires_in":60}}"#);
            let h = head(200, "application/json", &format!("content-length: {}", body.len()), &[]);
            s.write_all(format!("{h}{body}").as_bytes()).await?;
        }
        Mode::Answer { status, content_type, headers, body } => {
            let h = head(status, content_type, &format!("content-length: {}", body.len()), &headers);
            s.write_all(h.as_bytes()).await?;
            s.write_all(&body).await?;
        }
        Mode::SlowBody(d) => {
            let h = head(200, "application/json", "content-length: 200", &[]);
            s.write_all(format!("{h}{PARTIAL}").as_bytes()).await?;
            s.flush().await?;
            tokio::time::sleep(d).await;
        }
        Mode::ResetInHead => {
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: appl").await?;
            s.flush().await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.set_zero_linger()?;
        }
        Mode::ResetMidBody | Mode::ShortBody => {
            let h = head(200, "application/json", "content-length: 200", &[]);
            s.write_all(format!("{h}{PARTIAL}").as_bytes()).await?;
            s.flush().await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            if matches!(mode, Mode::ResetMidBody) {
                s.set_zero_linger()?;
            } else {
                s.shutdown().await?;
            }
        }
        Mode::Huge { bytes, chunked } => {
            let framing =
                if chunked { "transfer-encoding: chunked".to_owned() } else { format!("content-length: {bytes}") };
            s.write_all(head(200, "application/json", &framing, &[]).as_bytes()).await?;
            // `bytes` of `a`: what matters is the size, not the content.
            let mut sent = 0;
            let block = vec![b'a'; 64 * 1024];
            while sent < bytes {
                let len = block.len().min(bytes - sent);
                if chunked {
                    s.write_all(format!("{len:x}\r\n").as_bytes()).await?;
                }
                s.write_all(&block[..len]).await?;
                if chunked {
                    s.write_all(b"\r\n").await?;
                }
                sent += len;
            }
            if chunked {
                s.write_all(b"0\r\n\r\n").await?;
            }
        }
    }
    s.flush().await
}
