//! Persistent conversation store for Troupe, on SQLite.
//!
//! Conversations and their messages live in one SQLite file so that a chat
//! survives a restart, and a crash mid-reply loses nothing that was reported
//! committed. The design, and why:
//!
//! - **Durability.** The file runs in WAL mode with `synchronous=FULL`: every
//!   committed write is fsynced to the WAL before the call returns, and readers
//!   never block the writer. `foreign_keys=ON` makes deleting a conversation
//!   cascade to its messages; a busy timeout absorbs short lock waits.
//! - **One writer.** All writes go through one connection behind a mutex, each
//!   in its own `BEGIN IMMEDIATE` transaction, so there are no write-write
//!   races or upgrade deadlocks. Reads use a small pool of read-only
//!   connections and see a consistent snapshot while a write is in progress.
//!   The API is synchronous; the async server calls it via `spawn_blocking`.
//!   [`Store`] is `Send + Sync`: share it in an `Arc`.
//! - **One process.** `open` takes an exclusive lock on `<path>-lock` (an
//!   OS file lock, released by the kernel even on `kill -9`), because
//!   [`Store::recover`] assumes that no other live process is streaming
//!   into the same file.
//! - **Crash recovery.** A reply is stored as it streams: an assistant row in
//!   status `streaming`, rewritten by [`Store::update_message`] as text
//!   arrives, and finally `done`, `cancelled` or `error`. After a crash the
//!   row is still `streaming`; `open` runs [`Store::recover`], which marks it
//!   `interrupted` and keeps the partial text. Each progress write is a
//!   durable commit, so callers should throttle them (a few per second).
//! - **Migrations.** The schema is an ordered list of SQL steps; the number
//!   applied is `PRAGMA user_version`. Each pending step runs in its own
//!   transaction together with the version bump, so a failed step leaves the
//!   file at the previous version. A file newer than this code is refused
//!   ([`StoreError::TooNew`]) rather than misread.
//! - **Owners.** Every conversation has an opaque owner key (the server uses a
//!   hash of the API key, or `""` when it has none). Lookups by another owner
//!   behave exactly as if the conversation did not exist, so the server can
//!   answer 404 without leaking which ids exist.
//! - **Ids and time.** Conversation ids are `conv_` + 16 random bytes in hex,
//!   drawn from SQLite's own CSPRNG (seeded from the OS), which saves a
//!   dependency. Times are Unix milliseconds; the writer makes them strictly
//!   increasing, so "newest first" is a total order even within one
//!   millisecond or across a clock step backwards.
//!
//! The schema itself is in `schema.rs`.

mod schema;
mod store;
mod types;

pub use schema::SCHEMA_VERSION;
pub use store::Store;
pub use types::{Conversation, Cursor, Message, MessageUpdate, Role, Status, Usage};

use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the conversation store path is empty")]
    EmptyPath,
    #[error("cannot open the conversation store {path}: directory {dir} does not exist")]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("cannot open the conversation store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create or lock {lock}: {source}")]
    LockFile {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the conversation store {path} is already open in this or another process (lock {lock} is held)")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("{path} cannot use WAL journaling (SQLite answered journal_mode={mode:?}); is it on a network filesystem?")]
    NotWal { path: PathBuf, mode: String },
    #[error("{path} has schema version {found}, newer than this build knows ({known}); upgrade Troupe or use another file")]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("migration to schema version {version} failed: {source}")]
    Migration {
        version: u32,
        #[source]
        source: rusqlite::Error,
    },
    #[error("integrity check failed: {}", problems.join("; "))]
    Integrity { problems: Vec<String> },
    #[error("no message with id {id}")]
    MessageNotFound { id: i64 },
    #[error("message {id} is already {status}, only a streaming message can be updated")]
    MessageFinished { id: i64, status: Status },
    #[error("bad conversation cursor {0:?}, expected `<updated_at>_<id>`")]
    BadCursor(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
