//! Routes, middleware (auth, draining, request counting) and handlers.

use crate::errors::{ApiError, Json};
use crate::generation::{self as g, Chunker};
use crate::personas::MODEL_PREFIX;
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use troupe_engine::sampler::Logprobs;
use troupe_engine::scheduler::Usage;
use troupe_engine::{FinishReason, GenerateParams};
use troupe_protocol as p;
use troupe_tokenizer::chat::Message;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>, config: &crate::ServerConfig) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route(
            "/v1/personas",
            get(crate::personas::list).post(crate::personas::create),
        )
        .route(
            "/v1/personas/{id}",
            get(crate::personas::get)
                .put(crate::personas::replace)
                .delete(crate::personas::delete),
        )
        .route(
            "/v1/conversations",
            get(crate::conversations::list).post(crate::conversations::create),
        )
        .route(
            "/v1/conversations/{id}",
            get(crate::conversations::get)
                .patch(crate::conversations::patch)
                .delete(crate::conversations::delete),
        )
        .route(
            "/v1/conversations/{id}/messages",
            post(crate::conversations::post_message),
        )
        .route(
            "/v1/conversations/{id}/stop",
            post(crate::conversations::stop),
        )
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(crate::ui::ROUTES[0], get(crate::ui::index))
        .route(crate::ui::ROUTES[1], get(crate::ui::file))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Auth, draining and per-route request counts, for every matched route.
/// `/health` and the web UI's static files hold no data: no key needed.
async fn gate(State(st): St, path: MatchedPath, req: Request, next: Next) -> Response {
    let route = path.as_str().to_string();
    let public = route == "/health" || crate::ui::ROUTES.contains(&route.as_str());
    let open = public || matches!(route.as_str(), "/ready" | "/metrics");
    let resp = if !public && st.auth_required() && !authorized(&st, &req) {
        ApiError::unauthorized().into_response()
    } else if !open && st.draining.load(Relaxed) {
        ApiError::draining().into_response()
    } else {
        next.run(req).await
    };
    st.metrics.count_request(&route, resp.status().as_u16());
    resp
}

fn authorized(st: &AppState, req: &Request) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| st.key_ok(k.trim()))
}

async fn not_found(State(st): St, req: Request) -> ApiError {
    st.metrics.count_request("unmatched", 404);
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("No route for {} {}", req.method(), req.uri().path()),
    )
    .code("not_found")
}

async fn wrong_method(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .code("method_not_allowed")
}

async fn ready(State(st): St) -> Response {
    let (ok, why) = if st.draining.load(Relaxed) {
        (false, "draining")
    } else if !st.engine_alive() {
        (false, "engine loop stopped")
    } else {
        (true, "ready")
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"status": why, "model": st.model_id})),
    )
        .into_response()
}

async fn metrics(State(st): St) -> Response {
    let body = st.metrics.render(&st.stats, st.in_flight.load(Relaxed));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn card(st: &AppState) -> p::ModelCard {
    p::ModelCard {
        id: st.model_id.clone(),
        object: "model".into(),
        created: st.created,
        owned_by: "troupe".into(),
    }
}

/// The base model, then one entry per persona (`persona:<id>`).
async fn models(State(st): St) -> Json<p::ModelList> {
    let mut data = vec![card(&st)];
    for (persona, _) in st.personas.list() {
        data.push(p::ModelCard {
            id: format!("{MODEL_PREFIX}{}", persona.id),
            ..card(&st)
        });
    }
    Json(p::ModelList {
        object: "list".into(),
        data,
    })
}

async fn model(State(st): St, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    let persona = id
        .strip_prefix(MODEL_PREFIX)
        .is_some_and(|p| st.personas.get(p).is_some());
    if id == st.model_id || persona {
        Json(p::ModelCard { id, ..card(&st) }).into_response()
    } else {
        ApiError::unknown_model(&id).into_response()
    }
}

fn check_model(st: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != st.model_id => Err(ApiError::unknown_model(m)),
        _ => Ok(()),
    }
}

/// Chat messages as template input; `developer` is OpenAI's newer name for
/// `system`.
fn messages(msgs: &[p::ChatMessage]) -> Result<Vec<Message>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!("unsupported role `{other}`; use system, user or assistant"),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(c) => c.text().map_err(|kind| {
                    ApiError::invalid(
                        &format!("messages[{i}].content"),
                        format!("content parts of type `{kind}` are not supported; send text"),
                    )
                })?,
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

/// Renders and tokenizes off the async threads (a long prompt takes a while).
async fn render_chat(
    st: &Arc<AppState>,
    msgs: Vec<Message>,
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ApiError> {
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || {
        let text = st2
            .template
            .render(&msgs, add_generation_prompt)
            .map_err(|e| ApiError::invalid("messages", format!("chat template error: {e}")))?;
        Ok(st2.tok.encode_chat(&text))
    })
    .await
    .map_err(|_| ApiError::internal("tokenizer task failed"))?
}

async fn chat(
    State(st): St,
    Json(req): Json<p::ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let persona = match req.model.strip_prefix(MODEL_PREFIX) {
        Some(id) => Some(
            st.personas
                .get(id)
                .map(|(p, _)| p)
                .ok_or_else(|| ApiError::unknown_model(&req.model))?,
        ),
        None => {
            check_model(&st, Some(&req.model))?;
            None
        }
    };
    g::refuse_n(req.n)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid(
            "tools",
            "tool calls are not supported yet",
        ));
    }
    let top = match (req.logprobs, req.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ))
        }
        (false, None) => None,
        (true, n) => Some(n.unwrap_or(0)),
    };
    if top.is_some_and(|n| n > g::MAX_TOP_LOGPROBS) {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs must be 0..=20",
        ));
    }
    let fields = match &persona {
        Some(p) => crate::personas::with_defaults(&req.sampling, p),
        None => req.sampling.clone(),
    };
    let sampling = g::sampling(&fields)?;
    let stop = g::stops(&req.sampling)?;
    let mut msgs = messages(&req.messages)?;
    let asked = msgs.clone();
    if let Some(p) = &persona {
        msgs = crate::personas::with_block(p, msgs);
    }
    let prompt = render_chat(&st, msgs, true).await?;
    let pin_prefix = match &persona {
        Some(p) => crate::history::chat_pin_prefix(&st, p, &asked, &prompt),
        None => 0,
    };
    let max_tokens = g::budget(
        prompt.len(),
        req.max_completion_tokens.or(req.max_tokens),
        st.n_ctx,
        "messages",
    )?;
    let params = GenerateParams {
        max_tokens,
        sampling,
        stop,
        stop_at_eog: !req.sampling.ignore_eos,
    };
    let slot = g::enter(&st)?;
    let logprobs = top.map(|n| n as usize);
    let run = g::submit_in(&st, slot, started, prompt, params, logprobs, pin_prefix)?;
    let id = g::new_id("chatcmpl");
    let created = g::unix_now();
    if req.stream {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        return Ok(g::sse(
            run,
            ChatChunks {
                st: st.clone(),
                model: req.model.clone(),
                id,
                created,
                include_usage,
                logprobs: top.is_some(),
            },
        ));
    }
    let c = g::collect(run).await?;
    let logprobs = top.map(|_| p::ChatLogprobs {
        content: c
            .tokens
            .iter()
            .filter_map(|(tid, lp)| lp.as_ref().map(|lp| chat_logprob(&st, *tid, lp)))
            .collect(),
    });
    let body = p::ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model: req.model.clone(),
        system_fingerprint: fingerprint(),
        choices: vec![p::ChatChoice {
            index: 0,
            message: p::AssistantMessage {
                role: "assistant".into(),
                content: c.text,
            },
            logprobs,
            finish_reason: g::finish_str(c.finish).into(),
        }],
        usage: usage(&c.usage),
    };
    Ok(Json(body).into_response())
}

fn fingerprint() -> String {
    concat!("troupe-", env!("CARGO_PKG_VERSION")).into()
}

fn usage(u: &Usage) -> p::Usage {
    p::Usage::new(u.prompt_tokens, u.completion_tokens, u.cached_tokens)
}

fn piece(st: &AppState, id: u32) -> (String, Vec<u8>) {
    let b = st.tok.token_to_piece(id, true).to_vec();
    (String::from_utf8_lossy(&b).into_owned(), b)
}

fn chat_logprob(st: &AppState, id: u32, lp: &Logprobs) -> p::TokenLogprobEntry {
    let (token, bytes) = piece(st, id);
    p::TokenLogprobEntry {
        token,
        logprob: lp.chosen.logprob,
        bytes,
        top_logprobs: lp
            .top
            .iter()
            .map(|t| {
                let (token, bytes) = piece(st, t.token);
                p::TopLogprob {
                    token,
                    logprob: t.logprob,
                    bytes,
                }
            })
            .collect(),
    }
}

pub(crate) struct ChatChunks {
    st: Arc<AppState>,
    /// The `model` the client asked for (a persona or the base model).
    model: String,
    id: String,
    created: u64,
    include_usage: bool,
    logprobs: bool,
}

impl ChatChunks {
    /// Chunks without logprobs, for replies other than `/v1/chat/completions`.
    pub(crate) fn new(
        st: Arc<AppState>,
        model: String,
        id: String,
        created: u64,
        include_usage: bool,
    ) -> Self {
        ChatChunks {
            st,
            model,
            id,
            created,
            include_usage,
            logprobs: false,
        }
    }

    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn created(&self) -> u64 {
        self.created
    }

    fn chunk(&self, delta: p::Delta, lp: Option<p::ChatLogprobs>, finish: Option<&str>) -> Value {
        let c = p::ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: fingerprint(),
            choices: vec![p::ChunkChoice {
                index: 0,
                delta,
                logprobs: lp,
                finish_reason: finish.map(str::to_string),
            }],
            usage: None,
        };
        let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }
}

impl Chunker for ChatChunks {
    fn start(&mut self) -> Vec<Value> {
        let d = p::Delta {
            role: Some("assistant".into()),
            content: Some(String::new()),
        };
        vec![self.chunk(d, None, None)]
    }

    fn token(&mut self, text: &str, id: u32, lp: Option<&Logprobs>) -> Option<Value> {
        let lp = lp.filter(|_| self.logprobs).map(|lp| p::ChatLogprobs {
            content: vec![chat_logprob(&self.st, id, lp)],
        });
        if text.is_empty() && lp.is_none() {
            return None;
        }
        let d = p::Delta {
            role: None,
            content: Some(text.to_string()),
        };
        Some(self.chunk(d, lp, None))
    }

    fn done(&mut self, finish: FinishReason, u: &Usage) -> Vec<Value> {
        let mut out = vec![self.chunk(p::Delta::default(), None, Some(g::finish_str(finish)))];
        if self.include_usage {
            out.push(json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": fingerprint(),
                "choices": [], "usage": usage(u),
            }));
        }
        out
    }
}

/// Prompt ids of a completion request: text is tokenized as a raw prompt
/// (special-token text parsed, BOS as the metadata asks), ids are taken as
/// they are after a range check.
async fn completion_prompt(
    st: &Arc<AppState>,
    prompt: p::PromptSpec,
) -> Result<Vec<u32>, ApiError> {
    let one = |n: usize| {
        if n == 1 {
            Ok(())
        } else {
            Err(ApiError::invalid(
                "prompt",
                format!("only one prompt per request is supported; got {n}"),
            ))
        }
    };
    let ids = match prompt {
        p::PromptSpec::Text(t) => tokenize_text(st, t, true).await?,
        p::PromptSpec::Texts(mut v) => {
            one(v.len())?;
            tokenize_text(st, v.remove(0), true).await?
        }
        p::PromptSpec::Tokens(ids) => ids,
        p::PromptSpec::TokenLists(mut v) => {
            one(v.len())?;
            v.remove(0)
        }
    };
    check_ids(st, &ids, "prompt")?;
    Ok(ids)
}

/// Refuses token ids outside the vocabulary.
fn check_ids(st: &AppState, ids: &[u32], param: &str) -> Result<(), ApiError> {
    let n_vocab = st.tok.vocab_size();
    match ids.iter().find(|&&t| t as usize >= n_vocab) {
        Some(bad) => Err(ApiError::invalid(
            param,
            format!("token id {bad} is outside the vocabulary of {n_vocab}"),
        )),
        None => Ok(()),
    }
}

async fn tokenize_text(
    st: &Arc<AppState>,
    text: String,
    add_special: bool,
) -> Result<Vec<u32>, ApiError> {
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || st2.tok.encode(&text, add_special, true))
        .await
        .map_err(|_| ApiError::internal("tokenizer task failed"))
}

async fn completions(
    State(st): St,
    Json(req): Json<p::CompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    check_model(&st, Some(&req.model))?;
    g::refuse_n(req.n)?;
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("best_of", "only best_of=1 is supported"));
    }
    if req.echo {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    if req.logprobs.is_some_and(|n| n > 5) {
        return Err(ApiError::invalid("logprobs", "logprobs must be 0..=5"));
    }
    let sampling = g::sampling(&req.sampling)?;
    let stop = g::stops(&req.sampling)?;
    let prompt = completion_prompt(&st, req.prompt).await?;
    // OpenAI's default for this endpoint is 16 tokens.
    let max_tokens = g::budget(
        prompt.len(),
        Some(req.max_tokens.unwrap_or(16)),
        st.n_ctx,
        "prompt",
    )?;
    let params = GenerateParams {
        max_tokens,
        sampling,
        stop,
        stop_at_eog: !req.sampling.ignore_eos,
    };
    let top = req.logprobs.map(|n| n as usize);
    let run = g::submit(&st, started, prompt, params, top)?;
    let mut chunks = TextChunks {
        st: st.clone(),
        id: g::new_id("cmpl"),
        created: g::unix_now(),
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        logprobs: top.is_some(),
        offset: 0,
    };
    if req.stream {
        return Ok(g::sse(run, chunks));
    }
    let c = g::collect(run).await?;
    let logprobs = top.map(|_| {
        let mut lp = p::CompletionLogprobs::default();
        for (tid, l) in &c.tokens {
            if let Some(l) = l {
                chunks.add_logprob(&mut lp, *tid, l);
            }
        }
        lp
    });
    let body = chunks.body(
        c.text,
        logprobs,
        Some(g::finish_str(c.finish)),
        Some(usage(&c.usage)),
    );
    Ok(Json(body).into_response())
}

struct TextChunks {
    st: Arc<AppState>,
    id: String,
    created: u64,
    include_usage: bool,
    logprobs: bool,
    /// Characters of text so far (for `text_offset`).
    offset: usize,
}

impl TextChunks {
    fn body(
        &self,
        text: String,
        logprobs: Option<p::CompletionLogprobs>,
        finish: Option<&str>,
        usage: Option<p::Usage>,
    ) -> p::Completion {
        p::Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.st.model_id.clone(),
            system_fingerprint: fingerprint(),
            choices: vec![p::CompletionChoice {
                index: 0,
                text,
                logprobs,
                finish_reason: finish.map(str::to_string),
            }],
            usage,
        }
    }

    fn add_logprob(&mut self, out: &mut p::CompletionLogprobs, id: u32, lp: &Logprobs) {
        let (tok, _) = piece(&self.st, id);
        out.text_offset.push(self.offset);
        self.offset += tok.chars().count();
        out.tokens.push(tok);
        out.token_logprobs.push(lp.chosen.logprob);
        let top: BTreeMap<String, f32> = lp
            .top
            .iter()
            .map(|t| (piece(&self.st, t.token).0, t.logprob))
            .collect();
        out.top_logprobs.push(top);
    }
}

impl Chunker for TextChunks {
    fn start(&mut self) -> Vec<Value> {
        Vec::new()
    }

    fn token(&mut self, text: &str, id: u32, lp: Option<&Logprobs>) -> Option<Value> {
        let lp = match lp.filter(|_| self.logprobs) {
            Some(l) => {
                let mut out = p::CompletionLogprobs::default();
                self.add_logprob(&mut out, id, l);
                Some(out)
            }
            None => None,
        };
        if text.is_empty() && lp.is_none() {
            return None;
        }
        serde_json::to_value(self.body(text.to_string(), lp, None, None)).ok()
    }

    fn done(&mut self, finish: FinishReason, u: &Usage) -> Vec<Value> {
        let usage = self.include_usage.then(|| usage(u));
        let last = self.body(String::new(), None, Some(g::finish_str(finish)), usage);
        serde_json::to_value(last).into_iter().collect()
    }
}

async fn tokenize(
    State(st): St,
    Json(req): Json<p::TokenizeRequest>,
) -> Result<Json<p::TokenizeResponse>, ApiError> {
    check_model(&st, req.model.as_deref())?;
    let add_special = req.add_special.unwrap_or(true);
    let tokens = match (req.messages, req.content.or(req.prompt)) {
        (Some(m), None) => {
            let msgs = messages(&m)?;
            render_chat(&st, msgs, req.add_generation_prompt.unwrap_or(true)).await?
        }
        (None, Some(text)) => tokenize_text(&st, text, add_special).await?,
        _ => {
            return Err(ApiError::invalid(
                "content",
                "send exactly one of `content` (or `prompt`) and `messages`",
            ))
        }
    };
    Ok(Json(p::TokenizeResponse {
        count: tokens.len(),
        tokens,
        max_model_len: st.n_ctx,
    }))
}

async fn detokenize(
    State(st): St,
    Json(req): Json<p::DetokenizeRequest>,
) -> Result<Json<p::DetokenizeResponse>, ApiError> {
    check_model(&st, req.model.as_deref())?;
    check_ids(&st, &req.tokens, "tokens")?;
    let text = st.tok.decode(&req.tokens);
    Ok(Json(p::DetokenizeResponse {
        content: text.clone(),
        prompt: text,
    }))
}
