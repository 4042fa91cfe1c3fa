//! Purges in the shared store, and the purge log every replica reads.
//!
//! - A purge deletes the store entries it names: a subject's (the members of
//!   its set), a policy's or everything (`SCAN MATCH` over the keys), or
//!   given keys. These are operations of an operator or a security event,
//!   not of a request: each command has its own budget (`ADMIN_TIMEOUT`)
//!   and a failure never backs the request path off.
//! - The purge log (`<prefix>purges`, a Redis stream capped near
//!   `LOG_LENGTH` entries) carries each purge to the other replicas, which
//!   read it every `POLL` and purge their local caches. A replica that lost
//!   the store reads what it missed once back (if still in the log).

use std::time::{Duration, Instant};

use redis::Value;

use super::SharedStore;
use crate::exchange::index::Id;

/// Budget of one purge command.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// A purge walks the store for at most this long.
const PURGE_BUDGET: Duration = Duration::from_secs(30);
/// Keys deleted per command.
const BATCH: usize = 500;
/// Members of one subject set read at most.
const MAX_SET_MEMBERS: usize = 100_000;
/// Entries kept in the purge log (approximately).
const LOG_LENGTH: usize = 10_000;
/// Entries read from the log per poll.
const READ_COUNT: usize = 256;
/// Longest purge log message accepted.
const MAX_MESSAGE_BYTES: usize = 1024;

impl SharedStore {
    /// Runs one purge command within `ADMIN_TIMEOUT`, counted under `op`.
    async fn admin<T>(&self, op: &'static str, cmd: &redis::Cmd) -> Option<T>
    where
        T: redis::FromRedisValue,
    {
        let mut conn = self.connection();
        let started = Instant::now();
        let (out, label) = match tokio::time::timeout(ADMIN_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => (Some(v), "ok"),
            Ok(Err(e)) => {
                tracing::warn!(op, error = %e, "cache.shared: purge command failed");
                (None, "error")
            }
            Err(_) => (None, "timeout"),
        };
        self.metrics.shared_op(op, label, started.elapsed());
        out
    }

    /// Deletes `keys` and their leases: how many entries there were.
    /// `None` when the store did not answer.
    pub async fn purge_keys(&self, keys: &[String]) -> Option<u64> {
        let mut deleted = 0;
        for chunk in keys.chunks(BATCH) {
            let mut del = redis::cmd("DEL");
            let mut leases = redis::cmd("DEL");
            for k in chunk {
                del.arg(k);
                leases.arg(format!("{k}:lease"));
            }
            deleted += self.admin::<u64>("purge", &del).await?;
            self.admin::<u64>("purge", &leases).await?;
        }
        Some(deleted)
    }

    /// Deletes the entries exchanged for the subject `id` names (the live
    /// members of its set, read `BATCH` at a time), and its set.
    pub async fn purge_subject(&self, id: &Id) -> Option<u64> {
        let set = self.subject_set(id)?;
        // Only what tokex writes there: a planted member names no other key.
        let ours = format!("{}t:", self.prefix);
        let now = super::unix_ms();
        let mut deleted = 0;
        let mut offset = 0;
        while offset < MAX_SET_MEMBERS {
            let mut range = redis::cmd("ZRANGE");
            range.arg(&set).arg(now).arg("+inf").arg("BYSCORE").arg("LIMIT").arg(offset).arg(BATCH);
            let members: Vec<String> = self.admin("purge", &range).await?;
            let n = members.len();
            let keys: Vec<String> = members.into_iter().filter(|m| m.starts_with(&ours)).collect();
            deleted += self.purge_keys(&keys).await?;
            if n < BATCH {
                break;
            }
            offset += n;
        }
        self.admin::<u64>("purge", redis::cmd("DEL").arg(&set)).await?;
        Some(deleted)
    }

    /// Deletes every key matching `pattern` (`SCAN`, within `PURGE_BUDGET`):
    /// how many there were, counting subject sets and leases too.
    pub async fn purge_matching(&self, pattern: &str) -> Option<u64> {
        let give_up = Instant::now() + PURGE_BUDGET;
        let mut cursor = 0u64;
        let mut deleted = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            let (next, keys): (u64, Vec<String>) = self.admin("purge", &scan).await?;
            for chunk in keys.chunks(BATCH) {
                let mut del = redis::cmd("DEL");
                for k in chunk {
                    del.arg(k);
                }
                deleted += self.admin::<u64>("purge", &del).await?;
            }
            if next == 0 {
                return Some(deleted);
            }
            if Instant::now() >= give_up {
                tracing::warn!("cache.shared: purge stopped after {PURGE_BUDGET:?}: entries may remain");
                return Some(deleted);
            }
            cursor = next;
        }
    }

    fn log_key(&self) -> String {
        format!("{}purges", self.prefix)
    }

    /// Appends `message` to the purge log. `false` when the store did not take it.
    pub async fn announce(&self, message: &str) -> bool {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.log_key()).arg("MAXLEN").arg("~").arg(LOG_LENGTH).arg("*").arg("m").arg(message);
        self.admin::<String>("announce", &xadd).await.is_some()
    }

    /// The id of the log's last entry (`0-0` when empty): where a new
    /// replica starts reading.
    pub async fn log_end(&self) -> Option<String> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(self.log_key()).arg("+").arg("-").arg("COUNT").arg(1);
        let reply: Value = self.admin("announced", &cmd).await?;
        Some(entries(&reply).into_iter().next().map_or_else(|| "0-0".to_owned(), |(id, _)| id))
    }

    /// The log's entries after `after` (at most `READ_COUNT`): each one's id,
    /// and its message when it is one (`None`: junk, skipped by the reader,
    /// whose cursor still moves past it).
    pub async fn announced(&self, after: &str) -> Option<Vec<(String, Option<String>)>> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(READ_COUNT).arg("STREAMS").arg(self.log_key()).arg(after);
        let reply: Value = self.admin("announced", &cmd).await?;
        // [[stream, [entries]]] (RESP2) or {stream: [entries]} (RESP3); nil when none.
        let streams = match &reply {
            Value::Array(streams) => streams.iter().filter_map(|s| as_array(s)?.get(1)).collect(),
            Value::Map(pairs) => pairs.iter().map(|(_, v)| v).collect(),
            _ => Vec::new(),
        };
        Some(streams.into_iter().flat_map(entries).collect())
    }
}

fn as_array(v: &Value) -> Option<&Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) if b.len() <= MAX_MESSAGE_BYTES => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) if s.len() <= MAX_MESSAGE_BYTES => Some(s.clone()),
        _ => None,
    }
}

/// Stream entries `[[id, [field, value, ...]], ...]` as (id, the `m` field
/// when there is one of at most `MAX_MESSAGE_BYTES`); an entry without a
/// readable id is dropped.
fn entries(v: &Value) -> Vec<(String, Option<String>)> {
    let Some(list) = as_array(v) else { return Vec::new() };
    list.iter()
        .filter_map(|e| {
            let e = as_array(e)?;
            let id = text(e.first()?).filter(|id| id.len() <= 64)?;
            let message = e.get(1).and_then(as_array).and_then(|fields| {
                let kv = fields.chunks(2).find(|kv| kv.len() == 2 && text(&kv[0]).as_deref() == Some("m"))?;
                text(&kv[1])
            });
            Some((id, message))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn log_entries_are_read_strictly() {
        let good = Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("m"), bulk("v1 sub abc")])]);
        let no_m = Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("x"), bulk("y")])]);
        let odd = Value::Array(vec![bulk("3-0"), Value::Array(vec![bulk("m")])]);
        let big = Value::Array(vec![bulk("4-0"), Value::Array(vec![bulk("m"), bulk(&"x".repeat(5000))])]);
        let list = Value::Array(vec![good, no_m, odd, big, Value::Int(7)]);
        // Every entry with an id moves the reader on; only the first has a message.
        let read = entries(&list);
        assert_eq!(read[0], ("1-0".to_owned(), Some("v1 sub abc".to_owned())));
        assert_eq!(
            read[1..].iter().map(|(id, m)| (id.as_str(), m.is_none())).collect::<Vec<_>>(),
            [("2-0", true), ("3-0", true), ("4-0", true)]
        );
        assert!(entries(&Value::Nil).is_empty());
    }
}
