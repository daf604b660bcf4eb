//! Scratch buffers of the forward pass, sized once for a maximum batch so
//! the decode loop allocates nothing.

use crate::ModelConfig;
use troupe_nn::{attention_scratch_len, QuantizedInput};

/// Activations for up to `max_tokens` rows and attention over up to
/// `max_ctx` positions.
pub struct Workspace {
    pub max_tokens: usize,
    pub max_ctx: usize,
    /// Residual stream `[tokens, n_embd]`.
    pub x: Vec<f32>,
    /// Normalised input of a sub-block `[tokens, n_embd]`.
    pub xn: Vec<f32>,
    /// `[tokens, n_head * head_dim]`.
    pub q: Vec<f32>,
    /// `[tokens, n_head_kv * head_dim]`.
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// Attention output `[tokens, n_head * head_dim]`.
    pub attn: Vec<f32>,
    /// Sub-block output `[tokens, n_embd]`.
    pub tmp: Vec<f32>,
    /// `[tokens, n_ff]`.
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    /// RoPE cos/sin per row `[tokens, rope_dims]`, one per frequency base.
    pub rope: Vec<f32>,
    pub rope_swa: Vec<f32>,
    pub qin: QuantizedInput,
    pub attn_scratch: Vec<f32>,
    /// Final hidden states of the rows whose logits are wanted.
    pub last: Vec<f32>,
    /// Logits `[n_logits, n_vocab]`.
    pub logits: Vec<f32>,
    pub n_logits: usize,
    pub n_vocab: usize,
}

impl Workspace {
    pub fn new(
        cfg: &ModelConfig,
        max_tokens: usize,
        max_ctx: usize,
        n_threads: usize,
        block_size: usize,
    ) -> Self {
        let t = max_tokens.max(1);
        let qd = cfg.n_head * cfg.head_dim;
        let kvd = cfg.n_head_kv * cfg.head_dim;
        Workspace {
            max_tokens: t,
            max_ctx,
            x: vec![0.0; t * cfg.n_embd],
            xn: vec![0.0; t * cfg.n_embd],
            q: vec![0.0; t * qd],
            k: vec![0.0; t * kvd],
            v: vec![0.0; t * kvd],
            attn: vec![0.0; t * qd],
            tmp: vec![0.0; t * cfg.n_embd],
            gate: vec![0.0; t * cfg.n_ff],
            up: vec![0.0; t * cfg.n_ff],
            rope: vec![0.0; t * cfg.rope_dims],
            rope_swa: vec![0.0; t * cfg.rope_dims],
            qin: QuantizedInput::new(),
            attn_scratch: vec![
                0.0;
                n_threads.max(1)
                    * attention_scratch_len(
                        max_ctx,
                        cfg.head_dim,
                        block_size,
                        cfg.n_head / cfg.n_head_kv.max(1),
                    )
            ],
            last: Vec::new(),
            logits: Vec::new(),
            n_logits: 0,
            n_vocab: cfg.n_vocab,
        }
    }

    /// The logits row for the `i`-th entry of `batch.logits_rows`.
    pub fn logits_row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.n_vocab..(i + 1) * self.n_vocab]
    }

    /// Sizes the logits buffers for `n` rows (grows once, then reused).
    pub fn reserve_logits(&mut self, n: usize, n_embd: usize) {
        self.n_logits = n;
        if self.logits.len() < n * self.n_vocab {
            self.logits.resize(n * self.n_vocab, 0.0);
        }
        if self.last.len() < n * n_embd {
            self.last.resize(n * n_embd, 0.0);
        }
    }
}
