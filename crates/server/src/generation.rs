//! What both completion endpoints share: request limits and sampling
//! settings, submitting to the engine loop, and turning its events into a
//! whole response or a stream of SSE chunks.

use crate::errors::ApiError;
use crate::state::{AppState, InFlight};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use troupe_engine::sampler::{Logprobs, SamplingParams};
use troupe_engine::scheduler::{Command, Event, Request, Sink, Usage};
use troupe_engine::{FinishReason, GenerateParams};
use troupe_protocol::{ErrorBody, SamplingFields};

/// Most stop strings per request.
const MAX_STOPS: usize = 16;
/// Most alternatives per token for logprobs (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u64 = 20;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A response id: prefix, time and a process-unique counter, hashed.
pub fn new_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{prefix}-{:016x}", h.finish())
}

/// OpenAI's sampling fields as engine settings. Defaults are OpenAI's
/// (temperature 1, top_p 1, no top-k or min-p); `top_k` and `min_p` are the
/// usual extensions.
pub fn sampling(f: &SamplingFields) -> Result<SamplingParams, ApiError> {
    let top_k = match f.top_k {
        None | Some(0) | Some(-1) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be a positive integer, or 0 or -1 to disable it; got {k}"),
            ))
        }
    };
    let p = SamplingParams {
        temperature: f.temperature.unwrap_or(1.0),
        top_k,
        top_p: f.top_p.unwrap_or(1.0),
        min_p: f.min_p.unwrap_or(0.0),
        repeat_penalty: f.repetition_penalty.unwrap_or(1.0),
        repeat_last_n: 64,
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
        seed: f.seed.map(|s| s as u64),
    };
    if !(0.0..=2.0).contains(&p.temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2; got {}", p.temperature),
        ));
    }
    p.validate()
        .map_err(|e| ApiError::invalid(e.name, e.to_string()))?;
    Ok(p)
}

pub fn stops(f: &SamplingFields) -> Result<Vec<String>, ApiError> {
    let v: Vec<String> = f
        .stop
        .clone()
        .map(|s| s.into_vec())
        .unwrap_or_default()
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    if v.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "at most {MAX_STOPS} stop strings are allowed; got {}",
                v.len()
            ),
        ));
    }
    Ok(v)
}

/// The completion budget: `max_tokens` if it fits the context with the
/// prompt, else `context_length_exceeded`; without `max_tokens`, the rest of
/// the context.
pub fn budget(
    prompt_len: usize,
    max_tokens: Option<u64>,
    n_ctx: usize,
    param: &str,
) -> Result<usize, ApiError> {
    if prompt_len == 0 {
        return Err(ApiError::invalid(param, "The prompt is empty."));
    }
    let exceeded = |m: u64| {
        ApiError::invalid(
            param,
            format!(
                "This model's maximum context length is {n_ctx} tokens. However, you requested \
                 {} tokens ({prompt_len} in the prompt, {m} for the completion). Please reduce \
                 the length of the prompt or of max_tokens.",
                (prompt_len as u64).saturating_add(m)
            ),
        )
        .code("context_length_exceeded")
    };
    match max_tokens {
        Some(0) => Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1.",
        )),
        Some(m) if (prompt_len as u64).saturating_add(m) > n_ctx as u64 => Err(exceeded(m)),
        Some(m) => Ok(m as usize),
        None if prompt_len >= n_ctx => Err(exceeded(1)),
        None => Ok(n_ctx - prompt_len),
    }
}

pub fn refuse_n(n: Option<u64>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(ApiError::invalid(
            "n",
            format!("only n=1 is supported; got {n}"),
        )),
    }
}

struct ChannelSink(UnboundedSender<Event>);

impl Sink for ChannelSink {
    fn send(&mut self, ev: Event) -> bool {
        self.0.send(ev).is_ok()
    }
    fn closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// A submitted generation: its events, its queue slot and its clock.
pub struct Run {
    rx: UnboundedReceiver<Event>,
    _slot: InFlight,
    state: Arc<AppState>,
    started: Instant,
    last_token: Option<Instant>,
}

impl Run {
    /// The next event, with latency metrics recorded as tokens arrive.
    pub async fn next(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await?;
        let m = &self.state.metrics;
        match &ev {
            Event::Token { .. } => {
                let now = Instant::now();
                match self.last_token {
                    None => m.ttft.observe((now - self.started).as_secs_f64()),
                    Some(t) => m.itl.observe((now - t).as_secs_f64()),
                }
                self.last_token = Some(now);
            }
            Event::Done { usage, .. } => {
                m.prompt_tokens
                    .fetch_add(usage.prompt_tokens as u64, Relaxed);
                m.completion_tokens
                    .fetch_add(usage.completion_tokens as u64, Relaxed);
                m.e2e.observe(self.started.elapsed().as_secs_f64());
            }
            _ => {}
        }
        Some(ev)
    }
}

/// Takes a queue slot and hands the request to the engine loop.
pub fn submit(
    state: &Arc<AppState>,
    started: Instant,
    prompt: Vec<u32>,
    params: GenerateParams,
    logprobs: Option<usize>,
) -> Result<Run, ApiError> {
    let slot = enter(state)?;
    submit_in(state, slot, started, prompt, params, logprobs, 0)
}

/// A queue slot, or 429 when the queue is full (503 while draining).
pub fn enter(state: &Arc<AppState>) -> Result<InFlight, ApiError> {
    if state.draining.load(Relaxed) {
        return Err(ApiError::draining());
    }
    state.try_enter().ok_or_else(ApiError::busy)
}

/// Hands a request to the engine loop in a slot taken by [`enter`];
/// `pin_prefix` prompt tokens (a persona block) are kept pinned in the KV
/// cache for later requests.
pub fn submit_in(
    state: &Arc<AppState>,
    slot: InFlight,
    started: Instant,
    prompt: Vec<u32>,
    params: GenerateParams,
    logprobs: Option<usize>,
    pin_prefix: usize,
) -> Result<Run, ApiError> {
    let (tx, rx) = unbounded_channel();
    let req = Request {
        prompt,
        params,
        logprobs,
        pin_prefix,
        sink: Box::new(ChannelSink(tx)),
    };
    if !state.send(Command::Submit(req)) {
        return Err(ApiError::internal("the engine loop has stopped"));
    }
    Ok(Run {
        rx,
        _slot: slot,
        state: state.clone(),
        started,
        last_token: None,
    })
}

/// Everything a non-streamed response needs.
pub struct Collected {
    pub text: String,
    pub tokens: Vec<(u32, Option<Logprobs>)>,
    pub finish: FinishReason,
    pub usage: Usage,
}

pub async fn collect(mut run: Run) -> Result<Collected, ApiError> {
    let mut out = Collected {
        text: String::new(),
        tokens: Vec::new(),
        finish: FinishReason::Stop,
        usage: Usage::default(),
    };
    while let Some(ev) = run.next().await {
        match ev {
            Event::Token { id, text, logprobs } => {
                out.text.push_str(&text);
                out.tokens.push((id, logprobs));
            }
            Event::Tail(t) => out.text.push_str(&t),
            Event::Done { finish, usage } => {
                out.finish = finish;
                out.usage = usage;
                return Ok(out);
            }
            Event::Error(e) => return Err(ApiError::internal(e)),
        }
    }
    Err(ApiError::internal("the engine loop stopped mid-request"))
}

pub fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

/// Turns engine events into the JSON chunks of one endpoint.
pub trait Chunker: Send + 'static {
    /// Chunks sent before any token (the chat role delta).
    fn start(&mut self) -> Vec<serde_json::Value>;
    fn token(&mut self, text: &str, id: u32, lp: Option<&Logprobs>) -> Option<serde_json::Value>;
    fn done(&mut self, finish: FinishReason, usage: &Usage) -> Vec<serde_json::Value>;
}

fn json_event<T: Serialize>(v: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(v).unwrap_or_else(|_| "{}".into()))
}

/// The SSE response: chunks as `data:` lines, then `data: [DONE]`; an error
/// after the stream started becomes an `event: error` whose data is an
/// OpenAI error body, and the stream ends there.
pub fn sse<C: Chunker>(run: Run, mut chunker: C) -> Response {
    let first: Vec<SseEvent> = chunker.start().iter().map(json_event).collect();
    struct St<C> {
        run: Run,
        chunker: C,
        queue: std::collections::VecDeque<SseEvent>,
        ended: bool,
    }
    let st = St {
        run,
        chunker,
        queue: first.into(),
        ended: false,
    };
    let s = stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.queue.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.ended {
                return None;
            }
            match st.run.next().await {
                Some(Event::Token { id, text, logprobs }) => {
                    if let Some(v) = st.chunker.token(&text, id, logprobs.as_ref()) {
                        st.queue.push_back(json_event(&v));
                    }
                }
                Some(Event::Tail(text)) => {
                    if let Some(v) = st.chunker.token(&text, u32::MAX, None) {
                        st.queue.push_back(json_event(&v));
                    }
                }
                Some(Event::Done { finish, usage }) => {
                    for v in st.chunker.done(finish, &usage) {
                        st.queue.push_back(json_event(&v));
                    }
                    st.queue.push_back(SseEvent::default().data("[DONE]"));
                    st.ended = true;
                }
                Some(Event::Error(msg)) => {
                    st.queue.push_back(error_event(&msg));
                    st.ended = true;
                }
                None => {
                    st.queue
                        .push_back(error_event("the engine loop stopped mid-request"));
                    st.ended = true;
                }
            }
        }
    });
    sse_response(s)
}

fn error_event(msg: &str) -> SseEvent {
    let body = ErrorBody::new("server_error", msg);
    SseEvent::default()
        .event("error")
        .data(serde_json::to_string(&body).unwrap_or_default())
}

fn sse_response<S>(s: S) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    Sse::new(s).into_response()
}
