//! Q8_0: 32 values per 34-byte block, `d: f16` then 32 `i8` quants
//! (`block_q8_0` in ggml-common.h); value = `d * q`. Dotted against Q8_0.
//!
//! Q8_0 is also the activation format of Q4_0, Q5_0 and Q8_0 weights, so
//! [`QuantOps::from_f32`] here is on the matmul hot path. It reproduces
//! ggml-cpu's x86 `quantize_row_q8_0` (the quantizer llama.cpp runs on
//! AVX/AVX2/AVX-512 CPUs): `d = amax / 127`, quants `round_half_even(x * (127
//! / amax))`. That differs from ggml's `quantize_row_q8_0_ref` (used to write
//! model files, and what gguf-py implements) only in rounding ties and in the
//! last bit of the multiplier; [`quantize_ref`] is that variant.

use super::simd::{self, check_convert, check_dot, f16_to_f32, f32_to_f16, u16_at};
use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

/// Values per block.
const QK: usize = 32;
/// Bytes per block: `d` (2) + `qs` (32).
const BYTES: usize = 34;

static SCALAR: QuantOps = QuantOps {
    ty: GgmlType::Q8_0,
    vec_dot_type: GgmlType::Q8_0,
    to_f32,
    from_f32,
    vec_dot,
};

/// The Q8_0 kernels for `isa` (or the best slower ISA this CPU has).
pub fn ops(isa: Isa) -> &'static QuantOps {
    match simd::usable(isa) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &x86::AVX2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => &x86::AVX512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => &x86::VNNI,
        _ => &SCALAR,
    }
}

/// `dst[i] = d * q[i]` (ggml `dequantize_row_q8_0`).
fn to_f32(src: &[u8], dst: &mut [f32]) {
    check_convert(GgmlType::Q8_0, dst.len(), src);
    for (b, y) in src.chunks_exact(BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(u16_at(b, 0));
        for (y, &q) in y.iter_mut().zip(&b[2..]) {
            *y = q as i8 as f32 * d;
        }
    }
}

/// Quantizes one block with ggml-cpu's x86 numbers (see the module doc).
/// Returns the f32 scale and the sum of the quants (Q8_1 stores both).
pub(super) fn quantize_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v * id| <= 127 (+ 1 ulp), so the clamp only mirrors the SIMD pack.
        let r = ((v * id).round_ties_even() as i32).clamp(-128, 127);
        sum += r;
        *q = r as i8 as u8;
    }
    (d, sum)
}

/// Activation quantizer: ggml-cpu's x86 `quantize_row_q8_0`.
fn from_f32(src: &[f32], dst: &mut [u8]) {
    check_convert(GgmlType::Q8_0, src.len(), dst);
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(BYTES)) {
        let (d, _) = quantize_block(x, &mut b[2..]);
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    }
}

/// ggml's `quantize_row_q8_0_ref`, the quantizer of model files
/// (llama-quantize, gguf-py): `id = 1 / (amax / 127)`, quants rounded half
/// away from zero. `src.len()` must be a multiple of 32 and `dst` hold
/// exactly its blocks.
pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
    check_convert(GgmlType::Q8_0, src.len(), dst);
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(BYTES)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        for (q, &v) in b[2..].iter_mut().zip(x) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}

/// Integer dot of the quants of two Q8 blocks (`qs` at `off`).
#[inline]
pub(super) fn block_sumi(w: &[u8], a: &[u8], off: usize) -> i32 {
    let (w, a) = (&w[off..off + QK], &a[off..off + QK]);
    w.iter()
        .zip(a)
        .map(|(&x, &y)| x as i8 as i32 * y as i8 as i32)
        .sum()
}

/// One block's term, `sumi * (d_w * d_a)` (ggml `ggml_vec_dot_q8_0_q8_0`).
#[inline]
fn block_dot(w: &[u8], a: &[u8]) -> f32 {
    let d = f16_to_f32(u16_at(w, 0)) * f16_to_f32(u16_at(a, 0));
    block_sumi(w, a, 2) as f32 * d
}

/// Scalar reference dot product (Q8_0 × Q8_0), summed block by block.
fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_dot(GgmlType::Q8_0, GgmlType::Q8_0, n, w, a);
    w.chunks_exact(BYTES)
        .zip(a.chunks_exact(BYTES))
        .fold(0.0, |s, (w, a)| s + block_dot(w, a))
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    //! AVX2 and AVX-512 Q8_0 kernels. The dot kernels are generic over the
    //! block size `S` and quant offset `OFF` so that Q8_1 × Q8_1 shares them.

    use super::super::simd::x86::*;
    use super::*;
    use std::arch::x86_64::*;

    pub(super) static AVX2: QuantOps = QuantOps {
        ty: GgmlType::Q8_0,
        vec_dot_type: GgmlType::Q8_0,
        to_f32: to_f32_avx2,
        from_f32: from_f32_avx2,
        vec_dot: vec_dot_avx2,
    };

    /// AVX-512 without VNNI: 512-bit quantizer, AVX2 dot product.
    pub(super) static AVX512: QuantOps = QuantOps {
        from_f32: from_f32_avx512,
        ..AVX2
    };

    pub(super) static VNNI: QuantOps = QuantOps {
        from_f32: from_f32_avx512,
        vec_dot: vec_dot_vnni,
        ..AVX2
    };

    // SAFETY (all wrappers below): these tables are only handed out by
    // `ops()` after `simd::usable` confirmed the CPU has the features; the
    // kernels index their slices with checked arithmetic.

    fn to_f32_avx2(src: &[u8], dst: &mut [f32]) {
        check_convert(GgmlType::Q8_0, dst.len(), src);
        // SAFETY: see above.
        unsafe { to_f32_avx2_k(src, dst) }
    }

    fn from_f32_avx2(src: &[f32], dst: &mut [u8]) {
        check_convert(GgmlType::Q8_0, src.len(), dst);
        // SAFETY: see above.
        unsafe { from_f32_avx2_k(src, dst) }
    }

    fn from_f32_avx512(src: &[f32], dst: &mut [u8]) {
        check_convert(GgmlType::Q8_0, src.len(), dst);
        // SAFETY: see above.
        unsafe { from_f32_avx512_k(src, dst) }
    }

    fn vec_dot_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::Q8_0, GgmlType::Q8_0, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx2::<BYTES, 2>(w, a) }
    }

    fn vec_dot_vnni(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::Q8_0, GgmlType::Q8_0, n, w, a);
        // SAFETY: see above.
        unsafe { dot_vnni::<BYTES, 2>(w, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn to_f32_avx2_k(src: &[u8], dst: &mut [f32]) {
        let (blocks, _) = src.as_chunks::<BYTES>();
        let (ys, _) = dst.as_chunks_mut::<QK>();
        for (b, y) in blocks.iter().zip(ys) {
            let d = _mm256_set1_ps(f16_to_f32(u16_at(b, 0)));
            store_i8x32_scaled(load_256(b, 2), d, None, y);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn from_f32_avx2_k(src: &[f32], dst: &mut [u8]) {
        let (xs, _) = src.as_chunks::<QK>();
        let (blocks, _) = dst.as_chunks_mut::<BYTES>();
        for (x, b) in xs.iter().zip(blocks) {
            let (d, _) = quantize_q8_block_256(x, &mut b[2..]);
            b[..2].copy_from_slice(&f32_to_f16_f16c(d).to_le_bytes());
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    fn from_f32_avx512_k(src: &[f32], dst: &mut [u8]) {
        let (xs, _) = src.as_chunks::<QK>();
        let (blocks, _) = dst.as_chunks_mut::<BYTES>();
        for (x, b) in xs.iter().zip(blocks) {
            let (d, _) = quantize_q8_block_512(x, &mut b[2..]);
            b[..2].copy_from_slice(&f32_to_f16_f16c(d).to_le_bytes());
        }
    }

    /// The last block of an odd count, into the same accumulator.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tail<const S: usize, const OFF: usize>(
        mut acc: __m256,
        wt: &[[u8; S]],
        at: &[[u8; S]],
    ) -> __m256 {
        for (w, a) in wt.iter().zip(at) {
            let d = scales_d2(u16_at(w, 0), u16_at(a, 0), 0, 0);
            let i = dot_i8i8_256(load_256(w, OFF), load_256(a, OFF));
            acc = fmadd1_256(acc, _mm256_castps128_ps256(d), 0, i);
        }
        acc
    }

    /// Q8 × Q8 dot (blocks of `S` bytes, `d` at 0, quants at `OFF`) with
    /// `|w| * sign(a, w)`, blocks accumulated in order into one accumulator
    /// like ggml. Exact per block for activation quants != -128.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in super::super) fn dot_avx2<const S: usize, const OFF: usize>(w: &[u8], a: &[u8]) -> f32 {
        let (w2, wt) = w.as_chunks::<S>().0.as_chunks::<2>();
        let (a2, at) = a.as_chunks::<S>().0.as_chunks::<2>();
        let mut acc = _mm256_setzero_ps();
        for ([w0, w1], [a0, a1]) in w2.iter().zip(a2) {
            let d = scales_d2(u16_at(w0, 0), u16_at(a0, 0), u16_at(w1, 0), u16_at(a1, 0));
            let i0 = dot_i8i8_256(load_256(w0, OFF), load_256(a0, OFF));
            let i1 = dot_i8i8_256(load_256(w1, OFF), load_256(a1, OFF));
            acc = fmadd2_256(acc, _mm256_castps128_ps256(d), (0, 2), i0, i1);
        }
        hsum_ps_256(tail::<S, OFF>(acc, wt, at))
    }

    /// AVX512-VNNI version of [`dot_avx2`] (same sums): two blocks per
    /// 512-bit register; the signed weights are biased to unsigned (`w ^ 0x80
    /// = w + 128`) for `vpdpbusd` and `128 * sum(a)` is taken back off.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(in super::super) fn dot_vnni<const S: usize, const OFF: usize>(w: &[u8], a: &[u8]) -> f32 {
        let (w2, wt) = w.as_chunks::<S>().0.as_chunks::<2>();
        let (a2, at) = a.as_chunks::<S>().0.as_chunks::<2>();
        let bias = _mm512_set1_epi8(-128);
        let zero = _mm512_setzero_si512();
        let mut acc = _mm256_setzero_ps();
        for (wp, ap) in w2.iter().zip(a2) {
            let (w, a) = (wp.as_flattened(), ap.as_flattened());
            let x = _mm512_xor_si512(load2_256(w, OFF, S + OFF), bias);
            let y = load2_256(a, OFF, S + OFF);
            let i = _mm512_sub_epi32(
                _mm512_dpbusd_epi32(zero, x, y),
                _mm512_dpbusd_epi32(zero, bias, y),
            );
            let d = scales_d2(u16_at(w, 0), u16_at(a, 0), u16_at(w, S), u16_at(a, S));
            let (i0, i1) = halves_512(i);
            acc = fmadd2_256(acc, _mm256_castps128_ps256(d), (0, 2), i0, i1);
        }
        hsum_ps_256(tail::<S, OFF>(acc, wt, at))
    }
}
