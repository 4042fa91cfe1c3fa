//! The real front proxies, run from `examples/authz/` with their ports
//! substituted, and a raw HTTP/1.1 client that sends targets exactly as
//! written (no normalization of `..`, `%2e` or `//`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::common::process::temp_dir;
use super::Fixture;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    EnvoyHttp,
    EnvoyGrpc,
    Nginx,
    Traefik,
}

impl Kind {
    pub fn dialect(self) -> &'static str {
        match self {
            Kind::EnvoyHttp | Kind::EnvoyGrpc => "envoy",
            Kind::Nginx => "nginx",
            Kind::Traefik => "traefik",
        }
    }

    /// Envoy's HTTP ext_authz answers a 5xx from tokex with its own
    /// `status_on_error`, without tokex's headers.
    pub fn keeps_retry_after(self) -> bool {
        self != Kind::EnvoyHttp
    }
}

pub struct Front {
    child: Child,
    addr: String,
    dir: PathBuf,
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not the echo backend's JSON ({e}): {self:?}"))
    }
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/authz").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces `from` in `text`, which must hold it (the examples and the
/// test must not drift apart).
fn sub(text: String, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example no longer holds {from:?}");
    text.replace(from, to)
}

fn binary(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run the README's test command (bash scripts/test.sh), which installs the front proxies"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Front {
    pub async fn start(kind: Kind, fx: &Fixture) -> Front {
        let dir = temp_dir(&format!("front-{kind:?}").to_lowercase());
        let port = free_port();
        let (authz, grpc, backend) = (fx.authz().port(), fx.grpc().port(), fx.backend.port());
        let mut cmd = match kind {
            Kind::EnvoyHttp | Kind::EnvoyGrpc => {
                let file = if kind == Kind::EnvoyHttp { "envoy-http.yaml" } else { "envoy-grpc.yaml" };
                let mut c = example(file);
                c = sub(c, "address: 0.0.0.0, port_value: 10000", &format!("address: 127.0.0.1, port_value: {port}"));
                c = sub(c, "port_value: 8081", &format!("port_value: {backend}"));
                if kind == Kind::EnvoyHttp {
                    c = sub(c, "http://127.0.0.1:9191", &format!("http://127.0.0.1:{authz}"));
                    c = sub(c, "port_value: 9191", &format!("port_value: {authz}"));
                } else {
                    c = sub(c, "port_value: 9192", &format!("port_value: {grpc}"));
                }
                let config = dir.join("envoy.yaml");
                std::fs::write(&config, c).unwrap();
                let mut cmd = Command::new(binary("ENVOY_BIN"));
                cmd.arg("-c").arg(&config).args(["--concurrency", "1", "--log-level", "warn"]);
                cmd.args(["--base-id", &port.to_string(), "--disable-hot-restart"]);
                cmd
            }
            Kind::Nginx => {
                let mut c = example("nginx.conf");
                c = sub(c, "listen 10000;", &format!("listen 127.0.0.1:{port};"));
                c = sub(c, "server 127.0.0.1:8081;", &format!("server 127.0.0.1:{backend};"));
                c = sub(c, "server 127.0.0.1:9191;", &format!("server 127.0.0.1:{authz};"));
                let d = dir.display();
                let main = format!(
                    "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                     events {{ worker_connections 256; }}\n\
                     http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                     \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{c}\n}}\n"
                );
                let config = dir.join("nginx.conf");
                std::fs::write(&config, main).unwrap();
                let mut cmd = Command::new(binary("NGINX_BIN"));
                cmd.arg("-c").arg(&config).arg("-p").arg(&dir).args(["-e", "stderr"]);
                cmd
            }
            Kind::Traefik => {
                let mut s = example("traefik/traefik.yml");
                s = sub(s, "\"0.0.0.0:10000\"", &format!("\"127.0.0.1:{port}\""));
                s = sub(s, "filename: dynamic.yml", &format!("filename: {}", dir.join("dynamic.yml").display()));
                let mut d = example("traefik/dynamic.yml");
                d = sub(d, "http://127.0.0.1:9191", &format!("http://127.0.0.1:{authz}"));
                d = sub(d, "http://127.0.0.1:8081", &format!("http://127.0.0.1:{backend}"));
                std::fs::write(dir.join("traefik.yml"), s).unwrap();
                std::fs::write(dir.join("dynamic.yml"), d).unwrap();
                let mut cmd = Command::new(binary("TRAEFIK_BIN"));
                cmd.arg(format!("--configFile={}", dir.join("traefik.yml").display()));
                cmd.current_dir(&dir);
                cmd
            }
        };
        let log = std::fs::File::create(dir.join("front.log")).unwrap();
        cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log)).kill_on_drop(true);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{kind:?} does not start: {e}"));
        let front = Front { child, addr: format!("127.0.0.1:{port}"), dir };
        // Up once /health (auth: none) goes through to the backend.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(a) = front.try_send("GET", "/health", &[]).await {
                if a.status == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{kind:?} did not come up:\n{}", front.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        front
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("front.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// One request on a new connection, the target sent as written.
    pub async fn send(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
        match self.try_send(method, target, headers).await {
            Some(a) => a,
            None => panic!("no answer to {method} {target}:\n{}", self.log()),
        }
    }

    async fn try_send(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Option<Answer> {
        let mut stream = TcpStream::connect(&self.addr).await.ok()?;
        let host = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")).map_or("api.example.com", |(_, v)| v);
        let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
        for (n, v) in headers.iter().filter(|(n, _)| !n.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await.ok()?.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        let body = if chunked { dechunk(body) } else { body.to_owned() };
        Some(Answer { status, head: head.to_owned(), body })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
