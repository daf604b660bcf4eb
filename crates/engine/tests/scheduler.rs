//! Continuous batching on the real model: batched greedy generations equal
//! the same generations run alone, cancelled requests free their blocks,
//! and admission waits for KV space instead of failing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use troupe_engine::sampler::SamplingParams;
use troupe_engine::scheduler::{Event, Request, Scheduler, SchedulerOptions, Sink, Usage};
use troupe_engine::{generate, Engine, EngineOptions, FinishReason, Flow, GenerateParams};
use troupe_tokenizer::Tokenizer;

struct ChanSink {
    tx: mpsc::Sender<Event>,
    gone: Arc<AtomicBool>,
}

impl Sink for ChanSink {
    fn send(&mut self, ev: Event) -> bool {
        !self.gone.load(Ordering::Relaxed) && self.tx.send(ev).is_ok()
    }
    fn closed(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
}

fn load(n_ctx: usize, kv_positions: usize) -> (Engine, Arc<Tokenizer>) {
    let path = troupe_hub::test_model("smollm2-135m");
    let file = troupe_gguf::GgufFile::open(&path).expect("open");
    let tok = Arc::new(Tokenizer::from_gguf(&file).expect("tokenizer"));
    let opts = EngineOptions {
        n_ctx,
        kv_positions,
        max_batch_tokens: 256,
        ..EngineOptions::default()
    };
    (Engine::load(&path, opts).expect("load"), tok)
}

fn params(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        stop_at_eog: true,
    }
}

fn chat(tok: &Tokenizer, user: &str) -> Vec<u32> {
    tok.encode_chat(&format!(
        "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    ))
}

struct Outcome {
    text: String,
    finish: Option<FinishReason>,
    usage: Usage,
    error: Option<String>,
}

fn collect(rx: &mpsc::Receiver<Event>) -> Outcome {
    let mut o = Outcome {
        text: String::new(),
        finish: None,
        usage: Usage::default(),
        error: None,
    };
    for ev in rx.try_iter() {
        match ev {
            Event::Token { text, .. } | Event::Tail(text) => o.text.push_str(&text),
            Event::Done { finish, usage } => {
                o.finish = Some(finish);
                o.usage = usage;
            }
            Event::Error(e) => o.error = Some(e),
        }
    }
    o
}

fn submit(s: &mut Scheduler, prompt: Vec<u32>, p: GenerateParams) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    let sink = ChanSink {
        tx,
        gone: Arc::new(AtomicBool::new(false)),
    };
    s.submit(Request {
        prompt,
        params: p,
        logprobs: None,
        pin_prefix: 0,
        sink: Box::new(sink),
    });
    rx
}

const QUESTIONS: [&str; 5] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Name three primary colors.",
    "How do I boil an egg?",
    "Tell me a fun fact about octopuses, and explain why it is true in detail please.",
];

#[test]
fn batched_generations_equal_generations_alone() {
    let (mut engine, tok) = load(1024, 4096);
    // Alone, through the plain generation loop.
    let mut alone = Vec::new();
    for q in QUESTIONS {
        let seq = engine.new_sequence();
        let g = generate(
            &mut engine,
            &tok,
            seq,
            &chat(&tok, q),
            &params(24),
            &mut |_| Flow::Continue,
        )
        .expect("generate");
        engine.free_sequence(seq);
        alone.push(g);
    }
    // All at once through the scheduler, joined at different steps.
    let mut s = Scheduler::new(
        engine,
        tok.clone(),
        SchedulerOptions {
            max_running: 8,
            prefill_chunk: 16,
            step_target: None,
            pin_budget_blocks: None,
        },
    );
    let mut rxs = Vec::new();
    for (i, q) in QUESTIONS.iter().enumerate() {
        rxs.push(submit(&mut s, chat(&tok, q), params(24)));
        for _ in 0..i {
            s.step();
        }
    }
    while s.busy() {
        s.step();
    }
    for (i, rx) in rxs.iter().enumerate() {
        let o = collect(rx);
        assert_eq!(o.error, None);
        assert_eq!(o.text, alone[i].text, "question {i}");
        let finish = if alone[i].finish == FinishReason::Length {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        assert_eq!(o.finish, Some(finish));
        assert_eq!(o.usage.prompt_tokens, chat(&tok, QUESTIONS[i]).len());
        // The scheduler also counts an end-of-turn token it sampled.
        let eog = usize::from(finish == FinishReason::Stop);
        assert_eq!(o.usage.completion_tokens, alone[i].tokens.len() + eog);
    }
    let st = s.stats();
    assert_eq!(st.running.load(Ordering::Relaxed), 0);
    assert_eq!(s.engine().kv_stats().used, 0, "every block returned");
    // The same prompt again reuses its cached prefix and says so.
    let rx = submit(&mut s, chat(&tok, QUESTIONS[4]), params(24));
    while s.busy() {
        s.step();
    }
    let o = collect(&rx);
    assert!(
        o.usage.cached_tokens >= 16,
        "cached {}",
        o.usage.cached_tokens
    );
    assert_eq!(o.text, alone[4].text);
}

#[test]
fn cancelled_requests_free_their_blocks() {
    let (engine, tok) = load(512, 2048);
    let mut s = Scheduler::new(
        engine,
        tok.clone(),
        SchedulerOptions {
            max_running: 4,
            prefill_chunk: 64,
            step_target: None,
            pin_budget_blocks: None,
        },
    );
    let (tx, rx) = mpsc::channel();
    let gone = Arc::new(AtomicBool::new(false));
    s.submit(Request {
        prompt: chat(&tok, QUESTIONS[1]),
        params: params(200),
        logprobs: None,
        pin_prefix: 0,
        sink: Box::new(ChanSink {
            tx,
            gone: gone.clone(),
        }),
    });
    for _ in 0..4 {
        s.step();
    }
    assert!(s.engine().kv_stats().used > 0);
    gone.store(true, Ordering::Relaxed);
    s.step();
    assert!(!s.busy());
    assert_eq!(s.engine().kv_stats().used, 0);
    assert_eq!(s.stats().cancelled.load(Ordering::Relaxed), 1);
    let o = collect(&rx);
    assert_eq!(o.finish, None, "a cancelled request gets no Done");
}

#[test]
fn admission_waits_for_kv_space() {
    // 256 positions in all: two requests of 150 cannot both run.
    let (engine, tok) = load(256, 256);
    let mut s = Scheduler::new(
        engine,
        tok.clone(),
        SchedulerOptions {
            max_running: 4,
            prefill_chunk: 64,
            step_target: None,
            pin_budget_blocks: None,
        },
    );
    let p = chat(&tok, QUESTIONS[0]);
    let budget = 150 - p.len();
    let mut forced = params(budget);
    forced.stop_at_eog = false;
    let rx1 = submit(&mut s, p.clone(), forced.clone());
    let rx2 = submit(&mut s, chat(&tok, QUESTIONS[2]), forced);
    s.step();
    assert_eq!(s.stats().running.load(Ordering::Relaxed), 1);
    assert_eq!(s.stats().waiting.load(Ordering::Relaxed), 1);
    while s.busy() {
        s.step();
    }
    for rx in [rx1, rx2] {
        let o = collect(&rx);
        assert_eq!(o.error, None);
        assert_eq!(o.finish, Some(FinishReason::Length));
        assert_eq!(o.usage.completion_tokens, budget);
    }
}
