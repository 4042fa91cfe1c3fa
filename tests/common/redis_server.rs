//! A real `redis-server` for a test: started on a free 127.0.0.1 port
//! (never a fixed one, never a pre-started service), stopped on drop.
//! `REDIS_SERVER` names the binary (default: `redis-server` on PATH); a
//! missing binary fails the test.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    args: Vec<String>,
}

fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    /// A plain server.
    pub async fn start() -> Self {
        Self::start_with(|port| vec!["--port".into(), port.to_string()]).await
    }

    /// A TLS-only server with this certificate, key and CA.
    pub async fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Self {
        let (cert, key, ca) = (cert.display().to_string(), key.display().to_string(), ca.display().to_string());
        Self::start_with(move |port| {
            vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                cert.clone(),
                "--tls-key-file".into(),
                key.clone(),
                "--tls-ca-cert-file".into(),
                ca.clone(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]
        })
        .await
    }

    async fn start_with(args: impl Fn(u16) -> Vec<String>) -> Self {
        // A port can be taken between the probe and the bind: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut all = vec![
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                "".into(),
                "--appendonly".into(),
                "no".into(),
            ];
            all.extend(args(port));
            let mut server = RedisServer { addr: SocketAddr::from(([127, 0, 0, 1], port)), child: None, args: all };
            server.spawn();
            if server.wait_listening().await {
                return server;
            }
            server.kill();
        }
        panic!("redis-server did not start");
    }

    fn spawn(&mut self) {
        let child =
            Command::new(binary()).args(&self.args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(
                |e| panic!("cannot run {} (install redis-server; scripts/test.sh does): {e}", binary()),
            );
        self.child = Some(child);
    }

    async fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Stops the server (SIGKILL): the store is gone, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(self.wait_listening().await, "redis-server did not restart");
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// A client connection for inspecting or tampering with the store.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// Every string key and its value, as the store holds them (the
    /// subject sets and the purge log of revocation are left out).
    pub async fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut conn = self.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
        let mut out = Vec::new();
        for k in keys {
            let kind: String = redis::cmd("TYPE").arg(&k).query_async(&mut conn).await.unwrap();
            if kind != "string" {
                continue;
            }
            let v: Option<Vec<u8>> = redis::cmd("GET").arg(&k).query_async(&mut conn).await.unwrap();
            out.push((k, v.unwrap_or_default()));
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
