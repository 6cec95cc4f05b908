//! The Raft log and the registry state machine, on disk in one redb database.
//!
//! Layout (`<data-dir>/registry.redb`):
//! - `meta`: the store format, the federation and node id this directory belongs to,
//!   the vote, the committed and last purged log ids (serde-JSON values).
//! - `log`: log index → openraft `Entry` (serde-JSON).
//! - `snapshot`: the latest snapshot's openraft meta and its data, which is exactly
//!   flotilla-core's versioned snapshot format (`State::to_snapshot`).
//!
//! The state machine lives in memory and is durable through the log and snapshots:
//! on open it is restored from the stored snapshot and openraft re-applies the
//! committed entries after it. Every write that Raft acknowledges (append, vote,
//! truncate, purge, snapshot) is committed with fsync unless the store was opened
//! with `fsync: false`; the committed log id, a replay hint, rides along without one.
//! The newest log entries are also kept in memory for replication reads.
//!
//! Snapshots are built without blocking writes: the state is shared as an
//! `Arc<State>`, so a snapshot takes a reference under a short lock and serializes it
//! while `apply` goes on (copy-on-write: the first apply after that copies the state
//! once instead of waiting).

use crate::error::{Error, Result};
use crate::types::{
    Entry, LogId, NodeId, Outcome, Outcomes, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, Vote,
};
use flotilla_core::State;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, StorageIOError,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshot");

/// The layout this build writes and reads.
pub const STORE_FORMAT: u32 = 1;
/// The database file inside the data directory.
pub const DB_FILE: &str = "registry.redb";
/// The data directory's PKI subdirectory (identity files), allowed before the store.
pub const PKI_DIR: &str = "pki";

const K_FORMAT: &str = "format";
const K_FEDERATION: &str = "federation";
const K_NODE_ID: &str = "node_id";
const K_MTLS: &str = "served_over_mtls";
const K_VOTE: &str = "vote";
const K_COMMITTED: &str = "committed";
const K_PURGED: &str = "last_purged";
const K_SNAP_META: &str = "meta";
const K_SNAP_DATA: &str = "data";

/// How to open a data directory.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// The federation this server belongs to; a directory of another is refused.
    pub federation: String,
    /// This server's id; `None` takes the stored one, or makes a new one.
    pub node_id: Option<NodeId>,
    /// Commit every acknowledged write with fsync (the default; turn off only for
    /// tests). Off, one commit in [`DURABLE_EVERY`] is still fsynced, so that redb
    /// can release what the others freed.
    pub fsync: bool,
    /// The server authenticates its peers (mTLS). Once a directory has been served
    /// so, it is never served in plaintext (without authorization) again.
    pub mtls: bool,
    /// The database's page cache, in bytes. redb's own default (1 GiB) would let the
    /// cache grow with the log file; the state is read from memory, so pages are
    /// only needed for appends, purges and snapshots.
    pub cache_bytes: usize,
    /// Test-only: a disk that fills up (see [`StorageFaults`]); `None` in production.
    pub faults: Option<StorageFaults>,
}

/// A test seam that plays a full disk: while it is full, every write transaction
/// of the store fails, as redb's would with `ENOSPC`. Reads go on.
#[derive(Debug, Clone, Default)]
pub struct StorageFaults(Arc<std::sync::atomic::AtomicBool>);

impl StorageFaults {
    pub fn fill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn free(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    fn full(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The page cache a store gets unless configured otherwise.
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>, federation: impl Into<String>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            federation: federation.into(),
            node_id: None,
            fsync: true,
            mtls: false,
            cache_bytes: DEFAULT_CACHE_BYTES,
            faults: None,
        }
    }
}

/// An opened data directory: its identity, the log store and the state machine.
#[derive(Debug)]
pub struct Opened {
    pub node_id: NodeId,
    pub federation: String,
    pub log: LogStore,
    pub state_machine: StateMachineStore,
}

impl Opened {
    /// A handle that tells when every user of this store's database has let go of
    /// it, so that the data directory can be opened again.
    pub fn release(&self) -> StoreRelease {
        StoreRelease(self.log.io.closed.clone())
    }
}

/// Tells when a store's database file is closed (see [`Opened::release`]). Raft's
/// storage tasks and in-flight commits hold the database a little past Raft's own
/// shutdown; a server restarted in the same process must wait for them.
#[derive(Debug, Clone)]
pub struct StoreRelease(Arc<std::sync::atomic::AtomicBool>);

impl StoreRelease {
    /// Whether the database is closed.
    pub fn is_released(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until the database is closed, at most `within`; whether it is.
    pub async fn wait(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_released() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }
}

/// Opens (or creates) a data directory, checking that it is a flotilla registry of this
/// federation and node. Fails with a clear error, never a panic, on anything else.
pub fn open(config: &StoreConfig) -> Result<Opened> {
    let dir = &config.data_dir;
    let file = dir.join(DB_FILE);
    let data_dir_err = |message: String| Error::DataDir {
        path: dir.clone(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| data_dir_err(format!("cannot create it: {e}")))?;
    if !file.exists() {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| data_dir_err(format!("cannot list it: {e}")))?;
        // `pki/` holds this server's identity (flotilla-pki), made before the store.
        if entries.any(|e| e.map(|e| e.file_name() != PKI_DIR).unwrap_or(true)) {
            return Err(data_dir_err(format!(
                "is not empty and holds no {DB_FILE}; refusing to use another program's directory"
            )));
        }
    }
    let corrupt = |message: String| Error::CorruptDataDir {
        path: dir.clone(),
        message,
    };
    let db = match Database::builder()
        .set_cache_size(config.cache_bytes)
        .create(&file)
    {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(data_dir_err(
                "is in use by another flotilla server (database locked)".into(),
            ));
        }
        Err(e) => return Err(corrupt(format!("{DB_FILE}: {e}"))),
    };
    let storage = |e: redb::Error| Error::Storage {
        path: file.clone(),
        message: e.to_string(),
    };
    let txn = db.begin_write().map_err(|e| storage(e.into()))?;
    let node_id;
    {
        let mut meta = txn.open_table(META).map_err(|e| corrupt(e.to_string()))?;
        txn.open_table(LOG).map_err(|e| corrupt(e.to_string()))?;
        txn.open_table(SNAPSHOT)
            .map_err(|e| corrupt(e.to_string()))?;
        let format: Option<u32> = get_json(&meta, K_FORMAT).map_err(|e| corrupt(e.to_string()))?;
        match format {
            Some(f) if f > STORE_FORMAT => {
                return Err(corrupt(format!(
                    "store format {f} is newer than this build understands (up to {STORE_FORMAT}); upgrade Flotilla"
                )));
            }
            Some(_) => {}
            None => {
                put_json(&mut meta, K_FORMAT, &STORE_FORMAT).map_err(|e| storage_of(&file, e))?
            }
        }
        let federation: Option<String> =
            get_json(&meta, K_FEDERATION).map_err(|e| corrupt(e.to_string()))?;
        match federation {
            Some(found) if found != config.federation => {
                return Err(Error::ForeignDataDir {
                    path: dir.clone(),
                    found,
                    expected: config.federation.clone(),
                });
            }
            Some(_) => {}
            None => put_json(&mut meta, K_FEDERATION, &config.federation)
                .map_err(|e| storage_of(&file, e))?,
        }
        let was_mtls: Option<bool> = get_json(&meta, K_MTLS).map_err(|e| corrupt(e.to_string()))?;
        match (was_mtls, config.mtls) {
            (Some(true), false) => return Err(Error::PlaintextDowngrade { path: dir.clone() }),
            (Some(true), true) => {}
            (_, mtls) => put_json(&mut meta, K_MTLS, &mtls).map_err(|e| storage_of(&file, e))?,
        }
        let stored: Option<NodeId> =
            get_json(&meta, K_NODE_ID).map_err(|e| corrupt(e.to_string()))?;
        node_id = match (stored, config.node_id) {
            (Some(found), Some(expected)) if found != expected => {
                return Err(Error::NodeIdMismatch {
                    path: dir.clone(),
                    found,
                    expected,
                });
            }
            (Some(id), _) => id,
            (None, given) => {
                let id = given.unwrap_or_else(new_node_id);
                put_json(&mut meta, K_NODE_ID, &id).map_err(|e| storage_of(&file, e))?;
                id
            }
        };
    }
    txn.commit().map_err(|e| storage(e.into()))?;

    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let db = Arc::new(OpenDatabase {
        db,
        _closed: ClosedSignal(closed.clone()),
    });
    let durability = if config.fsync {
        Durability::Immediate
    } else {
        Durability::None
    };
    let io = Io {
        db,
        closed,
        path: file.clone(),
        durability,
        lazy_run: Arc::default(),
        faults: config.faults.clone(),
    };
    let applied = match io.read_snapshot().map_err(|e| corrupt(e.to_string()))? {
        Some((meta, data)) => {
            let state = State::from_snapshot(&data)
                .map_err(|e| corrupt(format!("stored snapshot {}: {e}", meta.snapshot_id)))?;
            Applied {
                state: Arc::new(state),
                last_applied: meta.last_log_id,
                membership: meta.last_membership,
                latest_applied_at: None,
            }
        }
        None => Applied::default(),
    };
    let (changed, _) = watch::channel(0);
    Ok(Opened {
        node_id,
        federation: config.federation.clone(),
        log: LogStore {
            io: io.clone(),
            recent: Default::default(),
        },
        state_machine: StateMachineStore {
            shared: Arc::new(SmShared {
                io,
                current: RwLock::new(applied),
                snapshot_seq: AtomicU64::new(0),
                changed,
            }),
        },
    })
}

/// The federation and node id a data directory belongs to, if it holds a registry.
/// Reads without changing anything (for a restart that names neither).
pub fn stored_identity(data_dir: &Path) -> Result<Option<(String, NodeId)>> {
    let file = data_dir.join(DB_FILE);
    if !file.exists() {
        return Ok(None);
    }
    let corrupt = |message: String| Error::CorruptDataDir {
        path: data_dir.to_path_buf(),
        message,
    };
    let db = match Database::open(&file) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(Error::DataDir {
                path: data_dir.to_path_buf(),
                message: "is in use by another flotilla server (database locked)".into(),
            });
        }
        Err(e) => return Err(corrupt(format!("{DB_FILE}: {e}"))),
    };
    let read = || -> Result<Option<(String, NodeId)>, IoError> {
        let txn = db.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let federation: Option<String> = get_json(&meta, K_FEDERATION)?;
        let node: Option<NodeId> = get_json(&meta, K_NODE_ID)?;
        Ok(federation.zip(node))
    };
    read().map_err(|e| corrupt(e.to_string()))
}

/// A fresh node id: unpredictable, non-zero, and stored so it survives restarts.
fn new_node_id() -> NodeId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    // Keep ids readable and within JSON's safe integer range.
    (h.finish() % 9_000_000_000_000_000) + 1
}

fn storage_of(file: &Path, e: IoError) -> Error {
    Error::Storage {
        path: file.to_path_buf(),
        message: e.to_string(),
    }
}

/// What can go wrong underneath the openraft traits.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IoError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("stored value {key:?} does not decode: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("log entry at index {index} claims index {found}")]
    WrongIndex { index: u64, found: u64 },
    #[error("snapshot does not decode: {0}")]
    Snapshot(#[from] flotilla_core::SnapshotError),
    #[error("storage task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("no space left on device (a full disk, played by a test)")]
    Full,
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for IoError {
            fn from(e: $t) -> Self {
                IoError::Redb(e.into())
            }
        }
    )*};
}
redb_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, IoError> {
    match table.get(key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|source| IoError::Decode {
                key: key.to_owned(),
                source,
            }),
    }
}

fn put_json<T: Serialize>(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<(), IoError> {
    let bytes = serde_json::to_vec(value)?;
    table.insert(key, bytes.as_slice())?;
    Ok(())
}

/// The database handle shared by the log store and the state machine.
#[derive(Clone)]
struct Io {
    db: Arc<OpenDatabase>,
    /// Set once the database file is closed (see [`StoreRelease`]).
    closed: Arc<std::sync::atomic::AtomicBool>,
    path: PathBuf,
    durability: Durability,
    /// Non-durable commits since the last durable one (see [`DURABLE_EVERY`]).
    lazy_run: Arc<AtomicU64>,
    faults: Option<StorageFaults>,
}

/// The open database, and a signal that fires once its file is closed: fields drop
/// in declaration order, so `_closed` drops (and signals) after `db` has closed the
/// file and released its lock. An `Arc`'s count reaching zero is not enough: the
/// database is still closing then.
struct OpenDatabase {
    db: Database,
    _closed: ClosedSignal,
}

impl std::ops::Deref for OpenDatabase {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

struct ClosedSignal(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ClosedSignal {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish()
    }
}

/// What this process's stores did, for benchmarks and diagnosis (all stores together).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoStats {
    /// `append` calls and the log entries they carried.
    pub appends: u64,
    pub appended_entries: u64,
    /// Normal log entries applied, and the commands they carried.
    pub applied_entries: u64,
    pub applied_commands: u64,
    /// redb commits that waited for fsync, and the time they took.
    pub durable_commits: u64,
    pub durable_commit_micros: u64,
    /// redb commits that did not (made durable by the next durable one).
    pub lazy_commits: u64,
}

struct Counters {
    appends: AtomicU64,
    appended_entries: AtomicU64,
    applied_entries: AtomicU64,
    applied_commands: AtomicU64,
    durable_commits: AtomicU64,
    durable_commit_micros: AtomicU64,
    lazy_commits: AtomicU64,
}

static COUNTERS: Counters = Counters {
    appends: AtomicU64::new(0),
    appended_entries: AtomicU64::new(0),
    applied_entries: AtomicU64::new(0),
    applied_commands: AtomicU64::new(0),
    durable_commits: AtomicU64::new(0),
    durable_commit_micros: AtomicU64::new(0),
    lazy_commits: AtomicU64::new(0),
};

/// The I/O counters so far.
pub fn io_stats() -> IoStats {
    let c = &COUNTERS;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    IoStats {
        appends: get(&c.appends),
        appended_entries: get(&c.appended_entries),
        applied_entries: get(&c.applied_entries),
        applied_commands: get(&c.applied_commands),
        durable_commits: get(&c.durable_commits),
        durable_commit_micros: get(&c.durable_commit_micros),
        lazy_commits: get(&c.lazy_commits),
    }
}

fn count(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Without fsync, one commit in this many is durable anyway: redb keeps what every
/// non-durable commit freed until the next durable one, so a store that never
/// commits durably grows in memory and on disk with every write.
const DURABLE_EVERY: u64 = 1024;

/// Commits, counting it as durable (fsynced) or lazy.
fn commit(txn: redb::WriteTransaction, durability: Durability) -> Result<(), IoError> {
    if matches!(durability, Durability::None) {
        txn.commit()?;
        count(&COUNTERS.lazy_commits, 1);
    } else {
        let start = std::time::Instant::now();
        txn.commit()?;
        count(&COUNTERS.durable_commits, 1);
        count(
            &COUNTERS.durable_commit_micros,
            start.elapsed().as_micros() as u64,
        );
    }
    Ok(())
}

impl Io {
    /// A write transaction, durable (fsynced before it returns) unless the store was
    /// opened without fsync.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, IoError>,
    ) -> Result<T, IoError> {
        self.write_with(self.durability, f)
    }

    /// A write transaction that need not survive a crash on its own: redb makes it
    /// durable with the next durable commit, in order.
    fn write_lazy<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, IoError>,
    ) -> Result<T, IoError> {
        self.write_with(Durability::None, f)
    }

    fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, IoError>,
    ) -> Result<T, IoError> {
        if self.faults.as_ref().is_some_and(StorageFaults::full) {
            return Err(IoError::Full);
        }
        let durability = self.bounded(durability);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        let out = f(&txn)?;
        commit(txn, durability)?;
        Ok(out)
    }

    /// `durability`, except that a run of [`DURABLE_EVERY`] non-durable commits ends
    /// with a durable one.
    fn bounded(&self, durability: Durability) -> Durability {
        if !matches!(durability, Durability::None) {
            self.lazy_run.store(0, Ordering::Relaxed);
            return durability;
        }
        let next = |run: u64| Some(if run + 1 >= DURABLE_EVERY { 0 } else { run + 1 });
        match self
            .lazy_run
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, next)
        {
            Ok(run) if run + 1 >= DURABLE_EVERY => Durability::Immediate,
            _ => durability,
        }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, IoError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        get_json(&table, key)
    }

    fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), IoError> {
        self.write(|txn| put_json(&mut txn.open_table(META)?, key, value))
    }

    fn read_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, IoError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let Some(meta) = get_json::<SnapshotMeta>(&table, K_SNAP_META)? else {
            return Ok(None);
        };
        let data = table
            .get(K_SNAP_DATA)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        Ok(Some((meta, data)))
    }

    /// Stores a snapshot unless a newer one is already stored (a build racing an install).
    fn write_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), IoError> {
        let mut txn = self.db.begin_write()?;
        // A snapshot lets Raft purge the log: it must be on disk before we say so.
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            let stored: Option<SnapshotMeta> = get_json(&table, K_SNAP_META)?;
            if stored.is_some_and(|s| s.last_log_id > meta.last_log_id) {
                return Ok(());
            }
            put_json(&mut table, K_SNAP_META, meta)?;
            table.insert(K_SNAP_DATA, data)?;
        }
        commit(txn, Durability::Immediate)?;
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IoError> + Send + 'static,
) -> Result<T, IoError> {
    tokio::task::spawn_blocking(f).await?
}

/// Writing the snapshot described by `meta` failed.
fn snapshot_write_error(meta: &SnapshotMeta, e: IoError) -> StorageError {
    sto(
        ErrorSubject::Snapshot(Some(meta.signature())),
        ErrorVerb::Write,
        e,
    )
}

fn sto(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: IoError) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// The Raft log (and vote) in redb.
#[derive(Debug, Clone)]
pub struct LogStore {
    io: Io,
    /// The newest entries, shared with the log readers (replication), so that sending
    /// what was just appended reads neither redb nor JSON.
    recent: Arc<std::sync::Mutex<Recent>>,
}

/// Bytes of (encoded) entries [`Recent`] keeps at most.
const RECENT_BYTES: usize = 8 * 1024 * 1024;
/// Entries [`Recent`] keeps at most. Decoded entries take several times their
/// encoded size, and small ones (heartbeats) would otherwise fill the byte budget
/// only after tens of thousands: memory would grow with the log, not the state. A
/// follower further behind than this reads from the database.
const RECENT_ENTRIES: usize = 1024;

/// A contiguous run of the log's newest entries, ending at its last entry (or empty).
#[derive(Debug, Default)]
struct Recent {
    entries: std::collections::BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
}

impl Recent {
    /// Entries of `range` if this holds all of them (it always holds up to the last).
    fn get(&self, range: &(Bound<u64>, Bound<u64>)) -> Option<Vec<Entry>> {
        let first = *self.entries.keys().next()?;
        let start = match range.0 {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s.checked_add(1)?,
            Bound::Unbounded => return None,
        };
        if start < first {
            return None;
        }
        Some(
            self.entries
                .range(*range)
                .map(|(_, (e, _))| e.clone())
                .collect(),
        )
    }

    fn remove_from(&mut self, index: u64) {
        for (_, (_, n)) in self.entries.split_off(&index) {
            self.bytes -= n;
        }
    }

    fn remove_upto(&mut self, index: u64) {
        let kept = self.entries.split_off(&index.saturating_add(1));
        for (_, (_, n)) in std::mem::replace(&mut self.entries, kept) {
            self.bytes -= n;
        }
    }

    fn append(&mut self, entries: Vec<(Entry, usize)>) {
        let Some(first) = entries.first().map(|(e, _)| e.log_id.index) else {
            return;
        };
        // Overwriting ends the run there; anything but the next index starts a new one.
        self.remove_from(first);
        if self
            .entries
            .last_key_value()
            .is_some_and(|(last, _)| last.checked_add(1) != Some(first))
        {
            self.entries.clear();
            self.bytes = 0;
        }
        for (e, n) in entries {
            self.bytes += n;
            self.entries.insert(e.log_id.index, (e, n));
        }
        while self.bytes > RECENT_BYTES || self.entries.len() > RECENT_ENTRIES {
            match self.entries.pop_first() {
                Some((_, (_, n))) => self.bytes -= n,
                None => break,
            }
        }
    }
}

impl LogStore {
    /// The path of the database file, for messages.
    pub fn path(&self) -> &Path {
        &self.io.path
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, IoError> {
    let entry: Entry = serde_json::from_slice(bytes).map_err(|source| IoError::Decode {
        key: format!("log/{index}"),
        source,
    })?;
    if entry.log_id.index != index {
        return Err(IoError::WrongIndex {
            index,
            found: entry.log_id.index,
        });
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        if let Some(entries) = lock(&self.recent).get(&bounds) {
            return Ok(entries);
        }
        let io = self.io.clone();
        blocking(move || {
            let txn = io.db.begin_read()?;
            let table = txn.open_table(LOG)?;
            let mut out = Vec::new();
            for item in table.range::<u64>(bounds)? {
                let (k, v) = item?;
                out.push(decode_entry(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let io = self.io.clone();
        blocking(move || {
            let txn = io.db.begin_read()?;
            let last_purged: Option<LogId> = get_json(&txn.open_table(META)?, K_PURGED)?;
            let table = txn.open_table(LOG)?;
            let last = match table.last()? {
                Some((k, v)) => Some(decode_entry(k.value(), v.value())?.log_id),
                None => None,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last.or(last_purged),
            })
        })
        .await
        .map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let io = self.io.clone();
        let vote = *vote;
        blocking(move || io.put_meta(K_VOTE, &vote))
            .await
            .map_err(|e| sto(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let io = self.io.clone();
        blocking(move || io.get_meta(K_VOTE))
            .await
            .map_err(|e| sto(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    /// Not fsynced on its own: openraft calls this from its core task on every commit,
    /// before applying, so an fsync here would cost every write a second fsync on the
    /// leader's critical path. The committed id is only a hint for replay on restart
    /// (any stored value was committed; a stale one means replaying less, and the leader
    /// brings the node up to date), and redb makes it durable, in order, with the next
    /// durable commit (the next append) or when the database closes.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let io = self.io.clone();
        blocking(move || {
            io.write_lazy(|txn| put_json(&mut txn.open_table(META)?, K_COMMITTED, &committed))
        })
        .await
        .map_err(|e| sto(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let io = self.io.clone();
        blocking(move || Ok(io.get_meta::<Option<LogId>>(K_COMMITTED)?.flatten()))
            .await
            .map_err(|e| sto(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded = entries
            .iter()
            .map(|e| Ok((e.log_id.index, serde_json::to_vec(e)?)))
            .collect::<Result<Vec<_>, IoError>>()
            .map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        let first = encoded.first().map(|(i, _)| *i);
        let sizes: Vec<usize> = encoded.iter().map(|(_, b)| b.len()).collect();
        // Readable from here on (before the write, so that no reader can find redb ahead
        // of the cache); durable once the callback says so.
        lock(&self.recent).append(entries.into_iter().zip(sizes).collect());
        count(&COUNTERS.appends, 1);
        count(&COUNTERS.appended_entries, encoded.len() as u64);
        let io = self.io.clone();
        let res = blocking(move || {
            io.write(|txn| {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
        })
        .await
        .map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Write, e));
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                if let Some(first) = first {
                    lock(&self.recent).remove_from(first);
                }
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.recent).remove_from(log_id.index);
        let io = self.io.clone();
        blocking(move || {
            io.write(|txn| {
                let mut table = txn.open_table(LOG)?;
                table.retain_in::<u64, _>(log_id.index.., |_, _| false)?;
                Ok(())
            })
        })
        .await
        .map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(upto = log_id.index, "purging the log");
        lock(&self.recent).remove_upto(log_id.index);
        let io = self.io.clone();
        blocking(move || {
            io.write(|txn| {
                put_json(&mut txn.open_table(META)?, K_PURGED, &log_id)?;
                let mut table = txn.open_table(LOG)?;
                table.retain_in::<u64, _>(..=log_id.index, |_, _| false)?;
                Ok(())
            })
        })
        .await
        .map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// The registry as applied up to `last_applied`.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub state: Arc<State>,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// When (this member's monotonic clock) it applied the entry that first
    /// carried the state's latest time: real time since then surely passed in
    /// the federation too (`crate::clock`). `None` until it applies one.
    pub latest_applied_at: Option<std::time::Instant>,
}

#[derive(Debug)]
struct SmShared {
    io: Io,
    current: RwLock<Applied>,
    snapshot_seq: AtomicU64,
    /// Bumped whenever an applied command changed the registry.
    changed: watch::Sender<u64>,
}

impl SmShared {
    fn read(&self) -> Applied {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// flotilla-core's `apply` behind openraft's state machine trait.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    shared: Arc<SmShared>,
}

impl StateMachineStore {
    /// The registry as applied now (cheap: the state is shared, not copied).
    pub fn current(&self) -> Applied {
        self.shared.read()
    }

    /// Runs `f` on the applied state under the read lock: for a quick look that
    /// should not hold a reference across the next apply (which would make it copy
    /// the state).
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        match self.shared.current.read() {
            Ok(g) => f(&g.state),
            Err(poisoned) => f(&poisoned.into_inner().state),
        }
    }

    /// Ticks whenever an applied command changed the registry.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }
}

/// Builds snapshots from a shared reference to the state, off the apply path.
#[derive(Debug, Clone)]
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let applied = self.shared.read();
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match applied.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, seq),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        let io = self.shared.io.clone();
        let stored_meta = meta.clone();
        let data = blocking(move || {
            let data = applied.state.to_snapshot();
            io.write_snapshot(&stored_meta, &data)?;
            Ok(data)
        })
        .await
        .map_err(|e| snapshot_write_error(&meta, e))?;
        tracing::info!(
            index = meta.last_log_id.map(|l| l.index).unwrap_or_default(),
            bytes = data.len(),
            "snapshot built; the log before it can be purged"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.shared.read();
        Ok((a.last_applied, a.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcomes>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut changed = 0u64;
        {
            let mut cur = self.shared.write();
            let latest_before = cur.state.latest_entry_at();
            for entry in entries {
                cur.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => out.push(Outcomes(vec![Outcome::Internal])),
                    EntryPayload::Membership(m) => {
                        cur.membership = StoredMembership::new(Some(entry.log_id), m);
                        out.push(Outcomes(vec![Outcome::Internal]));
                    }
                    EntryPayload::Normal(request) => {
                        let commands = request.commands();
                        count(&COUNTERS.applied_entries, 1);
                        count(&COUNTERS.applied_commands, commands.len() as u64);
                        let mut outcomes = Vec::with_capacity(commands.len());
                        let state = Arc::make_mut(&mut cur.state);
                        for command in commands {
                            match flotilla_core::apply(state, command) {
                                Ok(events) => {
                                    if !events.is_empty() {
                                        changed += 1;
                                    }
                                    outcomes.push(Outcome::Applied(events));
                                }
                                Err(rejection) => outcomes.push(Outcome::Rejected(rejection)),
                            }
                        }
                        out.push(Outcomes(outcomes));
                    }
                }
            }
            if cur.state.latest_entry_at() > latest_before {
                cur.latest_applied_at = Some(std::time::Instant::now());
            }
        }
        if changed > 0 {
            self.shared.changed.send_modify(|n| *n += changed);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let io = self.shared.io.clone();
        let stored_meta = meta.clone();
        // Decode and store first; only a snapshot that is whole replaces the state.
        let state = blocking(move || {
            let state = State::from_snapshot(&data)?;
            io.write_snapshot(&stored_meta, &data)?;
            Ok(state)
        })
        .await
        .map_err(|e| snapshot_write_error(meta, e))?;
        {
            let mut cur = self.shared.write();
            *cur = Applied {
                state: Arc::new(state),
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                latest_applied_at: None,
            };
        }
        self.shared.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let io = self.shared.io.clone();
        let stored = blocking(move || io.read_snapshot())
            .await
            .map_err(|e| sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
