//! What plugins write through their host imports: their key-value stores
//! and their attempts' progress.
//!
//! A key-value call is answered in memory, without waiting for the writer.
//! The writer orders every write, so the embedded store can decide a call
//! the moment it is made: from the writes still on their way to the file
//! (the *unsettled* ones, kept here per key until their transaction has
//! committed), or else from the file, read on the calling thread by a
//! read-only connection of this module's own. Most calls never read the
//! file: the view counts the keys that exist by a 64-bit hash (loaded at
//! open, kept as writes are decided, about 20–40 bytes a key), so a key
//! whose hash it has never seen is known to be absent, which is the usual
//! case of a `set-if-absent`. A write that changes something is queued to
//! the writer under the key's lock, so the writes of one key reach the file
//! in the order they were decided.
//!
//! Nothing a plugin decides on such an answer leaves the host before the
//! write is durable:
//! - its attempt's completion is queued to the same writer after it, so it
//!   commits in the same transaction or a later one (a crash loses the write
//!   only together with the outcome, and the attempt runs again);
//! - its outbound requests wait for [`KvView::unsettled`] writes first
//!   ([`crate::store::Store::kv_durable`]), so no mail leaves on a decision
//!   the file does not hold yet. That covers a value another attempt wrote
//!   and this one read: it was queued before it could be read.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::command::{Command, Op, Reply};
use crate::job::JobId;
use crate::store::{KvWrite, StoreResult};

/// Locks over the unsettled writes, by key: calls on different keys rarely
/// wait for each other.
const SHARDS: usize = 16;
/// Read-only connections for the calls that must look in the file.
const READERS: usize = 2;

/// `scope` and `key` as one map key (neither holds a NUL).
type Id = String;

fn id(scope: &str, key: &str) -> Id {
    let mut id = String::with_capacity(scope.len() + 1 + key.len());
    id.push_str(scope);
    id.push('\0');
    id.push_str(key);
    id
}

/// The plugins' key-value stores as the next committed state will hold them.
pub(super) struct KvView {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    readers: Box<[Mutex<Connection>]>,
    next_reader: AtomicUsize,
    next_seq: AtomicU64,
    /// Writes answered but not yet committed (or failed).
    unsettled: AtomicUsize,
}

/// The keys whose hashes fall in one shard.
#[derive(Default)]
struct Shard {
    unsettled: HashMap<Id, Unsettled>,
    /// How many existing keys (in the file or about to be) have each hash:
    /// a hash missing here is a key that does not exist.
    existing: HashMap<u64, u32>,
}

impl Shard {
    fn may_exist(&self, hash: u64) -> bool {
        self.existing.contains_key(&hash)
    }

    fn count(&mut self, hash: u64, exists: bool) {
        if exists {
            *self.existing.entry(hash).or_default() += 1;
        } else if let Some(n) = self.existing.get_mut(&hash) {
            *n -= 1;
            if *n == 0 {
                self.existing.remove(&hash);
            }
        }
    }
}

/// The latest write of a key that its transaction has not committed yet.
struct Unsettled {
    seq: u64,
    /// None: deleted.
    value: Option<Arc<Vec<u8>>>,
}

/// A write decided in memory, on its way to the writer.
pub(super) struct Deferred {
    scope: String,
    key: String,
    /// What the key holds after it; None deletes it.
    value: Option<Arc<Vec<u8>>>,
    seq: u64,
    view: Arc<KvView>,
}

impl KvView {
    /// Opens the read-only connections on the database at `path`.
    pub(super) fn open(path: &Path, busy_timeout: std::time::Duration) -> StoreResult<KvView> {
        let readers = (0..READERS)
            .map(|_| {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(busy_timeout)?;
                Ok(Mutex::new(conn))
            })
            .collect::<StoreResult<Box<[Mutex<Connection>]>>>()?;
        let hasher = RandomState::new();
        let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::default()).collect();
        {
            let conn = lock(&readers[0]);
            let mut keys = conn.prepare("SELECT scope, key FROM plugin_kv")?;
            let mut rows = keys.query([])?;
            while let Some(row) = rows.next()? {
                let (scope, key): (String, String) = (row.get(0)?, row.get(1)?);
                let hash = hasher.hash_one(id(&scope, &key));
                shards[hash as usize % SHARDS].count(hash, true);
            }
        }
        Ok(KvView {
            shards: shards.into_iter().map(Mutex::new).collect(),
            hasher,
            readers,
            next_reader: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
            unsettled: AtomicUsize::new(0),
        })
    }

    /// Writes answered whose transaction has not committed yet.
    pub(super) fn unsettled(&self) -> usize {
        self.unsettled.load(Ordering::SeqCst)
    }

    /// The key's hash, and its shard locked.
    fn shard(&self, id: &str) -> (u64, MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(id);
        (hash, lock(&self.shards[hash as usize % SHARDS]))
    }

    /// The value of `scope`/`key`.
    pub(super) fn get(&self, scope: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let id = id(scope, key);
        let (hash, shard) = self.shard(&id);
        Ok(self
            .current(&shard, hash, &id, scope, key)?
            .map(|v| v.to_vec()))
    }

    /// Decides `write` now; if it changes anything, queues it to the writer
    /// through `permit` before the key's lock is let go. What it returns is
    /// what [`crate::store::Store::kv_write`] returns.
    pub(super) fn write(
        self: &Arc<Self>,
        scope: &str,
        key: &str,
        write: KvWrite,
        permit: mpsc::Permit<'_, Command>,
    ) -> StoreResult<bool> {
        let id = id(scope, key);
        let (hash, mut shard) = self.shard(&id);
        let existed = self.current(&shard, hash, &id, scope, key)?.is_some();
        let value = match write {
            KvWrite::Set(v) => Some(Arc::new(v)),
            KvWrite::SetIfAbsent(_) if existed => return Ok(false),
            KvWrite::SetIfAbsent(v) => Some(Arc::new(v)),
            KvWrite::Delete if !existed => return Ok(false),
            KvWrite::Delete => None,
        };
        if existed != value.is_some() {
            shard.count(hash, value.is_some());
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.unsettled.fetch_add(1, Ordering::SeqCst);
        shard.unsettled.insert(
            id,
            Unsettled {
                seq,
                value: value.clone(),
            },
        );
        // Nobody waits for this answer: the writer settles the write itself.
        let (reply, _) = oneshot::channel();
        permit.send(Command {
            op: Op::Kv(Deferred {
                scope: scope.to_owned(),
                key: key.to_owned(),
                value,
                seq,
                view: self.clone(),
            }),
            reply,
        });
        Ok(true)
    }

    /// The key's value: its unsettled write if it has one, else the file's.
    fn current(
        &self,
        shard: &Shard,
        hash: u64,
        id: &str,
        scope: &str,
        key: &str,
    ) -> StoreResult<Option<Arc<Vec<u8>>>> {
        if let Some(u) = shard.unsettled.get(id) {
            return Ok(u.value.clone());
        }
        if !shard.may_exist(hash) {
            return Ok(None);
        }
        // Not unsettled: the file holds the key's last write (it is
        // forgotten here only after its transaction committed).
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let conn = (0..READERS)
            .find_map(|i| self.readers[(start + i) % READERS].try_lock().ok())
            .unwrap_or_else(|| lock(&self.readers[start % READERS]));
        let value: Option<Vec<u8>> = conn
            .prepare_cached("SELECT value FROM plugin_kv WHERE scope = ?1 AND key = ?2")?
            .query_row(params![scope, key], |row| row.get(0))
            .optional()?;
        Ok(value.map(Arc::new))
    }
}

/// A poisoned lock only means another thread panicked while holding it:
/// what it guards is a map of plain values, still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Deferred {
    /// The writer's statement for it, in the batch's transaction.
    pub(super) fn apply(&self, conn: &Connection) -> StoreResult<bool> {
        let changed = match &self.value {
            Some(value) => conn
                .prepare_cached(
                    "INSERT INTO plugin_kv (scope, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![self.scope, self.key, value.as_slice()])?,
            None => conn
                .prepare_cached("DELETE FROM plugin_kv WHERE scope = ?1 AND key = ?2")?
                .execute(params![self.scope, self.key])?,
        };
        Ok(changed > 0)
    }

    /// Once its transaction has committed (or failed): the file now answers
    /// for the key, unless a later write of it is unsettled.
    pub(super) fn settle(self, result: StoreResult<Reply>) {
        let id = id(&self.scope, &self.key);
        {
            let (hash, mut shard) = self.view.shard(&id);
            if shard.unsettled.get(&id).is_some_and(|u| u.seq == self.seq) {
                shard.unsettled.remove(&id);
            }
            if result.is_err() {
                // The file may still hold the key: never again say it is
                // absent without looking.
                shard.count(hash, true);
            }
        }
        self.view.unsettled.fetch_sub(1, Ordering::SeqCst);
        match result {
            Ok(Reply::Applied(true)) => {}
            // Decided in memory as a change, so the file must change too.
            Ok(_) => tracing::error!(
                plugin = %self.scope,
                key = %self.key,
                "a key-value write changed nothing in the file: memory and file disagreed"
            ),
            Err(e) => {
                metrics::counter!(crate::telemetry::PLUGIN_KV_WRITE_ERRORS).increment(1);
                tracing::error!(
                    plugin = %self.scope,
                    key = %self.key,
                    error = %e,
                    "a key-value write answered to a plugin could not be written"
                );
            }
        }
    }
}

/// A running attempt's progress, fenced by its lease.
pub(super) fn progress(conn: &Connection, id: JobId, token: i64, percent: u8) -> StoreResult<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET progress = ?3
             WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
        )?
        .execute(params![id, token, percent])?;
    Ok(changed > 0)
}
