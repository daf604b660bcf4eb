//! The `troupe` binary end to end on the real SmolLM2 model.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn troupe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(args)
        .env("TROUPE_THREADS", "2")
        .output()
        .expect("run troupe")
}

fn model() -> String {
    troupe_hub::test_model("smollm2-135m").display().to_string()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

#[test]
fn tokenize_prints_llama_cpp_ids() {
    let m = model();
    let o = troupe(&["tokenize", "-m", &m, "The capital of France is"]);
    assert_eq!(stdout(&o).trim(), "[504,3575,282,4649,314]");
}

#[test]
fn raw_greedy_generation_writes_only_the_text() {
    let m = model();
    let o = troupe(&[
        "generate",
        "-m",
        &m,
        "--raw",
        "-p",
        "The capital of France is",
        "-n",
        "4",
        "--temp",
        "0",
    ]);
    // llama.cpp's greedy continuation: " Paris.\n\n"
    assert_eq!(stdout(&o), " Paris.\n\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("4 generated"));
}

#[test]
fn same_seed_same_text_and_chat_template_stops_at_end_of_turn() {
    let m = model();
    let args = [
        "generate",
        "-m",
        &m,
        "-p",
        "Tell me a joke.",
        "-n",
        "24",
        "--temp",
        "0.9",
        "--seed",
        "7",
    ];
    let a = stdout(&troupe(&args));
    let b = stdout(&troupe(&args));
    assert_eq!(a, b);
    assert!(!a.contains("<|im_end|>"));
    let o = troupe(&[
        "generate",
        "-m",
        &m,
        "-p",
        "What is 2+2? Answer with one number.",
        "-n",
        "64",
        "--temp",
        "0",
    ]);
    stdout(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("finish: stop"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `troupe chat ARGS` with `input` on stdin.
fn chat(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_troupe"))
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    child.wait_with_output().expect("wait")
}

#[test]
fn chat_reads_turns_until_exit() {
    let m = model();
    let o = chat(
        &[
            "-m",
            &m,
            "--temp",
            "0",
            "-n",
            "16",
            "--system",
            "You are terse.",
        ],
        b"Hello!\nWhat did I just say?\n/exit\n",
    );
    let text = stdout(&o);
    assert!(
        text.lines().filter(|l| !l.trim().is_empty()).count() >= 2,
        "{text}"
    );
}

/// `chat --persona`: the greeting comes first, then a reply in the
/// persona's voice (Unit-7's examples all open with its status line, and a
/// greedy reply copies it); unknown ids are a clear error.
#[test]
fn chat_with_a_persona() {
    let m = model();
    let o = chat(
        &["-m", &m, "--temp", "0", "-n", "48", "--persona", "unit-7"],
        b"What is your favourite colour?\n/exit\n",
    );
    let text = stdout(&o);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    assert!(
        lines.next().is_some_and(|l| l.starts_with("QUERY MODE")),
        "{text}"
    );
    assert!(
        lines.next().is_some_and(|l| l.contains("QUERY MODE")),
        "{text}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(["chat", "-m", &m, "--persona", "nobody"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no persona `nobody`"));
}

#[test]
fn bench_json_has_the_figures() {
    let m = model();
    let o = troupe(&[
        "bench",
        "-m",
        &m,
        "--prompt-tokens",
        "32",
        "--gen-tokens",
        "4",
        "--reps",
        "1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert!(v["prefill_tok_s"].as_f64().expect("prefill") > 0.0);
    assert!(v["decode_tok_s"].as_f64().expect("decode") > 0.0);
}

#[test]
fn bad_models_are_clear_errors() {
    let o = troupe(&["generate", "-m", "/nonexistent/model.gguf", "-p", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("neither an existing model file nor a catalog name"));
    let dir = std::env::temp_dir().join(format!("troupe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("truncated.gguf");
    let bytes = std::fs::read(model()).expect("model");
    std::fs::write(&bad, &bytes[..4096]).expect("write");
    let o = troupe(&["generate", "-m", bad.to_str().expect("path"), "-p", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("error: loading"));
    let _ = std::fs::remove_dir_all(&dir);
}
