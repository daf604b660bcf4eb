//! Q8_1: 32 values per 36-byte block, `d: f16`, `s: f16` (= `d * sum(q)`),
//! then 32 `i8` quants (`block_q8_1` in ggml-common.h); value = `d * q`.
//!
//! Q8_1 is the activation format of Q4_1 and Q5_1 weights: `s` lets their
//! dot products add the weight minimum `m` as one product `m * s` per block.
//! [`QuantOps::from_f32`] reproduces ggml-cpu's x86 `quantize_row_q8_1`
//! (round half to even, multiplier `127 / amax`); [`quantize_ref`] is ggml's
//! `quantize_row_q8_1_ref` (round half away from zero, `1 / d`).
//!
//! ggml has no Q8_1 × Q8_1 dot product nor Q8_1 dequantizer; ours are the
//! natural ones (`sum(d_w * d_a * sumi)`, `d * q`), `s` being unused by both.

use super::q8_0::{block_sumi, quantize_block};
use super::simd::{self, check_convert, check_dot, f16_to_f32, f32_to_f16, u16_at};
use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

/// Values per block.
const QK: usize = 32;
/// Bytes per block: `d` (2) + `s` (2) + `qs` (32).
const BYTES: usize = 36;

static SCALAR: QuantOps = QuantOps {
    ty: GgmlType::Q8_1,
    vec_dot_type: GgmlType::Q8_1,
    to_f32,
    from_f32,
    vec_dot,
};

/// The Q8_1 kernels for `isa` (or the best slower ISA this CPU has).
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

/// `dst[i] = d * q[i]`.
fn to_f32(src: &[u8], dst: &mut [f32]) {
    check_convert(GgmlType::Q8_1, dst.len(), src);
    for (b, y) in src.chunks_exact(BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(u16_at(b, 0));
        for (y, &q) in y.iter_mut().zip(&b[4..]) {
            *y = q as i8 as f32 * d;
        }
    }
}

/// Writes the `d` and `s = d * sum` header of a block.
fn put_header(b: &mut [u8], d: f32, sum: i32) {
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    b[2..4].copy_from_slice(&f32_to_f16(d * sum as f32).to_le_bytes());
}

/// Activation quantizer: ggml-cpu's x86 `quantize_row_q8_1`.
fn from_f32(src: &[f32], dst: &mut [u8]) {
    check_convert(GgmlType::Q8_1, src.len(), dst);
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(BYTES)) {
        let (d, sum) = quantize_block(x, &mut b[4..]);
        put_header(b, d, sum);
    }
}

/// ggml's `quantize_row_q8_1_ref`: `id = 1 / (amax / 127)`, quants rounded
/// half away from zero. `src.len()` must be a multiple of 32 and `dst` hold
/// exactly its blocks.
pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
    check_convert(GgmlType::Q8_1, src.len(), dst);
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(BYTES)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0;
        for (q, &v) in b[4..].iter_mut().zip(x) {
            let r = (v * id).round() as i8;
            sum += r as i32;
            *q = r as u8;
        }
        put_header(b, d, sum);
    }
}

/// Scalar reference dot product (Q8_1 × Q8_1), summed block by block.
fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_dot(GgmlType::Q8_1, GgmlType::Q8_1, n, w, a);
    w.chunks_exact(BYTES)
        .zip(a.chunks_exact(BYTES))
        .fold(0.0, |s, (w, a)| {
            let d = f16_to_f32(u16_at(w, 0)) * f16_to_f32(u16_at(a, 0));
            s + block_sumi(w, a, 4) as f32 * d
        })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 and AVX-512 Q8_1 kernels; the dot products are Q8_0's generic
    //! kernels instantiated for 36-byte blocks.

    use super::super::q8_0::x86::{dot_avx2, dot_vnni};
    use super::super::simd::x86::*;
    use super::*;
    use std::arch::x86_64::*;

    pub(super) static AVX2: QuantOps = QuantOps {
        ty: GgmlType::Q8_1,
        vec_dot_type: GgmlType::Q8_1,
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
        check_convert(GgmlType::Q8_1, dst.len(), src);
        // SAFETY: see above.
        unsafe { to_f32_avx2_k(src, dst) }
    }

    fn from_f32_avx2(src: &[f32], dst: &mut [u8]) {
        check_convert(GgmlType::Q8_1, src.len(), dst);
        // SAFETY: see above.
        unsafe { from_f32_avx2_k(src, dst) }
    }

    fn from_f32_avx512(src: &[f32], dst: &mut [u8]) {
        check_convert(GgmlType::Q8_1, src.len(), dst);
        // SAFETY: see above.
        unsafe { from_f32_avx512_k(src, dst) }
    }

    fn vec_dot_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::Q8_1, GgmlType::Q8_1, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx2::<BYTES, 4>(w, a) }
    }

    fn vec_dot_vnni(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::Q8_1, GgmlType::Q8_1, n, w, a);
        // SAFETY: see above.
        unsafe { dot_vnni::<BYTES, 4>(w, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn to_f32_avx2_k(src: &[u8], dst: &mut [f32]) {
        let (blocks, _) = src.as_chunks::<BYTES>();
        let (ys, _) = dst.as_chunks_mut::<QK>();
        for (b, y) in blocks.iter().zip(ys) {
            let d = _mm256_set1_ps(f16_to_f32(u16_at(b, 0)));
            store_i8x32_scaled(load_256(b, 4), d, None, y);
        }
    }

    /// The header with F16C conversions (same rounding as [`put_header`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn put_header_f16c(b: &mut [u8], d: f32, sum: i32) {
        b[..2].copy_from_slice(&f32_to_f16_f16c(d).to_le_bytes());
        b[2..4].copy_from_slice(&f32_to_f16_f16c(d * sum as f32).to_le_bytes());
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn from_f32_avx2_k(src: &[f32], dst: &mut [u8]) {
        let (xs, _) = src.as_chunks::<QK>();
        let (blocks, _) = dst.as_chunks_mut::<BYTES>();
        for (x, b) in xs.iter().zip(blocks) {
            let (d, sum) = quantize_q8_block_256(x, &mut b[4..]);
            put_header_f16c(b, d, sum);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    fn from_f32_avx512_k(src: &[f32], dst: &mut [u8]) {
        let (xs, _) = src.as_chunks::<QK>();
        let (blocks, _) = dst.as_chunks_mut::<BYTES>();
        for (x, b) in xs.iter().zip(blocks) {
            let (d, sum) = quantize_q8_block_512(x, &mut b[4..]);
            put_header_f16c(b, d, sum);
        }
    }
}
