//! Continuous batching: one loop serves every request at once.
//!
//! Each step runs one forward pass holding a decode token for every running
//! sequence plus as many prompt tokens of newly admitted requests as the
//! batch has room for, so new prompts are prefilled in chunks while running
//! streams keep flowing. A request is admitted only when the KV blocks for
//! its whole prompt and `max_tokens` can be reserved, so a running sequence
//! never runs out of cache and no request can exhaust memory; until then it
//! waits in FIFO order. Prompts start from the longest cached prefix.

use crate::generate::{FinishReason, GenerateParams, StopMatcher};
use crate::sampler::{Logprobs, Sampler};
use crate::{Engine, PrefixHold, SeqId, Step};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use troupe_tokenizer::{StreamDecoder, Tokenizer};

/// Where a request's events go. The server implements it over a channel.
pub trait Sink: Send {
    /// Delivers an event; `false` means the receiver is gone.
    fn send(&mut self, ev: Event) -> bool;
    /// Whether the receiver is gone (the client disconnected).
    fn closed(&self) -> bool;
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Every token the model sampled, including an end-of-turn token that
    /// ended the reply.
    pub completion_tokens: usize,
    /// Prompt tokens taken from the prefix cache instead of computed.
    pub cached_tokens: usize,
}

/// What a request hears from the scheduler, in order: `Token`s, then one
/// `Done` or `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    /// One sampled token and the text it made certain (may be empty while a
    /// character or a possible stop string is incomplete).
    Token {
        id: u32,
        text: String,
        logprobs: Option<Logprobs>,
    },
    /// Text held back until the end (a partial stop string that never
    /// completed, an incomplete character).
    Tail(String),
    Done {
        finish: FinishReason,
        usage: Usage,
    },
    Error(String),
}

/// One generation request, in token ids.
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// `Some(n)`: log-probability of each sampled token and the `n` most
    /// likely alternatives.
    pub logprobs: Option<usize>,
    /// The first `pin_prefix` prompt tokens (a persona block shared by many
    /// conversations) stay pinned in the KV cache once computed: never
    /// evicted while the pin budget holds them. 0: nothing pinned.
    pub pin_prefix: usize,
    pub sink: Box<dyn Sink>,
}

/// Messages into the scheduler thread.
pub enum Command {
    Submit(Request),
    /// Finish the loop after the running requests are done.
    Shutdown,
    /// End every waiting and running request now with this error.
    AbortAll(String),
}

#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Most sequences running at once (the rest wait).
    pub max_running: usize,
    /// Most prompt tokens in one step.
    pub prefill_chunk: usize,
    /// While other sequences are streaming, prompt chunks are sized so a
    /// step takes about this long (from measured speed), which bounds their
    /// inter-token latency; `None` always uses `prefill_chunk`.
    pub step_target: Option<std::time::Duration>,
    /// Most KV blocks pinned prefixes may hold together; beyond it the
    /// least recently used pin is let go (its blocks stay cached, but
    /// evictable). `None`: a quarter of the cache.
    pub pin_budget_blocks: Option<usize>,
}

/// Smallest prompt chunk the step-time target may shrink to.
const MIN_CHUNK: usize = 16;

/// Live figures for metrics and readiness, updated after every step.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    pub waiting: AtomicU64,
    pub running: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_cached: AtomicU64,
    /// Blocks holding nothing (cached idle blocks are counted apart).
    pub kv_blocks_free: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
    pub cancelled: AtomicU64,
    /// Pinned prefixes, and the blocks only they hold (not counted in
    /// `kv_blocks_used`; blocks a running sequence also holds are).
    pub pinned_prefixes: AtomicU64,
    pub kv_blocks_pinned: AtomicU64,
    /// Cleared when the loop ends, whatever the reason.
    pub alive: AtomicBool,
}

struct Active {
    prompt: Vec<u32>,
    params: GenerateParams,
    logprobs: Option<usize>,
    sink: Box<dyn Sink>,
    seq: SeqId,
    /// Prompt tokens to pin once fed (0 once done or when none).
    pin_prefix: usize,
    /// Prompt tokens already in the cache.
    fed: usize,
    cached: usize,
    /// Blocks this request may hold at most.
    budget_blocks: usize,
    sampler: Sampler,
    history: Vec<u32>,
    decoder: StreamDecoder<Arc<Tokenizer>>,
    stops: StopMatcher,
    /// The last sampled token, to feed in the next step.
    next: [u32; 1],
    generated: usize,
    done: bool,
    /// The final event, delivered after the sequence is freed and the
    /// stats are published (so a client that saw it sees them settled).
    outcome: Option<Event>,
}

pub struct Scheduler {
    engine: Engine,
    tok: Arc<Tokenizer>,
    opts: SchedulerOptions,
    waiting: VecDeque<Request>,
    running: Vec<Active>,
    stats: Arc<SchedulerStats>,
    draining: bool,
    /// Moving average of seconds per token in steps with a prompt chunk.
    secs_per_token: f64,
    /// Pinned prefixes, least recently used first.
    pins: Vec<PrefixHold>,
    pin_budget: usize,
}

impl Scheduler {
    pub fn new(engine: Engine, tok: Arc<Tokenizer>, opts: SchedulerOptions) -> Self {
        let opts = SchedulerOptions {
            max_running: opts.max_running.max(1),
            prefill_chunk: opts
                .prefill_chunk
                .clamp(1, engine.max_batch_tokens().saturating_sub(1).max(1)),
            step_target: opts.step_target,
            pin_budget_blocks: opts.pin_budget_blocks,
        };
        let pin_budget = opts
            .pin_budget_blocks
            .unwrap_or(engine.kv_stats().n_blocks / 4);
        let stats = Arc::new(SchedulerStats::default());
        stats.alive.store(true, Relaxed);
        let s = Scheduler {
            engine,
            tok,
            opts,
            waiting: VecDeque::new(),
            running: Vec::new(),
            stats,
            draining: false,
            secs_per_token: 0.0,
            pins: Vec::new(),
            pin_budget,
        };
        s.publish();
        s
    }

    pub fn stats(&self) -> Arc<SchedulerStats> {
        self.stats.clone()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Whether anything is waiting or running.
    pub fn busy(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn submit(&mut self, req: Request) {
        self.waiting.push_back(req);
        self.publish();
    }

    /// Runs until `Shutdown` has been received and the work is done, or the
    /// sender is dropped. Blocks on the channel while idle.
    pub fn run(mut self, rx: mpsc::Receiver<Command>) {
        struct Alive(Arc<SchedulerStats>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.alive.store(false, Relaxed);
            }
        }
        let _alive = Alive(self.stats.clone());
        loop {
            if !self.busy() {
                if self.draining {
                    return;
                }
                match rx.recv() {
                    Ok(c) => self.command(c),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(c) => self.command(c),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.draining = true;
                        break;
                    }
                }
            }
            self.step();
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit(r) => self.submit(r),
            Command::Shutdown => self.draining = true,
            Command::AbortAll(msg) => self.abort_all(&msg),
        }
    }

    /// Ends every request with an error event and frees its sequence.
    pub fn abort_all(&mut self, msg: &str) {
        for mut r in self.waiting.drain(..) {
            r.sink.send(Event::Error(msg.to_string()));
        }
        for a in &mut self.running {
            if !a.done {
                a.outcome = Some(Event::Error(msg.to_string()));
                a.done = true;
            }
        }
        self.retire();
        self.publish();
    }

    /// One iteration: drop cancelled requests, admit what fits, run one
    /// forward pass, sample and deliver.
    pub fn step(&mut self) {
        self.reap_cancelled();
        self.admit();
        if self.running.is_empty() {
            self.publish();
            return;
        }
        match self.forward() {
            Ok(owners) => self.sample_all(&owners),
            Err(msg) => {
                for a in &mut self.running {
                    a.outcome = Some(Event::Error(msg.clone()));
                    a.done = true;
                }
            }
        }
        self.retire();
        self.stats.steps.fetch_add(1, Relaxed);
        self.publish();
    }

    fn reap_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|r| !r.sink.closed());
        let mut n = before - self.waiting.len();
        for a in &mut self.running {
            if !a.done && a.sink.closed() {
                a.done = true;
                n += 1;
            }
        }
        self.stats.cancelled.fetch_add(n as u64, Relaxed);
        self.retire();
    }

    /// Blocks promised to running requests but not taken yet.
    fn reserved(&self) -> usize {
        self.running
            .iter()
            .map(|a| {
                let held = self.engine.seq_blocks(a.seq).unwrap_or(0);
                a.budget_blocks.saturating_sub(held)
            })
            .sum()
    }

    fn admit(&mut self) {
        let bs = self.engine.kv_stats().block_size;
        while self.running.len() < self.opts.max_running {
            let Some(req) = self.waiting.pop_front() else {
                break;
            };
            let n_ctx = self.engine.n_ctx();
            if req.prompt.is_empty() || req.prompt.len() >= n_ctx {
                let mut req = req;
                req.sink.send(Event::Error(format!(
                    "the prompt has {} tokens; it must have between 1 and {} (the context size)",
                    req.prompt.len(),
                    n_ctx - 1
                )));
                continue;
            }
            let max_tokens = req.params.max_tokens.min(n_ctx - req.prompt.len());
            let budget_blocks = (req.prompt.len() + max_tokens).div_ceil(bs);
            if budget_blocks > self.engine.kv_stats().n_blocks {
                let mut req = req;
                req.sink.send(Event::Error(
                    "the request needs more KV cache than the server has".into(),
                ));
                continue;
            }
            let seq = self.engine.new_sequence();
            let cached = self.engine.attach_prefix(seq, &req.prompt).unwrap_or(0);
            let held = self.engine.seq_blocks(seq).unwrap_or(0);
            let need = budget_blocks - held;
            while self.engine.kv_stats().available < self.reserved() + need && !self.pins.is_empty()
            {
                // Live requests come before pinned prefixes.
                let h = self.pins.remove(0);
                self.engine.release_hold(h);
            }
            if self.engine.kv_stats().available < self.reserved() + need {
                // Not now: give the cached blocks back and wait at the head.
                self.engine.free_sequence(seq);
                self.waiting.push_front(req);
                break;
            }
            let sampler = match Sampler::new(req.params.sampling) {
                Ok(s) => s,
                Err(e) => {
                    self.engine.free_sequence(seq);
                    let mut req = req;
                    req.sink.send(Event::Error(e.to_string()));
                    continue;
                }
            };
            self.stats
                .prefix_hit_tokens
                .fetch_add(cached as u64, Relaxed);
            let mut params = req.params;
            params.max_tokens = max_tokens;
            let pin_prefix = req.pin_prefix.min(req.prompt.len());
            self.running.push(Active {
                history: req.prompt.clone(),
                stops: StopMatcher::new(&params.stop),
                prompt: req.prompt,
                params,
                logprobs: req.logprobs,
                sink: req.sink,
                seq,
                pin_prefix,
                fed: cached,
                cached,
                budget_blocks,
                sampler,
                decoder: StreamDecoder::new(self.tok.clone(), false),
                next: [0],
                generated: 0,
                done: false,
                outcome: None,
            });
        }
    }

    /// Builds and runs the step's batch; returns the running index behind
    /// each step (so each logits row). Errors, and panics, which would
    /// otherwise end the loop for everyone, come back as a message.
    fn forward(&mut self) -> Result<Vec<usize>, String> {
        let budget = self.engine.max_batch_tokens();
        let mut steps: Vec<Step<'_>> = Vec::with_capacity(self.running.len());
        let mut owners = Vec::with_capacity(self.running.len());
        let mut chunks = Vec::new();
        let mut used = 0;
        // Decodes first: every sequence past its prompt adds one token.
        for (i, a) in self.running.iter().enumerate() {
            if a.fed == a.prompt.len() {
                steps.push(Step {
                    seq: a.seq,
                    tokens: &a.next,
                    logits: true,
                    span: 1,
                });
                owners.push(i);
                used += 1;
            }
        }
        let mut chunk = self.opts.prefill_chunk;
        if let (Some(target), true) = (self.opts.step_target, used > 0) {
            if self.secs_per_token > 0.0 {
                let fit = (target.as_secs_f64() / self.secs_per_token) as usize;
                chunk = fit.saturating_sub(used).clamp(MIN_CHUNK.min(chunk), chunk);
            }
        }
        for (i, a) in self.running.iter().enumerate() {
            let room = budget.saturating_sub(used).min(chunk);
            if a.fed < a.prompt.len() && room > 0 {
                let end = (a.fed + room).min(a.prompt.len());
                steps.push(Step {
                    seq: a.seq,
                    tokens: &a.prompt[a.fed..end],
                    logits: end == a.prompt.len(),
                    span: a.prompt.len() - a.cached,
                });
                owners.push(i);
                chunks.push((i, end - a.fed));
                used += end - a.fed;
            }
        }
        let engine = &mut self.engine;
        let t0 = std::time::Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| engine.step(&steps)));
        drop(steps);
        if !chunks.is_empty() && used >= MIN_CHUNK {
            let per = t0.elapsed().as_secs_f64() / used as f64;
            self.secs_per_token = if self.secs_per_token == 0.0 {
                per
            } else {
                0.7 * self.secs_per_token + 0.3 * per
            };
        }
        match r {
            Ok(Ok(())) => {
                for (i, n) in chunks {
                    self.running[i].fed += n;
                    self.stats.prompt_tokens.fetch_add(n as u64, Relaxed);
                }
                self.pin_fed();
                Ok(owners)
            }
            Ok(Err(e)) => Err(format!("engine error: {e}")),
            Err(_) => Err("internal error in the forward pass".into()),
        }
    }

    /// Pins the prefixes requests asked for once their tokens are in the
    /// cache (a prefix already pinned just moves to the back of the LRU).
    fn pin_fed(&mut self) {
        for i in 0..self.running.len() {
            let a = &self.running[i];
            if a.pin_prefix == 0 || a.fed < a.pin_prefix {
                continue;
            }
            let n = a.pin_prefix;
            self.running[i].pin_prefix = 0;
            let Some(h) = self.engine.hold_prefix(&self.running[i].prompt[..n]) else {
                continue;
            };
            if let Some(k) = self.pins.iter().position(|p| p.key() == h.key()) {
                let old = self.pins.remove(k);
                self.engine.release_hold(old);
            }
            self.pins.push(h);
            while self.pins.iter().map(PrefixHold::n_blocks).sum::<usize>() > self.pin_budget {
                let h = self.pins.remove(0);
                self.engine.release_hold(h);
            }
        }
    }

    /// Samples a token for every step that produced logits and delivers it.
    fn sample_all(&mut self, owners: &[usize]) {
        let Scheduler {
            engine,
            running,
            tok,
            stats,
            ..
        } = self;
        for (k, &i) in owners.iter().enumerate() {
            let Some(logits) = engine.logits(k) else {
                continue;
            };
            let a = &mut running[i];
            let t = a.sampler.sample(logits, &a.history);
            a.generated += 1;
            stats.generated_tokens.fetch_add(1, Relaxed);
            if a.params.stop_at_eog && tok.is_eog(t) {
                finish(a, tok, FinishReason::Stop);
                continue;
            }
            let logprobs = a.logprobs.and_then(|n| a.sampler.logprobs(t, n));
            a.history.push(t);
            let piece = a.decoder.push(t);
            let (text, hit) = a.stops.feed(&piece);
            if !a.sink.send(Event::Token {
                id: t,
                text,
                logprobs,
            }) {
                a.done = true;
                stats.cancelled.fetch_add(1, Relaxed);
                continue;
            }
            let len = engine.seq_len(a.seq).unwrap_or(usize::MAX);
            if hit {
                finish(a, tok, FinishReason::Stop);
            } else if a.generated >= a.params.max_tokens || len + 1 > engine.n_ctx() {
                finish(a, tok, FinishReason::Length);
            } else {
                a.next = [t];
            }
        }
    }

    /// Frees the sequences of finished requests, publishes the stats, then
    /// tells their clients.
    fn retire(&mut self) {
        if !self.running.iter().any(|a| a.done) {
            return;
        }
        let (finished, keep): (Vec<Active>, Vec<Active>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|a| a.done);
        self.running = keep;
        for a in &finished {
            self.engine.free_sequence(a.seq);
        }
        self.publish();
        for mut a in finished {
            if let Some(ev) = a.outcome.take() {
                a.sink.send(ev);
            }
        }
    }

    fn publish(&self) {
        let kv = self.engine.kv_stats();
        let s = &self.stats;
        s.waiting.store(self.waiting.len() as u64, Relaxed);
        s.running.store(self.running.len() as u64, Relaxed);
        s.kv_blocks_total.store(kv.n_blocks as u64, Relaxed);
        let pinned_only = self.engine.held_only(&self.pins);
        s.kv_blocks_used
            .store((kv.used - pinned_only) as u64, Relaxed);
        s.kv_blocks_cached.store(kv.cached_idle as u64, Relaxed);
        s.kv_blocks_free
            .store((kv.available - kv.cached_idle) as u64, Relaxed);
        s.pinned_prefixes.store(self.pins.len() as u64, Relaxed);
        s.kv_blocks_pinned.store(pinned_only as u64, Relaxed);
    }
}

/// Ends a request: releases held-back text (unless a stop string cut it)
/// and reports the outcome.
fn finish(a: &mut Active, tok: &Arc<Tokenizer>, reason: FinishReason) {
    let decoder = std::mem::replace(&mut a.decoder, StreamDecoder::new(tok.clone(), false));
    if !a.stops.hit {
        let tail = a.stops.flush(&decoder.finish());
        if !tail.is_empty() {
            a.sink.send(Event::Tail(tail));
        }
    }
    a.outcome = Some(Event::Done {
        finish: reason,
        usage: Usage {
            prompt_tokens: a.prompt.len(),
            completion_tokens: a.generated,
            cached_tokens: a.cached,
        },
    });
    a.done = true;
}
