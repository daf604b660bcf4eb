//! `/v1/personas`: the built-in troupe plus custom personas, and chat with
//! a persona through `model: "persona:<id>"`.
//!
//! Custom personas are TOML files in `DATA/personas/` (the same format as
//! the built-ins), written atomically (temporary file, fsync, rename), so a
//! crash never leaves half a persona. Built-ins are read-only: to change
//! one, create a copy under a new id.

use crate::errors::{ApiError, Json};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use troupe_personas::card::{self, CardVersion};
use troupe_personas::{builtin, Persona, PersonaError};
use troupe_tokenizer::chat::Message;

type St = State<Arc<AppState>>;

/// The `model` prefix that selects a persona.
pub const MODEL_PREFIX: &str = "persona:";

/// Every persona the server knows.
pub struct Registry {
    map: RwLock<BTreeMap<String, (Arc<Persona>, bool)>>,
    /// Where custom personas are stored (`None`: in memory only).
    dir: Option<PathBuf>,
}

impl Registry {
    /// The built-ins plus the custom personas in `dir` (files that do not
    /// parse are reported and skipped, not fatal).
    pub fn load(dir: Option<PathBuf>) -> Registry {
        let mut map = BTreeMap::new();
        match builtin() {
            Ok(v) => {
                for p in v {
                    map.insert(p.id.clone(), (Arc::new(p), true));
                }
            }
            Err(e) => eprintln!("troupe: warning: built-in personas: {e}"),
        }
        if let Some(d) = &dir {
            let files = std::fs::read_dir(d).into_iter().flatten().flatten();
            for f in files.map(|e| e.path()) {
                if f.extension().is_none_or(|e| e != "toml") {
                    continue;
                }
                let parsed = std::fs::read_to_string(&f)
                    .map_err(|e| e.to_string())
                    .and_then(|t| Persona::from_toml(&t).map_err(|e| e.to_string()));
                match parsed {
                    Ok(p) if map.get(&p.id).is_some_and(|(_, b)| *b) => eprintln!(
                        "troupe: warning: {} uses the id of a built-in persona; skipped",
                        f.display()
                    ),
                    Ok(p) => {
                        map.insert(p.id.clone(), (Arc::new(p), false));
                    }
                    Err(e) => eprintln!("troupe: warning: skipping {}: {e}", f.display()),
                }
            }
        }
        Registry {
            map: RwLock::new(map),
            dir,
        }
    }

    /// The persona `id` and whether it is built in.
    pub fn get(&self, id: &str) -> Option<(Arc<Persona>, bool)> {
        self.read().get(id).cloned()
    }

    /// All personas, sorted by id.
    pub fn list(&self) -> Vec<(Arc<Persona>, bool)> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, (Arc<Persona>, bool)>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, (Arc<Persona>, bool)>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a custom persona (file first, then the map, so what clients
    /// see is on disk).
    fn put(&self, p: Persona) -> Result<Arc<Persona>, ApiError> {
        if let Some(d) = &self.dir {
            write_atomic(d, &format!("{}.toml", p.id), p.to_toml().as_bytes())
                .map_err(|e| ApiError::internal(format!("could not save the persona: {e}")))?;
        }
        let p = Arc::new(p);
        self.write().insert(p.id.clone(), (p.clone(), false));
        Ok(p)
    }

    fn remove(&self, id: &str) -> Result<(), ApiError> {
        if let Some(d) = &self.dir {
            match std::fs::remove_file(d.join(format!("{id}.toml"))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "could not delete the persona: {e}"
                    )))
                }
            }
        }
        self.write().remove(id);
        Ok(())
    }

    /// `base`, or `base-2`, `base-3`, ... whichever is free.
    fn free_id(&self, base: &str) -> String {
        let map = self.read();
        if !map.contains_key(base) {
            return base.to_string();
        }
        let stem: String = base.chars().take(troupe_personas::MAX_ID_LEN - 4).collect();
        (2..)
            .map(|n| format!("{}-{n}", stem.trim_end_matches('-')))
            .find(|id| !map.contains_key(id))
            .unwrap_or_default()
    }
}

fn write_atomic(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("No persona `{id}`; GET /v1/personas lists them."),
    )
    .code("persona_not_found")
}

fn read_only(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_request_error",
        format!("`{id}` is a built-in persona and cannot be changed or deleted; POST a copy under a new id."),
    )
    .code("persona_read_only")
}

fn invalid(e: PersonaError) -> ApiError {
    ApiError::invalid("persona", e.to_string()).code("invalid_persona")
}

/// The API form of a persona: its fields plus `object` and `builtin`.
pub fn to_json(p: &Persona, builtin: bool) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("object".into(), json!("persona"));
        m.insert("builtin".into(), json!(builtin));
        m.insert("model".into(), json!(format!("{MODEL_PREFIX}{}", p.id)));
    }
    v
}

pub async fn list(State(st): St) -> Json<Value> {
    let data: Vec<Value> = st
        .personas
        .list()
        .iter()
        .map(|(p, b)| to_json(p, *b))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[derive(Deserialize)]
pub struct Format {
    format: Option<String>,
}

/// One persona; `?format=card` (V3 JSON), `card_v2` or `png` exports it as a
/// Character Card.
pub async fn get(State(st): St, Path(id): Path<String>, Query(f): Query<Format>) -> Response {
    let Some((p, b)) = st.personas.get(&id) else {
        return not_found(&id).into_response();
    };
    let attach = |ext: &str| format!("attachment; filename=\"{id}.{ext}\"");
    match f.format.as_deref() {
        None | Some("json") => Json(to_json(&p, b)).into_response(),
        Some("card" | "card_v3") => (
            [(header::CONTENT_DISPOSITION, attach("json"))],
            axum::Json(card::export_json(&p, CardVersion::V3)),
        )
            .into_response(),
        Some("card_v2") => (
            [(header::CONTENT_DISPOSITION, attach("json"))],
            axum::Json(card::export_json(&p, CardVersion::V2)),
        )
            .into_response(),
        Some("png") => match card::export_png(&p, None) {
            Ok(img) => (
                [
                    (header::CONTENT_TYPE, "image/png".to_string()),
                    (header::CONTENT_DISPOSITION, attach("png")),
                ],
                img,
            )
                .into_response(),
            Err(e) => ApiError::internal(e.to_string()).into_response(),
        },
        Some(other) => ApiError::invalid(
            "format",
            format!("unknown format `{other}`; use json, card, card_v2 or png"),
        )
        .into_response(),
    }
}

/// Parses a request body: a PNG card, a card JSON (has `spec`, or is a V1
/// card), or a persona in Troupe's own JSON form.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<(Persona, bool), ApiError> {
    let is_png = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("image/png"))
        || troupe_personas::png::is_png(body);
    if is_png {
        return card::import_png(body).map(|p| (p, true)).map_err(invalid);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("invalid JSON: {e}")))?;
    let looks_like_card = v.get("spec").is_some()
        || (v.get("id").is_none() && (v.get("first_mes").is_some() || v.get("data").is_some()));
    if looks_like_card {
        card::import_json(&v.to_string())
            .map(|p| (p, true))
            .map_err(invalid)
    } else {
        Persona::from_json(&v.to_string())
            .map(|p| (p, false))
            .map_err(invalid)
    }
}

/// Creates a custom persona from a persona JSON (its `id` must be free) or
/// a Character Card (JSON or PNG; the id comes from the name, made unique).
pub async fn create(State(st): St, headers: HeaderMap, body: Bytes) -> Response {
    let (mut p, from_card) = match parse_body(&headers, &body) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if from_card {
        p.id = st.personas.free_id(&p.id);
    } else if st.personas.get(&p.id).is_some() {
        return ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            format!(
                "a persona `{}` exists already; PUT /v1/personas/{} replaces a custom one",
                p.id, p.id
            ),
        )
        .code("persona_exists")
        .into_response();
    }
    let st2 = st.clone();
    match tokio::task::spawn_blocking(move || st2.personas.put(p)).await {
        Ok(Ok(p)) => (StatusCode::CREATED, Json(to_json(&p, false))).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::internal("persona task failed").into_response(),
    }
}

/// Replaces a custom persona (the body's id, if any, must match the path).
pub async fn replace(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match st.personas.get(&id) {
        Some((_, true)) => return read_only(&id).into_response(),
        None => return not_found(&id).into_response(),
        Some(_) => {}
    }
    let (mut p, from_card) = match parse_body(&headers, &body) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if !from_card && p.id != id {
        return ApiError::invalid("id", format!("the body's id `{}` is not `{id}`", p.id))
            .into_response();
    }
    p.id = id;
    let st2 = st.clone();
    match tokio::task::spawn_blocking(move || st2.personas.put(p)).await {
        Ok(Ok(p)) => Json(to_json(&p, false)).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::internal("persona task failed").into_response(),
    }
}

pub async fn delete(State(st): St, Path(id): Path<String>) -> Response {
    match st.personas.get(&id) {
        Some((_, true)) => return read_only(&id).into_response(),
        None => return not_found(&id).into_response(),
        Some(_) => {}
    }
    let st2 = st.clone();
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || st2.personas.remove(&id2)).await {
        Ok(Ok(())) => Json(json!({"id": id, "object": "persona", "deleted": true})).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::internal("persona task failed").into_response(),
    }
}

/// Request sampling fields with the persona's defaults where the request
/// leaves them unset.
pub fn with_defaults(
    f: &troupe_protocol::SamplingFields,
    p: &Persona,
) -> troupe_protocol::SamplingFields {
    let d = &p.sampling;
    let mut f = f.clone();
    f.temperature = f.temperature.or(d.temperature);
    f.top_p = f.top_p.or(d.top_p);
    f.top_k = f.top_k.or(d.top_k);
    f.min_p = f.min_p.or(d.min_p);
    f.presence_penalty = f.presence_penalty.or(d.presence_penalty);
    f.frequency_penalty = f.frequency_penalty.or(d.frequency_penalty);
    f.repetition_penalty = f.repetition_penalty.or(d.repetition_penalty);
    f
}

/// The persona block followed by the request's turns (see
/// [`Persona::block_before`]: system messages join the persona's, a
/// conversation opening with its own greeting replaces the block's).
pub fn with_block(p: &Persona, msgs: Vec<Message>) -> Vec<Message> {
    let (system, rest): (Vec<Message>, Vec<Message>) =
        msgs.into_iter().partition(|m| m.role == "system");
    let extra: Vec<&str> = system.iter().map(|m| m.content.as_str()).collect();
    let first_is_assistant = rest.first().is_some_and(|m| m.role == "assistant");
    let mut out: Vec<Message> = p
        .block_before("User", &extra, first_is_assistant)
        .into_iter()
        .map(|t| Message::new(t.role.as_str(), t.content))
        .collect();
    out.extend(rest);
    out
}
