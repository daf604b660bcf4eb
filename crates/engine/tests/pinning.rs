//! Pinned prefixes on the real model: a persona block pinned by one request
//! survives traffic that evicts every other cached block, an unpinned one
//! does not (so the test can fail), and pins give way to live requests.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use troupe_engine::sampler::SamplingParams;
use troupe_engine::scheduler::{Event, Request, Scheduler, SchedulerOptions, Sink, Usage};
use troupe_engine::{Engine, EngineOptions, GenerateParams};
use troupe_tokenizer::Tokenizer;

struct ChanSink(mpsc::Sender<Event>);

impl Sink for ChanSink {
    fn send(&mut self, ev: Event) -> bool {
        self.0.send(ev).is_ok()
    }
    fn closed(&self) -> bool {
        false
    }
}

/// 512 positions: 32 blocks of 16, so one long request evicts the rest.
fn scheduler() -> (Scheduler, Arc<Tokenizer>) {
    let path = troupe_hub::test_model("smollm2-135m");
    let file = troupe_gguf::GgufFile::open(&path).expect("open");
    let tok = Arc::new(Tokenizer::from_gguf(&file).expect("tokenizer"));
    let opts = EngineOptions {
        n_ctx: 512,
        kv_positions: 512,
        max_batch_tokens: 256,
        ..EngineOptions::default()
    };
    let engine = Engine::load(&path, opts).expect("load");
    let s = Scheduler::new(
        engine,
        tok.clone(),
        SchedulerOptions {
            max_running: 4,
            prefill_chunk: 128,
            step_target: None,
            pin_budget_blocks: None,
        },
    );
    (s, tok)
}

/// Runs one request to the end; returns its usage (panics on an error).
fn run(s: &mut Scheduler, prompt: Vec<u32>, max_tokens: usize, pin_prefix: usize) -> Usage {
    let (tx, rx) = mpsc::channel();
    s.submit(Request {
        prompt,
        params: GenerateParams {
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            stop_at_eog: false,
        },
        logprobs: None,
        pin_prefix,
        sink: Box::new(ChanSink(tx)),
    });
    while s.busy() {
        s.step();
    }
    let mut usage = None;
    for ev in rx.try_iter() {
        match ev {
            Event::Done { usage: u, .. } => usage = Some(u),
            Event::Error(e) => panic!("request failed: {e}"),
            _ => {}
        }
    }
    usage.expect("a Done event")
}

const BLOCK: &str = "<|im_start|>system\nYou are Captain Quill, an old pirate storyteller. \
    You open with 'Arr, gather round, matey!' and close with 'Yo-ho!'. You tell short tall \
    tales from the deck of the Salty Gull, then give the plain answer.<|im_end|>\n";

fn ask(tok: &Tokenizer, q: &str) -> Vec<u32> {
    tok.encode_chat(&format!(
        "{BLOCK}<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    ))
}

/// A prompt of 300 tokens that shares nothing with the block.
fn filler(tok: &Tokenizer, salt: usize) -> Vec<u32> {
    let words: String = (0..380).map(|i| format!(" w{}", i * 7 + salt)).collect();
    let ids = tok.encode_chat(&format!("<|im_start|>user\n{words}<|im_end|>\n"));
    assert!(ids.len() >= 300);
    ids[..300].to_vec()
}

/// The prefix-cache hit of a second question after heavy other traffic.
fn hit_after_traffic(pin: bool) -> (usize, usize) {
    let (mut s, tok) = scheduler();
    let block = tok.encode_chat(BLOCK);
    let pin_len = if pin { block.len() } else { 0 };
    run(&mut s, ask(&tok, "How do I tie a knot?"), 4, pin_len);
    if pin {
        assert_eq!(s.stats().pinned_prefixes.load(Relaxed), 1);
        assert_eq!(
            s.stats().kv_blocks_pinned.load(Relaxed) as usize,
            block.len() / 16
        );
        // Pinned-only blocks are reported apart from those sequences hold.
        assert_eq!(s.stats().kv_blocks_used.load(Relaxed), 0);
    }
    for salt in 0..3 {
        run(&mut s, filler(&tok, salt), 40, 0);
    }
    let u = run(&mut s, ask(&tok, "What is a compass for?"), 4, pin_len);
    (u.cached_tokens, block.len())
}

#[test]
fn pinned_block_survives_eviction() {
    let (cached, block_len) = hit_after_traffic(true);
    assert!(block_len >= 32, "the block should span blocks: {block_len}");
    assert_eq!(
        cached,
        block_len / 16 * 16,
        "the pinned whole blocks are reused"
    );
}

#[test]
fn unpinned_block_is_evicted_by_the_same_traffic() {
    let (cached, _) = hit_after_traffic(false);
    assert_eq!(cached, 0, "without a pin the traffic evicts the block");
}

#[test]
fn pins_give_way_to_a_request_that_needs_the_space() {
    let (mut s, tok) = scheduler();
    let block = tok.encode_chat(BLOCK);
    run(&mut s, ask(&tok, "How do I tie a knot?"), 4, block.len());
    assert_eq!(s.stats().pinned_prefixes.load(Relaxed), 1);
    // Needs all 32 blocks: admitted only once the pin lets go.
    let long = filler(&tok, 9);
    let u = run(&mut s, long.clone(), 512 - long.len(), 0);
    assert_eq!(u.completion_tokens, 512 - long.len());
    assert_eq!(s.stats().pinned_prefixes.load(Relaxed), 0);
}
