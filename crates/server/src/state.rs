//! Shared server state, configuration and the in-flight accounting.

use crate::metrics::Metrics;
use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use troupe_engine::scheduler::{Command, SchedulerStats};
use troupe_engine::Engine;
use troupe_tokenizer::chat::ChatTemplate;
use troupe_tokenizer::Tokenizer;

/// What the server serves.
pub struct ServerModel {
    pub engine: Engine,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    /// The name clients pass as `model`.
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Bearer keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Sequences generating at once.
    pub max_concurrent: usize,
    /// Requests waiting beyond those; more get 429.
    pub max_queue: usize,
    /// Most prompt tokens prefilled per engine step.
    pub prefill_chunk: usize,
    /// Target step time while streams are running (bounds their latency).
    pub step_target: Option<Duration>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// How long running requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Where custom personas are stored (`None`: kept in memory only).
    pub personas_dir: Option<std::path::PathBuf>,
    /// The conversation store (`None`: `/v1/conversations` answers 503).
    pub store: Option<Arc<troupe_store::Store>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_keys: Vec::new(),
            max_concurrent: 8,
            max_queue: 64,
            prefill_chunk: 256,
            step_target: Some(Duration::from_millis(60)),
            max_body_bytes: 4 << 20,
            drain_timeout: Duration::from_secs(30),
            personas_dir: None,
            store: None,
        }
    }
}

pub struct AppState {
    pub model_id: String,
    pub tok: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub n_ctx: usize,
    tx: Mutex<mpsc::Sender<Command>>,
    pub stats: Arc<SchedulerStats>,
    pub metrics: Metrics,
    /// Generation requests accepted and not yet finished.
    pub in_flight: AtomicUsize,
    pub max_in_flight: usize,
    pub draining: AtomicBool,
    key_hashes: Vec<[u8; 32]>,
    pub created: u64,
    pub personas: crate::personas::Registry,
    pub store: Option<Arc<troupe_store::Store>>,
    /// Conversations generating a reply now (one at a time each).
    replying: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model_id: String,
        tok: Arc<Tokenizer>,
        template: ChatTemplate,
        n_ctx: usize,
        tx: mpsc::Sender<Command>,
        stats: Arc<SchedulerStats>,
        config: &crate::ServerConfig,
    ) -> Self {
        AppState {
            model_id,
            tok,
            template,
            n_ctx,
            tx: Mutex::new(tx),
            stats,
            metrics: Metrics::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: config.max_concurrent.max(1) + config.max_queue,
            draining: AtomicBool::new(false),
            key_hashes: config
                .api_keys
                .iter()
                .map(|k| sha256(k.as_bytes()))
                .collect(),
            created: crate::generation::unix_now(),
            personas: crate::personas::Registry::load(config.personas_dir.clone()),
            store: config.store.clone(),
            replying: Mutex::new(HashMap::new()),
        }
    }

    /// Sends a command to the engine loop; false if the loop is gone.
    pub fn send(&self, c: Command) -> bool {
        match self.tx.lock() {
            Ok(tx) => tx.send(c).is_ok(),
            Err(_) => false,
        }
    }

    pub fn auth_required(&self) -> bool {
        !self.key_hashes.is_empty()
    }

    /// Checks a presented key against every configured key in constant
    /// time (hashes are compared, so the key's length does not leak either).
    pub fn key_ok(&self, presented: &str) -> bool {
        let h = sha256(presented.as_bytes());
        let mut ok = false;
        for k in &self.key_hashes {
            let diff = k.iter().zip(&h).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            ok |= diff == 0;
        }
        ok
    }

    /// Who owns what a request creates: a hash of its API key (never the
    /// key itself), or `""` on a server without keys.
    pub fn owner(&self, headers: &HeaderMap) -> String {
        if !self.auth_required() {
            return String::new();
        }
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        sha256(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Marks conversation `id` as replying; `None` if it already is.
    pub fn claim_reply(self: &Arc<Self>, id: &str) -> Option<ReplyClaim> {
        let mut map = self.replying.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(id) {
            return None;
        }
        let stop = Arc::new(tokio::sync::Notify::new());
        map.insert(id.to_string(), stop.clone());
        Some(ReplyClaim {
            state: self.clone(),
            id: id.to_string(),
            stop,
        })
    }

    pub fn replying(&self, id: &str) -> bool {
        let map = self.replying.lock().unwrap_or_else(|e| e.into_inner());
        map.contains_key(id)
    }

    /// Asks the reply of conversation `id` to stop; false if none runs.
    pub fn stop_reply(&self, id: &str) -> bool {
        let map = self.replying.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(stop) => {
                // A stored permit: works even before the reply task waits.
                stop.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn engine_alive(&self) -> bool {
        self.stats.alive.load(Ordering::Relaxed)
    }

    /// Takes a slot for a generation request, or `None` when the queue is
    /// full. The slot is given back when the guard drops (response done,
    /// or the client went away).
    pub fn try_enter(self: &Arc<Self>) -> Option<InFlight> {
        let mut cur = self.in_flight.load(Ordering::SeqCst);
        loop {
            if cur >= self.max_in_flight {
                return None;
            }
            match self
                .in_flight
                .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(InFlight(self.clone())),
                Err(now) => cur = now,
            }
        }
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// A conversation's reply in progress; released on drop.
pub struct ReplyClaim {
    state: Arc<AppState>,
    id: String,
    stop: Arc<tokio::sync::Notify>,
}

impl ReplyClaim {
    /// Resolves when [`AppState::stop_reply`] is called for this reply.
    pub async fn stopped(&self) {
        self.stop.notified().await
    }
}

impl Drop for ReplyClaim {
    fn drop(&mut self) {
        let mut map = self
            .state
            .replying
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.remove(&self.id);
    }
}

/// One accepted generation request.
pub struct InFlight(Arc<AppState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
