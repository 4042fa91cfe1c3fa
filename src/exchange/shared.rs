//! The shared store (`cache.shared`): a Redis-protocol server (Redis 7,
//! Valkey 8) holding sealed entries (see [`super::seal`]) for every
//! replica. Each operation has the configured budget; an error or a slow
//! answer is a miss, never a failed request. The connection is made lazily
//! and re-made in the background by the client's connection manager.

mod purge;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, SetExpiry, SetOptions};

use super::index::Id;
use crate::config::{SecretSource, SharedCacheConfig};
use crate::metrics::Metrics;
use crate::secret::{Secret, SecretString};

/// Largest value read back (a sealed token is at most ~16 KiB).
const MAX_VALUE_BYTES: usize = 20 * 1024;
/// After a failed or slow operation the store is left alone this long, so
/// an outage costs requests nothing (the connection is re-made meanwhile).
const BACKOFF: Duration = Duration::from_secs(1);

pub struct SharedStore {
    /// The connection and the password it was made with.
    conn: Mutex<(ConnectionManager, Option<SecretString>)>,
    /// Re-read when the file changes (a new password, a new connection).
    password: Option<Secret>,
    timeout: Duration,
    prefix: String,
    /// Keys the store keys, when configured (re-read when the file changes).
    key_secret: Option<Secret>,
    metrics: Arc<Metrics>,
    /// The settings it was built from.
    pub settings: SharedCacheConfig,
    /// Milliseconds after `epoch` until which the store is not asked.
    down_until: AtomicU64,
    /// Milliseconds after `epoch` of the last value written (a replica
    /// that wrote just before it read a purge repeats the purge's store part).
    last_put: AtomicU64,
    epoch: Instant,
}

/// What a lease attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This replica exchanges; the others wait for its value.
    Taken,
    /// Another replica is exchanging.
    Held,
    /// The store did not answer: exchange locally.
    Unavailable,
}

/// A client for `cfg` with this password (reads the CA file).
fn client(cfg: &SharedCacheConfig, password: Option<&SecretString>) -> Result<redis::Client, String> {
    let info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(cfg.url.as_str())
        .map_err(|e| format!("cache.shared.url: {e}"))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &cfg.username {
        settings = settings.set_username(user);
    }
    if let Some(p) = password {
        settings = settings.set_password(p.expose());
    }
    let info = info.set_redis_settings(settings);
    match &cfg.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("cache.shared.ca_file {}: {e}", path.display()))?;
            let n = rustls_pemfile::certs(&mut pem.as_slice()).filter(|c| c.is_ok()).count();
            if n == 0 {
                return Err(format!("cache.shared.ca_file {}: holds no PEM certificate", path.display()));
            }
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
            redis::Client::build_with_tls(info, certs)
        }
        None => redis::Client::open(info),
    }
    .map_err(|e| format!("cache.shared: {e}"))
}

/// A connection manager: lazy (nothing is sent until the first operation),
/// re-connecting in the background.
fn manager(cfg: &SharedCacheConfig, password: Option<&SecretString>) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.timeout.max(Duration::from_millis(200))))
        // Our own per-operation deadline decides (and labels) a slow answer.
        .set_response_timeout(Some(cfg.timeout * 2))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client(cfg, password)?, config).map_err(|e| format!("cache.shared: {e}"))
}

fn secrets(cfg: &SharedCacheConfig) -> Result<(Option<Secret>, Option<Secret>), String> {
    let password = cfg.password.as_ref().map(Secret::from_source);
    if let Some(p) = &password {
        p.preload().map_err(|e| format!("cache.shared password: {e}"))?;
    }
    let key_secret = cfg.key_secret_file.as_ref().map(|p| Secret::from_source(&SecretSource::File(p.clone())));
    if let Some(s) = &key_secret {
        s.preload().map_err(|e| format!("cache.shared.key_secret_file: {e}"))?;
    }
    Ok((password, key_secret))
}

impl SharedStore {
    /// What `tokex check` can tell without a runtime: the files are
    /// readable and the URL and CA make a client.
    pub fn check(cfg: &SharedCacheConfig) -> Result<(), String> {
        let (password, _) = secrets(cfg)?;
        let password = password.map(|p| p.get()).transpose().map_err(|e| format!("cache.shared password: {e}"))?;
        client(cfg, password.as_ref()).map(|_| ())
    }

    /// Builds the client (within a tokio runtime); nothing is sent until
    /// the first operation.
    pub fn new(cfg: &SharedCacheConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let (password, key_secret) = secrets(cfg)?;
        let current =
            password.as_ref().map(|p| p.get()).transpose().map_err(|e| format!("cache.shared password: {e}"))?;
        let conn = manager(cfg, current.as_ref())?;
        Ok(SharedStore {
            conn: Mutex::new((conn, current)),
            password,
            timeout: cfg.timeout,
            prefix: cfg.key_prefix.clone(),
            key_secret,
            metrics,
            settings: cfg.clone(),
            down_until: AtomicU64::new(0),
            last_put: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The connection, re-made when the password file has changed.
    fn connection(&self) -> ConnectionManager {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock: a request holding an older value never
        // replaces a newer connection.
        let now = self.password.as_ref().and_then(|p| p.get().ok());
        if now.is_some() && guard.1 != now {
            match manager(&self.settings, now.as_ref()) {
                Ok(conn) => {
                    tracing::info!("cache.shared: the password file changed; reconnecting with the new password");
                    *guard = (conn, now);
                }
                Err(e) => tracing::warn!(error = %e, "cache.shared: cannot reconnect with the new password"),
            }
        }
        guard.0.clone()
    }

    /// The deployment secret keying store keys: `Err` while
    /// `key_secret_file` cannot be read (the store is then not used: never
    /// an unkeyed key in its place).
    fn secret(&self) -> Result<Option<SecretString>, ()> {
        match &self.key_secret {
            Some(s) => s.get().map(Some).map_err(|e| {
                tracing::warn!(error = %e, "cache.shared.key_secret_file cannot be read: the store is not used");
                self.metrics.shared_count("key", "error");
            }),
            None => Ok(None),
        }
    }

    /// The store key of a subject under a policy (see [`super::seal::store_key`]).
    pub fn key(&self, subject_sha256: &[u8; 32], policy_digest: &[u8; 32]) -> Option<String> {
        let secret = self.secret().ok()?;
        let secret = secret.as_ref().map(|s| s.expose().as_bytes());
        Some(super::seal::store_key(&self.prefix, secret, subject_sha256, policy_digest))
    }

    /// The store key of the set of one subject's store keys.
    fn subject_set(&self, id: &Id) -> Option<String> {
        let secret = self.secret().ok()?;
        Some(super::seal::subject_set(&self.prefix, secret.as_ref().map(|s| s.expose().as_bytes()), id))
    }

    /// A `SCAN MATCH` pattern for every store key of a policy.
    pub fn policy_pattern(&self, policy_digest: &[u8; 32]) -> Option<String> {
        let secret = self.secret().ok()?;
        let prefix = super::seal::policy_prefix("", secret.as_ref().map(|s| s.expose().as_bytes()), policy_digest);
        Some(format!("{}{prefix}*", glob_escape(&self.prefix)))
    }

    /// A `SCAN MATCH` pattern for every entry tokex keeps in the store.
    pub fn all_pattern(&self) -> String {
        format!("{}[ts]:*", glob_escape(&self.prefix))
    }

    /// The deadline of a request's store operations: one `timeout` in all.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs one operation by `deadline` (and within `timeout`), counting its
    /// result. While backing off after a failure, nothing is sent.
    async fn op<T>(
        &self,
        op: &'static str,
        deadline: Instant,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
        result: impl FnOnce(&T) -> &'static str,
    ) -> Option<T> {
        // Writes that finish what a request started (its value, its lease)
        // are sent even while backing off: a lease left behind would make
        // the other replicas wait.
        let finishing = matches!(op, "put" | "release" | "delete");
        if !finishing && self.now_ms() < self.down_until.load(Ordering::Relaxed) {
            self.metrics.shared_count(op, "skipped");
            return None;
        }
        let started = Instant::now();
        let by = deadline.min(started + self.timeout);
        let (out, label) = match tokio::time::timeout_at(by.into(), f).await {
            Ok(Ok(v)) => {
                let label = result(&v);
                (Some(v), label)
            }
            Ok(Err(_)) => (None, "error"),
            Err(_) => (None, "timeout"),
        };
        if out.is_none() {
            let until = self.now_ms().saturating_add(u64::try_from(BACKOFF.as_millis()).unwrap_or(1000));
            self.down_until.fetch_max(until, Ordering::Relaxed);
        }
        self.metrics.shared_op(op, label, started.elapsed());
        out
    }

    /// The sealed value under `key`, if any (and not oversized).
    /// At most `MAX_VALUE_BYTES + 1` bytes are read (`GETRANGE`): a huge
    /// value planted in the store costs nothing; it is a miss.
    pub async fn get(&self, key: &str, deadline: Instant) -> Option<Vec<u8>> {
        let mut conn = self.connection();
        let mut cmd = redis::cmd("GETRANGE");
        cmd.arg(key).arg(0).arg(MAX_VALUE_BYTES);
        let value: Vec<u8> = self
            .op("get", deadline, cmd.query_async::<Vec<u8>>(&mut conn), |v| if v.is_empty() { "miss" } else { "hit" })
            .await?;
        (!value.is_empty() && value.len() <= MAX_VALUE_BYTES).then_some(value)
    }

    /// Stores `value` under `key` for `ttl` (never longer than the token
    /// lives), and adds `key` to the sets of the `subjects` it was exchanged
    /// for, in one transaction. A set is sorted by its members' expiry: the
    /// expired ones go with each write, and the set lives as long as its
    /// longest member.
    pub async fn put(&self, key: &str, value: &[u8], ttl: Duration, subjects: &[Option<Id>]) {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return;
        }
        self.last_put.store(self.now_ms().max(1), Ordering::Relaxed);
        let now = unix_ms();
        let mut conn = self.connection();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("SET").arg(key).arg(value).arg("PX").arg(ms).ignore();
        for set in subjects.iter().flatten().filter_map(|id| self.subject_set(id)) {
            pipe.cmd("ZADD").arg(&set).arg(now.saturating_add(ms)).arg(key).ignore();
            pipe.cmd("ZREMRANGEBYSCORE").arg(&set).arg("-inf").arg(now).ignore();
            // A new set gets the entry's lifetime; a longer one extends it.
            pipe.cmd("PEXPIRE").arg(&set).arg(ms).arg("NX").ignore();
            pipe.cmd("PEXPIRE").arg(&set).arg(ms).arg("GT").ignore();
        }
        self.op("put", self.deadline(), pipe.query_async::<()>(&mut conn), |_| "ok").await;
    }

    /// Whether this replica wrote a value within `d`.
    pub fn wrote_within(&self, d: Duration) -> bool {
        let last = self.last_put.load(Ordering::Relaxed);
        last > 0 && self.now_ms().saturating_sub(last) <= u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    /// Tries to take the exchange lease of `key` for `ttl` (`SET NX PX`).
    pub async fn lease(&self, key: &str, ttl: Duration, deadline: Instant) -> Lease {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.connection();
        let opts = SetOptions::default().conditional_set(redis::ExistenceCheck::NX).with_expiration(SetExpiry::PX(ms));
        let lease_key = format!("{key}:lease");
        let taken = self
            .op("lease", deadline, conn.set_options::<_, _, Option<String>>(&lease_key, 1, opts), |v| {
                if v.is_some() {
                    "ok"
                } else {
                    "held"
                }
            })
            .await;
        match taken {
            Some(Some(_)) => Lease::Taken,
            Some(None) => Lease::Held,
            None => Lease::Unavailable,
        }
    }

    /// Sets a held lease to run out `ttl` from now: renewed while its
    /// exchange runs, cut short once the value is stored (long enough for
    /// a replica that just missed the value to find the lease and read again).
    pub async fn set_lease_ttl(&self, key: &str, ttl: Duration, why: &'static str) {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut conn = self.connection();
        self.op("release", self.deadline(), conn.pexpire::<_, ()>(format!("{key}:lease"), ms), |_| why).await;
    }

    /// Gives a lease back (its exchange failed or was abandoned).
    pub async fn release(&self, key: &str) {
        let mut conn = self.connection();
        self.op("release", self.deadline(), conn.del::<_, ()>(format!("{key}:lease")), |_| "ok").await;
    }

    /// Counts a value that was read but did not open (another key's,
    /// altered, another format): a miss.
    pub fn rejected(&self) {
        self.metrics.shared_count("get", "rejected");
    }

    /// Removes the entry under `key` and its lease (a token the backend refused).
    pub async fn delete(&self, key: &str) {
        let mut conn = self.connection();
        self.op("delete", self.deadline(), conn.del::<_, ()>(&[key.to_owned(), format!("{key}:lease")]), |_| "ok")
            .await;
    }
}

/// `s` with the `SCAN MATCH` glob characters escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Unix time in milliseconds (scores of the subject sets).
pub(crate) fn unix_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}
