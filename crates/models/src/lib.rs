//! Model architectures. Each file builds one architecture from the blocks
//! of `troupe-nn`; [`load`] picks the file by `general.architecture`.
//!
//! Models see only token ids and positions, never text.

mod blocks;
mod config;
pub mod debug;
mod gemma3;
mod llama;
mod qwen2;
mod workspace;

pub use config::{Arch, ModelConfig};
use std::sync::Arc;
use troupe_gguf::GgufFile;
pub use troupe_nn::{Batch, BatchError, KvCache, KvLayout, LoadError, ThreadPool};
pub use workspace::Workspace;

/// A loaded model: a pure function from a ragged batch (plus the KV cache it
/// extends) to logits.
pub trait Model: Send + Sync {
    fn config(&self) -> &ModelConfig;

    /// Runs `batch`, storing its keys and values in `kv` and writing the
    /// logits of `batch.logits_rows` into `ws.logits` (one `n_vocab` row
    /// each, in that order).
    fn forward(
        &self,
        batch: &Batch,
        kv: &mut KvCache,
        ws: &mut Workspace,
        pool: &ThreadPool,
    ) -> Result<(), BatchError>;
}

/// Loads the architecture named in the file's metadata.
pub fn load(file: Arc<GgufFile>) -> Result<Box<dyn Model>, LoadError> {
    let cfg = ModelConfig::from_gguf(&file)?;
    let src = troupe_nn::WeightSource::new(file);
    Ok(match cfg.arch {
        Arch::Llama => Box::new(llama::Llama::load(&src, cfg, llama::Options::LLAMA)?),
        Arch::Qwen2 => Box::new(qwen2::load(&src, cfg)?),
        Arch::Gemma3 => Box::new(gemma3::Gemma3::load(&src, cfg)?),
    })
}
