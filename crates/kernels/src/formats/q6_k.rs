//! Q6_K: ggml's 6-bit K-quant (`block_q6_K` in `ggml-common.h`), paired with
//! Q8_K activations.
//!
//! A super-block is 256 values in 16 sub-blocks of 16 (210 bytes):
//! `ql: [u8; 128]` (low 4 bits), `qh: [u8; 64]` (high 2 bits),
//! `scales: [i8; 16]`, `d: f16`. In each half `h` of 128 elements, with
//! `L = ql[64h..]` and `H = qh[32h..]`, element `128h + 32k + l`
//! (`k` in 0..4, `l` in 0..32) has its low 4 bits in nibble `k / 2` (low
//! first) of `L[32 (k % 2) + l]` and its high 2 bits in bits `2k..2k + 2` of
//! `H[l]`. Element `e` is `(d * scales[e / 16]) * (q[e] - 32)`.
//!
//! The dot product with Q8_K is ggml's: the unsigned 6-bit quants are dotted
//! with the 8-bit activations in integers and the `- 32` is applied through
//! the activation block's `bsums`. The scalar reference follows the float
//! order of ggml's generic kernel, the fast paths that of its AVX2 kernel.
//!
//! The quantizer here (tests and tools only) is simpler than ggml's
//! `make_qx_quants`: each sub-block's scale is its largest magnitude / 31
//! (so nothing clips), `d` is the largest scale / 127 in f16, sub-block scales
//! are rounded up to multiples of `d`, and quants to nearest: the error per
//! element is at most half a sub-block step, `d * scales[s] / 2`.

use super::kquant_simd::{conv_blocks, dot_blocks, f16_at, f32_at, QK_K};
use super::{q8_k, QuantOps};
use crate::cpu::Isa;
use half::f16;
use troupe_gguf::GgmlType;

/// Bytes per super-block.
pub const BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
const QL: usize = 0;
const QH: usize = QK_K / 2;
pub(crate) const SCALES: usize = QK_K / 2 + QK_K / 4;
pub(crate) const D: usize = SCALES + QK_K / 16;

// ---------------------------------------------------------------------------
// Scalar reference.

/// The 256 unsigned 6-bit quants of a block (`0..64`, stored value, before
/// the `- 32`), element order: in half `h`, element `32k + l` takes nibble
/// `k / 2` of `ql[64h + 32 (k % 2) + l]` and bits `2k..2k + 2` of
/// `qh[32h + l]`.
pub(crate) fn decode(x: &[u8], q: &mut [u8; QK_K]) {
    for h in 0..2 {
        for l in 0..32 {
            let (l0, l1) = (x[QL + 64 * h + l], x[QL + 64 * h + 32 + l]);
            let hb = x[QH + 32 * h + l];
            let base = 128 * h + l;
            q[base] = (l0 & 15) | ((hb & 3) << 4);
            q[base + 32] = (l1 & 15) | (((hb >> 2) & 3) << 4);
            q[base + 64] = (l0 >> 4) | (((hb >> 4) & 3) << 4);
            q[base + 96] = (l1 >> 4) | (((hb >> 6) & 3) << 4);
        }
    }
}

fn to_f32_scalar(src: &[u8], dst: &mut [f32]) {
    conv_blocks(dst.len(), src.len(), BLOCK_BYTES);
    let mut q = [0u8; QK_K];
    for (x, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        decode(x, &mut q);
        let d = f16_at(x, D);
        for (s, (ys, qs)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let scale = d * f32::from(x[SCALES + s] as i8);
            for (o, &qe) in ys.iter_mut().zip(qs) {
                *o = scale * f32::from(qe as i8 - 32);
            }
        }
    }
}

fn from_f32_scalar(src: &[f32], dst: &mut [u8]) {
    conv_blocks(src.len(), dst.len(), BLOCK_BYTES);
    for (x, y) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        quantize_block(x, y);
    }
}

/// `x`: 256 floats; `y`: one 210-byte block.
fn quantize_block(x: &[f32], y: &mut [u8]) {
    let mut scale = [0.0f32; 16];
    for (s, sub) in x.chunks_exact(16).enumerate() {
        scale[s] = sub.iter().fold(0.0f32, |a, &v| a.max(v.abs())) / 31.0;
    }
    let d = f16::from_f32(scale.iter().fold(0.0f32, |a, &v| a.max(v)) / 127.0);
    let df = d.to_f32();
    let mut q = [32u8; QK_K];
    for s in 0..16 {
        let sc = if df > 0.0 {
            (scale[s] / df).ceil().min(127.0) as i8
        } else {
            0
        };
        y[SCALES + s] = sc as u8;
        let step = df * f32::from(sc);
        if step > 0.0 {
            for e in 16 * s..16 * s + 16 {
                q[e] = ((x[e] / step).round().clamp(-32.0, 31.0) as i8 + 32) as u8;
            }
        }
    }
    for h in 0..2 {
        for l in 0..32 {
            let base = 128 * h + l;
            let (q0, q1, q2, q3) = (q[base], q[base + 32], q[base + 64], q[base + 96]);
            y[QL + 64 * h + l] = (q0 & 15) | ((q2 & 15) << 4);
            y[QL + 64 * h + 32 + l] = (q1 & 15) | ((q3 & 15) << 4);
            y[QH + 32 * h + l] = (q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6);
        }
    }
    y[D..D + 2].copy_from_slice(&d.to_bits().to_le_bytes());
}

/// Ggml's generic float order: eight lanes (element `e` in lane `e % 8`),
/// each scaled by the block's `d` and summed across blocks, then added up.
fn vec_dot_scalar(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks(n, w, BLOCK_BYTES, a, q8_k::BLOCK_BYTES);
    let mut q = [0u8; QK_K];
    let mut sums = [0.0f32; 8];
    for (x, y) in w
        .chunks_exact(BLOCK_BYTES)
        .zip(a.chunks_exact(q8_k::BLOCK_BYTES))
    {
        decode(x, &mut q);
        let mut lanes = [0i32; 8];
        for (e, (&qe, ye)) in q.iter().zip(q8_k::qs(y)).enumerate() {
            let scale = i32::from(x[SCALES + e / 16] as i8);
            lanes[e % 8] += scale * (i32::from(qe as i8 - 32) * i32::from(ye));
        }
        let d = f16_at(x, D) * f32_at(y, q8_k::D);
        for (s, &l) in sums.iter_mut().zip(&lanes) {
            *s += d * l as f32;
        }
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

// ---------------------------------------------------------------------------
// x86 fast paths.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK_BYTES, D, QH, QL, SCALES};
    use crate::formats::kquant_simd::x86::{
        f16_at, f32_at, hsum_f32x8, load128, load256, store_i8x16_scaled, MaddAcc,
    };
    use crate::formats::kquant_simd::{conv_blocks, dot_blocks, QK_K};
    use crate::formats::q8_k;
    use std::arch::x86_64::*;

    /// The 128 unsigned 6-bit quants of one half block as four vectors of
    /// 32 (elements `32k..32k + 32` in vector `k`).
    ///
    /// # Safety
    /// AVX2; `ql..ql + 64` and `qh..qh + 32` readable.
    #[inline(always)]
    unsafe fn q6_half(ql: *const u8, qh: *const u8) -> [__m256i; 4] {
        // SAFETY: caller's precondition.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let l0 = load256(ql);
            let l1 = load256(ql.add(32));
            let h = load256(qh);
            // High bits moved to bits 4..6 of each byte; the 16-bit shifts
            // stay inside bytes because each mask is applied first.
            let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(h, _mm256_set1_epi8(0x03)));
            let h1 = _mm256_slli_epi16::<2>(_mm256_and_si256(h, _mm256_set1_epi8(0x0C)));
            let h2 = _mm256_and_si256(h, _mm256_set1_epi8(0x30));
            let h3 = _mm256_srli_epi16::<2>(_mm256_and_si256(h, _mm256_set1_epi8(0xC0u8 as i8)));
            [
                _mm256_or_si256(_mm256_and_si256(l0, m4), h0),
                _mm256_or_si256(_mm256_and_si256(l1, m4), h1),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4), h2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4), h3),
            ]
        }
    }

    /// # Safety
    /// AVX2 + FMA + F16C.
    #[inline(always)]
    unsafe fn to_f32_body<M: MaddAcc>(src: &[u8], dst: &mut [f32]) {
        let nb = conv_blocks(dst.len(), src.len(), BLOCK_BYTES);
        // SAFETY: lengths checked above; features are the caller's.
        unsafe {
            let m32 = _mm256_set1_epi8(32);
            for i in 0..nb {
                let x = src.as_ptr().add(i * BLOCK_BYTES);
                let y = dst.as_mut_ptr().add(i * QK_K);
                let d = f16_at(x.add(D));
                for h in 0..2 {
                    let q = q6_half(x.add(QL + 64 * h), x.add(QH + 32 * h));
                    for (k, qk) in q.into_iter().enumerate() {
                        let v = _mm256_sub_epi8(qk, m32);
                        let s = 8 * h + 2 * k;
                        let sc0 = d * f32::from(*x.add(SCALES + s) as i8);
                        let sc1 = d * f32::from(*x.add(SCALES + s + 1) as i8);
                        let out = y.add(128 * h + 32 * k);
                        store_i8x16_scaled(out, _mm256_castsi256_si128(v), sc0);
                        store_i8x16_scaled(out.add(16), _mm256_extracti128_si256::<1>(v), sc1);
                    }
                }
            }
        }
    }

    /// The structure and float order of ggml's AVX2 `ggml_vec_dot_q6_K_q8_K`.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C (+ VNNI for `M = Vnni`).
    #[inline(always)]
    unsafe fn vec_dot_body<M: MaddAcc>(n: usize, w: &[u8], a: &[u8]) -> f32 {
        let nb = dot_blocks(n, w, BLOCK_BYTES, a, q8_k::BLOCK_BYTES);
        // SAFETY: lengths checked above; features are the caller's.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let x = w.as_ptr().add(i * BLOCK_BYTES);
                let y = a.as_ptr().add(i * q8_k::BLOCK_BYTES);
                let d = f32_at(y.add(q8_k::D)) * f16_at(x.add(D));

                let scales = load128(x.add(SCALES));
                let q8sums = load256(y.add(q8_k::BSUMS));
                // 32 * sum_s scales[s] * bsums[s], in pairs of sub-blocks.
                let offset = _mm256_madd_epi16(q8sums, _mm256_cvtepi8_epi16(scales));
                let offset = _mm256_slli_epi32::<5>(offset);
                // i16 scales, even sub-blocks in the low half, odd in the high.
                let split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
                let halves = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, split));

                let q8 = y.add(q8_k::QS);
                let mut sumi = _mm256_setzero_si256();
                for h in 0..2 {
                    let q = q6_half(x.add(QL + 64 * h), x.add(QH + 32 * h));
                    for (k, qk) in q.into_iter().enumerate() {
                        let p16 = _mm256_maddubs_epi16(qk, load256(q8.add(128 * h + 32 * k)));
                        // Scales of sub-blocks 2m and 2m + 1 for the low and
                        // high 8 products: i16 lane m of each half.
                        let m = (4 * h + k) as i16;
                        let pick = _mm256_set1_epi16(((2 * m + 1) << 8) | (2 * m));
                        sumi = M::madd_acc(sumi, _mm256_shuffle_epi8(halves, pick), p16);
                    }
                }
                sumi = _mm256_sub_epi32(sumi, offset);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum_f32x8(acc)
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
    ty: GgmlType::Q6_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: to_f32_scalar,
    from_f32: from_f32_scalar,
    vec_dot: vec_dot_scalar,
};

#[cfg(target_arch = "x86_64")]
static AVX2: QuantOps = QuantOps {
    ty: GgmlType::Q6_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::avx2,
    from_f32: from_f32_scalar,
    vec_dot: x86::vec_dot::avx2,
};

#[cfg(target_arch = "x86_64")]
static AVX512: QuantOps = QuantOps {
    ty: GgmlType::Q6_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::avx512,
    from_f32: from_f32_scalar,
    vec_dot: x86::vec_dot::avx512,
};

#[cfg(target_arch = "x86_64")]
static VNNI: QuantOps = QuantOps {
    ty: GgmlType::Q6_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::vnni,
    from_f32: from_f32_scalar,
    vec_dot: x86::vec_dot::vnni,
};

/// The Q6_K kernels for `isa`. An `isa` this CPU lacks gets the scalar
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
