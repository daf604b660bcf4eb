//! Token ids identical to llama.cpp's, on the three test models.
//!
//! The expectations in `tests/fixtures/tokenizer/<model>.json` (repository
//! root) come from llama.cpp's `llama-tokenize` via
//! `scripts/fixtures/tokenizer.py`: for every text the ids and each token's
//! piece in two modes, `raw` (add_special as the model asks, parse_special on)
//! and `plain` (both off), plus whether llama.cpp's pieces join back to the
//! text. A missing model fails the test with the command that fetches it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;
use troupe_gguf::GgufFile;
use troupe_tokenizer::Tokenizer;

/// Where test models live: `$TROUPE_TEST_MODELS`, else `$TROUPE_DATA/models`,
/// else `$XDG_DATA_HOME/troupe/models`, else `~/.local/share/troupe/models`.
fn models_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var("TROUPE_TEST_MODELS") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("TROUPE_DATA") {
        return PathBuf::from(dir).join("models");
    }
    if let Some(dir) = var("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("troupe").join("models");
    }
    let home = var("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".local/share/troupe/models")
}

fn load_tokenizer(name: &str) -> Tokenizer {
    let path = models_dir().join(format!("{name}.gguf"));
    assert!(
        path.exists(),
        "test model {} is missing: run `troupe pull {name}` (or point TROUPE_TEST_MODELS at a \
         directory holding {name}.gguf)",
        path.display()
    );
    let gguf = GgufFile::open(&path).expect("open test model");
    Tokenizer::from_gguf(&gguf).expect("read tokenizer")
}

fn load_fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/fixtures/tokenizer.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("fixture JSON")
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks one mode of one case; returns a description of each mismatch.
fn check_mode(tok: &Tokenizer, case: &Value, mode: &str, add: bool, parse: bool) -> Vec<String> {
    let name = case["name"].as_str().unwrap_or("?");
    let text = case["text"].as_str().expect("text");
    let want = ids_of(&case[mode]["ids"]);
    let got = tok.encode(text, add, parse);
    let mut errors = Vec::new();
    if got != want {
        errors.push(format!(
            "{name} [{mode}] {text:?}\n    llama.cpp: {want:?}\n    troupe:    {got:?}"
        ));
    }
    let pieces = case[mode]["pieces_hex"].as_array().expect("pieces");
    for (&id, piece) in want.iter().zip(pieces) {
        // llama-tokenize prints pieces with printf("%s"): they end at a NUL.
        let piece_bytes = tok.token_to_piece(id, true);
        let printed = piece_bytes.split(|&b| b == 0).next().unwrap_or(&[]);
        let ours = hex(printed);
        if Some(ours.as_str()) != piece.as_str() {
            errors.push(format!(
                "{name} [{mode}] piece of token {id}: llama.cpp {piece}, troupe {ours}"
            ));
        }
    }
    if mode == "plain" && case[mode]["round_trip"].as_bool() == Some(true) {
        let back = tok.decode_bytes(&got, true);
        if back != text.as_bytes() {
            errors.push(format!(
                "{name} [plain] decode(encode(text)) = {:?}, want the text back",
                String::from_utf8_lossy(&back)
            ));
        }
    }
    errors
}

fn check_model(name: &str) {
    let tok = load_tokenizer(name);
    let fixture = load_fixture(name);
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30, "fixture has only {} texts", cases.len());
    let mut errors = Vec::new();
    for case in cases {
        errors.extend(check_mode(&tok, case, "raw", tok.add_bos(), true));
        errors.extend(check_mode(&tok, case, "plain", false, false));
    }
    assert!(
        errors.is_empty(),
        "{name}: {} mismatches with {}:\n{}",
        errors.len(),
        fixture["llama_cpp"],
        errors.join("\n")
    );
    println!(
        "{name}: {} texts x 2 modes identical to llama.cpp",
        cases.len()
    );
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_model("smollm2-135m");
}

#[test]
fn qwen2_5_coder_matches_llama_cpp() {
    check_model("qwen2.5-coder-0.5b");
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_model("gemma3-270m");
}

#[test]
fn end_of_generation_sets() {
    let smol = load_tokenizer("smollm2-135m");
    let im_end = smol.token_id("<|im_end|>").expect("<|im_end|>");
    assert!(smol.is_eog(im_end));
    assert!(smol.is_eog(smol.token_id("<|endoftext|>").expect("eot")));
    assert!(!smol.is_eog(smol.token_id("<|im_start|>").expect("im_start")));
    assert_eq!(smol.eot(), Some(im_end));
    assert!(!smol.add_bos());

    let qwen = load_tokenizer("qwen2.5-coder-0.5b");
    assert_eq!(qwen.eos(), qwen.token_id("<|im_end|>"));
    for t in [
        "<|im_end|>",
        "<|endoftext|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
    ] {
        assert!(qwen.is_eog(qwen.token_id(t).expect(t)), "{t}");
    }

    let gemma = load_tokenizer("gemma3-270m");
    assert!(gemma.add_bos());
    assert_eq!(gemma.bos(), gemma.token_id("<bos>"));
    assert_eq!(gemma.eot(), gemma.token_id("<end_of_turn>"));
    assert!(gemma.is_eog(gemma.token_id("<end_of_turn>").expect("eot")));
    assert!(gemma.is_eog(gemma.token_id("<eos>").expect("eos")));
    assert!(!gemma.is_eog(gemma.token_id("<start_of_turn>").expect("sot")));
}

#[test]
fn streaming_matches_decode_on_real_models() {
    let text = "Crab \u{1f980}, family \u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}, 日本語 — done";
    for name in ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"] {
        let tok = load_tokenizer(name);
        let ids = tok.encode(text, false, false);
        let mut dec = tok.stream_decoder(false);
        let mut streamed = String::new();
        for &id in &ids {
            let part = dec.push(id);
            assert!(
                !part.contains('\u{fffd}'),
                "{name}: replacement char mid-stream"
            );
            streamed.push_str(&part);
        }
        streamed.push_str(&dec.finish());
        assert_eq!(streamed, text, "{name}");
        assert_eq!(tok.decode(&ids), text, "{name}");
    }
}

#[test]
fn long_prompt_tokenizes_in_milliseconds() {
    let fixture = load_fixture("qwen2.5-coder-0.5b");
    let mut prompt = String::new();
    for case in fixture["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .cycle()
        .take(120)
    {
        prompt.push_str(case["text"].as_str().unwrap_or(""));
        prompt.push('\n');
    }
    for name in ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"] {
        let tok = load_tokenizer(name);
        let start = Instant::now();
        let ids = tok.encode(&prompt, true, true);
        let elapsed = start.elapsed();
        println!(
            "{name}: {} bytes -> {} tokens in {:.2} ms",
            prompt.len(),
            ids.len(),
            elapsed.as_secs_f64() * 1e3
        );
        assert!(ids.len() > 1500, "{name}: only {} tokens", ids.len());
        assert!(elapsed.as_millis() < 500, "{name}: {elapsed:?}");
    }
}
