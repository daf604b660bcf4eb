//! Connection settings and versioned migrations.
//!
//! `PRAGMA user_version` counts the steps of [`MIGRATIONS`] already applied.
//! Steps are append-only: never edit one that has shipped, add a new one.
//! Each pending step runs in its own `BEGIN IMMEDIATE` transaction together
//! with the version bump (the version lives in the database header, which
//! is written by the same commit), so a failure leaves the previous version.

use crate::{Result, StoreError};
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// How long a connection waits for a lock before failing with `SQLITE_BUSY`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of WAL kept on disk after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// The ordered schema steps; step `i` brings the file to version `i + 1`.
///
/// Tables are `STRICT` so a wrong type is an error, not a silent coercion.
/// `messages.id` is the rowid (stable, store-wide); `seq` orders messages
/// within a conversation. The partial index finds streaming rows for
/// `recover` without scanning every message.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: conversations and messages.
    "CREATE TABLE conversations (
        id         TEXT PRIMARY KEY NOT NULL,
        owner      TEXT NOT NULL,
        persona_id TEXT NOT NULL,
        title      TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX conversations_by_owner ON conversations (owner, updated_at, id);

    CREATE TABLE messages (
        id                INTEGER PRIMARY KEY,
        conversation_id   TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        seq               INTEGER NOT NULL,
        role              TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content           TEXT NOT NULL,
        status            TEXT NOT NULL
            CHECK (status IN ('done', 'streaming', 'cancelled', 'error', 'interrupted')),
        error             TEXT,
        prompt_tokens     INTEGER CHECK (prompt_tokens >= 0),
        completion_tokens INTEGER CHECK (completion_tokens >= 0),
        created_at        INTEGER NOT NULL,
        updated_at        INTEGER NOT NULL,
        UNIQUE (conversation_id, seq)
    ) STRICT;
    CREATE INDEX messages_streaming ON messages (status) WHERE status = 'streaming';",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Settings for the writer connection: WAL, fsync on every commit, foreign
/// keys enforced, and the WAL cut back to [`WAL_SIZE_LIMIT`] after a
/// checkpoint (streaming rewrites whole replies, so a burst can grow it).
/// Returns the journal mode SQLite actually chose.
pub(crate) fn configure_writer(conn: &Connection) -> rusqlite::Result<String> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(mode)
}

/// Settings for a read-only connection; `query_only` is a second guard on
/// top of the read-only open flag.
pub(crate) fn configure_reader(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA query_only = ON;")
}

/// The file's schema version.
pub(crate) fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings the file up to `steps.len()`, refusing a file that is newer.
pub(crate) fn migrate(conn: &mut Connection, path: &Path, steps: &[&str]) -> Result<()> {
    let known = steps.len() as u32;
    let found = version(conn).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if found > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (index, sql) in steps.iter().enumerate().skip(found as usize) {
        let version = index as u32 + 1;
        let step = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Another opener may have migrated between our read and our lock.
            if self::version(&tx)? >= version {
                return Ok(());
            }
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        };
        step(conn).map_err(|source| StoreError::Migration { version, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().expect("open");
        let steps = [
            "CREATE TABLE a (x INTEGER);",
            "CREATE TABLE b (x INTEGER); INSERT INTO nowhere VALUES (1);",
        ];
        let err = migrate(&mut conn, Path::new(":memory:"), &steps).expect_err("step 2 fails");
        assert!(
            matches!(err, StoreError::Migration { version: 2, .. }),
            "{err}"
        );
        assert_eq!(version(&conn).expect("version"), 1);
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("tables");
        assert_eq!(tables, ["a"], "step 2's table was rolled back");
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn, Path::new(":memory:"), MIGRATIONS).expect("first");
        migrate(&mut conn, Path::new(":memory:"), MIGRATIONS).expect("second");
        assert_eq!(version(&conn).expect("version"), SCHEMA_VERSION);
    }
}
