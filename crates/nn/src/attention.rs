//! Causal (optionally sliding-window) multi-head attention with grouped
//! KV heads, over the paged cache, for a ragged batch.
//!
//! Each (token, head) pair is independent, so the pool splits those pairs;
//! a thread converts one cache block of keys or values to f32 at a time and
//! streams through it.

use crate::batch::Batch;
use crate::kv::KvCache;
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use troupe_kernels::ops::{dot_f16_ggml, dot_fma_chain, ggml_soft_max_exp};
use troupe_kernels::pool::{ThreadPool, UnsafeSlice};

mod tiled;

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

/// Keys per tile of ggml's tiled flash-attention path (`GGML_FA_TILE_KV`).
const FA_TILE: usize = 64;

/// Batch size from which ggml takes the tiled path (`GGML_FA_TILE_Q`). Here
/// the choice is per sequence, by the length of the run its rows belong to
/// ([`crate::batch::SeqSlice::tiled`]), so a sequence gets the same numbers
/// alone, batched with others, or with a prompt split into chunks.
pub const TILED_MIN_ROWS: usize = 64;

/// Query rows of one sequence the tiled path takes per work item.
const ROWS_PER_ITEM: usize = 16;

/// Query heads of one KV group the tiled path takes per work item.
const HEADS_PER_ITEM: usize = 8;

/// Per-thread scratch the attention needs, in f32 elements, for `group`
/// query heads per KV head.
pub fn attention_scratch_len(
    max_ctx: usize,
    head_dim: usize,
    block_size: usize,
    group: usize,
) -> usize {
    let _ = (max_ctx, block_size);
    let heads = group.clamp(1, HEADS_PER_ITEM);
    (FA_TILE + 3 * head_dim).max(tiled::scratch_len(head_dim, heads))
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
        kv.write(
            layer,
            block,
            pos % bs,
            &k[row * w..(row + 1) * w],
            &v[row * w..(row + 1) * w],
        );
    }
}

/// `out[t, h] = softmax(scale * q[t, h] · K[seq(t), ≤pos(t)]) · V` for every
/// row `t` of the batch and head `h`. The batch's own K/V must already be
/// stored. `scratch` holds `n_threads * attention_scratch_len(..)` floats.
///
/// The arithmetic is that of ggml's CPU flash attention
/// (`ggml_compute_forward_flash_attn_ext_f16`, which llama.cpp's default
/// `-fa auto` selects): runs of fewer than 64 tokens take the one-key-at-a-
/// time path ([`attend_online_f16`]), longer ones the tiled path
/// ([`attend_tiled`]).
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
    let n_rows = batch.n_tokens();
    let group = (p.n_head / p.n_kv_heads.max(1)).max(1);
    let per_thread = attention_scratch_len(max_ctx, hd, bs, group);
    assert!(
        scratch.len() >= per_thread * pool.n_threads(),
        "attention scratch too small"
    );
    let out = UnsafeSlice::new(&mut out[..n_rows * p.n_head * hd]);
    let scratch = UnsafeSlice::new(scratch);
    let subsets = group.div_ceil(HEADS_PER_ITEM);
    let n_tiled = batch
        .seqs
        .iter()
        .filter(|s| s.tiled)
        .map(|s| s.rows.len().div_ceil(ROWS_PER_ITEM) * p.n_kv_heads * subsets)
        .sum();
    let work = Work {
        p,
        layer,
        batch,
        kv,
        q,
        out: &out,
        n_items: n_rows * p.n_head,
        next: AtomicUsize::new(0),
        n_tiled,
        next_tiled: AtomicUsize::new(0),
        group,
        subsets,
        f16c: has_avx2_f16c(),
    };
    pool.run(|ti, _| {
        // SAFETY: thread `ti` owns its scratch region.
        let s = unsafe { scratch.slice_mut(ti * per_thread..(ti + 1) * per_thread) };
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA.
            unsafe { work.run_fma(s) };
            return;
        }
        work.run(s);
    });
}

/// The attention of one layer, shared by the pool's threads, which take
/// (row, head) items from a counter: causal rows late in a prompt cost more
/// than early ones, so fixed shares would leave a thread idle.
struct Work<'a> {
    p: &'a AttentionParams,
    layer: usize,
    batch: &'a Batch,
    kv: &'a KvCache,
    q: &'a [f32],
    out: &'a UnsafeSlice<'a, f32>,
    n_items: usize,
    next: AtomicUsize,
    /// Items of the tiled path: (sequence, KV head, chunk of
    /// [`ROWS_PER_ITEM`] rows, subset of the group's query heads).
    n_tiled: usize,
    next_tiled: AtomicUsize,
    /// Query heads per KV head, and the subsets they are split into.
    group: usize,
    subsets: usize,
    /// AVX2 + FMA + F16C available (for the vectorised one-key path).
    f16c: bool,
}

impl Work<'_> {
    /// [`Work::run`] compiled with FMA, so `mul_add` is one instruction
    /// instead of a libm call (same results).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma")]
    unsafe fn run_fma(&self, s: &mut [f32]) {
        self.run(s)
    }

    #[inline(always)]
    fn run(&self, s: &mut [f32]) {
        self.run_tiled(s);
        let p = self.p;
        let hd = p.head_dim;
        let group = self.group;
        let batch = self.batch;
        loop {
            let item = self.next.fetch_add(1, Ordering::Relaxed);
            if item >= self.n_items {
                break;
            }
            let (row, h) = (item / p.n_head, item % p.n_head);
            let pos = batch.positions[row] as usize;
            let seq = batch.seq_of_row[row] as usize;
            let lo = if p.window > 0 {
                (pos + 1).saturating_sub(p.window)
            } else {
                0
            };
            let rows = KvRows {
                kv: self.kv,
                layer: self.layer,
                table: batch.blocks_of(seq),
                head: h / group,
                bs: self.kv.layout.block_size,
                hd,
            };
            let qh = &self.q[(row * p.n_head + h) * hd..][..hd];
            // SAFETY: each (row, head) item is taken by exactly one thread.
            let o = unsafe {
                self.out
                    .slice_mut((row * p.n_head + h) * hd..(row * p.n_head + h + 1) * hd)
            };
            if batch.seqs[seq].tiled {
                continue; // done by `run_tiled`
            } else {
                #[cfg(target_arch = "x86_64")]
                if self.f16c && hd.is_multiple_of(32) {
                    // SAFETY: the CPU has AVX2, FMA and F16C (checked once).
                    unsafe { attend_online_f16_avx2(&rows, qh, lo, pos, p.scale, o, s) };
                    continue;
                }
                attend_online_f16(&rows, qh, lo, pos, p.scale, o, s);
            }
        }
    }
}

impl Work<'_> {
    /// The tiled path's items: many rows and heads per call, so K and V are
    /// read once for all of them. Later chunks of a sequence see more keys,
    /// so they are handed out first.
    #[inline(always)]
    fn run_tiled(&self, s: &mut [f32]) {
        let p = self.p;
        let hd = p.head_dim;
        let batch = self.batch;
        let mut queries = [tiled::Query {
            at: 0,
            lo: 0,
            pos: 0,
        }; ROWS_PER_ITEM * HEADS_PER_ITEM];
        loop {
            let mut item = self.next_tiled.fetch_add(1, Ordering::Relaxed);
            if item >= self.n_tiled {
                return;
            }
            let per_chunk = p.n_kv_heads * self.subsets;
            let Some((seq, sl)) =
                batch
                    .seqs
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.tiled)
                    .find(|(_, s)| {
                        let n = s.rows.len().div_ceil(ROWS_PER_ITEM) * per_chunk;
                        if item < n {
                            return true;
                        }
                        item -= n;
                        false
                    })
            else {
                return;
            };
            let n_chunks = sl.rows.len().div_ceil(ROWS_PER_ITEM);
            let chunk = n_chunks - 1 - item / per_chunk;
            let kvh = item % per_chunk / self.subsets;
            let subset = item % self.subsets;
            let heads = kvh * self.group + subset * HEADS_PER_ITEM
                ..(kvh * self.group + ((subset + 1) * HEADS_PER_ITEM).min(self.group));
            let r0 = sl.rows.start + chunk * ROWS_PER_ITEM;
            let r1 = (r0 + ROWS_PER_ITEM).min(sl.rows.end);
            let mut n = 0;
            for row in r0..r1 {
                let pos = batch.positions[row] as usize;
                let lo = if p.window > 0 {
                    (pos + 1).saturating_sub(p.window)
                } else {
                    0
                };
                for h in heads.clone() {
                    queries[n] = tiled::Query {
                        at: (row * p.n_head + h) * hd,
                        lo,
                        pos,
                    };
                    n += 1;
                }
            }
            let rows = KvRows {
                kv: self.kv,
                layer: self.layer,
                table: batch.blocks_of(seq),
                head: kvh,
                bs: self.kv.layout.block_size,
                hd,
            };
            tiled::attend_many(&rows, &queries[..n], self.q, p.scale, self.out, s);
        }
    }
}

/// One sequence's cached rows of one KV head in one layer.
struct KvRows<'a> {
    kv: &'a KvCache,
    layer: usize,
    table: &'a [u32],
    head: usize,
    bs: usize,
    hd: usize,
}

fn has_avx2_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl KvRows<'_> {
    /// Key at `pos` as stored (f16).
    #[inline(always)]
    fn k_f16(&self, pos: usize) -> &[f16] {
        let blk = self.table[pos / self.bs] as usize;
        let slot = pos % self.bs;
        &self.kv.k_block(self.layer, blk, self.head)[slot * self.hd..(slot + 1) * self.hd]
    }

    /// Value at `pos` as stored (f16).
    #[inline(always)]
    fn v_f16(&self, pos: usize) -> &[f16] {
        let blk = self.table[pos / self.bs] as usize;
        let slot = pos % self.bs;
        &self.kv.v_block(self.layer, blk, self.head)[slot * self.hd..(slot + 1) * self.hd]
    }

    #[inline(always)]
    fn k(&self, pos: usize, out: &mut [f32]) {
        let blk = self.table[pos / self.bs] as usize;
        let slot = pos % self.bs;
        self.kv.k_block(self.layer, blk, self.head)[slot * self.hd..(slot + 1) * self.hd]
            .convert_to_f32_slice(out);
    }

    #[inline(always)]
    fn v(&self, pos: usize, out: &mut [f32]) {
        let blk = self.table[pos / self.bs] as usize;
        let slot = pos % self.bs;
        self.kv.v_block(self.layer, blk, self.head)[slot * self.hd..(slot + 1) * self.hd]
            .convert_to_f32_slice(out);
    }
}

#[inline]
fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// ggml's `ggml_compute_forward_flash_attn_ext_f16_one_chunk` with an f16
/// cache: Q rounded to f16, `q·k` by [`dot_f16_ggml`], an online softmax
/// with libm `expf`, and the V accumulator kept in f16 (every update
/// rounded, as `ggml_vec_mad_f16` / `ggml_vec_scale_f16` do).
#[inline(always)]
fn attend_online_f16(
    rows: &KvRows,
    q: &[f32],
    lo: usize,
    pos: usize,
    scale: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let hd = rows.hd;
    let (qh, rest) = scratch.split_at_mut(hd); // [head_dim]
    let (acc, rest) = rest.split_at_mut(hd); // [head_dim], f16 values
    let row = &mut rest[..hd]; // [head_dim]
    for (d, &x) in qh.iter_mut().zip(q) {
        *d = round_f16(x);
    }
    acc.fill(0.0);
    let (mut sum, mut max) = (0f32, f32::NEG_INFINITY);
    for j in lo..=pos {
        rows.k(j, row);
        let s = dot_f16_ggml(row, qh) * scale;
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > max {
            ms = (max - s).exp();
            max = s;
            for a in acc.iter_mut() {
                *a = round_f16(*a * ms);
            }
        } else {
            vs = (s - max).exp();
        }
        rows.v(j, row);
        for (a, &v) in acc.iter_mut().zip(row.iter()) {
            *a = round_f16(v.mul_add(vs, *a));
        }
        // GCC contracts `S*ms + vs` into an FMA.
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, &a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

/// [`attend_online_f16`] vectorised the way ggml's AVX2 build does it (F16C
/// conversions, 8-lane FMAs in the same order), with the same results bit
/// for bit; `head_dim` must be a multiple of 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_online_f16_avx2(
    rows: &KvRows,
    q: &[f32],
    lo: usize,
    pos: usize,
    scale: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    use std::arch::x86_64::*;
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;
    let hd = rows.hd;
    debug_assert!(hd.is_multiple_of(32) && q.len() >= hd && out.len() >= hd);
    let (qh, rest) = scratch.split_at_mut(hd);
    let acc = &mut rest[..hd];
    // SAFETY (all loads/stores below): every index is < hd, and each of
    // q, qh, acc, out and the K/V rows holds at least hd elements.
    unsafe {
        for i in (0..hd).step_by(8) {
            let x = _mm256_loadu_ps(q.as_ptr().add(i));
            let r = _mm256_cvtph_ps(_mm256_cvtps_ph::<NEAREST>(x));
            _mm256_storeu_ps(qh.as_mut_ptr().add(i), r);
            _mm256_storeu_ps(acc.as_mut_ptr().add(i), _mm256_setzero_ps());
        }
        let (mut sum, mut max) = (0f32, f32::NEG_INFINITY);
        for j in lo..=pos {
            let k = rows.k_f16(j).as_ptr() as *const __m128i;
            let mut a = [_mm256_setzero_ps(); 4];
            for c in (0..hd).step_by(32) {
                for (jj, aj) in a.iter_mut().enumerate() {
                    let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.add((c + jj * 8) / 8)));
                    let qv = _mm256_loadu_ps(qh.as_ptr().add(c + jj * 8));
                    *aj = _mm256_fmadd_ps(kv, qv, *aj);
                }
            }
            let s8 = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
            let t4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
            let mut t = [0f32; 4];
            _mm_storeu_ps(t.as_mut_ptr(), t4);
            let dot = (((t[0] + t[1]) + (t[2] + t[3])) as f64) as f32;
            let s = dot * scale;
            let (mut ms, mut vs) = (1f32, 1f32);
            if s > max {
                ms = (max - s).exp();
                max = s;
                let m = _mm256_set1_ps(ms);
                for i in (0..hd).step_by(8) {
                    let p = acc.as_mut_ptr().add(i);
                    let r = _mm256_mul_ps(_mm256_loadu_ps(p), m);
                    _mm256_storeu_ps(p, _mm256_cvtph_ps(_mm256_cvtps_ph::<NEAREST>(r)));
                }
            } else {
                vs = (s - max).exp();
            }
            let v = rows.v_f16(j).as_ptr() as *const __m128i;
            let w = _mm256_set1_ps(vs);
            for i in (0..hd).step_by(8) {
                let p = acc.as_mut_ptr().add(i);
                let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.add(i / 8)));
                let r = _mm256_fmadd_ps(vv, w, _mm256_loadu_ps(p));
                _mm256_storeu_ps(p, _mm256_cvtph_ps(_mm256_cvtps_ph::<NEAREST>(r)));
            }
            sum = sum.mul_add(ms, vs);
        }
        let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
        for (o, &a) in out.iter_mut().zip(acc.iter()) {
            *o = a * inv;
        }
    }
}

/// ggml's `ggml_compute_forward_flash_attn_ext_tiled` for one query row:
/// keys in tiles of 64 cache cells, `q·k` as an FMA chain with Q in f32,
/// per-tile max and `exp` by [`ggml_soft_max_exp`], and `P·V` accumulated in
/// f32 by FMA chains along the tile.
#[inline(always)]
fn attend_tiled(
    rows: &KvRows,
    q: &[f32],
    lo: usize,
    pos: usize,
    scale: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let hd = rows.hd;
    let (kq, rest) = scratch.split_at_mut(FA_TILE); // [FA_TILE]
    let (acc, rest) = rest.split_at_mut(hd); // [head_dim]
    let row = &mut rest[..hd]; // [head_dim]
    acc.fill(0.0);
    let (mut sum, mut max) = (0f32, f32::NEG_INFINITY);
    let mut t0 = lo / FA_TILE * FA_TILE;
    while t0 <= pos {
        let (a, b) = (lo.max(t0), pos.min(t0 + FA_TILE - 1));
        kq.fill(f32::NEG_INFINITY);
        for j in a..=b {
            rows.k(j, row);
            kq[j - t0] = dot_fma_chain(q, row) * scale;
        }
        let tile_max = kq.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let new_max = max.max(tile_max);
        if new_max > max {
            let ms = (max - new_max).exp();
            for x in acc.iter_mut() {
                *x *= ms;
            }
            sum *= ms;
        }
        max = new_max;
        sum = (sum as f64 + ggml_soft_max_exp(kq, max)) as f32;
        for j in a..=b {
            rows.v(j, row);
            let pj = kq[j - t0];
            for (x, &v) in acc.iter_mut().zip(row.iter()) {
                *x = v.mul_add(pj, *x);
            }
        }
        t0 += FA_TILE;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, &x) in out.iter_mut().zip(acc.iter()) {
        *o = x * inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvLayout;

    #[test]
    fn online_avx2_matches_scalar_reference() {
        if !has_avx2_f16c() {
            eprintln!("skipped: no AVX2/FMA/F16C");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        for &hd in &[64usize, 256] {
            let layout = KvLayout {
                n_layers: 1,
                n_kv_heads: 1,
                head_dim: hd,
                block_size: 16,
                n_blocks: 8,
            };
            let mut kv = KvCache::new(layout);
            let mut x = 0x1234_5678u32;
            let mut rnd = move || {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 - 0.5) * 6.0
            };
            let table: Vec<u32> = (0..8).rev().collect();
            for pos in 0..128 {
                let k: Vec<f32> = (0..hd).map(|_| rnd()).collect();
                let v: Vec<f32> = (0..hd).map(|_| rnd()).collect();
                kv.write(0, table[pos / 16] as usize, pos % 16, &k, &v);
            }
            let rows = KvRows {
                kv: &kv,
                layer: 0,
                table: &table,
                head: 0,
                bs: 16,
                hd,
            };
            for (lo, pos) in [(0usize, 0usize), (0, 127), (5, 90), (100, 127)] {
                let q: Vec<f32> = (0..hd).map(|_| rnd()).collect();
                let mut s1 = vec![0f32; 4 * hd];
                let mut s2 = vec![0f32; 4 * hd];
                let (mut o1, mut o2) = (vec![0f32; hd], vec![0f32; hd]);
                attend_online_f16(&rows, &q, lo, pos, 0.125, &mut o1, &mut s1);
                // SAFETY: the features were checked above.
                unsafe { attend_online_f16_avx2(&rows, &q, lo, pos, 0.125, &mut o2, &mut s2) };
                // Tolerance: none; the vectorised path is bit-identical.
                for (a, b) in o1.iter().zip(&o2) {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "hd {hd} ({lo}..={pos}): {a} vs {b}"
                    );
                }
            }
        }
    }
}
