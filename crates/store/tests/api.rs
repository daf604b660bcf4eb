//! The conversation API: ids, owners, listing, messages and their
//! lifecycle, cascade delete, awkward content, and readers racing a writer.

mod common;

use common::{raw, TempDir};
use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use troupe_store::{Conversation, Cursor, MessageUpdate, Role, Status, Store, StoreError, Usage};

fn store(tag: &str) -> (TempDir, Store) {
    let dir = TempDir::new(tag);
    let store = Store::open(dir.db()).expect("open");
    (dir, store)
}

fn ids(convs: &[Conversation]) -> Vec<&str> {
    convs.iter().map(|c| c.id.as_str()).collect()
}

#[test]
fn ids_are_random_and_well_formed() {
    let (_dir, store) = store("ids");
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let conv = store.create_conversation("", "sage", "t").expect("create");
        let hex = conv.id.strip_prefix("conv_").expect("prefix");
        assert_eq!(hex.len(), 32, "{}", conv.id);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(seen.insert(conv.id), "duplicate id");
    }
}

#[test]
fn another_owner_sees_nothing_and_changes_nothing() {
    let (_dir, store) = store("owners");
    let conv = store
        .create_conversation("alice", "sage", "Secret plans")
        .expect("create");
    store
        .add_message("alice", &conv.id, Role::User, "hi", Status::Done)
        .expect("add")
        .expect("exists");
    let before = store.get_conversation("alice", &conv.id).expect("get");

    assert_eq!(store.get_conversation("bob", &conv.id).expect("get"), None);
    assert_eq!(store.get_conversation("", &conv.id).expect("get"), None);
    assert_eq!(store.messages("bob", &conv.id).expect("read"), None);
    assert!(store
        .list_conversations("bob", 10, None)
        .expect("list")
        .is_empty());
    let added = store
        .add_message("bob", &conv.id, Role::User, "mine now", Status::Done)
        .expect("add");
    assert_eq!(added, None);
    assert!(!store
        .rename_conversation("bob", &conv.id, "pwned")
        .expect("rename"));
    assert!(!store.delete_conversation("bob", &conv.id).expect("delete"));

    let after = store.get_conversation("alice", &conv.id).expect("get");
    assert_eq!(after, before, "bob's attempts changed nothing");
    let msgs = store
        .messages("alice", &conv.id)
        .expect("read")
        .expect("exists");
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        ids(&store.list_conversations("alice", 10, None).expect("list")),
        [conv.id.as_str()]
    );
}

#[test]
fn unknown_ids_are_none_or_false() {
    let (_dir, store) = store("unknown");
    let missing = "conv_00000000000000000000000000000000";
    assert_eq!(store.get_conversation("", missing).expect("get"), None);
    assert_eq!(store.messages("", missing).expect("read"), None);
    assert!(!store.delete_conversation("", missing).expect("delete"));
    assert!(!store.rename_conversation("", missing, "x").expect("rename"));
    let added = store
        .add_message("", missing, Role::User, "x", Status::Done)
        .expect("add");
    assert_eq!(added, None);
}

#[test]
fn rename_changes_the_title_but_not_the_order() {
    let (_dir, store) = store("rename");
    let old = store
        .create_conversation("", "sage", "old")
        .expect("create");
    let new = store
        .create_conversation("", "sage", "new")
        .expect("create");
    assert!(store
        .rename_conversation("", &old.id, "renamed ✓")
        .expect("rename"));
    let got = store
        .get_conversation("", &old.id)
        .expect("get")
        .expect("exists");
    assert_eq!(got.title, "renamed ✓");
    assert_eq!(got.updated_at, old.updated_at);
    let listed = store.list_conversations("", 10, None).expect("list");
    assert_eq!(ids(&listed), [new.id.as_str(), old.id.as_str()]);
}

#[test]
fn delete_cascades_to_messages_and_nothing_else() {
    let (dir, store) = store("cascade");
    let doomed = store
        .create_conversation("", "sage", "doomed")
        .expect("create");
    let kept = store
        .create_conversation("", "sage", "kept")
        .expect("create");
    for conv in [&doomed, &kept] {
        for text in ["one", "two", "three"] {
            store
                .add_message("", &conv.id, Role::User, text, Status::Done)
                .expect("add");
        }
    }
    assert!(store.delete_conversation("", &doomed.id).expect("delete"));
    assert!(!store
        .delete_conversation("", &doomed.id)
        .expect("delete twice"));
    assert_eq!(store.get_conversation("", &doomed.id).expect("get"), None);

    let conn = raw(&dir.db());
    let count = |id: &str| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ?1",
            [id],
            |r| r.get(0),
        )
        .expect("count")
    };
    assert_eq!(count(&doomed.id), 0, "the doomed messages are gone");
    assert_eq!(count(&kept.id), 3, "the other conversation is intact");
    store.integrity_check().expect("no orphans");
}

#[test]
fn listing_is_newest_first_and_pages_cleanly() {
    let (_dir, store) = store("list");
    let convs: Vec<Conversation> = (0..7)
        .map(|i| {
            store
                .create_conversation("", "sage", &format!("c{i}"))
                .expect("create")
        })
        .collect();
    // A new message moves c2 to the top.
    store
        .add_message("", &convs[2].id, Role::User, "bump", Status::Done)
        .expect("add");
    let want: Vec<&str> = [2, 6, 5, 4, 3, 1, 0]
        .iter()
        .map(|&i| convs[i].id.as_str())
        .collect();

    let all = store.list_conversations("", 100, None).expect("list");
    assert_eq!(ids(&all), want);
    assert!(all.windows(2).all(|w| w[0].updated_at > w[1].updated_at));

    for page_size in [1, 2, 3, 7] {
        let mut paged = Vec::new();
        let mut cursor: Option<Cursor> = None;
        loop {
            let page = store
                .list_conversations("", page_size, cursor.as_ref())
                .expect("page");
            assert!(page.len() <= page_size);
            let Some(last) = page.last() else { break };
            // Round-trip the cursor through its text form, as the server will.
            let text = last.cursor().to_string();
            cursor = Some(text.parse().expect("cursor parses"));
            paged.extend(page);
        }
        assert_eq!(ids(&paged), want, "page size {page_size}");
    }
    assert!(store
        .list_conversations("", 0, None)
        .expect("list")
        .is_empty());
}

#[test]
fn bad_cursors_are_rejected() {
    for text in ["", "abc", "12", "x_conv_1", "12_"] {
        let err = text.parse::<Cursor>().expect_err(text);
        assert!(matches!(err, StoreError::BadCursor(_)), "{text}: {err:?}");
    }
    let c: Cursor = "1700000000000_conv_ab".parse().expect("good cursor");
    assert_eq!(
        (c.updated_at, c.id.as_str()),
        (1_700_000_000_000, "conv_ab")
    );
}

#[test]
fn a_reply_streams_then_freezes() {
    let (_dir, store) = store("stream");
    let conv = store.create_conversation("", "sage", "t").expect("create");
    let user = store
        .add_message("", &conv.id, Role::User, "Count to three", Status::Done)
        .expect("add")
        .expect("exists");
    let reply = store
        .add_message("", &conv.id, Role::Assistant, "", Status::Streaming)
        .expect("add")
        .expect("exists");
    assert_eq!((user.seq, reply.seq), (1, 2));
    let bumped = store
        .get_conversation("", &conv.id)
        .expect("get")
        .expect("exists");
    assert_eq!(
        bumped.updated_at, reply.created_at,
        "adding a message bumps the conversation"
    );

    for partial in ["One", "One, two", "One, two, three"] {
        store
            .update_message(reply.id, &MessageUpdate::streaming(partial))
            .expect("progress");
    }
    let usage = Usage {
        prompt_tokens: 12,
        completion_tokens: 5,
    };
    store
        .update_message(
            reply.id,
            &MessageUpdate::done("One, two, three.").with_usage(usage),
        )
        .expect("finish");

    let msgs = store.messages("", &conv.id).expect("read").expect("exists");
    assert_eq!(msgs[0], user);
    let got = &msgs[1];
    assert_eq!(
        (got.id, got.role, got.status),
        (reply.id, Role::Assistant, Status::Done)
    );
    assert_eq!(got.content, "One, two, three.");
    assert_eq!(got.usage, Some(usage));
    assert_eq!(got.error, None);
    assert!(got.updated_at > got.created_at);

    let err = store
        .update_message(reply.id, &MessageUpdate::streaming("late"))
        .expect_err("done is final");
    assert!(
        matches!(
            err,
            StoreError::MessageFinished {
                status: Status::Done,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .update_message(i64::MAX, &MessageUpdate::done("x"))
        .expect_err("no such message");
    assert!(
        matches!(err, StoreError::MessageNotFound { id: i64::MAX }),
        "{err:?}"
    );
    let after = store.messages("", &conv.id).expect("read").expect("exists");
    assert_eq!(after, msgs, "failed updates changed nothing");
}

#[test]
fn failed_and_cancelled_replies_keep_their_text() {
    let (_dir, store) = store("fail");
    let conv = store.create_conversation("", "sage", "t").expect("create");
    let add = || {
        store
            .add_message("", &conv.id, Role::Assistant, "", Status::Streaming)
            .expect("add")
            .expect("exists")
    };
    let (failed, cancelled) = (add(), add());
    store
        .update_message(
            failed.id,
            &MessageUpdate::failed("Half a", "engine: out of memory"),
        )
        .expect("fail");
    store
        .update_message(cancelled.id, &MessageUpdate::cancelled("Half b"))
        .expect("cancel");
    let msgs = store.messages("", &conv.id).expect("read").expect("exists");
    assert_eq!(msgs[0].status, Status::Error);
    assert_eq!(msgs[0].content, "Half a");
    assert_eq!(msgs[0].error.as_deref(), Some("engine: out of memory"));
    assert_eq!(msgs[1].status, Status::Cancelled);
    assert_eq!(msgs[1].content, "Half b");
    assert_eq!(msgs[1].error, None);
}

#[test]
fn unicode_and_large_content_round_trip() {
    let (_dir, store) = store("content");
    let odd = "Ünïcödé — 日本語 — עברית — 👩‍👩‍👧‍👦 — e\u{301} — \u{0}nul\u{0} — \r\n\ttabs — 'quotes\" ; DROP TABLE messages; --";
    let conv = store.create_conversation(odd, odd, odd).expect("create");
    let got = store
        .get_conversation(odd, &conv.id)
        .expect("get")
        .expect("exists");
    assert_eq!(
        (
            got.owner.as_str(),
            got.persona_id.as_str(),
            got.title.as_str()
        ),
        (odd, odd, odd)
    );

    let megabyte: String = "0123456789abcdef→".repeat((1 << 20) / 19 + 1);
    assert!(megabyte.len() >= 1 << 20, "{}", megabyte.len());
    let user = store
        .add_message(odd, &conv.id, Role::User, &megabyte, Status::Done)
        .expect("add")
        .expect("exists");
    let reply = store
        .add_message(odd, &conv.id, Role::Assistant, odd, Status::Streaming)
        .expect("add")
        .expect("exists");
    let long_reply = format!("{odd}{megabyte}");
    store
        .update_message(reply.id, &MessageUpdate::done(&long_reply))
        .expect("update");

    let msgs = store
        .messages(odd, &conv.id)
        .expect("read")
        .expect("exists");
    assert_eq!(msgs[0].id, user.id);
    assert!(msgs[0].content == megabyte, "1 MB user message differs");
    assert!(msgs[1].content == long_reply, "1 MB reply differs");
    assert!(store
        .list_conversations("", 10, None)
        .expect("list")
        .is_empty());
}

#[test]
fn readers_see_consistent_snapshots_while_a_writer_writes() {
    const WRITES: usize = 300;
    const READERS: usize = 3;
    let (_dir, store) = store("concurrent");
    let store = Arc::new(store);
    let conv = store
        .create_conversation("", "sage", "busy")
        .expect("create");

    let writer = {
        let (store, id) = (Arc::clone(&store), conv.id.clone());
        thread::spawn(move || {
            for i in 0..WRITES {
                let reply = store
                    .add_message("", &id, Role::Assistant, "", Status::Streaming)
                    .expect("add")
                    .expect("exists");
                store
                    .update_message(reply.id, &MessageUpdate::done(&format!("reply {i}")))
                    .expect("finish");
            }
        })
    };
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (store, id) = (Arc::clone(&store), conv.id.clone());
            thread::spawn(move || {
                let (mut last_len, mut reads) = (0, 0);
                while last_len < WRITES {
                    let msgs = store.messages("", &id).expect("read").expect("exists");
                    assert!(msgs.len() >= last_len, "a reader went back in time");
                    for (i, m) in msgs.iter().enumerate() {
                        assert_eq!(m.seq, i as i64 + 1, "seq has no gaps");
                        if m.status == Status::Done {
                            assert_eq!(m.content, format!("reply {i}"));
                        } else {
                            assert_eq!((m.status, i + 1), (Status::Streaming, msgs.len()));
                        }
                    }
                    let listed = store.list_conversations("", 5, None).expect("list");
                    assert_eq!(listed.len(), 1);
                    last_len = msgs.len();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    writer.join().expect("writer thread");
    for reader in readers {
        let reads = reader.join().expect("reader thread");
        assert!(reads > 1, "the reader ran alongside the writer");
    }
    store.integrity_check().expect("sound after the race");
}
