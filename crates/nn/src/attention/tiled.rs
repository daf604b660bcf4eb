//! ggml's tiled flash attention ([`super::attend_tiled`]) for many query
//! rows at once: the rows of one sequence chunk and every query head that
//! shares one KV head.
//!
//! Per query the arithmetic is the reference's, step for step; only the
//! loop order changes, so results are bit-identical (parity test below):
//! - a key tile's K and V rows are converted to f32 once for all queries;
//! - `q·k` runs 16 queries to a vector (lane = query): each lane is the
//!   reference's sequential FMA chain along the head dimension, fed by a
//!   broadcast key element, and 8 keys run side by side;
//! - the softmax steps run per query (its own mask, max and sum), with the
//!   exponentials 16 at a time;
//! - `P·V` runs along the head dimension (lane = dimension), each lane the
//!   reference's FMA chain over the tile's keys.

use super::{attend_tiled, KvRows, FA_TILE};
use troupe_kernels::pool::UnsafeSlice;

/// Query lanes per vector.
const LANES: usize = 16;
/// Keys whose `q·k` chains run together.
const KEYS: usize = 8;

/// One query row of one head.
#[derive(Clone, Copy)]
pub(super) struct Query {
    /// Offset of the query (and of its output) in the `[rows, heads, hd]`
    /// arrays.
    pub at: usize,
    /// First and last key position it attends to.
    pub lo: usize,
    pub pos: usize,
}

/// Most queries one call takes (rows × heads of a KV group).
pub(super) fn max_queries(group: usize) -> usize {
    super::ROWS_PER_ITEM * group
}

/// f32 scratch one call needs.
pub(super) fn scratch_len(hd: usize, group: usize) -> usize {
    let nq = max_queries(group).next_multiple_of(LANES);
    2 * FA_TILE * hd + nq * hd + nq * hd + FA_TILE * LANES + FA_TILE + 2 * nq
}

/// Whether this CPU runs the vectorised path.
pub(super) fn available(hd: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        hd.is_multiple_of(LANES)
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = hd;
        false
    }
}

/// The tiled attention of `queries` (all on the KV head of `rows`): `q`
/// and `out` are indexed by each query's `at`. Falls back to the per-query
/// reference where the vectorised path is not available.
pub(super) fn attend_many(
    rows: &KvRows,
    queries: &[Query],
    q: &[f32],
    scale: f32,
    out: &UnsafeSlice<f32>,
    scratch: &mut [f32],
) {
    let hd = rows.hd;
    #[cfg(target_arch = "x86_64")]
    if available(hd) {
        // SAFETY: `available` checked the CPU features.
        unsafe { x86::attend_many(rows, queries, q, scale, out, scratch) };
        return;
    }
    for query in queries {
        // SAFETY: each query's output belongs to the caller's item alone.
        let o = unsafe { out.slice_mut(query.at..query.at + hd) };
        attend_tiled(
            rows,
            &q[query.at..query.at + hd],
            query.lo,
            query.pos,
            scale,
            o,
            scratch,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;
    use troupe_kernels::ops::ggml_soft_max_exp;

    #[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
    pub(super) fn attend_many(
        rows: &KvRows,
        queries: &[Query],
        q: &[f32],
        scale: f32,
        out: &UnsafeSlice<f32>,
        scratch: &mut [f32],
    ) {
        let hd = rows.hd;
        let nq = queries.len();
        let chunks = nq.div_ceil(LANES);
        let (kt, rest) = scratch.split_at_mut(FA_TILE * hd);
        let (vt, rest) = rest.split_at_mut(FA_TILE * hd);
        let (qt, rest) = rest.split_at_mut(chunks * LANES * hd);
        let (acc, rest) = rest.split_at_mut(nq * hd);
        let (st, rest) = rest.split_at_mut(FA_TILE * LANES);
        let (kq, rest) = rest.split_at_mut(FA_TILE);
        let (maxs, rest) = rest.split_at_mut(nq);
        let sums = &mut rest[..nq];
        // Queries transposed: chunk c, dimension d, lane l.
        qt.fill(0.0);
        for (i, query) in queries.iter().enumerate() {
            let (c, l) = (i / LANES, i % LANES);
            for (d, &x) in q[query.at..query.at + hd].iter().enumerate() {
                qt[(c * hd + d) * LANES + l] = x;
            }
        }
        acc.fill(0.0);
        maxs.fill(f32::NEG_INFINITY);
        sums.fill(0.0);
        let lo_min = queries.iter().map(|x| x.lo).min().unwrap_or(0);
        let pos_max = queries.iter().map(|x| x.pos).max().unwrap_or(0);
        let mut t0 = lo_min / FA_TILE * FA_TILE;
        while t0 <= pos_max {
            let (ka, kb) = (lo_min.max(t0), pos_max.min(t0 + FA_TILE - 1));
            for j in ka..=kb {
                let r = (j - t0) * hd;
                convert(rows.k_f16(j), &mut kt[r..r + hd]);
                convert(rows.v_f16(j), &mut vt[r..r + hd]);
            }
            for c in 0..chunks {
                let lanes = &queries[c * LANES..((c + 1) * LANES).min(nq)];
                let hit = |x: &Query| x.lo < t0 + FA_TILE && x.pos >= t0;
                if !lanes.iter().any(hit) {
                    continue;
                }
                // Only keys some lane of this chunk can see.
                let ca = lanes.iter().map(|x| x.lo).min().unwrap_or(0).max(ka);
                let cb = lanes.iter().map(|x| x.pos).max().unwrap_or(0).min(kb);
                scores(
                    &qt[c * hd * LANES..(c + 1) * hd * LANES],
                    kt,
                    hd,
                    t0,
                    ca,
                    cb,
                    scale,
                    st,
                );
                for (l, query) in lanes.iter().enumerate() {
                    if !hit(query) {
                        continue;
                    }
                    let i = c * LANES + l;
                    let (a, b) = (query.lo.max(t0), query.pos.min(t0 + FA_TILE - 1));
                    kq.fill(f32::NEG_INFINITY);
                    for j in a..=b {
                        kq[j - t0] = st[(j - t0) * LANES + l];
                    }
                    let acc = &mut acc[i * hd..(i + 1) * hd];
                    let tile_max = kq.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let new_max = maxs[i].max(tile_max);
                    if new_max > maxs[i] {
                        let ms = (maxs[i] - new_max).exp();
                        scale_acc(acc, ms);
                        sums[i] *= ms;
                    }
                    maxs[i] = new_max;
                    sums[i] = (sums[i] as f64 + ggml_soft_max_exp(kq, new_max)) as f32;
                    pv(acc, vt, hd, t0, a, b, kq);
                }
            }
            t0 += FA_TILE;
        }
        for (i, query) in queries.iter().enumerate() {
            let inv = if sums[i] == 0.0 { 0.0 } else { 1.0 / sums[i] };
            // SAFETY: each query's output belongs to the caller's item alone.
            let o = unsafe { out.slice_mut(query.at..query.at + hd) };
            for (o, &x) in o.iter_mut().zip(&acc[i * hd..(i + 1) * hd]) {
                *o = x * inv;
            }
        }
    }

    /// f16 → f32, 16 at a time (exact).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
    fn convert(src: &[half::f16], dst: &mut [f32]) {
        assert!(src.len() == dst.len() && dst.len().is_multiple_of(LANES));
        for (s, d) in src.chunks_exact(LANES).zip(dst.chunks_exact_mut(LANES)) {
            // SAFETY: 16 readable f16 and 16 writable f32.
            unsafe {
                let h = _mm256_loadu_si256(s.as_ptr().cast());
                _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(h));
            }
        }
    }

    /// `st[j - t0][lane] = (q_lane · k_j) * scale` for keys `a..=b`, each
    /// dot the reference's FMA chain from zero along the head dimension.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
    fn scores(
        qt: &[f32],
        kt: &[f32],
        hd: usize,
        t0: usize,
        a: usize,
        b: usize,
        scale: f32,
        st: &mut [f32],
    ) {
        assert!(qt.len() >= hd * LANES && st.len() >= FA_TILE * LANES);
        assert!(b < t0 + FA_TILE && kt.len() >= FA_TILE * hd);
        let sc = _mm512_set1_ps(scale);
        let mut j = a;
        while j <= b {
            let n = (b + 1 - j).min(KEYS);
            let mut acc = [_mm512_setzero_ps(); KEYS];
            let base = (j - t0) * hd;
            for d in 0..hd {
                // SAFETY: `d < hd` and `qt` holds `hd * LANES` floats.
                let qv = unsafe { _mm512_loadu_ps(qt.as_ptr().add(d * LANES)) };
                for (u, a) in acc.iter_mut().enumerate().take(n) {
                    let k = _mm512_set1_ps(kt[base + u * hd + d]);
                    *a = _mm512_fmadd_ps(qv, k, *a);
                }
            }
            for (u, a) in acc.iter().enumerate().take(n) {
                let o = (j - t0 + u) * LANES;
                // SAFETY: `j - t0 + u < FA_TILE`, checked above.
                unsafe { _mm512_storeu_ps(st.as_mut_ptr().add(o), _mm512_mul_ps(*a, sc)) };
            }
            j += n;
        }
    }

    /// `acc *= ms`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
    fn scale_acc(acc: &mut [f32], ms: f32) {
        let m = _mm512_set1_ps(ms);
        for c in acc.chunks_exact_mut(LANES) {
            // SAFETY: 16 readable/writable floats.
            unsafe {
                _mm512_storeu_ps(
                    c.as_mut_ptr(),
                    _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), m),
                )
            };
        }
    }

    /// `acc[d] = fma(v_j[d], p_j, acc[d])` for keys `a..=b` in order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
    fn pv(acc: &mut [f32], vt: &[f32], hd: usize, t0: usize, a: usize, b: usize, p: &[f32]) {
        assert!(acc.len() == hd && vt.len() >= (b + 1 - t0) * hd && p.len() > b - t0);
        for c in (0..hd).step_by(LANES) {
            // SAFETY: `c + 16 <= hd`; every `vt` row read is inside the checked length.
            unsafe {
                let mut x = _mm512_loadu_ps(acc.as_ptr().add(c));
                for j in a..=b {
                    let v = _mm512_loadu_ps(vt.as_ptr().add((j - t0) * hd + c));
                    x = _mm512_fmadd_ps(v, _mm512_set1_ps(p[j - t0]), x);
                }
                _mm512_storeu_ps(acc.as_mut_ptr().add(c), x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvCache, KvLayout};

    /// Parity (tolerance: exact): the many-query path gives every query
    /// the bits of the per-query reference, across tile edges, sliding
    /// windows, partial lane chunks and both head sizes in use.
    #[test]
    fn many_queries_match_the_reference_bitwise() {
        if !available(64) {
            eprintln!("skipped: no AVX-512");
            return;
        }
        for &hd in &[64usize, 256] {
            let layout = KvLayout {
                n_layers: 1,
                n_kv_heads: 1,
                head_dim: hd,
                block_size: 16,
                n_blocks: 20,
            };
            let mut kv = KvCache::new(layout);
            let mut x = 0x9e37_79b9u32;
            let mut rnd = move || {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 - 0.5) * 6.0
            };
            let table: Vec<u32> = (0..20).rev().collect();
            for pos in 0..320 {
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
            // Causal rows from 100 (one head each), then windowed rows of
            // three heads, then a few spread-out rows.
            let mut cases: Vec<Vec<(usize, usize)>> = Vec::new();
            cases.push((100..140).map(|p| (0, p)).collect());
            cases.push(
                (250usize..266)
                    .flat_map(|p| std::iter::repeat_n(((p + 1).saturating_sub(100), p), 3))
                    .collect(),
            );
            cases.push(vec![(0, 0), (0, 63), (0, 64), (10, 300), (200, 319)]);
            for case in cases {
                let n = case.len();
                let q: Vec<f32> = (0..n * hd).map(|_| rnd()).collect();
                let queries: Vec<Query> = case
                    .iter()
                    .enumerate()
                    .map(|(i, &(lo, pos))| Query {
                        at: i * hd,
                        lo,
                        pos,
                    })
                    .collect();
                let mut got = vec![0f32; n * hd];
                let mut s = vec![0f32; scratch_len(hd, 8).max(n * hd * 3 + 4096)];
                attend_many(
                    &rows,
                    &queries,
                    &q,
                    0.125,
                    &UnsafeSlice::new(&mut got),
                    &mut s,
                );
                for (i, &(lo, pos)) in case.iter().enumerate() {
                    let mut want = vec![0f32; hd];
                    let mut s2 = vec![0f32; FA_TILE + 3 * hd];
                    attend_tiled(
                        &rows,
                        &q[i * hd..(i + 1) * hd],
                        lo,
                        pos,
                        0.125,
                        &mut want,
                        &mut s2,
                    );
                    for (d, (a, b)) in got[i * hd..(i + 1) * hd].iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "hd {hd} query {i} ({lo}..={pos}) dim {d}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
