//! `troupe serve`: the OpenAI-compatible HTTP server.

use crate::load::Loaded;
use crate::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use troupe_server::{ServerConfig, ServerModel};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to bind (loopback by default; use 0.0.0.0 to serve a network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// API key clients must send as `Authorization: Bearer KEY`
    /// (repeatable; also $TROUPE_API_KEYS, comma-separated). Without keys
    /// the API is open.
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// Sequences generated at once (batched in every forward pass).
    #[arg(long, default_value_t = 8)]
    max_concurrent: usize,
    /// Requests that may wait beyond those; more get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Positions in the shared KV cache (default: ctx-size × max-concurrent).
    #[arg(long, value_name = "TOKENS")]
    kv_size: Option<usize>,
    /// Most prompt tokens prefilled per engine step (smaller keeps running
    /// streams smoother while a long prompt is read).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// While replies are streaming, prompt chunks are sized so one engine
    /// step takes about this many milliseconds (0: always --prefill-chunk).
    #[arg(long, default_value_t = 60)]
    step_target_ms: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds running requests get to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Where custom personas are stored (default DATA/personas).
    #[arg(long, value_name = "DIR")]
    personas_dir: Option<std::path::PathBuf>,
    /// The conversation database (SQLite; default DATA/conversations.db).
    #[arg(long, value_name = "FILE")]
    db: Option<std::path::PathBuf>,
}

pub fn run(data: &Path, a: ServeArgs) -> Result<()> {
    let mut keys = a.api_keys.clone();
    if let Ok(env) = std::env::var("TROUPE_API_KEYS") {
        keys.extend(
            env.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from),
        );
    }
    if keys.iter().any(|k| k.trim().is_empty()) {
        anyhow::bail!("--api-key must not be empty");
    }
    let db =
        a.db.clone()
            .unwrap_or_else(|| data.join("conversations.db"));
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory of {}", db.display()))?;
    }
    // Opened before the model loads, so a locked or newer database fails fast.
    let store = troupe_store::Store::open(&db).with_context(|| {
        format!(
            "opening the conversation database {} (another `troupe serve` may be using it; \
             pass --db FILE to use another)",
            db.display()
        )
    })?;
    let max_concurrent = a.max_concurrent.max(1);
    let prefill_chunk = a.prefill_chunk.max(1);
    let kv = a
        .kv_size
        .unwrap_or(a.model.ctx_size.saturating_mul(max_concurrent));
    let m = Loaded::open_with(data, &a.model, |o| {
        o.kv_positions = kv.max(o.n_ctx);
        o.max_batch_tokens = prefill_chunk + max_concurrent;
    })?;
    let id = model_id(&a.model.model);
    let (st, cfg) = (m.engine.kv_stats(), m.engine.config().clone());
    eprintln!(
        "troupe: {} ({} layers), context {} tokens, KV cache {} blocks of {} ({} positions), {} threads",
        id,
        cfg.n_layer,
        m.engine.n_ctx(),
        st.n_blocks,
        st.block_size,
        st.n_blocks * st.block_size,
        m.engine.n_threads()
    );
    let config = ServerConfig {
        host: a.host,
        port: a.port,
        api_keys: keys,
        max_concurrent,
        max_queue: a.max_queue,
        prefill_chunk,
        step_target: (a.step_target_ms > 0).then(|| Duration::from_millis(a.step_target_ms)),
        max_body_bytes: a.max_body_bytes,
        drain_timeout: Duration::from_secs(a.drain_timeout),
        personas_dir: Some(a.personas_dir.unwrap_or_else(|| data.join("personas"))),
        store: Some(Arc::new(store)),
    };
    let model = ServerModel {
        engine: m.engine,
        tokenizer: Arc::new(m.tok),
        template: m.template,
        id,
    };
    // HTTP work is light next to the model's; one async thread keeps the
    // cores for the engine's pool (tokenizing runs on the blocking pool).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(troupe_server::serve(model, config))
        .context("serving")?;
    Ok(())
}

/// The name clients use: the catalog name, or a file's stem.
fn model_id(arg: &str) -> String {
    let p = Path::new(arg);
    if p.extension().is_some_and(|e| e == "gguf") || arg.contains('/') {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| arg.to_string())
    } else {
        arg.to_string()
    }
}
