//! Chat templates against Python jinja2 with Hugging Face's settings.
//!
//! `tests/fixtures/templates/cases.json` (made by
//! `scripts/fixtures/chat_templates.py`) holds the real templates of the
//! instruct models (SmolLM2, Qwen2.5-Coder), hand-written ones (Gemma-style
//! turns with `raise_exception`, loop controls, Python string methods and
//! `tojson`, `strftime_now`), conversations, and what jinja2 rendered for each.
//! Every case must match byte for byte, or fail with the same raised message.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use troupe_tokenizer::chat::{ChatError, ChatTemplate, Message};

#[derive(Deserialize)]
struct Fixtures {
    fixed_time: i64,
    templates: BTreeMap<String, TemplateMeta>,
    conversations: BTreeMap<String, Vec<Message>>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct TemplateMeta {
    file: String,
    bos: String,
    eos: String,
}

#[derive(Deserialize)]
struct Case {
    template: String,
    conversation: String,
    add_generation_prompt: bool,
    expected: Option<String>,
    error: Option<String>,
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/templates")
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn load() -> Fixtures {
    let text = read(&fixtures_dir().join("cases.json"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing cases.json: {e}"))
}

fn template(fx: &Fixtures, name: &str) -> ChatTemplate {
    let meta = &fx.templates[name];
    let source = read(&fixtures_dir().join(&meta.file));
    ChatTemplate::new(&source, &meta.bos, &meta.eos)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .with_fixed_time(fx.fixed_time)
}

#[test]
fn renders_match_python_jinja2() {
    let fx = load();
    let mut failures = Vec::new();
    for case in &fx.cases {
        let t = template(&fx, &case.template);
        let messages = &fx.conversations[&case.conversation];
        let label = format!(
            "{} / {} / add_generation_prompt={}",
            case.template, case.conversation, case.add_generation_prompt
        );
        let got = t.render(messages, case.add_generation_prompt);
        match (&case.expected, &case.error, got) {
            (Some(want), _, Ok(got)) if *want == got => {}
            (Some(want), _, Ok(got)) => {
                failures.push(format!("{label}:\n--- want\n{want}\n--- got\n{got}"))
            }
            (_, Some(want), Err(ChatError::Raised { message })) if *want == message => {}
            (_, _, got) => failures.push(format!("{label}: unexpected result {got:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        fx.cases.len(),
        failures.join("\n\n")
    );
    // Both model templates and every hand-written one were exercised.
    assert!(fx.cases.len() >= 40, "only {} cases", fx.cases.len());
}

#[test]
fn fixture_templates_cover_the_models() {
    let fx = load();
    for name in [
        "smollm2-135m",
        "qwen2.5-coder-0.5b",
        "gemma-style",
        "loop-controls",
        "python-methods",
        "strftime",
    ] {
        assert!(fx.templates.contains_key(name), "missing template {name}");
    }
    assert_eq!(fx.templates["qwen2.5-coder-0.5b"].eos, "<|im_end|>");
}

#[test]
fn gemma_style_raises_on_bad_alternation() {
    let fx = load();
    let t = template(&fx, "gemma-style");
    let messages = [Message::new("user", "a"), Message::new("user", "b")];
    match t.render(&messages, true) {
        Err(ChatError::Raised { message }) => assert_eq!(
            message,
            "Conversation roles must alternate user/assistant/user/assistant/..."
        ),
        other => panic!("expected a raised exception, got {other:?}"),
    }
    let err = t.render(&messages, true).err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("chat template raised an exception: Conversation roles must alternate user/assistant/user/assistant/...")
    );
}

#[test]
fn chatml_fallback() {
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello."),
    ];
    let t = ChatTemplate::from_metadata(None, "<s>", "</s>").unwrap_or_else(|e| panic!("{e}"));
    let want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
                <|im_start|>assistant\nHello.<|im_end|>\n";
    assert_eq!(t.render(&messages, false).ok().as_deref(), Some(want));
    let with_prompt = format!("{want}<|im_start|>assistant\n");
    assert_eq!(
        t.render(&messages, true).ok().as_deref(),
        Some(with_prompt.as_str())
    );
    assert_eq!(t.eos_token(), "</s>");
    assert_eq!(ChatTemplate::chatml().eos_token(), "<|im_end|>");
    assert_eq!(
        ChatTemplate::chatml()
            .render(&messages, true)
            .ok()
            .as_deref(),
        Some(with_prompt.as_str())
    );
    let blank = ChatTemplate::from_metadata(Some("  \n"), "", "").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(blank.source(), ChatTemplate::chatml().source());
}

#[test]
fn broken_template_is_a_syntax_error() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }", "", "").err();
    match err {
        Some(ChatError::Syntax { detail }) => {
            assert!(detail.contains("chat_template:1"), "no line in {detail:?}")
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let err = ChatTemplate::new("{% if x %}never closed", "", "").err();
    assert!(matches!(err, Some(ChatError::Syntax { .. })), "{err:?}");
}

#[test]
fn runtime_failures_are_render_errors() {
    let t = ChatTemplate::new("{{ messages | no_such_filter }}", "", "")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = t.render(&[Message::new("user", "x")], false).err();
    match err {
        Some(ChatError::Render { detail }) => {
            assert!(detail.contains("no_such_filter"), "{detail:?}")
        }
        other => panic!("expected a render error, got {other:?}"),
    }
    // Attribute of an undefined value, as jinja2 also refuses.
    let t = ChatTemplate::new("{{ messages[5].role.x }}", "", "").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        t.render(&[], false),
        Err(ChatError::Render { .. })
    ));
}

#[test]
fn raise_exception_inside_macro_keeps_its_message() {
    let src = "{% macro check(m) %}{% if m.role not in ['user', 'assistant'] %}\
               {{ raise_exception('Unknown role: ' + m.role) }}{% endif %}{% endmacro %}\
               {% for m in messages %}{{ check(m) }}{{ m.content }}{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap_or_else(|e| panic!("{e}"));
    match t.render(&[Message::new("robot", "beep")], false) {
        Err(ChatError::Raised { message }) => assert_eq!(message, "Unknown role: robot"),
        other => panic!("expected a raised exception, got {other:?}"),
    }
}

#[test]
fn loop_controls_break_and_continue() {
    let src = "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
               {% if m.content == 'stop' %}{% break %}{% endif %}{{ m.content }};{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap_or_else(|e| panic!("{e}"));
    let messages = [
        Message::new("system", "sys"),
        Message::new("user", "a"),
        Message::new("assistant", "b"),
        Message::new("user", "stop"),
        Message::new("assistant", "c"),
    ];
    assert_eq!(t.render(&messages, false).ok().as_deref(), Some("a;b;"));
}

#[test]
fn strftime_now_uses_the_clock() {
    let t = ChatTemplate::new(
        "{{ strftime_now('%Y') }}|{{ strftime_now('%d %b %Y') }}",
        "",
        "",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = t.render(&[], false).unwrap_or_else(|e| panic!("{e}"));
    let year: i64 = out[..4].parse().unwrap_or_else(|e| panic!("{out:?}: {e}"));
    // Any year this code will plausibly run in.
    assert!((2024..2200).contains(&year), "{out}");
    assert_eq!(out.len(), "2024|15 Jun 2024".len(), "{out}");
    let fixed = t.clone().with_fixed_time(0);
    assert_eq!(
        fixed.render(&[], false).ok().as_deref(),
        Some("1970|01 Jan 1970")
    );
}

#[test]
fn extra_context_reaches_the_template() {
    let fx = load();
    let qwen = template(&fx, "qwen2.5-coder-0.5b");
    // Structs keep their field order, as Python dicts keep insertion order.
    #[derive(serde::Serialize)]
    struct Function {
        name: &'static str,
        description: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Tool {
        r#type: &'static str,
        function: Function,
    }
    #[derive(serde::Serialize)]
    struct Extra {
        tools: Vec<Tool>,
    }
    let tools = Extra {
        tools: vec![Tool {
            r#type: "function",
            function: Function {
                name: "add",
                description: "Adds",
            },
        }],
    };
    let out = qwen
        .render_with(&[Message::new("user", "1+1?")], true, &tools)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.starts_with("<|im_start|>system\nYou are Qwen"), "{out}");
    let tool_json = r#"{"type": "function", "function": {"name": "add", "description": "Adds"}}"#;
    assert!(
        out.contains(&format!("<tools>\n{tool_json}\n</tools>")),
        "{out}"
    );
    assert!(out.ends_with("<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"));
    // The standard variables win over extras with the same name.
    let t =
        ChatTemplate::new("{{ add_generation_prompt }}", "", "").unwrap_or_else(|e| panic!("{e}"));
    let clash = serde_json::json!({"add_generation_prompt": "overridden"});
    assert_eq!(
        t.render_with(&[], true, &clash).ok().as_deref(),
        Some("True")
    );
    assert!(matches!(
        t.render_with(&[], true, &vec![1, 2]),
        Err(ChatError::ExtraNotMap { .. })
    ));
}

#[test]
fn templates_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
    let t = std::sync::Arc::new(ChatTemplate::chatml());
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let t = std::sync::Arc::clone(&t);
            std::thread::spawn(move || t.render(&[Message::new("user", format!("{i}"))], false))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap_or_else(|_| panic!("thread panicked"));
        assert_eq!(out.ok(), Some(format!("<|im_start|>user\n{i}<|im_end|>\n")));
    }
}

#[test]
fn message_serde_round_trip() {
    let m: Message = serde_json::from_str(r#"{"role":"user","content":"héllo"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m, Message::new("user", "héllo"));
    let back = serde_json::to_string(&m).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, r#"{"role":"user","content":"héllo"}"#);
}
