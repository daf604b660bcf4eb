//! Runs a model on token ids: KV cache, ragged batches, sampling and the generation loop.

pub mod sampler;
