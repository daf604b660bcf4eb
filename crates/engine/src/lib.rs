//! Runs a model on token ids: paged KV cache, ragged batches, sampling and
//! the generation loop. Text enters only through the tokenizer handed to
//! the generation helpers; the engine never sees HTTP.

mod blocks;
mod engine;
mod generate;
pub mod sampler;
pub mod scheduler;

pub use engine::{Engine, EngineError, EngineOptions, KvStats, PrefixHold, SeqId, Step};
pub use generate::{generate, FinishReason, Flow, GenerateError, GenerateParams, Generation};
pub use troupe_models::ModelConfig;
