//! Thread per core: with `runtime.workers` above one, connections are
//! served by that many single-threaded runtimes, each on a thread of its
//! own, handed out in turn by the accept loop. A connection, its requests,
//! its upstream connections and their timers then live on one thread: no
//! work stealing, no wake-up of another thread per request (the price of a
//! shared multi-threaded scheduler). The accept loop, the admin listener,
//! reloads and background refreshes stay on the main runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::watch;

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Turns true when the workers are dropped: their runtimes end (and
    /// with them whatever connection is still open).
    stop: watch::Sender<bool>,
}

impl Workers {
    /// Starts `n` worker threads, each with its single-threaded runtime.
    pub fn start(n: usize) -> std::io::Result<Arc<Workers>> {
        let (stop, stopped) = watch::channel(false);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new().name(format!("tokex-worker-{i}")).spawn(move || {
                rt.block_on(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                });
            })?;
        }
        Ok(Arc::new(Workers { handles, next: AtomicUsize::new(0), stop }))
    }

    /// Runs `task` on the next worker in turn.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len().max(1);
        match self.handles.get(i) {
            Some(handle) => drop(handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
