//! Qwen2 (Qwen2.5 and Qwen2.5-Coder): the Llama block with biases on the
//! Q, K and V projections and NeoX-style RoPE (set in `ModelConfig`).
//! Reference: Qwen team, "Qwen2 Technical Report" (2024).

use crate::llama::{Llama, Options};
use crate::ModelConfig;
use troupe_nn::{LoadError, WeightSource};

pub fn load(src: &WeightSource, cfg: ModelConfig) -> Result<Llama, LoadError> {
    Llama::load(src, cfg, Options { qkv_bias: true })
}
