//! Multi-token matmul for Q4_K and Q6_K weights: many weight rows against
//! many tokens at once, in the float order llama.cpp uses for them
//! (`ggml_mm`: the repacked Q4_K gemm, the tiled Q6_K matmul).
//!
//! Layout: activations are packed 16 tokens to a vector (lane = token,
//! four consecutive quants each, biased to unsigned: `a + 128`), weights are
//! unpacked to one signed byte per quant, and each `vpdpbusd` takes four
//! quants of one weight row, broadcast, against four quants of 16 tokens.
//! Every lane then holds its token's exact integer sum of a sub-block, and
//! no horizontal sums are needed. The bias comes back out per weight row
//! and sub-block (`128 · Σ w`), the same for every token.
//!
//! Numerics: integer sums are exact whichever way they are formed. Q4_K's
//! pair sums `sc0·S0 + sc1·S1` (and the mins' `m0·B0 + m1·B1`) stay below
//! 2^24, so they are formed exactly in f32; Q6_K's super-block sums can
//! pass 2^24 and are formed in i32. The float steps that follow are the
//! scalar references' (`ggml_mm::q4_k_gemm_scalar`,
//! `ggml_mm::q6_k_tiled_scalar`), per token, so results are bit-identical
//! to them (parity tests), for every token and batch size.

use super::kquant_simd::{f16_at, f32_at, QK_K};
use super::{q4_k, q6_k, q8_k};
use crate::cpu::{best, Isa};
use troupe_gguf::GgmlType;

/// Tokens per packed vector.
pub const LANES: usize = 16;
/// Sub-blocks of 32 (Q4_K) per super-block.
const PAIRS: usize = 4;

/// One (token group, super-block) record of packed activations.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct KRec {
    /// Step `k`: quants `4k..4k + 4` of each of the 16 tokens, `+ 128`.
    qs: [[u8; 64]; QK_K / 4],
    /// Each token's `d`.
    d: [f32; LANES],
    /// Sub-block `s` of 32: each token's `Σ qs` (Q4_K's mins), as f32.
    b: [[f32; LANES]; 8],
}

const ZERO_REC: KRec = KRec {
    qs: [[0x80; 64]; QK_K / 4],
    d: [0.0; LANES],
    b: [[0.0; LANES]; 8],
};

/// Q8_K activation rows packed in groups of [`LANES`] tokens (the last
/// group padded with zero tokens). Kept between calls.
#[derive(Default)]
pub struct KPacked {
    recs: Vec<KRec>,
    nb: usize,
    n_tokens: usize,
}

impl KPacked {
    /// Sizes the buffer for `n_tokens` rows of `nb` super-blocks; returns
    /// the number of groups, to be filled by [`pack_group`].
    pub fn reset(&mut self, n_tokens: usize, nb: usize) -> usize {
        let groups = n_tokens.div_ceil(LANES);
        self.nb = nb;
        self.n_tokens = n_tokens;
        if self.recs.len() < groups * nb {
            self.recs.resize(groups * nb, ZERO_REC);
        }
        groups
    }

    /// Marks the contents stale.
    pub fn reset_stale(&mut self) {
        self.n_tokens = 0;
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    pub fn blocks(&self) -> usize {
        self.nb
    }

    /// The records of every group, for threads to fill disjoint groups.
    pub fn recs_mut(&mut self) -> &mut [KRec] {
        &mut self.recs[..self.n_tokens.div_ceil(LANES) * self.nb]
    }

    fn group(&self, g: usize) -> &[KRec] {
        &self.recs[g * self.nb..(g + 1) * self.nb]
    }
}

/// Packs at most [`LANES`] Q8_K rows of `nb` super-blocks into one group's
/// records `dst`.
pub fn pack_group(nb: usize, rows: &[u8], dst: &mut [KRec]) {
    let row = nb * q8_k::BLOCK_BYTES;
    let nt = rows.len() / row;
    assert!(nt <= LANES && rows.len() == nt * row && dst.len() == nb);
    for (b, rec) in dst.iter_mut().enumerate() {
        *rec = ZERO_REC;
        for t in 0..nt {
            let blk = &rows[t * row + b * q8_k::BLOCK_BYTES..][..q8_k::BLOCK_BYTES];
            let qs = &blk[q8_k::QS..q8_k::QS + QK_K];
            for (k, step) in rec.qs.iter_mut().enumerate() {
                for i in 0..4 {
                    step[4 * t + i] = qs[4 * k + i] ^ 0x80;
                }
            }
            rec.d[t] = f32_at(blk, q8_k::D);
            for s in 0..8 {
                let sum: i32 = qs[32 * s..32 * s + 32]
                    .iter()
                    .map(|&q| q as i8 as i32)
                    .sum();
                rec.b[s][t] = sum as f32;
            }
        }
    }
}

/// One weight super-block unpacked: a signed byte per quant and the
/// per-row constants of the kernels.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct KBlock {
    q: [i8; QK_K],
    /// Q4_K: `d`, `dmin`; Q6_K: `d`, unused.
    d: [f32; 2],
    /// Q4_K: the 8 scales then the 8 mins; Q6_K: the 16 scales.
    sc: [f32; 16],
    /// Q6_K: the scales as i32.
    sci: [i32; 16],
    /// `128 · Σ w` per sub-block of 32 (Q4_K, 8 of them) or of 16 (Q6_K).
    corr: [i32; 16],
    /// Q6_K: `Σ_s sc_s · corr_s`.
    corr_total: i32,
}

const ZERO_BLOCK: KBlock = KBlock {
    q: [0; QK_K],
    d: [0.0; 2],
    sc: [0.0; 16],
    sci: [0; 16],
    corr: [0; 16],
    corr_total: 0,
};

/// Scratch for unpacked weight rows, kept per thread.
#[derive(Default)]
pub struct KScratch {
    blocks: Vec<KBlock>,
}

/// Unpacks `rows` weight rows of `nb` super-blocks of `ty` into `s`.
fn unpack(ty: GgmlType, w: &[u8], rows: usize, nb: usize, s: &mut KScratch) {
    if s.blocks.len() < rows * nb {
        s.blocks.resize(rows * nb, ZERO_BLOCK);
    }
    let bytes = block_bytes(ty);
    for (wb, kb) in w[..rows * nb * bytes]
        .chunks_exact(bytes)
        .zip(s.blocks.iter_mut())
    {
        let mut q = [0u8; QK_K];
        match ty {
            GgmlType::Q4_K => {
                q4_k::decode(wb, &mut q);
                let sm = q4_k::scales_mins_bytes(&wb[q4_k::SCALES..q4_k::SCALES + 12]);
                kb.d = [f16_at(wb, q4_k::D), f16_at(wb, q4_k::DMIN)];
                for (d, &v) in kb.sc.iter_mut().zip(&sm) {
                    *d = v as f32;
                }
                for (e, &v) in q.iter().enumerate() {
                    kb.q[e] = v as i8;
                }
                for sb in 0..8 {
                    let sum: i32 = q[32 * sb..32 * sb + 32].iter().map(|&v| v as i32).sum();
                    kb.corr[sb] = 128 * sum;
                }
            }
            _ => {
                q6_k::decode(wb, &mut q);
                kb.d = [f16_at(wb, q6_k::D), 0.0];
                let mut total = 0i32;
                for sb in 0..16 {
                    let sc = wb[q6_k::SCALES + sb] as i8 as i32;
                    kb.sci[sb] = sc;
                    kb.sc[sb] = sc as f32;
                    let sum: i32 = q[16 * sb..16 * sb + 16]
                        .iter()
                        .map(|&v| v as i32 - 32)
                        .sum();
                    kb.corr[sb] = 128 * sum;
                    total += sc * 128 * sum;
                }
                kb.corr_total = total;
                for (e, &v) in q.iter().enumerate() {
                    kb.q[e] = (v as i32 - 32) as i8;
                }
            }
        }
    }
}

fn block_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_K => q4_k::BLOCK_BYTES,
        _ => q6_k::BLOCK_BYTES,
    }
}

/// Whether [`matmul`] runs `ty` on this CPU.
pub fn supports(ty: GgmlType) -> bool {
    cfg!(target_arch = "x86_64")
        && best() >= Isa::Avx512Vnni
        && matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K)
}

/// `out[(t, r)] = row r of w · token t` for rows `rows` of `w` (`nb`
/// super-blocks of `ty` each) and tokens `0..n_tokens` of `x` (at most
/// `x.n_tokens()`), written through `put(t, r, value)`.
pub fn matmul(
    ty: GgmlType,
    w: &[u8],
    rows: std::ops::Range<usize>,
    x: &KPacked,
    n_tokens: usize,
    s: &mut KScratch,
    put: &mut dyn FnMut(usize, usize, f32),
) {
    assert!(supports(ty) && n_tokens <= x.n_tokens);
    let nb = x.nb;
    let rb = nb * block_bytes(ty);
    let mut r = rows.start;
    while r < rows.end {
        let nr = (rows.end - r).min(4);
        unpack(ty, &w[r * rb..(r + nr) * rb], nr, nb, s);
        let mut g = 0;
        let groups = n_tokens.div_ceil(LANES);
        while g < groups {
            let ng = (groups - g).min(2);
            let mut acc = [[[0f32; LANES]; 2]; 4];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `supports` checked AVX-512 VNNI.
            unsafe {
                x86::tile(ty, &s.blocks[..nr * nb], nr, nb, x, g, ng, &mut acc)
            };
            for (i, row) in acc.iter().enumerate().take(nr) {
                for (j, v) in row.iter().enumerate().take(ng) {
                    for (l, &y) in v.iter().enumerate() {
                        let t = (g + j) * LANES + l;
                        if t < n_tokens {
                            put(t, r + i, y);
                        }
                    }
                }
            }
            g += ng;
        }
        r += nr;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// `acc[i][j]` = rows `0..nr` of `blocks` (`nb` each) against token
    /// groups `g..g + ng` of `x`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) fn tile(
        ty: GgmlType,
        blocks: &[KBlock],
        nr: usize,
        nb: usize,
        x: &KPacked,
        g: usize,
        ng: usize,
        acc: &mut [[[f32; LANES]; 2]; 4],
    ) {
        match (ty, nr, ng) {
            (GgmlType::Q4_K, 4, 2) => q4_k_t::<4, 2>(blocks, nb, x, g, acc),
            (GgmlType::Q4_K, 4, _) => q4_k_t::<4, 1>(blocks, nb, x, g, acc),
            (GgmlType::Q4_K, 3, 2) => q4_k_t::<3, 2>(blocks, nb, x, g, acc),
            (GgmlType::Q4_K, 3, _) => q4_k_t::<3, 1>(blocks, nb, x, g, acc),
            (GgmlType::Q4_K, 2, 2) => q4_k_t::<2, 2>(blocks, nb, x, g, acc),
            (GgmlType::Q4_K, 2, _) => q4_k_t::<2, 1>(blocks, nb, x, g, acc),
            (GgmlType::Q4_K, _, 2) => q4_k_t::<1, 2>(blocks, nb, x, g, acc),
            (GgmlType::Q4_K, _, _) => q4_k_t::<1, 1>(blocks, nb, x, g, acc),
            (_, 4, 2) => q6_k_t::<4, 2>(blocks, nb, x, g, acc),
            (_, 4, _) => q6_k_t::<4, 1>(blocks, nb, x, g, acc),
            (_, 3, 2) => q6_k_t::<3, 2>(blocks, nb, x, g, acc),
            (_, 3, _) => q6_k_t::<3, 1>(blocks, nb, x, g, acc),
            (_, 2, 2) => q6_k_t::<2, 2>(blocks, nb, x, g, acc),
            (_, 2, _) => q6_k_t::<2, 1>(blocks, nb, x, g, acc),
            (_, _, 2) => q6_k_t::<1, 2>(blocks, nb, x, g, acc),
            (_, _, _) => q6_k_t::<1, 1>(blocks, nb, x, g, acc),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn ld(a: &[u8; 64]) -> __m512i {
        // SAFETY: 64 readable bytes (the callers' target features hold).
        unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn ldf(a: &[f32; LANES]) -> __m512 {
        // SAFETY: 16 readable floats.
        unsafe { _mm512_loadu_ps(a.as_ptr()) }
    }

    /// Four weight quants `4k..4k + 4` of a block, as one i32 to broadcast.
    #[inline(always)]
    fn wq(b: &KBlock, k: usize) -> i32 {
        i32::from_le_bytes([
            b.q[4 * k] as u8,
            b.q[4 * k + 1] as u8,
            b.q[4 * k + 2] as u8,
            b.q[4 * k + 3] as u8,
        ])
    }

    /// Exact sums `Σ w·a` of sub-block quants `4·k0..4·(k0 + steps)` for
    /// each (row, token vector).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn sums<const R: usize, const T: usize>(
        w: [&KBlock; R],
        a: [&KRec; T],
        k0: usize,
        steps: usize,
        corr: [i32; R],
    ) -> [[__m512i; T]; R] {
        let mut s = [[_mm512_setzero_si512(); T]; R];
        for (i, row) in s.iter_mut().enumerate() {
            for v in row.iter_mut() {
                *v = _mm512_set1_epi32(-corr[i]);
            }
        }
        for k in k0..k0 + steps {
            let av: [__m512i; T] = std::array::from_fn(|j| ld(&a[j].qs[k]));
            for (i, row) in s.iter_mut().enumerate() {
                let wv = _mm512_set1_epi32(wq(w[i], k));
                for (j, v) in row.iter_mut().enumerate() {
                    *v = _mm512_dpbusd_epi32(*v, av[j], wv);
                }
            }
        }
        s
    }

    /// Repacked Q4_K gemm order: per sub-block pair,
    /// `acc = fma(f32(isum), d·da, acc)`, `accm = fma(f32(imin), dmin·da, accm)`;
    /// the result is `acc - accm`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn q4_k_t<const R: usize, const T: usize>(
        blocks: &[KBlock],
        nb: usize,
        x: &KPacked,
        g: usize,
        out: &mut [[[f32; LANES]; 2]; 4],
    ) {
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut accm = [[_mm512_setzero_ps(); T]; R];
        for b in 0..nb {
            let w: [&KBlock; R] = std::array::from_fn(|i| &blocks[i * nb + b]);
            let a: [&KRec; T] = std::array::from_fn(|j| &x.group(g + j)[b]);
            let da: [__m512; T] = std::array::from_fn(|j| ldf(&a[j].d));
            for c in 0..PAIRS {
                let s0 = sums::<R, T>(w, a, 16 * c, 8, std::array::from_fn(|i| w[i].corr[2 * c]));
                let s1 = sums::<R, T>(
                    w,
                    a,
                    16 * c + 8,
                    8,
                    std::array::from_fn(|i| w[i].corr[2 * c + 1]),
                );
                let b0: [__m512; T] = std::array::from_fn(|j| ldf(&a[j].b[2 * c]));
                let b1: [__m512; T] = std::array::from_fn(|j| ldf(&a[j].b[2 * c + 1]));
                for i in 0..R {
                    let (sc0, sc1) = (
                        _mm512_set1_ps(w[i].sc[2 * c]),
                        _mm512_set1_ps(w[i].sc[2 * c + 1]),
                    );
                    let (m0, m1) = (
                        _mm512_set1_ps(w[i].sc[8 + 2 * c]),
                        _mm512_set1_ps(w[i].sc[8 + 2 * c + 1]),
                    );
                    let (dw, dm) = (_mm512_set1_ps(w[i].d[0]), _mm512_set1_ps(w[i].d[1]));
                    for j in 0..T {
                        // Exact: every partial value is an integer below 2^24.
                        let isum = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(s0[i][j]),
                            sc0,
                            _mm512_mul_ps(_mm512_cvtepi32_ps(s1[i][j]), sc1),
                        );
                        let imin = _mm512_fmadd_ps(b0[j], m0, _mm512_mul_ps(b1[j], m1));
                        acc[i][j] = _mm512_fmadd_ps(isum, _mm512_mul_ps(dw, da[j]), acc[i][j]);
                        accm[i][j] = _mm512_fmadd_ps(imin, _mm512_mul_ps(dm, da[j]), accm[i][j]);
                    }
                }
            }
        }
        for i in 0..R {
            for j in 0..T {
                // SAFETY: 16 writable floats.
                unsafe {
                    _mm512_storeu_ps(out[i][j].as_mut_ptr(), _mm512_sub_ps(acc[i][j], accm[i][j]))
                };
            }
        }
    }

    /// Tiled Q6_K order: per super-block, `acc = fma(d · f32(isum), da, acc)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn q6_k_t<const R: usize, const T: usize>(
        blocks: &[KBlock],
        nb: usize,
        x: &KPacked,
        g: usize,
        out: &mut [[[f32; LANES]; 2]; 4],
    ) {
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        for b in 0..nb {
            let w: [&KBlock; R] = std::array::from_fn(|i| &blocks[i * nb + b]);
            let a: [&KRec; T] = std::array::from_fn(|j| &x.group(g + j)[b]);
            let mut isum = [[_mm512_setzero_si512(); T]; R];
            for s in 0..16 {
                // The bias is removed once per block below (`corr_total`).
                let d = sums::<R, T>(w, a, 4 * s, 4, [0; R]);
                for i in 0..R {
                    let sc = _mm512_set1_epi32(w[i].sci[s]);
                    for j in 0..T {
                        isum[i][j] = _mm512_add_epi32(isum[i][j], _mm512_mullo_epi32(d[i][j], sc));
                    }
                }
            }
            for i in 0..R {
                let corr = _mm512_set1_epi32(w[i].corr_total);
                let dw = _mm512_set1_ps(w[i].d[0]);
                for j in 0..T {
                    let res =
                        _mm512_mul_ps(dw, _mm512_cvtepi32_ps(_mm512_sub_epi32(isum[i][j], corr)));
                    acc[i][j] = _mm512_fmadd_ps(res, ldf(&a[j].d), acc[i][j]);
                }
            }
        }
        for i in 0..R {
            for j in 0..T {
                // SAFETY: 16 writable floats.
                unsafe { _mm512_storeu_ps(out[i][j].as_mut_ptr(), acc[i][j]) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{fast_ops, ggml_mm};

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Parity (tolerance: exact): every (row, token) equals the scalar
    /// reference of llama.cpp's order for the format, bit for bit, over
    /// partial row quads and token groups.
    #[test]
    fn kgemm_matches_the_reference_orders_bitwise() {
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
            if !supports(ty) {
                eprintln!("no AVX-512 VNNI; skipped");
                return;
            }
            let reference = match ty {
                GgmlType::Q4_K => ggml_mm::q4_k_gemm_scalar,
                _ => ggml_mm::q6_k_tiled_scalar,
            };
            for (nb, rows, nt) in [(1, 1, 1), (3, 7, 40), (2, 4, 16), (5, 9, 33)] {
                let n = nb * QK_K;
                let wf = data(n * rows, nb as u64 * 7 + rows as u64);
                let wrow = ty.row_bytes(n).expect("whole blocks");
                let mut w = vec![0u8; wrow * rows];
                for r in 0..rows {
                    (fast_ops(ty).from_f32)(
                        &wf[r * n..(r + 1) * n],
                        &mut w[r * wrow..(r + 1) * wrow],
                    );
                }
                // Some tokens with large values, so sums pass 2^24 in Q6_K.
                let mut af = data(n * nt, 99 + nt as u64);
                for v in af.iter_mut().step_by(3) {
                    *v *= 50.0;
                }
                let arow = GgmlType::Q8_K.row_bytes(n).expect("whole blocks");
                let mut a = vec![0u8; arow * nt];
                for t in 0..nt {
                    (fast_ops(GgmlType::Q8_K).from_f32)(
                        &af[t * n..(t + 1) * n],
                        &mut a[t * arow..(t + 1) * arow],
                    );
                }
                let mut x = KPacked::default();
                let groups = x.reset(nt, nb);
                for g in 0..groups {
                    let t1 = ((g + 1) * LANES).min(nt);
                    pack_group(
                        nb,
                        &a[g * LANES * arow..t1 * arow],
                        &mut x.recs_mut()[g * nb..(g + 1) * nb],
                    );
                }
                let mut got = vec![f32::NAN; rows * nt];
                let mut s = KScratch::default();
                matmul(ty, &w, 0..rows, &x, nt, &mut s, &mut |t, r, v| {
                    got[t * rows + r] = v
                });
                for r in 0..rows {
                    for t in 0..nt {
                        let want = reference(
                            n,
                            &w[r * wrow..(r + 1) * wrow],
                            &a[t * arow..(t + 1) * arow],
                        );
                        let g = got[t * rows + r];
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "{ty} nb={nb} row {r} token {t}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
