//! Golden tests against independent references:
//! - greedy continuations identical to llama.cpp's (fixtures from
//!   `scripts/fixtures/greedy.py`, llama-server with top_k=1);
//! - SmolLM2's and Qwen's final logits close to a NumPy forward pass over
//!   gguf-py-dequantized weights (`scripts/reference_forward.py`).

use serde_json::Value;
use std::path::PathBuf;
use troupe_engine::{Engine, EngineOptions, Step};
use troupe_gguf::GgufFile;
use troupe_tokenizer::Tokenizer;

/// Generated tokens compared per case (the acceptance bar is 32).
const GREEDY_COMPARE: usize = 32;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn load(name: &str) -> (Engine, Tokenizer) {
    let path = troupe_hub::test_model(name);
    let file = GgufFile::open(&path).expect("open model");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let opts = EngineOptions {
        n_ctx: 2048,
        kv_positions: 2048,
        ..EngineOptions::default()
    };
    (Engine::load(&path, opts).expect("load model"), tok)
}

/// How llama-server (the fixtures' source) splits a prompt into decode
/// calls: for a model with sliding-window attention (no `--swa-full`) it
/// stops a batch when 4 + n_ubatch (516) or 4 prompt tokens remain, so that
/// it can checkpoint the SWA cache (`server-context.cpp`, llama.cpp PR
/// #20288); other models get one batch. Each batch is then split into
/// ubatches of 512, as `Engine::prefill` does. Batch sizes change which
/// matmul kernels llama.cpp picks, so the prompt's logits depend on them.
fn server_prompt_batches(n: usize, swa: bool) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=n {
        if i == n || (swa && (n - i == 516 || n - i == 4)) {
            out.push(start..i);
            start = i;
        }
    }
    out
}

/// llama.cpp itself quantizes activations to 8 bits, so two faithful
/// implementations can swap the top two tokens where llama.cpp's own top-2
/// log-probability margin is this small (its logits move by up to ~0.7 nats
/// between its quantized and f32 runs; see tests/fixtures/reference).
/// Tolerated only with `TROUPE_GOLDEN_NEAR_TIES=1` (e.g. against fixtures
/// from another llama.cpp build): our numerics follow the fixtures' build
/// (see scripts/fixtures/README.md), so by default every token must match.
const NEAR_TIE_NATS: f64 = 0.5;

/// Serialises the model tests: each engine has its own spinning thread pool.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Compares greedy tokens with llama.cpp's. Every step must match exactly;
/// with `TROUPE_GOLDEN_NEAR_TIES=1`, where we pick a token that llama.cpp
/// itself rates within [`NEAR_TIE_NATS`] of its best (from its recorded
/// top-3), the case ends there and the swap is only reported.
fn greedy_matches_llama_cpp(name: &str) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tolerate_ties = std::env::var("TROUPE_GOLDEN_NEAR_TIES").is_ok_and(|v| v == "1");
    // TROUPE_GREEDY_FIXTURES: another directory of greedy fixtures (e.g. made
    // with a differently built llama.cpp), for comparisons by hand.
    let path = match std::env::var_os("TROUPE_GREEDY_FIXTURES") {
        Some(dir) => PathBuf::from(dir).join(format!("{name}.json")),
        None => fixture(&format!("greedy/{name}.json")),
    };
    let text = std::fs::read_to_string(path).expect("fixture");
    let fx: Value = serde_json::from_str(&text).expect("fixture json");
    let (mut engine, tok) = load(name);
    let mut failures = Vec::new();
    let mut exact = 0;
    let mut ties = Vec::new();
    let cases = fx["cases"].as_array().expect("cases");
    for case in cases {
        let cname = case["name"].as_str().unwrap_or("?");
        let prompt = case["prompt"].as_str().expect("prompt");
        let want_prompt: Vec<u32> =
            serde_json::from_value(case["prompt_tokens"].clone()).expect("ids");
        let want: Vec<u32> = serde_json::from_value(case["tokens"].clone()).expect("ids");
        let ours = tok.encode(prompt, true, true);
        if ours != want_prompt {
            failures.push(format!("{cname}: prompt tokenization differs"));
            continue;
        }
        let seq = engine.new_sequence();
        let swa = engine.config().sliding_window > 0;
        let mut next = 0;
        for r in server_prompt_batches(want_prompt.len(), swa) {
            next = argmax(engine.prefill(seq, &want_prompt[r]).expect("prefill"));
        }
        let n = want.len().min(GREEDY_COMPARE);
        let mut all_equal = true;
        for (i, &w) in want.iter().take(n).enumerate() {
            if next != w {
                all_equal = false;
                let top = &case["top_probs"][i];
                // llama.cpp's own log-probability of our token, if recorded.
                let ours_lp = (0..3)
                    .find(|&k| top[k]["id"].as_u64() == Some(next as u64))
                    .and_then(|k| top[k]["logprob"].as_f64());
                let best = top[0]["logprob"].as_f64().unwrap_or(f64::NAN);
                let margin = ours_lp.map(|l| best - l);
                let msg = format!(
                    "{cname}: step {i}: ours {next} {:?}, llama.cpp {w} {:?} (llama.cpp rates ours {margin:?} nats below its best)",
                    tok.token_text(next),
                    tok.token_text(w)
                );
                if tolerate_ties && margin.is_some_and(|m| m < NEAR_TIE_NATS) {
                    ties.push(msg);
                } else {
                    failures.push(msg);
                }
                break;
            }
            if i + 1 == n || tok.is_eog(next) {
                break;
            }
            engine
                .step(&[Step {
                    seq,
                    tokens: &[next],
                    logits: true,
                    span: 0,
                }])
                .expect("decode");
            next = argmax(engine.logits(0).expect("logits"));
        }
        exact += all_equal as usize;
        engine.free_sequence(seq);
    }
    eprintln!(
        "{name}: {exact}/{} cases identical to llama.cpp for up to {GREEDY_COMPARE} tokens; near-tie swaps:\n  {}",
        cases.len(),
        ties.join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_greedy_matches_llama_cpp() {
    greedy_matches_llama_cpp("smollm2-135m");
}

#[test]
fn qwen2_greedy_matches_llama_cpp() {
    greedy_matches_llama_cpp("qwen2.5-coder-0.5b");
}

#[test]
fn gemma3_greedy_matches_llama_cpp() {
    greedy_matches_llama_cpp("gemma3-270m");
}

/// Our logits use 8-bit activations (like llama.cpp); the NumPy reference
/// is f32/f64 throughout; llama.cpp's own logits differ from it by up to
/// ~1 nat (tests/fixtures/reference); ours by 0.85 (SmolLM2) and 0.51
/// (Qwen, cosine 0.99943: attention accumulates V in f16 like llama.cpp).
const LOGIT_MAX_ABS_TOL: f32 = 1.0;
const LOGIT_COSINE_MIN: f64 = 0.999;

fn logits_match_reference(name: &str) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("reference/{name}.json"))).expect("fixture"),
    )
    .expect("json");
    let raw = std::fs::read(fixture(&format!("reference/{name}.logits.f32"))).expect("logits file");
    let want: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let ids: Vec<u32> = serde_json::from_value(meta["token_ids"].clone()).expect("ids");
    let (mut engine, _) = load(name);
    let seq = engine.new_sequence();
    let got = engine.prefill(seq, &ids).expect("prefill").to_vec();
    assert_eq!(got.len(), want.len());
    let max_abs = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let dot: f64 = got
        .iter()
        .zip(&want)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum();
    let na: f64 = got.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum::<f64>().sqrt();
    let cos = dot / (na * nb);
    eprintln!("{name}: max |Δlogit| = {max_abs:.4}, cosine = {cos:.6}");
    assert!(
        max_abs <= LOGIT_MAX_ABS_TOL,
        "max |Δlogit| {max_abs} > {LOGIT_MAX_ABS_TOL}"
    );
    assert!(cos >= LOGIT_COSINE_MIN, "cosine {cos} < {LOGIT_COSINE_MIN}");
    assert_eq!(argmax(&got), argmax(&want), "argmax differs");
}

#[test]
fn smollm2_logits_match_numpy_reference() {
    logits_match_reference("smollm2-135m");
}

#[test]
fn qwen2_logits_match_numpy_reference() {
    logits_match_reference("qwen2.5-coder-0.5b");
}
