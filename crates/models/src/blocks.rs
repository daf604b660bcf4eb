//! Steps every architecture shares: batch checks, RoPE tables, the final
//! norm + output projection for the rows that want logits.

use crate::{ModelConfig, Workspace};
use troupe_kernels::ops::{rope_apply, rope_cache};
use troupe_nn::{Batch, BatchError, KvCache, Linear, RmsNorm, RopeStyle, ThreadPool};

/// Checks the batch against the model, cache and workspace limits.
pub fn check(
    batch: &Batch,
    cfg: &ModelConfig,
    kv: &KvCache,
    ws: &Workspace,
) -> Result<(), BatchError> {
    batch.validate(
        cfg.n_vocab,
        kv.layout.block_size,
        kv.layout.n_blocks,
        ws.max_tokens,
    )?;
    if let Some(s) = batch
        .seqs
        .iter()
        .find(|s| s.pos + s.rows.len() > ws.max_ctx)
    {
        return Err(BatchError::NotEnoughBlocks {
            seq: 0,
            len: s.pos + s.rows.len(),
            need: ws.max_ctx,
            have: ws.max_ctx,
        });
    }
    Ok(())
}

/// Fills `table` (`[rows, dims]`) with each row's RoPE cos/sin pairs.
pub fn rope_tables(batch: &Batch, dims: usize, base: f32, table: &mut [f32]) {
    for (row, &pos) in batch.positions.iter().enumerate() {
        rope_cache(
            pos as f32,
            dims,
            base,
            &mut table[row * dims..(row + 1) * dims],
        );
    }
}

/// Rotates every head of every row of `x` (`[rows, n_heads * head_dim]`).
pub fn rope(
    x: &mut [f32],
    n_rows: usize,
    n_heads: usize,
    head_dim: usize,
    dims: usize,
    table: &[f32],
    style: RopeStyle,
) {
    for row in 0..n_rows {
        let t = &table[row * dims..(row + 1) * dims];
        for h in 0..n_heads {
            let o = (row * n_heads + h) * head_dim;
            rope_apply(&mut x[o..o + head_dim], dims, t, style);
        }
    }
}

/// Final norm and output projection for `batch.logits_rows`, into `ws.logits`.
pub fn logits(
    batch: &Batch,
    cfg: &ModelConfig,
    norm: &RmsNorm,
    output: &Linear,
    ws: &mut Workspace,
    pool: &ThreadPool,
) {
    let n = batch.logits_rows.len();
    let d = cfg.n_embd;
    ws.reserve_logits(n, d);
    if n == 0 {
        return;
    }
    for (i, &row) in batch.logits_rows.iter().enumerate() {
        norm.forward(
            &ws.x[row * d..(row + 1) * d],
            &mut ws.last[i * d..(i + 1) * d],
        );
    }
    ws.qin.prepare(&ws.last[..n * d], n, d, &[output], pool);
    output.forward(&ws.qin, &mut ws.logits[..n * cfg.n_vocab], pool);
}
