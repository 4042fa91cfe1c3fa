//! Values built from files that are re-read when they change: the
//! listener's certificate and key (and client CA), a route's backend CA and
//! client certificate. cert-manager and kubelet replace such files through a
//! symlink swap, so the files' *content* is compared, not their timestamps.
//!
//! The check is lazy: whoever asks for the value (a new client connection,
//! a new backend connection) looks at the files when the last look is at
//! least [`CHECK_EVERY`] old — one thread at a time, the others keep using
//! the current value. A new set that does not build (a key that does not
//! match its certificate, a half-written file) is logged at error and the
//! current value kept; the same bad content is not tried again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::metrics::Counters;

/// Files are looked at no more often than this.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Largest file read (a PEM bundle of many CAs is well below).
const MAX_FILE: u64 = 1024 * 1024;

type Build<T> = Box<dyn Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync>;

pub struct FileBacked<T> {
    /// For logs: `listen.tls`, `routes[orders].upstream_tls`.
    what: String,
    paths: Vec<PathBuf>,
    build: Build<T>,
    current: RwLock<Arc<T>>,
    /// Digest of the content last built (or refused).
    seen: Mutex<[u8; 32]>,
    started: Instant,
    /// Milliseconds since `started` of the next look.
    next_check: AtomicU64,
    checking: AtomicBool,
    /// `ok` / `rejected`, counted per reload.
    reloads: Counters,
}

impl<T> FileBacked<T> {
    /// Reads the files and builds the first value; an error names the cause.
    pub fn new(
        what: impl Into<String>,
        paths: Vec<PathBuf>,
        reloads: Counters,
        build: impl Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let what = what.into();
        let contents = read_all(&paths)?;
        let value = build(&contents).map_err(|e| format!("{what}: {e}"))?;
        Ok(FileBacked {
            what,
            paths,
            build: Box::new(build),
            current: RwLock::new(Arc::new(value)),
            seen: Mutex::new(digest(&contents)),
            started: Instant::now(),
            next_check: AtomicU64::new(CHECK_EVERY.as_millis() as u64),
            checking: AtomicBool::new(false),
            reloads,
        })
    }

    /// The current value, after a look at the files when one is due.
    pub fn get(&self) -> Arc<T> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now >= self.next_check.load(Ordering::Relaxed) && !self.checking.swap(true, Ordering::Acquire) {
            self.next_check.store(now + CHECK_EVERY.as_millis() as u64, Ordering::Relaxed);
            self.check();
            self.checking.store(false, Ordering::Release);
        }
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Looks at the files now; true when a new value was installed.
    pub fn check(&self) -> bool {
        let contents = match read_all(&self.paths) {
            Ok(c) => c,
            Err(e) => {
                // A file missing mid-swap is usual: say it once per content change.
                tracing::debug!(what = %self.what, error = %e, "cannot read the files; keeping the current ones");
                return false;
            }
        };
        let d = digest(&contents);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == d {
            return false;
        }
        *seen = d;
        match (self.build)(&contents) {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
                self.reloads.inc("ok");
                tracing::info!(what = %self.what, "certificate files changed: reloaded");
                true
            }
            Err(e) => {
                self.reloads.inc("rejected");
                tracing::error!(what = %self.what, error = %e, "certificate files changed but are unusable; keeping the current ones");
                false
            }
        }
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    paths
        .iter()
        .map(|p| {
            let len = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?.len();
            if len > MAX_FILE {
                return Err(format!("{} is larger than {MAX_FILE} bytes", p.display()));
            }
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        })
        .collect()
}

fn digest(contents: &[Vec<u8>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for c in contents {
        h.update((c.len() as u64).to_be_bytes());
        h.update(c);
    }
    h.finalize().into()
}

/// A shared handle.
pub type Shared<T> = Arc<FileBacked<T>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_on_content_change_and_keeps_the_old_value_on_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("tokex-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("v");
        std::fs::write(&file, "1").unwrap();
        let parse =
            |c: &[Vec<u8>]| std::str::from_utf8(&c[0]).ok().and_then(|s| s.parse::<u32>().ok()).ok_or("nan".to_owned());
        let fb = FileBacked::new("test", vec![file.clone()], Counters::default(), parse).unwrap();
        assert_eq!(*fb.get(), 1);
        std::fs::write(&file, "2").unwrap();
        assert!(fb.check());
        assert_eq!(*fb.get(), 2);
        std::fs::write(&file, "x").unwrap();
        assert!(!fb.check(), "a bad file is refused");
        assert_eq!(*fb.get(), 2, "and the old value kept");
        std::fs::remove_file(&file).unwrap();
        assert!(!fb.check(), "a missing file keeps the value");
        assert_eq!(*fb.get(), 2);
        std::fs::write(&file, "3").unwrap();
        assert!(fb.check());
        assert_eq!(*fb.get(), 3);
        assert!(FileBacked::new("test", vec![dir.join("none")], Counters::default(), parse).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
