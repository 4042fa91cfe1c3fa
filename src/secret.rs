//! Secrets and tokens held by the gateway: a type that never prints its
//! value, and file-backed secrets re-read when the file changes (Kubernetes
//! rotates projected tokens and secrets by swapping a symlink).

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::SecretSource;

/// A secret string. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Arc<str>);

impl SecretString {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        SecretString(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Largest secret or token file read (a projected service-account token is ~1 KiB).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// A secret from config: inline, or a file checked for change on each use.
/// Uses are on the exchange (cache-miss) path only, where one `stat` is cheap.
pub struct Secret {
    inner: Inner,
}

enum Inner {
    Static(SecretString),
    File(WatchedFile<SecretString>),
}

/// A value derived from a file (a secret, a parsed private key), derived
/// again only when the file changes: modification time, inode or length.
pub struct WatchedFile<T> {
    path: PathBuf,
    state: Mutex<Option<(Stamp, T)>>,
}

type Stamp = (i64, i64, u64, u64); // mtime s, mtime ns, inode, length

impl<T: Clone> WatchedFile<T> {
    pub fn new(path: PathBuf) -> Self {
        WatchedFile { path, state: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current value. `load(path, length)` runs when the file changed
    /// since the last successful load; a failed load is retried next time.
    pub fn get<E: From<io::Error>>(&self, load: impl FnOnce(&Path, u64) -> Result<T, E>) -> Result<T, E> {
        let meta = std::fs::metadata(&self.path)?;
        let stamp = (meta.mtime(), meta.mtime_nsec(), meta.ino(), meta.len());
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, value)) = guard.as_ref().filter(|(s, _)| *s == stamp) {
            return Ok(value.clone());
        }
        let value = load(&self.path, meta.len())?;
        *guard = Some((stamp, value.clone()));
        Ok(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Static(_) => f.write_str("Secret(inline)"),
            Inner::File(file) => write!(f, "Secret(file {})", file.path().display()),
        }
    }
}

impl Secret {
    pub fn from_source(source: &SecretSource) -> Self {
        let inner = match source {
            SecretSource::Inline(v) => Inner::Static(SecretString::new(v.as_str())),
            SecretSource::File(p) => Inner::File(WatchedFile::new(p.clone())),
        };
        Secret { inner }
    }

    /// Reads the file now, so a missing or empty file is reported at start.
    pub fn preload(&self) -> io::Result<()> {
        self.get().map(|_| ())
    }

    /// The current value; a changed file is re-read.
    pub fn get(&self) -> io::Result<SecretString> {
        match &self.inner {
            Inner::Static(v) => Ok(v.clone()),
            Inner::File(file) => file.get(read_secret_file),
        }
    }
}

/// Reads a secret file of at most 64 KiB, trimmed; empty is an error.
pub fn read_secret_file(path: &Path, len: u64) -> io::Result<SecretString> {
    if len > MAX_SECRET_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {MAX_SECRET_FILE} bytes", path.display()),
        ));
    }
    let text = std::fs::read_to_string(path)?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is empty", path.display())));
    }
    Ok(SecretString::new(trimmed))
}

/// The DER of the first `PRIVATE KEY` block of a PEM file.
pub fn pkcs8_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls_pemfile::Item;
    for item in rustls_pemfile::read_all(&mut &pem[..]) {
        match item.map_err(|e| format!("not a PEM file: {e:?}"))? {
            Item::Pkcs8Key(der) => return Ok(der.secret_pkcs8_der().to_vec()),
            Item::Sec1Key(_) | Item::Pkcs1Key(_) => {
                return Err(
                    "the key is not PKCS#8; convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8.pem`"
                        .into(),
                )
            }
            _ => continue,
        }
    }
    Err("no `PRIVATE KEY` (PKCS#8) block found".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = SecretString::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }

    #[test]
    fn file_secret_follows_changes() {
        let dir = std::env::temp_dir().join(format!("tokex-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first\n").unwrap();
        let s = Secret::from_source(&SecretSource::File(path.clone()));
        assert_eq!(s.get().unwrap().expose(), "first");
        // Replace the file the way Kubernetes does: a new inode renamed over the old.
        let tmp = dir.join("token.new");
        std::fs::write(&tmp, "second").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(s.get().unwrap().expose(), "second");
        std::fs::write(&path, "").unwrap();
        assert!(s.get().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
