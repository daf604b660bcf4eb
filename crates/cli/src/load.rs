//! Finding, pulling and loading a model for the commands.

use crate::ModelArgs;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use troupe_engine::{Engine, EngineOptions};
use troupe_gguf::GgufFile;
use troupe_tokenizer::chat::ChatTemplate;
use troupe_tokenizer::Tokenizer;

/// A path, or a catalog name pulled on first use.
pub fn resolve(data: &Path, model: &str) -> Result<PathBuf> {
    let opts = troupe_hub::PullOptions {
        progress: true,
        verify: false,
        python: None,
    };
    Ok(troupe_hub::resolve_model(model, data, &opts)?)
}

/// Everything a command needs to talk to a model.
pub struct Loaded {
    pub engine: Engine,
    pub tok: Tokenizer,
    pub template: ChatTemplate,
    pub path: PathBuf,
}

impl Loaded {
    pub fn open(data: &Path, a: &ModelArgs) -> Result<Self> {
        Self::open_with(data, a, |_| {})
    }

    /// Like [`Loaded::open`], letting the caller adjust the engine options
    /// (the server sizes the KV cache and batch for many sequences).
    pub fn open_with(
        data: &Path,
        a: &ModelArgs,
        adjust: impl FnOnce(&mut EngineOptions),
    ) -> Result<Self> {
        let path = resolve(data, &a.model)?;
        let mut file =
            GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?;
        warm(&file);
        let tok = Tokenizer::from_gguf(&file).context("reading the tokenizer")?;
        let bos = tok
            .bos()
            .and_then(|id| tok.token_text(id))
            .unwrap_or("")
            .to_string();
        let eos = tok
            .eos()
            .and_then(|id| tok.token_text(id))
            .unwrap_or("")
            .to_string();
        let source = file.opt_str("tokenizer.chat_template")?;
        let template = ChatTemplate::from_metadata(source, &bos, &eos)
            .context("compiling the chat template")?;
        if source.is_none() {
            eprintln!("note: the model has no chat template; using ChatML");
        }
        // The tokenizer has its own copy of the vocabulary and merges.
        file.forget_large_arrays(4096);
        let model = troupe_models::load(Arc::new(file)).context("building the model")?;
        let mut opts = EngineOptions {
            n_ctx: a.ctx_size,
            kv_positions: a.ctx_size,
            n_threads: a
                .threads
                .unwrap_or_else(troupe_kernels::pool::default_threads),
            ..EngineOptions::default()
        };
        adjust(&mut opts);
        let engine = Engine::new(model, opts);
        Ok(Loaded {
            engine,
            tok,
            template,
            path,
        })
    }

    /// Tokenizes a rendered chat prompt (see [`Tokenizer::encode_chat`]).
    pub fn encode_rendered(&self, text: &str) -> Vec<u32> {
        self.tok.encode_chat(text)
    }
}

/// Touches every page of the mapped file with a progress bar, so the first
/// token is not slowed by page faults and the user sees the load.
fn warm(file: &GgufFile) {
    let bytes = file.bytes();
    let bar = ProgressBar::new(bytes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("loading {bar:30} {bytes}/{total_bytes} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut sum = 0u8;
    for (i, chunk) in bytes.chunks(1 << 22).enumerate() {
        for page in chunk.iter().step_by(4096) {
            sum = sum.wrapping_add(*page);
        }
        if i % 4 == 0 {
            bar.set_position((i * (1 << 22)) as u64);
        }
    }
    std::hint::black_box(sum);
    bar.finish_and_clear();
}
