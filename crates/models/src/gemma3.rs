//! Gemma 3 (text): like Llama but with embeddings scaled by `sqrt(n_embd)`,
//! RMSNorm on each query and key head, norms after the attention and FFN
//! sub-blocks as well as before, a GELU-gated FFN, and interleaved local
//! (sliding-window, RoPE base 10k) and global layers — every sixth layer is
//! global. Reference: Gemma Team, "Gemma 3 Technical Report" (2025);
//! llama.cpp's `gemma3` graph. GGUF norm weights already include Gemma's +1.

use crate::blocks;
use crate::debug::dump;
use crate::{Model, ModelConfig, Workspace};
use troupe_kernels::ops::{add_inplace, geglu_inplace, scale_inplace};
use troupe_nn::{
    AttentionParams, Batch, BatchError, Embedding, KvCache, Linear, LoadError, RmsNorm, ThreadPool,
    WeightSource,
};

/// One layer in `SWA_PATTERN` attends globally (the last of each group).
const SWA_PATTERN: usize = 6;

struct Layer {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    wo: Linear,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: RmsNorm,
    /// Sliding-window (local) layer.
    local: bool,
}

pub struct Gemma3 {
    cfg: ModelConfig,
    embd: Embedding,
    layers: Vec<Layer>,
    out_norm: RmsNorm,
    output: Linear,
}

impl Gemma3 {
    pub fn load(src: &WeightSource, cfg: ModelConfig) -> Result<Self, LoadError> {
        let (d, hd, ff, eps) = (cfg.n_embd, cfg.head_dim, cfg.n_ff, cfg.norm_eps);
        let embd = Embedding::load(src, "token_embd.weight", d, cfg.n_vocab)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}");
            layers.push(Layer {
                attn_norm: RmsNorm::load(src, &p("attn_norm"), d, eps)?,
                wq: Linear::load(src, &p("attn_q"), d, cfg.n_head * hd, false)?,
                wk: Linear::load(src, &p("attn_k"), d, cfg.n_head_kv * hd, false)?,
                wv: Linear::load(src, &p("attn_v"), d, cfg.n_head_kv * hd, false)?,
                q_norm: RmsNorm::load(src, &p("attn_q_norm"), hd, eps)?,
                k_norm: RmsNorm::load(src, &p("attn_k_norm"), hd, eps)?,
                wo: Linear::load(src, &p("attn_output"), cfg.n_head * hd, d, false)?,
                post_attn_norm: RmsNorm::load(src, &p("post_attention_norm"), d, eps)?,
                ffn_norm: RmsNorm::load(src, &p("ffn_norm"), d, eps)?,
                gate: Linear::load(src, &p("ffn_gate"), d, ff, false)?,
                up: Linear::load(src, &p("ffn_up"), d, ff, false)?,
                down: Linear::load(src, &p("ffn_down"), ff, d, false)?,
                post_ffn_norm: RmsNorm::load(src, &p("post_ffw_norm"), d, eps)?,
                local: cfg.sliding_window > 0 && i % SWA_PATTERN < SWA_PATTERN - 1,
            });
        }
        let out_norm = RmsNorm::load(src, "output_norm", d, eps)?;
        let output = if src.has("output.weight") {
            Linear::load(src, "output", d, cfg.n_vocab, false)?
        } else {
            Linear::from_tensor(embd.table.clone(), None)?
        };
        Ok(Gemma3 {
            cfg,
            embd,
            layers,
            out_norm,
            output,
        })
    }
}

impl Model for Gemma3 {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward(
        &self,
        batch: &Batch,
        kv: &mut KvCache,
        ws: &mut Workspace,
        pool: &ThreadPool,
    ) -> Result<(), BatchError> {
        let c = &self.cfg;
        blocks::check(batch, c, kv, ws)?;
        let n = batch.n_tokens();
        let (d, hd) = (c.n_embd, c.head_dim);
        let (qd, kvd, ff) = (c.n_head * hd, c.n_head_kv * hd, c.n_ff);
        let q_scale = 1.0 / (hd as f32).sqrt();
        self.embd.forward(&batch.tokens, &mut ws.x[..n * d]);
        scale_inplace(&mut ws.x[..n * d], (d as f32).sqrt());
        dump("inp_scaled", usize::MAX, &ws.x[..n * d]);
        blocks::rope_tables(batch, c.rope_dims, c.rope_base, &mut ws.rope);
        blocks::rope_tables(batch, c.rope_dims, c.rope_base_swa, &mut ws.rope_swa);
        for (il, l) in self.layers.iter().enumerate() {
            let attn = AttentionParams {
                n_head: c.n_head,
                n_kv_heads: c.n_head_kv,
                head_dim: hd,
                // Queries are pre-scaled below, as in the reference.
                scale: 1.0,
                window: if l.local { c.sliding_window } else { 0 },
            };
            let table = if l.local { &ws.rope_swa } else { &ws.rope };
            l.attn_norm.forward(&ws.x[..n * d], &mut ws.xn[..n * d]);
            dump("attn_norm", il, &ws.xn[..n * d]);
            ws.qin
                .prepare(&ws.xn[..n * d], n, d, &[&l.wq, &l.wk, &l.wv], pool);
            l.wq.forward(&ws.qin, &mut ws.q[..n * qd], pool);
            l.wk.forward(&ws.qin, &mut ws.k[..n * kvd], pool);
            l.wv.forward(&ws.qin, &mut ws.v[..n * kvd], pool);
            dump("Qcur", il, &ws.q[..n * qd]);
            dump("Kcur", il, &ws.k[..n * kvd]);
            dump("Vcur", il, &ws.v[..n * kvd]);
            l.q_norm.forward_inplace(&mut ws.q[..n * qd]);
            l.k_norm.forward_inplace(&mut ws.k[..n * kvd]);
            blocks::rope(&mut ws.q, n, c.n_head, hd, c.rope_dims, table, c.rope_style);
            blocks::rope(
                &mut ws.k,
                n,
                c.n_head_kv,
                hd,
                c.rope_dims,
                table,
                c.rope_style,
            );
            dump("Krope", il, &ws.k[..n * kvd]);
            scale_inplace(&mut ws.q[..n * qd], q_scale);
            dump("Qscaled", il, &ws.q[..n * qd]);
            blocks::attend_and_project(&attn, il, batch, kv, ws, &l.wo, (n, qd, kvd, d), pool);
            // The last layer goes on with the logits rows only (as llama.cpp).
            let n = if il + 1 == self.layers.len() {
                blocks::keep_logits_rows(batch, d, &mut ws.x[..n * d], &mut ws.tmp[..n * d])
            } else {
                n
            };
            l.post_attn_norm.forward_inplace(&mut ws.tmp[..n * d]);
            add_inplace(&mut ws.x[..n * d], &ws.tmp[..n * d]);
            dump("sa_out", il, &ws.x[..n * d]);

            l.ffn_norm.forward(&ws.x[..n * d], &mut ws.xn[..n * d]);
            ws.qin
                .prepare(&ws.xn[..n * d], n, d, &[&l.gate, &l.up], pool);
            l.gate.forward(&ws.qin, &mut ws.gate[..n * ff], pool);
            l.up.forward(&ws.qin, &mut ws.up[..n * ff], pool);
            dump("ffn_gate", il, &ws.gate[..n * ff]);
            dump("ffn_up", il, &ws.up[..n * ff]);
            geglu_inplace(&mut ws.gate[..n * ff], &ws.up[..n * ff]);
            dump("ffn_geglu", il, &ws.gate[..n * ff]);
            ws.qin.prepare(&ws.gate[..n * ff], n, ff, &[&l.down], pool);
            l.down.forward(&ws.qin, &mut ws.tmp[..n * d], pool);
            dump("ffn_out", il, &ws.tmp[..n * d]);
            l.post_ffn_norm.forward_inplace(&mut ws.tmp[..n * d]);
            add_inplace(&mut ws.x[..n * d], &ws.tmp[..n * d]);
            dump("l_out", il, &ws.x[..n * d]);
        }
        let n_out = batch.logits_rows.len();
        blocks::logits_compacted(n_out, c, &self.out_norm, &self.output, ws, pool);
        Ok(())
    }
}
