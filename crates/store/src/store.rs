//! [`Store`]: the writer connection, the reader pool and the queries.
//!
//! Every public method is one transaction: writes `BEGIN IMMEDIATE` on the
//! writer (so the write lock is taken up front and a write never fails
//! half-way on a lock upgrade), reads a deferred transaction on a read-only
//! connection (so a multi-query read sees one snapshot).

use crate::schema::{self, MIGRATIONS};
use crate::types::{Conversation, Cursor, Message, MessageUpdate, Role, Status, Usage};
use crate::{Result, StoreError};
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior,
};
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Read-only connections kept open between reads; more are opened on demand
/// under load and closed when returned to a full pool.
const IDLE_READERS: usize = 4;

/// Conversation columns, in the order [`conversation_row`] reads them.
macro_rules! conversation_columns {
    () => {
        "id, owner, persona_id, title, created_at, updated_at"
    };
}

/// Message columns, in the order [`message_row`] reads them.
macro_rules! message_columns {
    () => {
        "id, conversation_id, seq, role, content, status, error, \
         prompt_tokens, completion_tokens, created_at, updated_at"
    };
}

/// The conversation store. Open one per database file and process, and
/// share it in an `Arc`; every method blocks on SQLite I/O.
pub struct Store {
    path: PathBuf,
    // Field order is drop order: readers close before the writer, so the
    // writer is the last connection and checkpoints the WAL on close; the
    // process lock is released only after that.
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Writer>,
    _lock: File,
}

/// The one read-write connection and the store's clock.
struct Writer {
    conn: Connection,
    /// The last timestamp handed out; timestamps strictly increase.
    last_ms: i64,
}

impl Writer {
    /// Now in Unix ms, but always after the previous write.
    fn tick(&mut self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.last_ms = now.max(self.last_ms.saturating_add(1));
        self.last_ms
    }
}

// The server shares one store between request tasks.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Store>();
};

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`: takes the process
    /// lock, sets up WAL, applies pending migrations and runs
    /// [`Store::recover`]. The directory must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        if path.as_ref().as_os_str().is_empty() {
            return Err(StoreError::EmptyPath);
        }
        let path = std::path::absolute(path.as_ref()).unwrap_or_else(|_| path.as_ref().into());
        if let Some(dir) = path.parent().filter(|d| !d.is_dir()) {
            return Err(StoreError::NoDirectory {
                dir: dir.to_path_buf(),
                path,
            });
        }
        let lock = lock(&path)?;
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        let mode = schema::configure_writer(&conn).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal { path, mode });
        }
        schema::migrate(&mut conn, &path, MIGRATIONS)?;
        let last_ms = conn
            .query_row(
                "SELECT COALESCE(MAX(updated_at), 0) FROM conversations",
                [],
                |r| r.get(0),
            )
            .map_err(open_err)?;
        let store = Store {
            path,
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer { conn, last_ms }),
            _lock: lock,
        };
        store.recover()?;
        Ok(store)
    }

    /// The database file (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks every message still `streaming` as `interrupted`, keeping its
    /// text, and returns how many there were. `open` calls it: after a crash
    /// nothing is streaming any more. Calling it while this process streams
    /// would cut those replies off.
    pub fn recover(&self) -> Result<usize> {
        self.write(|tx, now| {
            let n = tx.execute(
                "UPDATE messages SET status = 'interrupted', updated_at = ?1
                 WHERE status = 'streaming'",
                [now],
            )?;
            Ok(n)
        })
    }

    /// Runs `PRAGMA integrity_check` and `PRAGMA foreign_key_check`; any
    /// problem they report is an [`StoreError::Integrity`].
    pub fn integrity_check(&self) -> Result<()> {
        let problems = self.read(|tx| {
            let mut problems: Vec<String> = tx
                .prepare("PRAGMA integrity_check")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            problems.retain(|p| p != "ok");
            let mut fk = tx.prepare("PRAGMA foreign_key_check")?;
            let orphans = fk.query_map([], |r| {
                let table: String = r.get(0)?;
                let rowid: Option<i64> = r.get(1)?;
                let parent: String = r.get(2)?;
                Ok(format!(
                    "{table} row {} refers to a missing {parent} row",
                    rowid.map_or("?".to_string(), |id| id.to_string())
                ))
            })?;
            for orphan in orphans {
                problems.push(orphan?);
            }
            Ok(problems)
        })?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Integrity { problems })
        }
    }

    /// Creates an empty conversation with a fresh random id.
    pub fn create_conversation(
        &self,
        owner: &str,
        persona_id: &str,
        title: &str,
    ) -> Result<Conversation> {
        self.write(|tx, now| {
            let id: String = tx.query_row(
                "INSERT INTO conversations (id, owner, persona_id, title, created_at, updated_at)
                 VALUES ('conv_' || lower(hex(randomblob(16))), ?1, ?2, ?3, ?4, ?4)
                 RETURNING id",
                params![owner, persona_id, title, now],
                |r| r.get(0),
            )?;
            Ok(Conversation {
                id,
                owner: owner.to_string(),
                persona_id: persona_id.to_string(),
                title: title.to_string(),
                created_at: now,
                updated_at: now,
            })
        })
    }

    /// The conversation, or `None` if it does not exist or belongs to
    /// another owner.
    pub fn get_conversation(&self, owner: &str, id: &str) -> Result<Option<Conversation>> {
        self.read(|tx| Ok(find_conversation(tx, owner, id)?))
    }

    /// Up to `limit` of the owner's conversations, most recently active
    /// first, starting after `before` (the [`Conversation::cursor`] of the
    /// last one of the previous page).
    pub fn list_conversations(
        &self,
        owner: &str,
        limit: usize,
        before: Option<&Cursor>,
    ) -> Result<Vec<Conversation>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| {
            let rows = match before {
                None => tx
                    .prepare_cached(concat!(
                        "SELECT ",
                        conversation_columns!(),
                        " FROM conversations WHERE owner = ?1
                         ORDER BY updated_at DESC, id DESC LIMIT ?2"
                    ))?
                    .query_map(params![owner, limit], conversation_row)?
                    .collect::<rusqlite::Result<_>>()?,
                Some(c) => tx
                    .prepare_cached(concat!(
                        "SELECT ",
                        conversation_columns!(),
                        " FROM conversations WHERE owner = ?1 AND (updated_at, id) < (?2, ?3)
                         ORDER BY updated_at DESC, id DESC LIMIT ?4"
                    ))?
                    .query_map(params![owner, c.updated_at, c.id, limit], conversation_row)?
                    .collect::<rusqlite::Result<_>>()?,
            };
            Ok(rows)
        })
    }

    /// Sets the title; `false` if there is no such conversation for `owner`.
    /// Does not move the conversation in the list.
    pub fn rename_conversation(&self, owner: &str, id: &str, title: &str) -> Result<bool> {
        self.write(|tx, _| {
            let n = tx.execute(
                "UPDATE conversations SET title = ?3 WHERE id = ?1 AND owner = ?2",
                params![id, owner, title],
            )?;
            Ok(n == 1)
        })
    }

    /// Deletes the conversation and (by cascade) its messages; `false` if
    /// there is no such conversation for `owner`.
    pub fn delete_conversation(&self, owner: &str, id: &str) -> Result<bool> {
        self.write(|tx, _| {
            let n = tx.execute(
                "DELETE FROM conversations WHERE id = ?1 AND owner = ?2",
                params![id, owner],
            )?;
            Ok(n == 1)
        })
    }

    /// All messages of the conversation in order, or `None` if there is no
    /// such conversation for `owner`.
    pub fn messages(&self, owner: &str, conversation_id: &str) -> Result<Option<Vec<Message>>> {
        self.read(|tx| {
            if find_conversation(tx, owner, conversation_id)?.is_none() {
                return Ok(None);
            }
            let messages = tx
                .prepare_cached(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE conversation_id = ?1 ORDER BY seq"
                ))?
                .query_map([conversation_id], message_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Some(messages))
        })
    }

    /// Appends a message and moves the conversation to the top of the list;
    /// `None` if there is no such conversation for `owner`. A reply starts as
    /// an empty [`Status::Streaming`] assistant message, then goes through
    /// [`Store::update_message`].
    pub fn add_message(
        &self,
        owner: &str,
        conversation_id: &str,
        role: Role,
        content: &str,
        status: Status,
    ) -> Result<Option<Message>> {
        self.write(|tx, now| {
            let touched = tx.execute(
                "UPDATE conversations SET updated_at = ?3 WHERE id = ?1 AND owner = ?2",
                params![conversation_id, owner, now],
            )?;
            if touched == 0 {
                return Ok(None);
            }
            let (id, seq) = tx.query_row(
                "INSERT INTO messages (conversation_id, seq, role, content, status,
                                       created_at, updated_at)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM messages
                              WHERE conversation_id = ?1), ?2, ?3, ?4, ?5, ?5)
                 RETURNING id, seq",
                params![conversation_id, role, content, status, now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(Some(Message {
                id,
                conversation_id: conversation_id.to_string(),
                seq,
                role,
                content: content.to_string(),
                status,
                error: None,
                usage: None,
                created_at: now,
                updated_at: now,
            }))
        })
    }

    /// Rewrites a streaming message: its text so far and its new status.
    /// Once the status is final the message is frozen and further updates
    /// fail with [`StoreError::MessageFinished`] (e.g. a late progress write
    /// after a cancel). Usage is kept when the update carries none.
    pub fn update_message(&self, id: i64, update: &MessageUpdate<'_>) -> Result<()> {
        let (prompt, completion) = match update.usage {
            Some(u) => (Some(u.prompt_tokens), Some(u.completion_tokens)),
            None => (None, None),
        };
        self.write(|tx, now| {
            let n = tx
                .prepare_cached(
                    "UPDATE messages SET content = ?2, status = ?3, error = ?4,
                        prompt_tokens = COALESCE(?5, prompt_tokens),
                        completion_tokens = COALESCE(?6, completion_tokens),
                        updated_at = ?7
                     WHERE id = ?1 AND status = 'streaming'",
                )?
                .execute(params![
                    id,
                    update.content,
                    update.status,
                    update.error,
                    prompt,
                    completion,
                    now
                ])?;
            if n == 1 {
                return Ok(());
            }
            let status: Option<Status> = tx
                .query_row("SELECT status FROM messages WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            Err(match status {
                Some(status) => StoreError::MessageFinished { id, status },
                None => StoreError::MessageNotFound { id },
            })
        })
    }

    /// Runs `f` in an immediate transaction on the writer, with the write's
    /// timestamp, and commits if it succeeds.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>, i64) -> Result<T>) -> Result<T> {
        // A panic inside `f` rolled its transaction back while unwinding, so
        // a poisoned writer is still consistent.
        let mut guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let writer = &mut *guard;
        let now = writer.tick();
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx, now)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in a read transaction on a pooled read-only connection.
    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let pooled = self.pool().pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.open_reader()?,
        };
        let out = conn
            .transaction()
            .map_err(StoreError::from)
            .and_then(|tx| f(&tx));
        let mut pool = self.pool();
        if pool.len() < IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    fn pool(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open_reader(&self) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        schema::configure_reader(&conn)?;
        Ok(conn)
    }
}

/// Takes the exclusive process lock `<path>-lock`. The file is left in place
/// (removing it would race with the next opener); the lock dies with the
/// process.
fn lock(path: &Path) -> Result<File> {
    let mut name = path.as_os_str().to_owned();
    name.push("-lock");
    let lock = PathBuf::from(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock);
    let file = match file {
        Ok(file) => file,
        Err(source) => return Err(StoreError::LockFile { lock, source }),
    };
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_path_buf(),
            lock,
        }),
        Err(TryLockError::Error(source)) => Err(StoreError::LockFile { lock, source }),
    }
}

fn find_conversation(
    conn: &Connection,
    owner: &str,
    id: &str,
) -> rusqlite::Result<Option<Conversation>> {
    conn.prepare_cached(concat!(
        "SELECT ",
        conversation_columns!(),
        " FROM conversations WHERE id = ?1 AND owner = ?2"
    ))?
    .query_row([id, owner], conversation_row)
    .optional()
}

fn conversation_row(r: &Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: r.get(0)?,
        owner: r.get(1)?,
        persona_id: r.get(2)?,
        title: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

fn message_row(r: &Row<'_>) -> rusqlite::Result<Message> {
    let prompt: Option<u32> = r.get(7)?;
    let completion: Option<u32> = r.get(8)?;
    Ok(Message {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        seq: r.get(2)?,
        role: r.get(3)?,
        content: r.get(4)?,
        status: r.get(5)?,
        error: r.get(6)?,
        usage: prompt.zip(completion).map(|(p, c)| Usage {
            prompt_tokens: p,
            completion_tokens: c,
        }),
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma<T: rusqlite::types::FromSql>(conn: &Connection, name: &str) -> T {
        let sql = format!("PRAGMA {name}");
        conn.query_row(&sql, [], |r| r.get(0)).expect("pragma")
    }

    /// The settings the durability argument rests on are really in force.
    #[test]
    fn connections_are_configured() {
        let dir = std::env::temp_dir().join(format!("troupe-store-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = Store::open(dir.join("c.db")).expect("open");
        {
            let writer = store.writer.lock().expect("writer");
            let conn = &writer.conn;
            assert_eq!(pragma::<String>(conn, "journal_mode"), "wal");
            assert_eq!(pragma::<i64>(conn, "synchronous"), 2, "FULL");
            assert_eq!(pragma::<i64>(conn, "foreign_keys"), 1);
            assert_eq!(pragma::<i64>(conn, "busy_timeout"), 5000);
        }
        let reader = store.open_reader().expect("reader");
        assert_eq!(pragma::<i64>(&reader, "query_only"), 1);
        assert!(reader.execute("DELETE FROM messages", []).is_err());
        drop((reader, store));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
