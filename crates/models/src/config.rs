//! Hyper-parameters read from GGUF metadata (`<arch>.*` keys).

use troupe_gguf::GgufFile;
use troupe_nn::{LoadError, RopeStyle};

/// Architectures Troupe can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub name: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head width of queries and keys.
    pub head_dim: usize,
    pub n_ff: usize,
    pub norm_eps: f32,
    pub rope_base: f32,
    /// RoPE base of sliding-window layers (Gemma 3).
    pub rope_base_swa: f32,
    /// Dimensions of each head that RoPE rotates.
    pub rope_dims: usize,
    pub rope_style: RopeStyle,
    /// Context the model was trained for.
    pub n_ctx_train: usize,
    /// Sliding window of local layers (0 = none).
    pub sliding_window: usize,
}

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<Self, LoadError> {
        let arch_name = f.str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            other => {
                return Err(LoadError::Param(format!(
                    "architecture {other:?} is not supported (supported: llama, qwen2, gemma3)"
                )))
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let n_embd = f.usize(&key("embedding_length"))?;
        let n_head = f.usize(&key("attention.head_count"))?;
        let n_head_kv = f
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(LoadError::Param(format!(
                "head counts {n_head}/{n_head_kv} are not a whole grouping"
            )));
        }
        let head_dim = match f.opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
            None => {
                return Err(LoadError::Param(
                    "embedding width is not a multiple of the head count".into(),
                ))
            }
        };
        if let Some(v) = f.opt_usize(&key("attention.value_length"))? {
            if v != head_dim {
                return Err(LoadError::Param(format!(
                    "value width {v} differs from key width {head_dim}"
                )));
            }
        }
        // The embedding table's rows are the vocabulary (the loader may have
        // dropped the token list once the tokenizer read it).
        let embd_rows = f
            .tensor("token_embd.weight")
            .and_then(|t| t.shape.get(1).copied())
            .map(|n| n as usize);
        let n_vocab = match (f.opt_usize(&key("vocab_size"))?, embd_rows) {
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => f.str_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_dims = f
            .opt_usize(&key("rope.dimension_count"))?
            .unwrap_or(head_dim);
        if rope_dims > head_dim || !rope_dims.is_multiple_of(2) {
            return Err(LoadError::Param(format!(
                "rope dimension count {rope_dims} is invalid"
            )));
        }
        let cfg = ModelConfig {
            arch,
            name: f.opt_str("general.name")?.unwrap_or(arch_name).to_string(),
            n_vocab,
            n_embd,
            n_layer: f.usize(&key("block_count"))?,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: f.usize(&key("feed_forward_length"))?,
            norm_eps: f.f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: f.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_base_swa: f.opt_f32(&key("rope.freq_base_swa"))?.unwrap_or(10_000.0),
            rope_dims,
            rope_style: match arch {
                Arch::Llama => RopeStyle::Normal,
                Arch::Qwen2 | Arch::Gemma3 => RopeStyle::Neox,
            },
            n_ctx_train: f.opt_usize(&key("context_length"))?.unwrap_or(2048),
            sliding_window: f.opt_usize(&key("attention.sliding_window"))?.unwrap_or(0),
        };
        if cfg.n_layer == 0 || cfg.n_embd == 0 || cfg.n_ff == 0 || cfg.n_vocab == 0 {
            return Err(LoadError::Param("a model dimension is zero".into()));
        }
        Ok(cfg)
    }
}
