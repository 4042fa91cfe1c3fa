//! The `tokex` binary run as a child process with JSON logs collected.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::now;

pub const BIN: &str = env!("CARGO_BIN_EXE_tokex");

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tokex-{tag}-{}-{}", std::process::id(), now()));
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
