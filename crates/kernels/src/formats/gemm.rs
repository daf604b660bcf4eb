//! Multi-token matmul: one weight row against a group of 8 tokens at once
//! (Q4_1, Q5_0 and Q8_0 weights).
//!
//! `vec_dot` unpacks a weight block and converts its scales once per token;
//! with 8 tokens that work is 8× the arithmetic that matters. Here the
//! activations of a token group are first packed ([`PackedInput`]) so that
//! every 64-byte load feeds one `vpdpbusd` with the same weight block for two
//! tokens (tokens `2p` and `2p + 1` in the low and high halves of a 512-bit
//! register), with their scales already widened to f32 and broadcast.
//!
//! Numerics: each token keeps its own 8-lane accumulator (one half of a
//! register) updated block by block with `acc += (d_w * d_a) * f32(sumi)`,
//! the lanes partition a block's elements as in `vec_dot` (lane `k` sums
//! elements `4k..4k+4`), `m * s` terms go into a per-token scalar sum in
//! block order, and the end is the same horizontal sum. Integer sums are
//! exact whichever way they are formed, so results are bit-identical to the
//! AVX2 / VNNI `vec_dot` of the format, for every token and batch size (the
//! parity tests check this), and batching does not change a sequence's
//! numbers.

use super::simd::{f16_to_f32, u16_at};
use crate::cpu::{best, Isa};
use troupe_gguf::GgmlType;

/// Tokens per packed group.
pub const GROUP: usize = 8;
/// Token pairs per group.
const PAIRS: usize = GROUP / 2;
/// Values per block of every format handled here.
const QK: usize = 32;

/// One (token group, block) record of packed activations.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Rec {
    /// Pair `p`: the 32 quants of token `2p`, then those of token `2p + 1`.
    qs: [[u8; 64]; PAIRS],
    /// Pair `p`: token `2p`'s scale `d` in lanes 0..8, token `2p + 1`'s in 8..16.
    d: [[f32; 16]; PAIRS],
    /// Q8_1: lanes `0..8` of row 0 hold each token's `s` (f32 bits).
    /// Q8_0: pair `p` holds `-128 * sum(a[4k..4k+4])` per lane, the bias
    /// correction of the unsigned weight trick.
    x: [[u32; 16]; PAIRS],
}

const ZERO_REC: Rec = Rec {
    qs: [[0; 64]; PAIRS],
    d: [[0.0; 16]; PAIRS],
    x: [[0; 16]; PAIRS],
};

/// A multi-token kernel: `out[r][t]` = row `r` of `w` (`nb` blocks per row)
/// dotted with token `t < nt` of one packed group (`nb` records), for the
/// first `out.len()` rows; `w` may hold more rows, which are prefetched.
/// Only the token pairs that hold one of the `nt` tokens are computed.
pub type GemmFn = fn(nb: usize, w: &[u8], group: &[Rec], nt: usize, out: &mut [[f32; GROUP]]);

/// The multi-token kernel for weights of type `ty` on this CPU, if any.
/// Its activations must be packed from `vec_dot_type` rows.
pub fn kernel(ty: GgmlType) -> Option<GemmFn> {
    if best() < Isa::Avx512Vnni {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        match ty {
            GgmlType::Q4_1 => Some(x86::q4_1),
            GgmlType::Q8_0 => Some(x86::q8_0),
            GgmlType::Q5_0 => Some(x86::q5_0),
            _ => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ty;
        None
    }
}

/// Activation rows of one format, packed in groups of [`GROUP`] tokens
/// (the last group padded with zero tokens). Kept between calls, so packing
/// allocates nothing once warmed up.
#[derive(Default)]
pub struct PackedInput {
    recs: Vec<Rec>,
    nb: usize,
    n_tokens: usize,
    ty: Option<GgmlType>,
}

impl PackedInput {
    /// Whether rows of `ty` can be packed.
    pub fn supports(ty: GgmlType) -> bool {
        matches!(ty, GgmlType::Q8_0 | GgmlType::Q8_1)
    }

    /// Sizes the buffer for `n_tokens` rows of `cols` values of `ty`.
    /// Returns the number of groups, to be filled by [`Self::pack_group`].
    pub fn reset(&mut self, ty: GgmlType, n_tokens: usize, cols: usize) -> usize {
        assert!(Self::supports(ty) && cols.is_multiple_of(QK));
        let groups = n_tokens.div_ceil(GROUP);
        self.nb = cols / QK;
        self.n_tokens = n_tokens;
        self.ty = Some(ty);
        let need = groups * self.nb;
        if self.recs.len() < need {
            self.recs.resize(need, ZERO_REC);
        }
        groups
    }

    /// Marks the contents stale (until the next [`Self::reset`]).
    pub fn reset_stale(&mut self) {
        self.n_tokens = 0;
    }

    /// The records of every group, for threads to fill disjoint groups.
    pub fn recs_mut(&mut self) -> &mut [Rec] {
        &mut self.recs[..self.n_tokens.div_ceil(GROUP) * self.nb]
    }

    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.nb
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    pub fn ty(&self) -> Option<GgmlType> {
        self.ty
    }

    /// Group `g`'s records.
    pub fn group(&self, g: usize) -> &[Rec] {
        &self.recs[g * self.nb..(g + 1) * self.nb]
    }
}

/// Packs the quantized rows `rows` (at most [`GROUP`] tokens of `nb` blocks
/// of `ty`, Q8_0 or Q8_1) into one group's records `dst` (`nb` of them).
pub fn pack_group(ty: GgmlType, nb: usize, rows: &[u8], dst: &mut [Rec]) {
    let (bytes, qs_off) = match ty {
        GgmlType::Q8_0 => (34, 2),
        GgmlType::Q8_1 => (36, 4),
        _ => panic!("cannot pack {ty} activations"),
    };
    let row = nb * bytes;
    let nt = rows.len() / row;
    assert!(nt <= GROUP && rows.len() == nt * row && dst.len() == nb);
    for (b, rec) in dst.iter_mut().enumerate() {
        *rec = ZERO_REC;
        for t in 0..nt {
            let blk = &rows[t * row + b * bytes..t * row + (b + 1) * bytes];
            let (p, h) = (t / 2, (t % 2) * 32);
            let qs = &blk[qs_off..qs_off + QK];
            rec.qs[p][h..h + QK].copy_from_slice(qs);
            rec.d[p][h / 4..h / 4 + 8].fill(f16_to_f32(u16_at(blk, 0)));
            match ty {
                GgmlType::Q8_1 => rec.x[0][t] = f16_to_f32(u16_at(blk, 2)).to_bits(),
                _ => {
                    for k in 0..8 {
                        let s: i32 = qs[4 * k..4 * k + 4].iter().map(|&q| q as i8 as i32).sum();
                        rec.x[p][h / 4 + k] = (-128 * s) as u32;
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::simd::x86::hsum_ps_256;
    use super::*;
    use std::arch::x86_64::*;

    /// Weight bytes per block.
    const Q4_1_BYTES: usize = 20;
    const Q8_0_BYTES: usize = 34;
    const Q5_0_BYTES: usize = 22;

    // SAFETY (both wrappers): `kernel()` hands these out only when the CPU
    // has AVX-512 VNNI; every load below reads a fixed-size array.

    pub(super) fn q4_1(nb: usize, w: &[u8], group: &[Rec], nt: usize, out: &mut [[f32; GROUP]]) {
        assert!(w.len() >= out.len() * nb * Q4_1_BYTES && group.len() == nb && nt <= GROUP);
        // SAFETY: see above.
        unsafe {
            match nt.div_ceil(2) {
                0 | 1 => q4_1_k::<1>(nb, w, group, out),
                2 => q4_1_k::<2>(nb, w, group, out),
                3 => q4_1_k::<3>(nb, w, group, out),
                _ => q4_1_k::<4>(nb, w, group, out),
            }
        }
    }

    pub(super) fn q8_0(nb: usize, w: &[u8], group: &[Rec], nt: usize, out: &mut [[f32; GROUP]]) {
        assert!(w.len() >= out.len() * nb * Q8_0_BYTES && group.len() == nb && nt <= GROUP);
        // SAFETY: see above.
        unsafe {
            match nt.div_ceil(2) {
                0 | 1 => q8_0_k::<1>(nb, w, group, out),
                2 => q8_0_k::<2>(nb, w, group, out),
                3 => q8_0_k::<3>(nb, w, group, out),
                _ => q8_0_k::<4>(nb, w, group, out),
            }
        }
    }

    pub(super) fn q5_0(nb: usize, w: &[u8], group: &[Rec], nt: usize, out: &mut [[f32; GROUP]]) {
        assert!(w.len() >= out.len() * nb * Q5_0_BYTES && group.len() == nb && nt <= GROUP);
        // SAFETY: see above.
        unsafe {
            match nt.div_ceil(2) {
                0 | 1 => q5_0_k::<1>(nb, w, group, out),
                2 => q5_0_k::<2>(nb, w, group, out),
                3 => q5_0_k::<3>(nb, w, group, out),
                _ => q5_0_k::<4>(nb, w, group, out),
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn load_i(a: &[u8; 64]) -> __m512i {
        // SAFETY: 64 readable bytes.
        unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn load_f(a: &[f32; 16]) -> __m512 {
        // SAFETY: 16 readable floats.
        unsafe { _mm512_loadu_ps(a.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn load_u(a: &[u32; 16]) -> __m512i {
        // SAFETY: 64 readable bytes.
        unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
    }

    /// How far ahead weight rows are prefetched: the hardware prefetcher
    /// alone leaves the kernel waiting on memory at the start of each row.
    const PREFETCH_ROWS: usize = 4;

    fn prefetch(w: &[u8], off: usize, len: usize) {
        crate::cpu::prefetch(w.get(off..(off + len).min(w.len())).unwrap_or(&[]));
    }

    /// Writes each token's horizontal sum (plus `extra[t]`) into `o`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn finish<const NP: usize>(acc: &[__m512; NP], extra: [f32; GROUP], o: &mut [f32; GROUP]) {
        for (p, a) in acc.iter().enumerate() {
            let lo = _mm512_castps512_ps256(*a);
            let hi = _mm512_extractf32x8_ps::<1>(*a);
            o[2 * p] = hsum_ps_256(lo) + extra[2 * p];
            o[2 * p + 1] = hsum_ps_256(hi) + extra[2 * p + 1];
        }
    }

    /// Q4_1 weights × packed Q8_1 activations.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn q4_1_k<const NP: usize>(nb: usize, w: &[u8], group: &[Rec], out: &mut [[f32; GROUP]]) {
        let low = _mm512_set1_epi8(0x0F);
        let rb = nb * Q4_1_BYTES;
        for (r, (row, o)) in w.chunks_exact(rb).zip(out.iter_mut()).enumerate() {
            prefetch(w, (r + PREFETCH_ROWS) * rb, rb);
            let mut acc = [_mm512_setzero_ps(); NP];
            let mut summs = _mm256_setzero_ps();
            for (blk, rec) in row.as_chunks::<Q4_1_BYTES>().0.iter().zip(group) {
                // [lo nibbles | hi nibbles] = elements 0..32, twice.
                let (qs, _) = blk[4..].as_chunks::<16>();
                // SAFETY: 16 readable bytes.
                let v = unsafe { _mm512_broadcast_i32x4(_mm_loadu_si128(qs[0].as_ptr().cast())) };
                let v = _mm512_mask_srli_epi16(v, 0xFF00_FF00, v, 4);
                let q = _mm512_and_si512(v, low);
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
                    blk[0], blk[1], blk[2], blk[3],
                ])));
                let wd = _mm512_broadcastss_ps(dm);
                let wm = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
                for (p, acc) in acc.iter_mut().enumerate() {
                    let i = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, load_i(&rec.qs[p]));
                    let d = _mm512_mul_ps(wd, load_f(&rec.d[p]));
                    *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(i), *acc);
                }
                let s = _mm512_castps512_ps256(_mm512_castsi512_ps(load_u(&rec.x[0])));
                summs = _mm256_add_ps(summs, _mm256_mul_ps(wm, s));
            }
            let mut extra = [0.0f32; GROUP];
            // SAFETY: 8 writable floats.
            unsafe { _mm256_storeu_ps(extra.as_mut_ptr(), summs) };
            finish(&acc, extra, o);
        }
    }

    /// Q8_0 weights × packed Q8_0 activations; the weights are biased to
    /// unsigned (`w ^ 0x80 = w + 128`) and the packed correction starts the
    /// integer sum.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn q8_0_k<const NP: usize>(nb: usize, w: &[u8], group: &[Rec], out: &mut [[f32; GROUP]]) {
        let bias = _mm512_set1_epi8(-128);
        let rb = nb * Q8_0_BYTES;
        for (r, (row, o)) in w.chunks_exact(rb).zip(out.iter_mut()).enumerate() {
            prefetch(w, (r + PREFETCH_ROWS) * rb, rb);
            let mut acc = [_mm512_setzero_ps(); NP];
            for (blk, rec) in row.as_chunks::<Q8_0_BYTES>().0.iter().zip(group) {
                let (qs, _) = blk[2..].as_chunks::<32>();
                // SAFETY: 32 readable bytes.
                let v =
                    unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(qs[0].as_ptr().cast())) };
                let x = _mm512_xor_si512(v, bias);
                let wd = _mm512_set1_ps(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
                for (p, acc) in acc.iter_mut().enumerate() {
                    let i = _mm512_dpbusd_epi32(load_u(&rec.x[p]), x, load_i(&rec.qs[p]));
                    let d = _mm512_mul_ps(wd, load_f(&rec.d[p]));
                    *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(i), *acc);
                }
            }
            finish(&acc, [0.0; GROUP], o);
        }
    }

    /// Q5_0 weights × packed Q8_0 activations: each weight `q - 16` (`q`
    /// the 5-bit quant) is biased to unsigned as `q + 112`, built as
    /// `nibble | 0x70` plus `0x10` where the high bit is set, and the same
    /// packed correction as Q8_0 removes the bias; the float steps are
    /// those of Q8_0 (and of Q5_0's `vec_dot`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn q5_0_k<const NP: usize>(nb: usize, w: &[u8], group: &[Rec], out: &mut [[f32; GROUP]]) {
        let low = _mm512_set1_epi8(0x0F);
        let base = _mm512_set1_epi8(0x70);
        let high = _mm512_set1_epi8(0x10);
        let rb = nb * Q5_0_BYTES;
        for (r, (row, o)) in w.chunks_exact(rb).zip(out.iter_mut()).enumerate() {
            prefetch(w, (r + PREFETCH_ROWS) * rb, rb);
            let mut acc = [_mm512_setzero_ps(); NP];
            for (blk, rec) in row.as_chunks::<Q5_0_BYTES>().0.iter().zip(group) {
                // [lo nibbles | hi nibbles] = elements 0..32, twice.
                let (qs, _) = blk[6..].as_chunks::<16>();
                // SAFETY: 16 readable bytes.
                let v = unsafe { _mm512_broadcast_i32x4(_mm_loadu_si128(qs[0].as_ptr().cast())) };
                let v = _mm512_mask_srli_epi16(v, 0xFF00_FF00, v, 4);
                let q = _mm512_or_si512(_mm512_and_si512(v, low), base);
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]) as u64;
                let x = _mm512_mask_add_epi8(q, qh | qh << 32, q, high);
                let wd = _mm512_set1_ps(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
                for (p, acc) in acc.iter_mut().enumerate() {
                    let i = _mm512_dpbusd_epi32(load_u(&rec.x[p]), x, load_i(&rec.qs[p]));
                    let d = _mm512_mul_ps(wd, load_f(&rec.d[p]));
                    *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(i), *acc);
                }
            }
            finish(&acc, [0.0; GROUP], o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::fast_ops;

    /// Deterministic pseudo-random floats in [-1, 1).
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

    /// Parity (tolerance: exact): every token of every group equals the
    /// format's fast `vec_dot`, bit for bit, for odd and even block counts
    /// and partial groups.
    #[test]
    fn gemm_matches_vec_dot_bitwise() {
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0] {
            let Some(k) = kernel(ty) else {
                eprintln!("no multi-token kernel for {ty} on this CPU; skipped");
                continue;
            };
            let ops = fast_ops(ty);
            let aops = fast_ops(ops.vec_dot_type);
            for (nb, nt, rows) in [(1, 1, 3), (18, 8, 5), (7, 5, 4), (48, 3, 2), (3, 8, 1)] {
                let n = nb * QK;
                let wf = data(n * rows, nb as u64 * 31 + nt as u64);
                let mut w = vec![0u8; ty.row_bytes(n).expect("whole blocks") * rows];
                let wrow = w.len() / rows;
                for r in 0..rows {
                    (ops.from_f32)(&wf[r * n..(r + 1) * n], &mut w[r * wrow..(r + 1) * wrow]);
                }
                let af = data(n * nt, 7 + nb as u64);
                let arow = ops.vec_dot_type.row_bytes(n).expect("whole blocks");
                let mut a = vec![0u8; arow * nt];
                for t in 0..nt {
                    (aops.from_f32)(&af[t * n..(t + 1) * n], &mut a[t * arow..(t + 1) * arow]);
                }
                let mut packed = PackedInput::default();
                assert_eq!(packed.reset(ops.vec_dot_type, nt, n), 1);
                pack_group(ops.vec_dot_type, nb, &a, packed.recs_mut());
                let mut out = vec![[0f32; GROUP]; rows];
                k(nb, &w, packed.group(0), nt, &mut out);
                for r in 0..rows {
                    for t in 0..nt {
                        let want = (ops.vec_dot)(
                            n,
                            &w[r * wrow..(r + 1) * wrow],
                            &a[t * arow..(t + 1) * arow],
                        );
                        assert_eq!(
                            out[r][t].to_bits(),
                            want.to_bits(),
                            "{ty} nb={nb} row {r} token {t}: {} vs {want}",
                            out[r][t]
                        );
                    }
                }
            }
        }
    }
}
