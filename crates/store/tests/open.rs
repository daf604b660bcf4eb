//! Opening a store: migrations, reopening, version and path errors, the
//! process lock, and recovery of rows left streaming.

mod common;

use common::{raw, TempDir};
use troupe_store::{MessageUpdate, Role, Status, Store, StoreError, SCHEMA_VERSION};

#[test]
fn an_empty_file_is_migrated_to_the_current_version() {
    let dir = TempDir::new("fresh");
    let store = Store::open(dir.db()).expect("open");
    assert!(store.path().is_absolute());
    let conn = raw(&dir.db());
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("tables");
    assert_eq!(tables, ["conversations", "messages"]);
    store.integrity_check().expect("a new store is sound");
}

#[test]
fn reopening_keeps_everything() {
    let dir = TempDir::new("reopen");
    let (conv, msgs) = {
        let store = Store::open(dir.db()).expect("open");
        let conv = store
            .create_conversation("me", "sage", "First")
            .expect("create");
        store
            .add_message("me", &conv.id, Role::User, "hello", Status::Done)
            .expect("add")
            .expect("conversation exists");
        let conv = store.get_conversation("me", &conv.id).expect("get");
        let conv = conv.expect("exists");
        let msgs = store.messages("me", &conv.id).expect("read");
        (conv, msgs.expect("exists"))
    };
    let wal = dir.path().join("conversations.db-wal");
    assert!(!wal.exists(), "closing checkpointed and removed the WAL");
    let store = Store::open(dir.db()).expect("reopen");
    assert_eq!(
        store.get_conversation("me", &conv.id).expect("get"),
        Some(conv.clone())
    );
    assert_eq!(store.messages("me", &conv.id).expect("read"), Some(msgs));
    let later = store
        .create_conversation("me", "sage", "Second")
        .expect("create");
    assert!(
        later.created_at > conv.updated_at,
        "the clock resumes after the newest row"
    );
    let version: u32 = raw(&dir.db())
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn a_newer_file_is_refused() {
    let dir = TempDir::new("newer");
    drop(Store::open(dir.db()).expect("open"));
    let future = SCHEMA_VERSION + 7;
    rusqlite::Connection::open(dir.db())
        .and_then(|c| c.pragma_update(None, "user_version", future))
        .expect("bump version");
    let err = Store::open(dir.db()).expect_err("newer schema");
    match &err {
        StoreError::TooNew { found, known, .. } => {
            assert_eq!((*found, *known), (future, SCHEMA_VERSION));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("conversations.db") && text.contains("newer"),
        "{text}"
    );
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let dir = TempDir::new("nodir");
    let path = dir.path().join("no/such/dir/conversations.db");
    let err = Store::open(&path).expect_err("missing directory");
    assert!(matches!(err, StoreError::NoDirectory { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("no/such/dir") && text.contains("does not exist"),
        "{text}"
    );
}

#[test]
fn an_empty_path_is_an_error() {
    let err = Store::open("").expect_err("empty path");
    assert!(matches!(err, StoreError::EmptyPath), "{err:?}");
}

#[test]
fn a_directory_as_the_file_is_an_error() {
    let dir = TempDir::new("isdir");
    let err = Store::open(dir.path()).expect_err("a directory is no database");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*dir.path().to_string_lossy()),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_database_is_an_error() {
    let dir = TempDir::new("garbage");
    std::fs::write(dir.db(), vec![0x5a_u8; 8192]).expect("write garbage");
    let err = Store::open(dir.db()).expect_err("garbage");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("not a database"), "{text}");
    assert_eq!(
        std::fs::read(dir.db()).expect("read back"),
        vec![0x5a_u8; 8192],
        "a file that is not ours is left untouched"
    );
}

#[test]
fn only_one_store_per_file() {
    let dir = TempDir::new("lock");
    let first = Store::open(dir.db()).expect("open");
    let err = Store::open(dir.db()).expect_err("second open");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("already open"), "{err}");
    drop(first);
    Store::open(dir.db()).expect("open after the first is closed");
}

#[test]
fn open_marks_streaming_rows_interrupted() {
    let dir = TempDir::new("recover");
    let (conv, reply) = {
        let store = Store::open(dir.db()).expect("open");
        let conv = store.create_conversation("", "sage", "t").expect("create");
        store
            .add_message("", &conv.id, Role::User, "tell me", Status::Done)
            .expect("add");
        let reply = store
            .add_message("", &conv.id, Role::Assistant, "", Status::Streaming)
            .expect("add")
            .expect("exists");
        store
            .update_message(reply.id, &MessageUpdate::streaming("Once upon"))
            .expect("update");
        // Dropped without a final update, as a crash would leave it.
        (conv, reply)
    };
    let store = Store::open(dir.db()).expect("reopen");
    let msgs = store.messages("", &conv.id).expect("read").expect("exists");
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].status, Status::Done, "finished rows are untouched");
    assert_eq!(msgs[1].id, reply.id);
    assert_eq!(msgs[1].status, Status::Interrupted);
    assert_eq!(msgs[1].content, "Once upon", "the partial text is kept");
    assert_eq!(
        store.recover().expect("recover"),
        0,
        "nothing left to recover"
    );
    let err = store
        .update_message(reply.id, &MessageUpdate::streaming("more"))
        .expect_err("interrupted is final");
    assert!(
        matches!(
            err,
            StoreError::MessageFinished {
                status: Status::Interrupted,
                ..
            }
        ),
        "{err:?}"
    );
}
