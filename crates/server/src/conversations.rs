//! `/v1/conversations`: chats kept in the store, with a persona.
//!
//! A reply is persisted as it streams: the user turn is committed before
//! generation starts, the assistant row is created `streaming`, rewritten
//! with its text at most every [`PROGRESS_EVERY`], and finally marked
//! `done`, `cancelled` (the client went away or pressed stop) or `error`.
//! The reply runs in its own task, so a client that disconnects still
//! leaves a finished row behind. Every conversation belongs to the API key
//! that created it; to any other key it does not exist (404).

use crate::api::ChatChunks;
use crate::errors::{ApiError, Json};
use crate::generation::{self as g, Chunker, Run};
use crate::history;
use crate::personas::MODEL_PREFIX;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use troupe_engine::scheduler::{Event, Usage};
use troupe_engine::{FinishReason, GenerateParams};
use troupe_personas::Persona;
use troupe_store::{Conversation, Cursor, Message, MessageUpdate, Role, Status, Store};

type St = State<Arc<AppState>>;

/// How often a streaming reply's text is written (each write is an fsync).
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Positions kept free for the reply when trimming history, unless the
/// request sets `max_tokens`.
const DEFAULT_REPLY_RESERVE: usize = 256;
/// Longest reply when the request sets no `max_tokens` (a small model that
/// loops would otherwise fill the whole context).
const DEFAULT_MAX_REPLY: u64 = 512;
/// Longest title kept.
const MAX_TITLE_CHARS: usize = 200;
/// Conversations per page at most.
const MAX_PAGE: usize = 100;
/// The response header that says how many old turns the prompt left out.
pub const TURNS_OMITTED_HEADER: &str = "x-troupe-turns-omitted";

fn store(st: &AppState) -> Result<Arc<Store>, ApiError> {
    st.store.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "Conversations are disabled on this server (it was started without a database).",
        )
        .code("conversations_disabled")
    })
}

/// Runs a store call off the async threads.
async fn blocking<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&Store) -> troupe_store::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let s = store(st)?;
    match tokio::task::spawn_blocking(move || f(&s)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::internal(format!("conversation store: {e}"))),
        Err(_) => Err(ApiError::internal("conversation store task failed")),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("No conversation `{id}`."),
    )
    .code("conversation_not_found")
}

fn persona_gone(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("The persona `{id}` does not exist (any more); GET /v1/personas lists them."),
    )
    .code("persona_not_found")
}

fn model_of(st: &AppState, persona_id: &str) -> String {
    if persona_id.is_empty() {
        st.model_id.clone()
    } else {
        format!("{MODEL_PREFIX}{persona_id}")
    }
}

fn conversation_json(st: &AppState, c: &Conversation) -> Value {
    json!({
        "id": c.id,
        "object": "conversation",
        "persona": (!c.persona_id.is_empty()).then_some(&c.persona_id),
        "model": model_of(st, &c.persona_id),
        "title": c.title,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    })
}

fn message_json(m: &Message) -> Value {
    json!({
        "id": m.id,
        "object": "conversation.message",
        "seq": m.seq,
        "role": m.role.as_str(),
        "content": m.content,
        "status": m.status.as_str(),
        "error": m.error,
        "usage": m.usage.map(|u| json!({
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
        })),
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    })
}

fn with_messages(st: &AppState, c: &Conversation, msgs: &[Message]) -> Value {
    let mut v = conversation_json(st, c);
    v["messages"] = msgs.iter().map(message_json).collect();
    v
}

/// The persona of a conversation, or `None` for the bare model.
fn persona_of(st: &AppState, id: &str) -> Result<Option<Arc<Persona>>, ApiError> {
    if id.is_empty() {
        return Ok(None);
    }
    st.personas
        .get(id)
        .map(|(p, _)| Some(p))
        .ok_or_else(|| persona_gone(id))
}

fn clean_title(t: &str) -> String {
    let t: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
    t.chars().take(MAX_TITLE_CHARS).collect()
}

/// A title from the first message: its first words, up to 48 characters.
fn title_from(text: &str) -> String {
    let t = clean_title(text);
    if t.chars().count() <= 48 {
        return t;
    }
    let cut: String = t.chars().take(48).collect();
    match cut.rfind(' ') {
        Some(i) if i > 16 => format!("{}…", &cut[..i]),
        _ => format!("{cut}…"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// A persona id (`captain-quill` or `persona:captain-quill`); none
    /// means the bare model.
    persona: Option<String>,
    #[serde(default)]
    title: String,
    /// Which greeting opens the chat: 0 the main one, 1.. the alternates.
    #[serde(default)]
    greeting: usize,
}

/// Creates a conversation; the persona's greeting is stored as its first
/// message, so the history shows it and the prompt replays it.
pub async fn create(
    State(st): St,
    headers: HeaderMap,
    Json(req): Json<CreateRequest>,
) -> Result<Response, ApiError> {
    store(&st)?;
    let owner = st.owner(&headers);
    let persona_id = req
        .persona
        .as_deref()
        .map(|p| p.strip_prefix(MODEL_PREFIX).unwrap_or(p).to_string())
        .unwrap_or_default();
    let persona = persona_of(&st, &persona_id)?;
    let greeting = match &persona {
        Some(p) => {
            let n = 1 + p.alternate_greetings.len();
            if req.greeting >= n {
                return Err(ApiError::invalid(
                    "greeting",
                    format!("`{}` has greetings 0..{}", p.id, n - 1),
                ));
            }
            p.greeting_for("User", req.greeting)
        }
        None => None,
    };
    let title = clean_title(&req.title);
    let (c, msgs) = blocking(&st, move |s| {
        let c = s.create_conversation(&owner, &persona_id, &title)?;
        let mut msgs = Vec::new();
        if let Some(g) = greeting {
            msgs.extend(s.add_message(&owner, &c.id, Role::Assistant, &g, Status::Done)?);
        }
        let c = s.get_conversation(&owner, &c.id)?.unwrap_or(c);
        Ok((c, msgs))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(with_messages(&st, &c, &msgs))).into_response())
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// The caller's conversations, most recently active first.
pub async fn list(
    State(st): St,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let owner = st.owner(&headers);
    let limit = q.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be 1..={MAX_PAGE}"),
        ));
    }
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => Some(
            a.parse::<Cursor>()
                .map_err(|e| ApiError::invalid("after", e.to_string()))?,
        ),
        None => None,
    };
    let mut rows = blocking(&st, move |s| {
        s.list_conversations(&owner, limit + 1, after.as_ref())
    })
    .await?;
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let next = has_more
        .then(|| rows.last().map(|c| c.cursor().to_string()))
        .flatten();
    let data: Vec<Value> = rows.iter().map(|c| conversation_json(&st, c)).collect();
    Ok(Json(
        json!({"object": "list", "data": data, "has_more": has_more, "next": next}),
    ))
}

/// One conversation with all its messages.
pub async fn get(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = st.owner(&headers);
    let id2 = id.clone();
    let found = blocking(&st, move |s| {
        let Some(c) = s.get_conversation(&owner, &id2)? else {
            return Ok(None);
        };
        Ok(s.messages(&owner, &id2)?.map(|m| (c, m)))
    })
    .await?;
    let (c, msgs) = found.ok_or_else(|| not_found(&id))?;
    Ok(Json(with_messages(&st, &c, &msgs)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    title: String,
}

/// Renames a conversation.
pub async fn patch(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<PatchRequest>,
) -> Result<Json<Value>, ApiError> {
    let owner = st.owner(&headers);
    let (id2, title) = (id.clone(), clean_title(&req.title));
    let c = blocking(&st, move |s| {
        if !s.rename_conversation(&owner, &id2, &title)? {
            return Ok(None);
        }
        s.get_conversation(&owner, &id2)
    })
    .await?
    .ok_or_else(|| not_found(&id))?;
    Ok(Json(conversation_json(&st, &c)))
}

/// Deletes a conversation and its messages.
pub async fn delete(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = st.owner(&headers);
    if st.replying(&id) {
        return Err(busy(&id));
    }
    let id2 = id.clone();
    if !blocking(&st, move |s| s.delete_conversation(&owner, &id2)).await? {
        return Err(not_found(&id));
    }
    Ok(Json(
        json!({"id": id, "object": "conversation", "deleted": true}),
    ))
}

/// Stops the reply a conversation is generating (from any client of its
/// owner); waits until the reply is stored as `cancelled`, then returns the
/// conversation. Stopping a conversation with no reply running is not an
/// error: `stopped` is false.
pub async fn stop(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = st.owner(&headers);
    let (o2, id2) = (owner.clone(), id.clone());
    if blocking(&st, move |s| s.get_conversation(&o2, &id2))
        .await?
        .is_none()
    {
        return Err(not_found(&id));
    }
    let stopped = st.stop_reply(&id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while st.replying(&id) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id2 = id.clone();
    let found = blocking(&st, move |s| {
        let Some(c) = s.get_conversation(&owner, &id2)? else {
            return Ok(None);
        };
        Ok(s.messages(&owner, &id2)?.map(|m| (c, m)))
    })
    .await?;
    let (c, msgs) = found.ok_or_else(|| not_found(&id))?;
    let mut v = with_messages(&st, &c, &msgs);
    v["stopped"] = json!(stopped);
    Ok(Json(v))
}

fn busy(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "invalid_request_error",
        format!("Conversation `{id}` is already generating a reply; wait for it or stop it."),
    )
    .code("conversation_busy")
}

#[derive(Deserialize)]
pub struct MessageRequest {
    content: String,
    /// Stream the reply as chat completion chunks (the default).
    stream: Option<bool>,
    max_tokens: Option<u64>,
    #[serde(flatten)]
    sampling: troupe_protocol::SamplingFields,
}

/// Adds a user message and generates the reply (see the module docs).
pub async fn post_message(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<MessageRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    store(&st)?;
    let owner = st.owner(&headers);
    if req.content.trim().is_empty() {
        return Err(ApiError::invalid("content", "content must not be empty"));
    }
    let (o2, id2) = (owner.clone(), id.clone());
    let found = blocking(&st, move |s| {
        let Some(c) = s.get_conversation(&o2, &id2)? else {
            return Ok(None);
        };
        Ok(s.messages(&o2, &id2)?.map(|m| (c, m)))
    })
    .await?;
    let (conv, history) = found.ok_or_else(|| not_found(&id))?;
    // One reply at a time per conversation; the history read above is
    // re-read after the claim so it cannot miss a reply that just ended.
    let claim = st.claim_reply(&id).ok_or_else(|| busy(&id))?;
    let (o2, id2) = (owner.clone(), id.clone());
    let history = blocking(&st, move |s| s.messages(&o2, &id2))
        .await?
        .unwrap_or(history);
    let persona = persona_of(&st, &conv.persona_id)?;
    let fields = match &persona {
        Some(p) => crate::personas::with_defaults(&req.sampling, p),
        None => req.sampling.clone(),
    };
    let sampling = g::sampling(&fields)?;
    let stop = g::stops(&req.sampling)?;
    if req.max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1.",
        ));
    }
    let reserve = req
        .max_tokens
        .map_or(DEFAULT_REPLY_RESERVE, |m| m.min(st.n_ctx as u64) as usize);
    let turns = history::turns(&history, &req.content);
    let (st2, p2) = (st.clone(), persona.clone());
    let built =
        tokio::task::spawn_blocking(move || history::build(&st2, p2.as_deref(), &turns, reserve))
            .await
            .map_err(|_| ApiError::internal("prompt task failed"))??;
    let room = st.n_ctx.saturating_sub(built.prompt.len()) as u64;
    let asked = req.max_tokens.unwrap_or(DEFAULT_MAX_REPLY.min(room));
    let max_tokens = g::budget(built.prompt.len(), Some(asked), st.n_ctx, "content")?;
    let slot = g::enter(&st)?;

    // The user turn is committed before anything is generated.
    let (o2, id2, content) = (owner.clone(), id.clone(), req.content.clone());
    let retitle = conv.title.is_empty().then(|| title_from(&req.content));
    let rows = blocking(&st, move |s| {
        let Some(user) = s.add_message(&o2, &id2, Role::User, &content, Status::Done)? else {
            return Ok(None);
        };
        if let Some(t) = retitle {
            s.rename_conversation(&o2, &id2, &t)?;
        }
        let reply = s.add_message(&o2, &id2, Role::Assistant, "", Status::Streaming)?;
        Ok(reply.map(|r| (user, r)))
    })
    .await?;
    let (user_msg, reply_msg) = rows.ok_or_else(|| not_found(&id))?;
    let params = GenerateParams {
        max_tokens,
        sampling,
        stop,
        stop_at_eog: !req.sampling.ignore_eos,
    };
    let prompt_len = built.prompt.len();
    let run = match g::submit_in(
        &st,
        slot,
        started,
        built.prompt,
        params,
        None,
        built.pin_prefix,
    ) {
        Ok(r) => r,
        Err(e) => {
            let msg = e.body.error.message.clone();
            let s = store(&st)?;
            let rid = reply_msg.id;
            let _ = tokio::task::spawn_blocking(move || {
                s.update_message(rid, &MessageUpdate::failed("", &msg))
            })
            .await;
            return Err(e);
        }
    };
    let info = json!({
        "id": id,
        "user_message_id": user_msg.id,
        "assistant_message_id": reply_msg.id,
        "turns_omitted": built.omitted,
        "prompt_tokens": prompt_len,
    });
    let chunks = ChatChunks::new(
        st.clone(),
        model_of(&st, &conv.persona_id),
        g::new_id("chatcmpl"),
        g::unix_now(),
        true,
    );
    let reply = Reply {
        store: store(&st)?,
        message_id: reply_msg.id,
        claim,
    };
    let omitted = HeaderValue::from(built.omitted);
    let mut resp = if req.stream.unwrap_or(true) {
        stream_reply(reply, run, chunks, info)
    } else {
        whole_reply(reply, run, chunks, info).await?
    };
    resp.headers_mut().insert(TURNS_OMITTED_HEADER, omitted);
    Ok(resp)
}

/// A reply being generated: where it is stored, and the claim on its
/// conversation (released when the reply task ends).
struct Reply {
    store: Arc<Store>,
    message_id: i64,
    claim: crate::state::ReplyClaim,
}

impl Reply {
    async fn save(&self, update: Saved) {
        let (s, id) = (self.store.clone(), self.message_id);
        let r = tokio::task::spawn_blocking(move || {
            let u = match &update {
                Saved::Progress(t) => MessageUpdate::streaming(t),
                Saved::Done(t, u) => MessageUpdate::done(t).with_usage(*u),
                Saved::Cancelled(t) => MessageUpdate::cancelled(t),
                Saved::Failed(t, e) => MessageUpdate::failed(t, e),
            };
            s.update_message(id, &u)
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("saving reply {}: {e}", self.message_id),
            Err(e) => tracing::warn!("saving reply {}: {e}", self.message_id),
        }
    }
}

enum Saved {
    Progress(String),
    Done(String, troupe_store::Usage),
    Cancelled(String),
    Failed(String, String),
}

/// What the reply task tells the response: chunks to send, or the end.
enum Out {
    Chunk(Value),
    Error(String),
}

/// Drives a reply to its end: reads engine events, saves progress and the
/// outcome, and passes chunks to `out` while anyone listens. When `out`
/// closes (the client left or stopped), the generation is cancelled and
/// the partial text saved as `cancelled`.
async fn drive(reply: Reply, mut run: Run, mut chunks: ChatChunks, out: mpsc::Sender<Out>) {
    let mut text = String::new();
    let mut last_save = Instant::now();
    let mut saved_len = 0;
    for v in chunks.start() {
        let _ = out.send(Out::Chunk(v)).await;
    }
    loop {
        let ev = tokio::select! {
            ev = run.next() => ev,
            _ = out.closed() => {
                drop(run);
                reply.save(Saved::Cancelled(text)).await;
                return;
            }
            _ = reply.claim.stopped() => {
                // Stopped through the API (another tab, another client):
                // the stream ends as a normal reply would.
                drop(run);
                reply.save(Saved::Cancelled(text)).await;
                let mut last = chunks.done(FinishReason::Stop, &Usage::default());
                if let Some(v) = last.first_mut() {
                    v["conversation"] = json!({"status": "cancelled"});
                    let _ = out.send(Out::Chunk(v.take())).await;
                }
                return;
            }
        };
        match ev {
            Some(Event::Token { id, text: t, .. }) => {
                text.push_str(&t);
                if let Some(v) = chunks.token(&t, id, None) {
                    if out.send(Out::Chunk(v)).await.is_err() {
                        drop(run);
                        reply.save(Saved::Cancelled(text)).await;
                        return;
                    }
                }
                if last_save.elapsed() >= PROGRESS_EVERY && text.len() != saved_len {
                    saved_len = text.len();
                    last_save = Instant::now();
                    reply.save(Saved::Progress(text.clone())).await;
                }
            }
            Some(Event::Tail(t)) => {
                text.push_str(&t);
                if let Some(v) = chunks.token(&t, u32::MAX, None) {
                    let _ = out.send(Out::Chunk(v)).await;
                }
            }
            Some(Event::Done { finish, usage }) => {
                let u = troupe_store::Usage {
                    prompt_tokens: usage.prompt_tokens as u32,
                    completion_tokens: usage.completion_tokens as u32,
                };
                reply.save(Saved::Done(text, u)).await;
                for v in chunks.done(finish, &usage) {
                    let _ = out.send(Out::Chunk(v)).await;
                }
                return;
            }
            Some(Event::Error(e)) => {
                reply.save(Saved::Failed(text, e.clone())).await;
                let _ = out.send(Out::Error(e)).await;
                return;
            }
            None => {
                let e = "the engine loop stopped mid-request".to_string();
                reply.save(Saved::Failed(text, e.clone())).await;
                let _ = out.send(Out::Error(e)).await;
                return;
            }
        }
    }
}

fn sse_data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// Chat-completion chunks over SSE; the first carries `conversation`
/// (ids of the two stored messages, turns left out), the last has usage.
fn stream_reply(reply: Reply, run: Run, chunks: ChatChunks, info: Value) -> Response {
    let (tx, rx) = mpsc::channel::<Out>(64);
    tokio::spawn(drive(reply, run, chunks, tx));
    let s = futures_util::stream::unfold(
        (rx, Some(info), false),
        |(mut rx, mut info, ended)| async move {
            if ended {
                return None;
            }
            match rx.recv().await {
                Some(Out::Chunk(mut v)) => {
                    if let Some(i) = info.take() {
                        v["conversation"] = i;
                    }
                    Some((Ok::<_, Infallible>(sse_data(&v)), (rx, info, false)))
                }
                Some(Out::Error(e)) => {
                    let body = troupe_protocol::ErrorBody::new("server_error", &e);
                    let ev = SseEvent::default()
                        .event("error")
                        .data(serde_json::to_string(&body).unwrap_or_default());
                    Some((Ok(ev), (rx, info, true)))
                }
                None => Some((Ok(SseEvent::default().data("[DONE]")), (rx, info, true))),
            }
        },
    );
    Sse::new(s).into_response()
}

/// The whole reply as one chat completion (plus `conversation`).
async fn whole_reply(
    reply: Reply,
    run: Run,
    chunks: ChatChunks,
    info: Value,
) -> Result<Response, ApiError> {
    let (tx, mut rx) = mpsc::channel::<Out>(64);
    let model = chunks.model().to_string();
    let (id, created) = (chunks.id().to_string(), chunks.created());
    tokio::spawn(drive(reply, run, chunks, tx));
    let mut text = String::new();
    let mut finish = None;
    let mut usage = Value::Null;
    while let Some(o) = rx.recv().await {
        match o {
            Out::Chunk(v) => {
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    text.push_str(t);
                }
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
                if !v["usage"].is_null() {
                    usage = v["usage"].clone();
                }
            }
            Out::Error(e) => return Err(ApiError::internal(e)),
        }
    }
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish.unwrap_or_else(|| g::finish_str(FinishReason::Stop).into()),
        }],
        "usage": usage,
        "conversation": info,
    });
    Ok(Json(body).into_response())
}
