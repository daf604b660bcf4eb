//! Causal (optionally sliding-window) multi-head attention with grouped
//! KV heads, over the paged cache, for a ragged batch.
//!
//! Each (token, head) pair is independent, so the pool splits those pairs;
//! a thread converts one cache block of keys or values to f32 at a time and
//! streams through it.

use crate::batch::Batch;
use crate::kv::KvCache;
use half::slice::HalfFloatSliceExt;
use half::f16;
use troupe_kernels::ops::{axpy, dot_f32, softmax_inplace};
use troupe_kernels::pool::{ThreadPool, UnsafeSlice};

/// Shape and masking of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionParams {
    pub n_head: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q·k` before the softmax.
    pub scale: f32,
    /// Sliding window in positions, counting the token itself; 0 means the
    /// whole causal prefix.
    pub window: usize,
}

/// Per-thread scratch the attention needs, in f32 elements.
pub fn attention_scratch_len(max_ctx: usize, head_dim: usize, block_size: usize) -> usize {
    max_ctx + 2 * head_dim + block_size * head_dim
}

/// Writes the new rows' K and V (`[n_tokens, n_kv_heads * head_dim]`) into
/// their sequences' cache slots.
pub fn store_kv(kv: &mut KvCache, layer: usize, batch: &Batch, k: &[f32], v: &[f32]) {
    let bs = kv.layout.block_size;
    let w = kv.layout.n_kv_heads * kv.layout.head_dim;
    for (row, &pos) in batch.positions.iter().enumerate() {
        let seq = batch.seq_of_row[row] as usize;
        let table = batch.blocks_of(seq);
        let pos = pos as usize;
        let block = table[pos / bs] as usize;
        kv.write(layer, block, pos % bs, &k[row * w..(row + 1) * w], &v[row * w..(row + 1) * w]);
    }
}

/// `out[t, h] = softmax(scale * q[t, h] · K[seq(t), ≤pos(t)]) · V` for every
/// row `t` of the batch and head `h`. The batch's own K/V must already be
/// stored. `scratch` holds `n_threads * attention_scratch_len(..)` floats.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    p: &AttentionParams,
    layer: usize,
    batch: &Batch,
    kv: &KvCache,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    max_ctx: usize,
    pool: &ThreadPool,
) {
    let hd = p.head_dim;
    let bs = kv.layout.block_size;
    let group = p.n_head / p.n_kv_heads;
    let n_rows = batch.n_tokens();
    let per_thread = attention_scratch_len(max_ctx, hd, bs);
    assert!(scratch.len() >= per_thread * pool.n_threads(), "attention scratch too small");
    let out = UnsafeSlice::new(&mut out[..n_rows * p.n_head * hd]);
    let scratch = UnsafeSlice::new(scratch);
    let n_items = n_rows * p.n_head;
    pool.run(|ti, nt| {
        // SAFETY: thread `ti` owns its scratch region.
        let s = unsafe { scratch.slice_mut(ti * per_thread..(ti + 1) * per_thread) };
        let (scores, rest) = s.split_at_mut(max_ctx);
        let (qh, rest) = rest.split_at_mut(hd);
        let (acc, blockf) = rest.split_at_mut(hd);
        for item in troupe_kernels::pool::split_range(n_items, 1, ti, nt) {
            let (row, h) = (item / p.n_head, item % p.n_head);
            let kvh = h / group;
            let pos = batch.positions[row] as usize;
            let table = batch.blocks_of(batch.seq_of_row[row] as usize);
            let lo = if p.window > 0 { (pos + 1).saturating_sub(p.window) } else { 0 };
            let n = pos + 1 - lo;
            // Q is rounded to f16 like the keys, as ggml's attention does.
            for (d, &x) in qh.iter_mut().zip(&q[(row * p.n_head + h) * hd..][..hd]) {
                *d = f16::from_f32(x).to_f32();
            }
            let mut j = lo;
            while j <= pos {
                let (blk, slot0) = (table[j / bs] as usize, j % bs);
                let take = (bs - slot0).min(pos + 1 - j);
                let kb = &kv.k_block(layer, blk, kvh)[slot0 * hd..(slot0 + take) * hd];
                kb.convert_to_f32_slice(&mut blockf[..take * hd]);
                for i in 0..take {
                    scores[j - lo + i] = dot_f32(qh, &blockf[i * hd..(i + 1) * hd]) * p.scale;
                }
                j += take;
            }
            softmax_inplace(&mut scores[..n]);
            acc.fill(0.0);
            let mut j = lo;
            while j <= pos {
                let (blk, slot0) = (table[j / bs] as usize, j % bs);
                let take = (bs - slot0).min(pos + 1 - j);
                let vb = &kv.v_block(layer, blk, kvh)[slot0 * hd..(slot0 + take) * hd];
                vb.convert_to_f32_slice(&mut blockf[..take * hd]);
                for i in 0..take {
                    axpy(acc, scores[j - lo + i], &blockf[i * hd..(i + 1) * hd]);
                }
                j += take;
            }
            // SAFETY: each (row, head) item is handled by exactly one thread.
            let o = unsafe { out.slice_mut((row * p.n_head + h) * hd..(row * p.n_head + h + 1) * hd) };
            o.copy_from_slice(acc);
        }
    });
}
