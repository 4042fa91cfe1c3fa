//! Where every log line goes: one in-memory buffer, written to stderr by a
//! thread of its own in batches, so a request pays for a copy into memory,
//! not a `write(2)`. Lines keep their order (access lines and every other
//! event share the buffer); a batch is written at most [`WINDOW`] after its
//! first line. Warnings and errors are written at once, with everything
//! before them. When the writer falls behind (stderr blocked), the buffer is
//! bounded: past [`MAX_PENDING`] the caller writes it out itself, as an
//! unbuffered logger would. `main` calls [`flush`] before it returns; a
//! panic of the main thread or an abort loses at most [`WINDOW`] of lines.

use std::io::Write;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How long the first line of a batch may wait for company.
pub const WINDOW: Duration = Duration::from_millis(2);
/// Bytes buffered at most before a caller writes them out itself.
pub const MAX_PENDING: usize = 1 << 20;

struct Sink {
    pending: Mutex<Vec<u8>>,
    /// The writer waits here for a first line.
    filled: Condvar,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts the writer thread; lines pushed before are written directly.
pub fn start() -> std::io::Result<()> {
    if SINK.get().is_some() {
        return Ok(());
    }
    let sink = SINK.get_or_init(|| Sink { pending: Mutex::new(Vec::with_capacity(64 << 10)), filled: Condvar::new() });
    std::thread::Builder::new().name("tokex-log".into()).spawn(move || writer(sink)).map(drop)
}

fn writer(sink: &'static Sink) {
    let mut out = Vec::with_capacity(64 << 10);
    loop {
        {
            let mut pending = sink.pending.lock().unwrap_or_else(|p| p.into_inner());
            while pending.is_empty() {
                pending = sink.filled.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
        }
        std::thread::sleep(WINDOW);
        // stderr first, then the buffer (as `push` does): a batch taken is
        // written before anything pushed after it.
        let err = std::io::stderr();
        let mut err = err.lock();
        std::mem::swap(&mut *sink.pending.lock().unwrap_or_else(|p| p.into_inner()), &mut out);
        // Nothing sensible to do when stderr is gone.
        let _ = err.write_all(&out);
        drop(err);
        out.clear();
        if out.capacity() > 4 * MAX_PENDING {
            out = Vec::with_capacity(64 << 10);
        }
    }
}

fn write_out(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // Nothing sensible to do when stderr is gone.
    let _ = std::io::stderr().lock().write_all(bytes);
}

/// Appends complete lines; `urgent` (a warning or an error) writes them,
/// and everything before, at once.
pub fn push(lines: &[u8], urgent: bool) {
    let Some(sink) = SINK.get() else {
        write_out(lines);
        return;
    };
    let mut pending = sink.pending.lock().unwrap_or_else(|p| p.into_inner());
    if urgent || pending.len() + lines.len() > MAX_PENDING {
        drop(pending);
        let err = std::io::stderr();
        let mut err = err.lock();
        let out = {
            let mut pending = sink.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.extend_from_slice(lines);
            std::mem::take(&mut *pending)
        };
        let _ = err.write_all(&out);
        return;
    }
    let was_empty = pending.is_empty();
    pending.extend_from_slice(lines);
    drop(pending);
    if was_empty {
        sink.filled.notify_one();
    }
}

/// Writes whatever is buffered (at exit).
pub fn flush() {
    push(b"", true);
}

/// The `tracing` writer: every event through the buffer; warnings and
/// errors at once.
#[derive(Clone, Copy)]
pub struct Writer {
    urgent: bool,
}

impl Writer {
    pub fn new(urgent: bool) -> Self {
        Writer { urgent }
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        push(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Writer;

    fn make_writer(&'a self) -> Writer {
        *self
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Writer {
        Writer { urgent: *meta.level() <= tracing::Level::WARN }
    }
}
