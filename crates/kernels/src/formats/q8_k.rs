//! Q8_K: ggml's 8-bit activation format for the K-quants (`block_q8_K` in
//! `ggml-common.h`).
//!
//! A block is 256 values: `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]`
//! (292 bytes); `x[i] = d * qs[i]` and `bsums[j]` is the sum of
//! `qs[16j..16j + 16]`, which lets Q4_K/Q5_K/Q6_K dot products fold their
//! per-sub-block offsets in without touching the quants.
//!
//! Quantization is ggml's `quantize_row_q8_K_ref` (the one its x86 CPU
//! backend uses): with `max` the first element of largest magnitude,
//! `iscale = -127 / max`, `qs = min(127, round_half_even(iscale * x))`,
//! `d = 1 / iscale`; an all-zero block gets `d = 0` and zero quants (and, here,
//! zero `bsums`, which ggml leaves unwritten). The AVX2 path gives the same
//! bytes: a single f32 multiply then `cvtps2dq` (round half to even), as ggml's
//! source writes it. (A build of ggml that contracted the multiply and the
//! rounding add of `nearest_int` into an FMA could differ by one unit for
//! products within 2^-24 of a half-integer; none showed up against a GCC
//! `-march=native` build.) Inputs must be finite.
//!
//! Q8_K is its own `vec_dot_type`: the dot product (ggml has none) is
//! `sum over blocks (d_w * d_a) * (sum of qs_w * qs_a)`, with the integer sums
//! exact, so every path returns the same bits.

use super::kquant_simd::{conv_blocks, dot_blocks, f32_at, QK_K};
use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

/// Bytes per block.
pub const BLOCK_BYTES: usize = 4 + QK_K + 2 * (QK_K / 16);
/// Offset of `d: f32`.
pub(crate) const D: usize = 0;
/// Offset of `qs: [i8; 256]`.
pub(crate) const QS: usize = 4;
/// Offset of `bsums: [i16; 16]`.
pub(crate) const BSUMS: usize = 4 + QK_K;

/// The `qs` of a block as i8 values.
#[inline]
pub(crate) fn qs(block: &[u8]) -> impl Iterator<Item = i8> + '_ {
    block[QS..QS + QK_K].iter().map(|&b| b as i8)
}

/// The 16 `bsums` of a block.
#[inline]
pub(crate) fn bsums(block: &[u8]) -> [i16; 16] {
    let mut out = [0i16; 16];
    for (j, o) in out.iter_mut().enumerate() {
        *o = i16::from_le_bytes([block[BSUMS + 2 * j], block[BSUMS + 2 * j + 1]]);
    }
    out
}

// ---------------------------------------------------------------------------
// Scalar reference.

fn to_f32_scalar(src: &[u8], dst: &mut [f32]) {
    conv_blocks(dst.len(), src.len(), BLOCK_BYTES);
    for (x, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = f32_at(x, D);
        for (o, q) in y.iter_mut().zip(qs(x)) {
            *o = d * f32::from(q);
        }
    }
}

fn from_f32_scalar(src: &[f32], dst: &mut [u8]) {
    conv_blocks(src.len(), dst.len(), BLOCK_BYTES);
    for (x, y) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        quantize_block_scalar(x, y);
    }
}

/// `x`: 256 floats; `y`: one 292-byte block.
fn quantize_block_scalar(x: &[f32], y: &mut [u8]) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        y.fill(0);
        return;
    }
    let iscale = -127.0f32 / max;
    for (q, &v) in y[QS..QS + QK_K].iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8 as u8;
    }
    for j in 0..QK_K / 16 {
        let s: i32 = y[QS + 16 * j..QS + 16 * j + 16]
            .iter()
            .map(|&b| i32::from(b as i8))
            .sum();
        y[BSUMS + 2 * j..BSUMS + 2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
    }
    y[D..D + 4].copy_from_slice(&(1.0f32 / iscale).to_le_bytes());
}

fn vec_dot_scalar(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks(n, w, BLOCK_BYTES, a, BLOCK_BYTES);
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(BLOCK_BYTES).zip(a.chunks_exact(BLOCK_BYTES)) {
        let isum: i32 = qs(x)
            .zip(qs(y))
            .map(|(p, q)| i32::from(p) * i32::from(q))
            .sum();
        sum += (f32_at(x, D) * f32_at(y, D)) * isum as f32;
    }
    sum
}

// ---------------------------------------------------------------------------
// x86 fast paths.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK_BYTES, BSUMS, D, QK_K, QS};
    use crate::formats::kquant_simd::x86::{
        f32_at, hsum_i32x8, load256, store_i8x16_scaled, MaddAcc,
    };
    use crate::formats::kquant_simd::{conv_blocks, dot_blocks};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 + FMA + F16C (+ VNNI for `M = Vnni`).
    #[inline(always)]
    unsafe fn to_f32_body<M: MaddAcc>(src: &[u8], dst: &mut [f32]) {
        let nb = conv_blocks(dst.len(), src.len(), BLOCK_BYTES);
        // SAFETY: lengths checked above; features are the caller's.
        unsafe {
            for i in 0..nb {
                let x = src.as_ptr().add(i * BLOCK_BYTES);
                let y = dst.as_mut_ptr().add(i * QK_K);
                let d = f32_at(x.add(D));
                for k in 0..QK_K / 16 {
                    let q = _mm_loadu_si128(x.add(QS + 16 * k).cast());
                    store_i8x16_scaled(y.add(16 * k), q, d);
                }
            }
        }
    }

    /// # Safety
    /// AVX2 + FMA + F16C.
    #[inline(always)]
    unsafe fn from_f32_body<M: MaddAcc>(src: &[f32], dst: &mut [u8]) {
        let nb = conv_blocks(src.len(), dst.len(), BLOCK_BYTES);
        // SAFETY: lengths checked above; features are the caller's.
        unsafe {
            for i in 0..nb {
                quantize_block(
                    src.as_ptr().add(i * QK_K),
                    dst.as_mut_ptr().add(i * BLOCK_BYTES),
                );
            }
        }
    }

    /// Quantizes 256 floats at `x` into the block at `y`, byte for byte as
    /// the scalar reference does.
    ///
    /// # Safety
    /// AVX2; `x..x + 256` readable, `y..y + 292` writable.
    #[inline(always)]
    unsafe fn quantize_block(x: *const f32, y: *mut u8) {
        // SAFETY: caller's precondition.
        unsafe {
            let (hi, lo) = max_min(x);
            let amax = hi.max(-lo);
            if amax == 0.0 {
                std::ptr::write_bytes(y, 0, BLOCK_BYTES);
                return;
            }
            // The scalar reference takes the first element of largest
            // magnitude. Unless both +amax and -amax occur, every such
            // element has the same value; otherwise scan for the first.
            let max = if hi != -lo {
                if hi == amax {
                    hi
                } else {
                    lo
                }
            } else {
                let block = std::slice::from_raw_parts(x, QK_K);
                block
                    .iter()
                    .copied()
                    .find(|v| v.abs() == amax)
                    .unwrap_or(amax)
            };
            let iscale = -127.0f32 / max;
            let vs = _mm256_set1_ps(iscale);
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let bias = _mm256_set1_epi8(-128);
            let mut sad = [_mm256_setzero_si256(); 8];
            for (c, sad_c) in sad.iter_mut().enumerate() {
                let p = x.add(32 * c);
                // cvtps2dq rounds half to even, like the scalar reference.
                let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(p)));
                let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(p.add(8))));
                let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(p.add(16))));
                let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(p.add(24))));
                // Saturating packs clamp at 127 (= ggml's MIN(127, v));
                // values never fall below -127.
                let w01 = _mm256_packs_epi32(i0, i1);
                let w23 = _mm256_packs_epi32(i2, i3);
                let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
                _mm256_storeu_si256(y.add(QS + 32 * c).cast(), b);
                // Byte sums of q + 128 over each 8 bytes, as 4 u64 lanes.
                *sad_c = _mm256_sad_epu8(_mm256_xor_si256(b, bias), _mm256_setzero_si256());
            }
            _mm256_storeu_si256(y.add(BSUMS).cast(), bsums_from_sads(&sad));
            y.add(D).cast::<f32>().write_unaligned(1.0f32 / iscale);
        }
    }

    /// The largest and smallest of the 256 floats at `x`.
    ///
    /// # Safety
    /// AVX; `x..x + 256` readable.
    #[inline(always)]
    unsafe fn max_min(x: *const f32) -> (f32, f32) {
        // SAFETY: caller's precondition.
        unsafe {
            let mut hi = [_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8))];
            let mut lo = hi;
            for c in 1..QK_K / 16 {
                for k in 0..2 {
                    let v = _mm256_loadu_ps(x.add(16 * c + 8 * k));
                    hi[k] = _mm256_max_ps(hi[k], v);
                    lo[k] = _mm256_min_ps(lo[k], v);
                }
            }
            let (h, l) = (_mm256_max_ps(hi[0], hi[1]), _mm256_min_ps(lo[0], lo[1]));
            let h = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
            let l = _mm_min_ps(_mm256_castps256_ps128(l), _mm256_extractf128_ps::<1>(l));
            let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            let l = _mm_min_ps(l, _mm_movehl_ps(l, l));
            let h = _mm_max_ss(h, _mm_movehdup_ps(h));
            let l = _mm_min_ss(l, _mm_movehdup_ps(l));
            (_mm_cvtss_f32(h), _mm_cvtss_f32(l))
        }
    }

    /// The 16 `bsums` (as i16, in order) from the 8 per-chunk SADs of
    /// `q + 128`: `sad[c]` holds the sums of bytes `32c + 8i..32c + 8i + 8`
    /// in u64 lane `i`, and `bsums[j]` is lanes `2j % 4, 2j % 4 + 1` of
    /// `sad[j / 2]`, minus `16 * 128`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn bsums_from_sads(sad: &[__m256i; 8]) -> __m256i {
        // SAFETY: caller's precondition.
        unsafe {
            // t[k] = [bs(4k), bs(4k+2) | bs(4k+1), bs(4k+3)] as u64 (biased).
            let t = |k: usize| {
                let (a, b) = (sad[2 * k], sad[2 * k + 1]);
                _mm256_add_epi64(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b))
            };
            // The sums fit in 12 bits: two per u64 lane, then i16.
            let u01 = _mm256_or_si256(t(0), _mm256_slli_epi64::<32>(t(1)));
            let u23 = _mm256_or_si256(t(2), _mm256_slli_epi64::<32>(t(3)));
            // Low half: bs 0 4 2 6 8 12 10 14; high half: bs 1 5 3 7 9 13 11 15.
            let p = _mm256_sub_epi16(_mm256_packs_epi32(u01, u23), _mm256_set1_epi16(16 * 128));
            let p = _mm256_shuffle_epi8(
                p,
                _mm256_setr_epi8(
                    0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15, //
                    0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,
                ),
            );
            // Low half now the even bsums in order, high half the odd ones.
            let (even, odd) = (_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
            _mm256_setr_m128i(_mm_unpacklo_epi16(even, odd), _mm_unpackhi_epi16(even, odd))
        }
    }

    /// # Safety
    /// AVX2 + FMA + F16C.
    #[inline(always)]
    unsafe fn vec_dot_body<M: MaddAcc>(n: usize, w: &[u8], a: &[u8]) -> f32 {
        let nb = dot_blocks(n, w, BLOCK_BYTES, a, BLOCK_BYTES);
        let mut sum = 0.0f32;
        // SAFETY: lengths checked above; features are the caller's.
        unsafe {
            for i in 0..nb {
                let x = w.as_ptr().add(i * BLOCK_BYTES);
                let y = a.as_ptr().add(i * BLOCK_BYTES);
                // Widen to i16 so that any byte values (even -128 * -128)
                // are exact.
                let mut acc = _mm256_setzero_si256();
                for k in 0..QK_K / 32 {
                    let p = load256(x.add(QS + 32 * k));
                    let q = load256(y.add(QS + 32 * k));
                    let plo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(p));
                    let qlo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
                    let phi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(p));
                    let qhi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(q));
                    acc = M::madd_acc(acc, plo, qlo);
                    acc = M::madd_acc(acc, phi, qhi);
                }
                sum += (f32_at(x.add(D)) * f32_at(y.add(D))) * hsum_i32x8(acc) as f32;
            }
        }
        sum
    }

    pub(super) mod to_f32 {
        use super::to_f32_body;
        use crate::formats::kquant_simd::x86_entry_points;
        x86_entry_points!(to_f32_body, fn(src: &[u8], dst: &mut [f32]));
    }
    pub(super) mod from_f32 {
        use super::from_f32_body;
        use crate::formats::kquant_simd::x86_entry_points;
        x86_entry_points!(from_f32_body, fn(src: &[f32], dst: &mut [u8]));
    }
    pub(super) mod vec_dot {
        use super::vec_dot_body;
        use crate::formats::kquant_simd::x86_entry_points;
        x86_entry_points!(vec_dot_body, fn(n: usize, w: &[u8], a: &[u8]) -> f32);
    }
}

// ---------------------------------------------------------------------------
// Tables.

static SCALAR: QuantOps = QuantOps {
    ty: GgmlType::Q8_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: to_f32_scalar,
    from_f32: from_f32_scalar,
    vec_dot: vec_dot_scalar,
};

#[cfg(target_arch = "x86_64")]
static AVX2: QuantOps = QuantOps {
    ty: GgmlType::Q8_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::avx2,
    from_f32: x86::from_f32::avx2,
    vec_dot: x86::vec_dot::avx2,
};

#[cfg(target_arch = "x86_64")]
static AVX512: QuantOps = QuantOps {
    ty: GgmlType::Q8_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::avx512,
    from_f32: x86::from_f32::avx512,
    vec_dot: x86::vec_dot::avx512,
};

#[cfg(target_arch = "x86_64")]
static VNNI: QuantOps = QuantOps {
    ty: GgmlType::Q8_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::vnni,
    from_f32: x86::from_f32::vnni,
    vec_dot: x86::vec_dot::vnni,
};

/// The Q8_K kernels for `isa`. An `isa` this CPU lacks gets the scalar
/// reference (callers are expected to pass only supported ones).
pub fn ops(isa: Isa) -> &'static QuantOps {
    #[cfg(target_arch = "x86_64")]
    if isa.supported() {
        return match isa {
            Isa::Scalar => &SCALAR,
            Isa::Avx2 => &AVX2,
            Isa::Avx512 => &AVX512,
            Isa::Avx512Vnni => &VNNI,
        };
    }
    let _ = isa;
    &SCALAR
}
