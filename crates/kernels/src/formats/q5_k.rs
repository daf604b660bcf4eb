//! Q5_K: ggml's 5-bit K-quant (`block_q5_K` in `ggml-common.h`), paired with
//! Q8_K activations.
//!
//! A super-block is 256 values in 8 sub-blocks of 32 (176 bytes):
//! `d: f16`, `dmin: f16`, `scales: [u8; 12]` (packed exactly as Q4_K's),
//! `qh: [u8; 32]` (fifth bits: bit `s` of byte `l` belongs to element
//! `32s + l`), `qs: [u8; 128]` (low 4 bits, laid out as Q4_K's). Element `e` of
//! sub-block `s` is `(d * sc[s]) * q[e] - (dmin * m[s])` with `q` in `0..32`.
//!
//! The dot product with Q8_K is ggml's (integer quants, mins folded in via
//! the activation `bsums`); the scalar reference follows the float order of
//! ggml's generic kernel, the fast paths that of its AVX2 kernel, which
//! gathers the mins into one scalar sum. The quantizer is Q4_K's simple one
//! (see [`super::q4_k`]) with 31 levels.

use super::kquant_simd::{conv_blocks, QK_K};
use super::q4_k::{affine_dot_scalar, affine_to_f32_scalar, quantize_affine};
use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

/// Bytes per super-block.
pub const BLOCK_BYTES: usize = 2 + 2 + 12 + QK_K / 8 + QK_K / 2;
const D: usize = 0;
const DMIN: usize = 2;
const SCALES: usize = 4;
const QH: usize = 16;
const QS: usize = 16 + QK_K / 8;

// ---------------------------------------------------------------------------
// Scalar reference.

/// The 256 unsigned 5-bit quants of a block, element order.
fn decode(x: &[u8], q: &mut [u8; QK_K]) {
    for c in 0..4 {
        for l in 0..32 {
            let b = x[QS + 32 * c + l];
            let h = x[QH + l];
            q[64 * c + l] = (b & 15) | (((h >> (2 * c)) & 1) << 4);
            q[64 * c + 32 + l] = (b >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
        }
    }
}

fn to_f32_scalar(src: &[u8], dst: &mut [f32]) {
    affine_to_f32_scalar(src, dst, BLOCK_BYTES, decode);
}

fn from_f32_scalar(src: &[f32], dst: &mut [u8]) {
    conv_blocks(src.len(), dst.len(), BLOCK_BYTES);
    for (x, y) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        let b = quantize_affine(x, 31);
        y[D..D + 2].copy_from_slice(&b.d.to_bits().to_le_bytes());
        y[DMIN..DMIN + 2].copy_from_slice(&b.dmin.to_bits().to_le_bytes());
        y[SCALES..SCALES + 12].copy_from_slice(&b.scales);
        y[QH..QH + 32].fill(0);
        for c in 0..4 {
            for l in 0..32 {
                let (q0, q1) = (b.q[64 * c + l], b.q[64 * c + 32 + l]);
                y[QS + 32 * c + l] = (q0 & 15) | ((q1 & 15) << 4);
                y[QH + l] |= ((q0 >> 4) << (2 * c)) | ((q1 >> 4) << (2 * c + 1));
            }
        }
    }
}

fn vec_dot_scalar(n: usize, w: &[u8], a: &[u8]) -> f32 {
    affine_dot_scalar(n, w, BLOCK_BYTES, a, decode)
}

// ---------------------------------------------------------------------------
// x86 fast paths.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK_BYTES, D, DMIN, QH, QS, SCALES};
    use crate::formats::kquant_simd::x86::{
        f16_at, f16x2_at, f32_at, hsum_f32x8, hsum_i32x8, load256, mins_dot_bsums, scale_pairs,
        scales_mins_i16, splat_scale, store_u8x32_affine, MaddAcc,
    };
    use crate::formats::kquant_simd::{conv_blocks, dot_blocks, QK_K};
    use crate::formats::q4_k::unpack_scales_mins;
    use crate::formats::q8_k;
    use std::arch::x86_64::*;

    /// The 12 scale bytes of the block at `x`, unpacked.
    ///
    /// # Safety
    /// `x..x + 16` readable.
    #[inline(always)]
    unsafe fn block_scales(x: *const u8) -> [u32; 4] {
        // SAFETY: caller's precondition.
        let s = unsafe { std::slice::from_raw_parts(x.add(SCALES), 12) };
        unpack_scales_mins(s)
    }

    /// The 64 quants of chunk `c` as two vectors of 32 unsigned 5-bit
    /// values, given the low-nibble bytes and the high-bit bytes shifted
    /// right by `2c` (bit 0 and bit 1 of each byte are used).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn q5_pair(bits: __m256i, hbits: __m256i) -> (__m256i, __m256i) {
        // SAFETY: caller's precondition.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let one = _mm256_set1_epi8(1);
            // Shifting 16-bit lanes lets bits cross into the byte below, but
            // only at bit 7, which the masks drop.
            let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(hbits, one));
            let h1 = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(hbits), one));
            let q0 = _mm256_or_si256(_mm256_and_si256(bits, m4), h0);
            let q1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4), h1);
            (q0, q1)
        }
    }

    /// # Safety
    /// AVX2 + FMA + F16C.
    #[inline(always)]
    unsafe fn to_f32_body<M: MaddAcc>(src: &[u8], dst: &mut [f32]) {
        let nb = conv_blocks(dst.len(), src.len(), BLOCK_BYTES);
        // SAFETY: lengths checked above; features are the caller's.
        unsafe {
            for i in 0..nb {
                let x = src.as_ptr().add(i * BLOCK_BYTES);
                let y = dst.as_mut_ptr().add(i * QK_K);
                let sm = block_scales(x).map(u32::to_le_bytes);
                let (d, dmin) = (f16_at(x.add(D)), f16_at(x.add(DMIN)));
                let mut hbits = load256(x.add(QH));
                for c in 0..4 {
                    let (q0, q1) = q5_pair(load256(x.add(QS + 32 * c)), hbits);
                    hbits = _mm256_srli_epi16::<2>(hbits);
                    let (s0, s1) = (2 * c, 2 * c + 1);
                    let (sc0, m0) = (sm[s0 / 4][s0 % 4], sm[2 + s0 / 4][s0 % 4]);
                    let (sc1, m1) = (sm[s1 / 4][s1 % 4], sm[2 + s1 / 4][s1 % 4]);
                    let (d0, n0) = (d * f32::from(sc0), dmin * f32::from(m0));
                    let (d1, n1) = (d * f32::from(sc1), dmin * f32::from(m1));
                    store_u8x32_affine(y.add(64 * c), q0, d0, n0);
                    store_u8x32_affine(y.add(64 * c + 32), q1, d1, n1);
                }
            }
        }
    }

    /// The structure and float order of ggml's AVX2 `ggml_vec_dot_q5_K_q8_K`.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C (+ VNNI for `M = Vnni`).
    #[inline(always)]
    unsafe fn vec_dot_body<M: MaddAcc>(n: usize, w: &[u8], a: &[u8]) -> f32 {
        let nb = dot_blocks(n, w, BLOCK_BYTES, a, q8_k::BLOCK_BYTES);
        // SAFETY: lengths checked above; features are the caller's.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut summs = 0.0f32;
            for i in 0..nb {
                let x = w.as_ptr().add(i * BLOCK_BYTES);
                let y = a.as_ptr().add(i * q8_k::BLOCK_BYTES);
                let yd = f32_at(y.add(q8_k::D));
                let (xd, xdmin) = f16x2_at(x.add(D));
                let d = yd * xd;
                let dmin = -yd * xdmin;

                let mins_scales = scales_mins_i16(x.add(SCALES));
                let prod = mins_dot_bsums(mins_scales, y.add(q8_k::BSUMS));
                let prod = _mm256_castsi128_si256(prod);
                let prod = _mm256_inserti128_si256::<1>(prod, _mm_setzero_si128());
                // GCC contracts ggml's `summs += dmin * sum` into an FMA
                // (-ffp-contract=fast, its default); match that build.
                summs = dmin.mul_add(hsum_i32x8(prod) as f32, summs);

                let scales = scale_pairs(mins_scales);
                let q5 = x.add(QS);
                let q8 = y.add(q8_k::QS);
                let mut hbits = load256(x.add(QH));
                let mut sumi = _mm256_setzero_si256();
                for j in 0..QK_K / 64 {
                    let (q0, q1) = q5_pair(load256(q5.add(32 * j)), hbits);
                    hbits = _mm256_srli_epi16::<2>(hbits);
                    let p16_0 = _mm256_maddubs_epi16(q0, load256(q8.add(64 * j)));
                    let p16_1 = _mm256_maddubs_epi16(q1, load256(q8.add(64 * j + 32)));
                    sumi = M::madd_acc(sumi, splat_scale(&scales, 2 * j), p16_0);
                    sumi = M::madd_acc(sumi, splat_scale(&scales, 2 * j + 1), p16_1);
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum_f32x8(acc) + summs
        }
    }

    pub(super) mod to_f32 {
        use super::to_f32_body;
        use crate::formats::kquant_simd::x86_entry_points;
        x86_entry_points!(to_f32_body, fn(src: &[u8], dst: &mut [f32]));
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
    ty: GgmlType::Q5_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: to_f32_scalar,
    from_f32: from_f32_scalar,
    vec_dot: vec_dot_scalar,
};

#[cfg(target_arch = "x86_64")]
static AVX2: QuantOps = QuantOps {
    ty: GgmlType::Q5_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::avx2,
    from_f32: from_f32_scalar,
    vec_dot: x86::vec_dot::avx2,
};

#[cfg(target_arch = "x86_64")]
static AVX512: QuantOps = QuantOps {
    ty: GgmlType::Q5_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::avx512,
    from_f32: from_f32_scalar,
    vec_dot: x86::vec_dot::avx512,
};

#[cfg(target_arch = "x86_64")]
static VNNI: QuantOps = QuantOps {
    ty: GgmlType::Q5_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::vnni,
    from_f32: from_f32_scalar,
    vec_dot: x86::vec_dot::vnni,
};

/// The Q5_K kernels for `isa`. An `isa` this CPU lacks gets the scalar
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
