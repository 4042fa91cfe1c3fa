//! The `tokex` binary run as a child process with JSON logs collected.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::now;

pub const BIN: &str = env!("CARGO_BIN_EXE_tokex");

/// A fresh directory: unique per call (tests of one binary run in parallel,
/// and two may ask for the same tag within the same second).
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("tokex-{tag}-{}-{}-{n}", std::process::id(), now()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Proc {
    pub child: Child,
    pub addr: String,
    pub admin: String,
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    pub async fn start(config: &Path, log: &str) -> Proc {
        let mut child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(config)
            .env("TOKEX_LOG", log)
            .env("TOKEX_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let (lines, tx) = (lines.clone(), tx.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        let _ = tx.send(v);
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(v) = rx.recv().await {
                if v["message"] == "tokex listening" {
                    return v;
                }
            }
            panic!("tokex exited before listening");
        })
        .await
        .expect("tokex starts within 10 s");
        let addr = started["addr"].as_str().unwrap().to_owned();
        let admin = started["admin"].as_str().unwrap().trim_start_matches("Some(").trim_end_matches(')').to_owned();
        Proc { child, addr: format!("http://{addr}"), admin: format!("http://{admin}"), lines }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args([&format!("-{sig}"), &pid]).status().unwrap().success());
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let file = dir.join("tokex.yaml");
    std::fs::write(
        &file,
        format!("listen: {{ address: \"127.0.0.1:0\" }}\nadmin: {{ address: \"127.0.0.1:0\" }}\n{body}"),
    )
    .unwrap();
    file
}

/// `tokex dev-sts` run as its users run it: on a free port with `args`,
/// its stdout read until a line for which `last` is true (20 s at most).
pub struct DevStsProcess {
    pub child: Child,
    pub port: u16,
    /// The lines printed, up to and with the one `last` accepted.
    pub banner: Vec<String>,
    /// Kept open: what dev-sts prints after that line must not meet a
    /// closed pipe.
    _stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl DevStsProcess {
    pub async fn start(args: &[&str], last: impl Fn(&str) -> bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new(BIN)
            .args(["dev-sts", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env_remove("TOKEX_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let done = last(&line);
                banner.push(line);
                if done {
                    break;
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the expected line was not printed: {banner:?}");
        DevStsProcess { child, port, banner, _stdout: lines }
    }

    /// SIGTERM, then a clean exit within 10 s.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status:?}");
    }
}
