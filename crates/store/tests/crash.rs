//! Durability under `kill -9`: a child process streams replies into the
//! store and reports each commit on stdout; the parent kills it mid-stream
//! at a random moment, reopens the file and checks that it is sound, that
//! every reported turn is there word for word, and that the reply in flight
//! is `interrupted` with a clean prefix of its text.
//!
//! The child is this test binary itself, re-run with [`CHILD_ENV`] set and
//! only [`child_process`] selected, so no extra binary is needed. All
//! rounds share one file, so each recovery also has to preserve the turns
//! of the rounds before it.

mod common;

use common::{random_u64, TempDir};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use troupe_store::{MessageUpdate, Role, Status, Store, Usage};

/// Set in the child: the database path.
const CHILD_ENV: &str = "TROUPE_STORE_CRASH_DB";
/// Set in the child: the turn whose reply streams until the kill.
const TARGET_ENV: &str = "TROUPE_STORE_CRASH_TURN";
/// Starts each report line of the child.
const MARK: &str = "@@store-crash@@ ";
const OWNER: &str = "crash-owner";
/// Progress writes per finished reply.
const CHUNKS: usize = 40;
const ROUNDS: usize = 6;
/// Upper bound of the random wait between "streaming" and the kill.
const MAX_DELAY_MS: u64 = 60;

fn user_text(turn: usize) -> String {
    format!("user turn {turn}: ¿qué tal? 🦀")
}

/// The first `chunks` chunks of the reply to `turn`.
fn reply_text(turn: usize, chunks: usize) -> String {
    (0..chunks).map(|j| format!("t{turn}·c{j} ")).collect()
}

/// Not a test of its own: the child's body, a no-op unless [`CHILD_ENV`]
/// is set.
#[test]
fn child_process() {
    let Some(db) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let target: usize = std::env::var(TARGET_ENV)
        .ok()
        .and_then(|t| t.parse().ok())
        .expect("target turn");
    let store = Store::open(Path::new(&db)).expect("child open");
    let conv = store
        .create_conversation(OWNER, "sage", "crash")
        .expect("create");
    println!("{MARK}CONV {}", conv.id);
    for turn in 0.. {
        store
            .add_message(OWNER, &conv.id, Role::User, &user_text(turn), Status::Done)
            .expect("add user")
            .expect("exists");
        println!("{MARK}USER {turn}");
        let reply = store
            .add_message(OWNER, &conv.id, Role::Assistant, "", Status::Streaming)
            .expect("add reply")
            .expect("exists");
        let mut chunks = 0;
        while turn == target || chunks < CHUNKS {
            chunks += 1;
            let text = reply_text(turn, chunks);
            store
                .update_message(reply.id, &MessageUpdate::streaming(&text))
                .expect("progress");
            if chunks == 1 {
                println!("{MARK}STREAMING {turn}");
            }
        }
        let usage = Usage {
            prompt_tokens: turn as u32,
            completion_tokens: CHUNKS as u32,
        };
        let text = reply_text(turn, CHUNKS);
        store
            .update_message(reply.id, &MessageUpdate::done(&text).with_usage(usage))
            .expect("finish");
        println!("{MARK}DONE {turn}");
    }
}

/// What the parent learned from one child before killing it.
struct Round {
    conv: String,
    /// Turns reported `DONE`.
    done: usize,
    /// Whether the target turn's user message was reported.
    user_in_flight: bool,
}

/// Runs a child that streams turn `target` forever and kills it `delay`
/// after that reply started.
fn crash_round(db: &Path, target: usize, delay: Duration) -> Round {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, db)
        .env(TARGET_ENV, target.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut round = Round {
        conv: String::new(),
        done: 0,
        user_in_flight: false,
    };
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        // libtest may print on the same line before the child's output.
        let Some((_, report)) = line.split_once(MARK) else {
            continue;
        };
        let mut words = report.split_whitespace();
        let (Some(tag), Some(arg)) = (words.next(), words.next()) else {
            continue;
        };
        match tag {
            "CONV" => round.conv = arg.to_string(),
            "USER" => round.user_in_flight = arg == target.to_string(),
            "DONE" => round.done += 1,
            "STREAMING" if arg == target.to_string() => {
                std::thread::sleep(delay);
                child.kill().expect("kill -9 the child");
                break;
            }
            _ => {}
        }
    }
    let status = child.wait().expect("wait for child");
    assert!(
        !status.success(),
        "the child was killed, not finished: {status}"
    );
    round
}

/// Checks one round's conversation after recovery: the turns before the
/// target complete, the target's reply interrupted.
fn check_round(store: &Store, round: &Round, target: usize) {
    let msgs = store
        .messages(OWNER, &round.conv)
        .expect("read")
        .expect("the reported conversation exists");
    assert_eq!(
        round.done, target,
        "the child finished the turns before the target"
    );
    assert!(
        round.user_in_flight,
        "the target turn's user message was reported"
    );
    assert_eq!(
        msgs.len(),
        2 * target + 2,
        "every reported row, nothing more"
    );
    for turn in 0..target {
        let (user, reply) = (&msgs[2 * turn], &msgs[2 * turn + 1]);
        assert_eq!((user.role, user.status), (Role::User, Status::Done));
        assert_eq!(user.content, user_text(turn));
        assert_eq!((reply.role, reply.status), (Role::Assistant, Status::Done));
        assert_eq!(reply.content, reply_text(turn, CHUNKS), "turn {turn}");
        assert_eq!(
            reply.usage.map(|u| u.completion_tokens),
            Some(CHUNKS as u32)
        );
    }
    let (user, reply) = (&msgs[2 * target], &msgs[2 * target + 1]);
    assert_eq!(user.content, user_text(target));
    assert_eq!(
        (reply.role, reply.status),
        (Role::Assistant, Status::Interrupted)
    );
    let chunks = reply.content.matches(' ').count();
    assert!(
        chunks >= 1,
        "the progress reported before the kill survived"
    );
    assert_eq!(
        reply.content,
        reply_text(target, chunks),
        "a clean prefix of the reply"
    );
}

#[test]
fn kill_9_mid_stream_loses_nothing_reported() {
    let dir = TempDir::new("crash");
    let db = dir.db();
    let mut history: Vec<(Round, usize)> = Vec::new();
    for round_no in 0..ROUNDS {
        let target = (random_u64() % 4) as usize;
        let delay = Duration::from_millis(random_u64() % (MAX_DELAY_MS + 1));
        let round = crash_round(&db, target, delay);

        let store = Store::open(&db).expect("reopen after kill -9 (the lock died with the child)");
        store.integrity_check().unwrap_or_else(|e| {
            panic!("round {round_no} (turn {target}, {delay:?}): {e}");
        });
        assert_eq!(
            store.recover().expect("recover"),
            0,
            "open already recovered"
        );
        history.push((round, target));
        for (earlier, target) in &history {
            check_round(&store, earlier, *target);
        }
        let listed = store.list_conversations(OWNER, 100, None).expect("list");
        assert_eq!(listed.len(), history.len());
    }
}
