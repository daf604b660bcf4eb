//! The Llama architecture (SmolLM2 and friends): pre-norm blocks with
//! RMSNorm, grouped-query attention with RoPE, and a SwiGLU feed-forward.
//! Reference: Touvron et al., "LLaMA" (2023); llama.cpp's `llama` graph.
//! Qwen2 is this with biases on Q/K/V and NeoX RoPE (see `qwen2.rs`).

use crate::blocks;
use crate::debug::dump;
use crate::{Model, ModelConfig, Workspace};
use troupe_kernels::ops::{add_inplace, swiglu_inplace};
use troupe_nn::{
    AttentionParams, Batch, BatchError, Embedding, KvCache, Linear, LoadError, RmsNorm, ThreadPool,
    WeightSource,
};

/// What distinguishes members of the family.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Q, K and V projections carry biases (Qwen2).
    pub qkv_bias: bool,
}

impl Options {
    pub const LLAMA: Options = Options { qkv_bias: false };
}

struct Layer {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct Llama {
    cfg: ModelConfig,
    embd: Embedding,
    layers: Vec<Layer>,
    out_norm: RmsNorm,
    output: Linear,
}

impl Llama {
    pub fn load(src: &WeightSource, cfg: ModelConfig, opt: Options) -> Result<Self, LoadError> {
        let (d, hd, ff, eps) = (cfg.n_embd, cfg.head_dim, cfg.n_ff, cfg.norm_eps);
        let embd = Embedding::load(src, "token_embd.weight", d, cfg.n_vocab)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}");
            layers.push(Layer {
                attn_norm: RmsNorm::load(src, &p("attn_norm"), d, eps)?,
                wq: Linear::load(src, &p("attn_q"), d, cfg.n_head * hd, opt.qkv_bias)?,
                wk: Linear::load(src, &p("attn_k"), d, cfg.n_head_kv * hd, opt.qkv_bias)?,
                wv: Linear::load(src, &p("attn_v"), d, cfg.n_head_kv * hd, opt.qkv_bias)?,
                wo: Linear::load(src, &p("attn_output"), cfg.n_head * hd, d, false)?,
                ffn_norm: RmsNorm::load(src, &p("ffn_norm"), d, eps)?,
                gate: Linear::load(src, &p("ffn_gate"), d, ff, false)?,
                up: Linear::load(src, &p("ffn_up"), d, ff, false)?,
                down: Linear::load(src, &p("ffn_down"), ff, d, false)?,
            });
        }
        let out_norm = RmsNorm::load(src, "output_norm", d, eps)?;
        // Tied embeddings: without `output.weight` the embedding table is
        // also the output projection.
        let output = if src.has("output.weight") {
            Linear::load(src, "output", d, cfg.n_vocab, false)?
        } else {
            Linear::from_tensor(embd.table.clone(), None)?
        };
        Ok(Llama {
            cfg,
            embd,
            layers,
            out_norm,
            output,
        })
    }
}

impl Model for Llama {
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
        let attn = AttentionParams {
            n_head: c.n_head,
            n_kv_heads: c.n_head_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window: 0,
        };
        self.embd.forward(&batch.tokens, &mut ws.x[..n * d]);
        blocks::rope_tables(batch, c.rope_dims, c.rope_base, &mut ws.rope);
        dump("embd", usize::MAX, &ws.x[..n * d]);
        for (il, l) in self.layers.iter().enumerate() {
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
            blocks::rope(
                &mut ws.q,
                n,
                c.n_head,
                hd,
                c.rope_dims,
                &ws.rope,
                c.rope_style,
            );
            blocks::rope(
                &mut ws.k,
                n,
                c.n_head_kv,
                hd,
                c.rope_dims,
                &ws.rope,
                c.rope_style,
            );
            dump("Qrope", il, &ws.q[..n * qd]);
            dump("Krope", il, &ws.k[..n * kvd]);
            blocks::attend_and_project(&attn, il, batch, kv, ws, &l.wo, (n, qd, kvd, d), pool);
            let last = il + 1 == self.layers.len();
            let n = if last {
                blocks::keep_logits_rows(batch, d, &mut ws.x[..n * d], &mut ws.tmp[..n * d])
            } else {
                n
            };
            add_inplace(&mut ws.x[..n * d], &ws.tmp[..n * d]);
            dump("ffn_inp", il, &ws.x[..n * d]);

            l.ffn_norm.forward(&ws.x[..n * d], &mut ws.xn[..n * d]);
            dump("ffn_norm", il, &ws.xn[..n * d]);
            ws.qin
                .prepare(&ws.xn[..n * d], n, d, &[&l.gate, &l.up], pool);
            l.gate.forward(&ws.qin, &mut ws.gate[..n * ff], pool);
            l.up.forward(&ws.qin, &mut ws.up[..n * ff], pool);
            dump("ffn_gate", il, &ws.gate[..n * ff]);
            dump("ffn_up", il, &ws.up[..n * ff]);
            swiglu_inplace(&mut ws.gate[..n * ff], &ws.up[..n * ff]);
            dump("ffn_swiglu", il, &ws.gate[..n * ff]);
            ws.qin.prepare(&ws.gate[..n * ff], n, ff, &[&l.down], pool);
            l.down.forward(&ws.qin, &mut ws.tmp[..n * d], pool);
            dump("ffn_out", il, &ws.tmp[..n * d]);
            add_inplace(&mut ws.x[..n * d], &ws.tmp[..n * d]);
            dump("l_out", il, &ws.x[..n * d]);
        }
        let n_out = batch.logits_rows.len();
        blocks::logits_compacted(n_out, c, &self.out_norm, &self.output, ws, pool);
        Ok(())
    }
}
