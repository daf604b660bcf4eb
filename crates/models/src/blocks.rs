//! Steps every architecture shares: batch checks, RoPE tables, the final
//! norm + output projection for the rows that want logits.

use crate::debug::dump;
use crate::{ModelConfig, Workspace};
use troupe_kernels::ops::{rope_apply, rope_cache};
use troupe_nn::{attention, store_kv, AttentionParams};
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

/// Before the last layer's feed-forward, llama.cpp keeps only the rows that
/// want logits (`inp_out_ids`), so that block's matmuls see that many rows
/// (which can change the kernel it picks). Moves those rows of `x` and of
/// `y` (`[rows, d]` each) to the front, in order, and returns their count;
/// the logits rows are then `0..count` (see [`logits_compacted`]).
pub fn keep_logits_rows(batch: &Batch, d: usize, x: &mut [f32], y: &mut [f32]) -> usize {
    for (i, &row) in batch.logits_rows.iter().enumerate() {
        // Rows are increasing, so `row >= i` and nothing unread is overwritten.
        if row != i {
            x.copy_within(row * d..(row + 1) * d, i * d);
            y.copy_within(row * d..(row + 1) * d, i * d);
        }
    }
    batch.logits_rows.len()
}

/// Final norm and output projection into `ws.logits` for the first `n` rows
/// of `ws.x` (the logits rows, moved there by [`keep_logits_rows`]).
pub fn logits_compacted(
    n: usize,
    cfg: &ModelConfig,
    norm: &RmsNorm,
    output: &Linear,
    ws: &mut Workspace,
    pool: &ThreadPool,
) {
    logits_of_rows(n, |i| i, cfg, norm, output, ws, pool);
}

fn logits_of_rows(
    n: usize,
    row_of: impl Fn(usize) -> usize,
    cfg: &ModelConfig,
    norm: &RmsNorm,
    output: &Linear,
    ws: &mut Workspace,
    pool: &ThreadPool,
) {
    let d = cfg.n_embd;
    ws.reserve_logits(n, d);
    if n == 0 {
        return;
    }
    for i in 0..n {
        let row = row_of(i);
        norm.forward(
            &ws.x[row * d..(row + 1) * d],
            &mut ws.last[i * d..(i + 1) * d],
        );
    }
    crate::debug::dump("result_norm", usize::MAX, &ws.last[..n * d]);
    ws.qin.prepare(&ws.last[..n * d], n, d, &[output], pool);
    output.forward(&ws.qin, &mut ws.logits[..n * cfg.n_vocab], pool);
    crate::debug::dump("result_output", usize::MAX, &ws.logits[..n * cfg.n_vocab]);
}

/// The attention sub-block every architecture shares: stores this step's K
/// and V, attends (`ws.q` → `ws.attn`) and applies the output projection
/// into `ws.tmp` (`[n, d]`). Q and K must already be roped/normed.
#[allow(clippy::too_many_arguments)]
pub fn attend_and_project(
    attn: &AttentionParams,
    il: usize,
    batch: &Batch,
    kv: &mut KvCache,
    ws: &mut Workspace,
    wo: &Linear,
    (n, qd, kvd, d): (usize, usize, usize, usize),
    pool: &ThreadPool,
) {
    store_kv(kv, il, batch, &ws.k[..n * kvd], &ws.v[..n * kvd]);
    attention(
        attn,
        il,
        batch,
        kv,
        &ws.q,
        &mut ws.attn,
        &mut ws.attn_scratch,
        ws.max_ctx,
        pool,
    );
    dump("kqv_out", il, &ws.attn[..n * qd]);
    ws.qin.prepare(&ws.attn[..n * qd], n, qd, &[wo], pool);
    wo.forward(&ws.qin, &mut ws.tmp[..n * d], pool);
    dump("attn_out", il, &ws.tmp[..n * d]);
}
