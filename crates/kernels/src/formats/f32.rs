//! F32: little-endian IEEE-754 single precision, one value per 4 bytes.
//! Dotted against F32, as in ggml (`ggml_vec_dot_f32`).
//!
//! The scalar reference accumulates in f64 like ggml's scalar path. The SIMD
//! paths follow ggml's x86 `ggml_vec_dot_f32` step for step (four FMA
//! accumulators over 32 (AVX2) or 64 (AVX-512) values, its reduction, an f32
//! tail), so they give the numbers of a llama.cpp built for the same ISA.

use super::simd::{self, check_convert, check_dot};
use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

static SCALAR: QuantOps = QuantOps {
    ty: GgmlType::F32,
    vec_dot_type: GgmlType::F32,
    to_f32,
    from_f32,
    vec_dot,
};

/// The F32 kernels for `isa` (or the best slower ISA this CPU has).
pub fn ops(isa: Isa) -> &'static QuantOps {
    match simd::usable(isa) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &x86::AVX2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => &x86::AVX512,
        _ => &SCALAR,
    }
}

/// Byte copy (the compiler vectorizes it; no SIMD variant needed).
fn to_f32(src: &[u8], dst: &mut [f32]) {
    check_convert(GgmlType::F32, dst.len(), src);
    for (y, b) in dst.iter_mut().zip(src.as_chunks::<4>().0) {
        *y = f32::from_le_bytes(*b);
    }
}

/// Byte copy.
fn from_f32(src: &[f32], dst: &mut [u8]) {
    check_convert(GgmlType::F32, src.len(), dst);
    for (b, x) in dst.as_chunks_mut::<4>().0.iter_mut().zip(src) {
        *b = x.to_le_bytes();
    }
}

/// Scalar reference: f32 products summed in f64.
fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_dot(GgmlType::F32, GgmlType::F32, n, w, a);
    let (w, a) = (w.as_chunks::<4>().0, a.as_chunks::<4>().0);
    let sum = w.iter().zip(a).fold(0.0f64, |s, (w, a)| {
        s + (f32::from_le_bytes(*w) * f32::from_le_bytes(*a)) as f64
    });
    sum as f32
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 and AVX-512 F32 dot products in ggml's order.

    use super::super::simd::x86::*;
    use super::*;
    use std::arch::x86_64::*;

    pub(super) static AVX2: QuantOps = QuantOps {
        ty: GgmlType::F32,
        vec_dot_type: GgmlType::F32,
        to_f32,
        from_f32,
        vec_dot: vec_dot_avx2,
    };

    pub(super) static AVX512: QuantOps = QuantOps {
        vec_dot: vec_dot_avx512,
        ..AVX2
    };

    // SAFETY (both wrappers): these tables are only handed out by `ops()`
    // after `simd::usable` confirmed the CPU has the features; the kernels
    // index their slices with checked arithmetic.

    fn vec_dot_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::F32, GgmlType::F32, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx2(w, a) }
    }

    fn vec_dot_avx512(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::F32, GgmlType::F32, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx512(w, a) }
    }

    /// 8 floats from 32 little-endian bytes at `s[off..]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn ld8(s: &[u8], off: usize) -> __m256 {
        _mm256_castsi256_ps(load_256(s, off))
    }

    /// 16 floats from 64 little-endian bytes at `s[off..]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    fn ld16(s: &[u8], off: usize) -> __m512 {
        _mm512_castsi512_ps(load_512(s, off))
    }

    /// The leftover products, added to `sum` in f32 (ggml's tail).
    fn tail(mut sum: f32, w: &[u8], a: &[u8]) -> f32 {
        let (w, a) = (w.as_chunks::<4>().0, a.as_chunks::<4>().0);
        for (w, a) in w.iter().zip(a) {
            sum += f32::from_le_bytes(*w) * f32::from_le_bytes(*a);
        }
        sum
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2(w: &[u8], a: &[u8]) -> f32 {
        let (w4, wr) = w.as_chunks::<128>();
        let (a4, ar) = a.as_chunks::<128>();
        let mut acc = [_mm256_setzero_ps(); 4];
        for (w, a) in w4.iter().zip(a4) {
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(ld8(w, 32 * k), ld8(a, 32 * k), *acc);
            }
        }
        tail(reduce4_256(acc), wr, ar)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    fn dot_avx512(w: &[u8], a: &[u8]) -> f32 {
        let (w4, wr) = w.as_chunks::<256>();
        let (a4, ar) = a.as_chunks::<256>();
        let mut acc = [_mm512_setzero_ps(); 4];
        for (w, a) in w4.iter().zip(a4) {
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(ld16(w, 64 * k), ld16(a, 64 * k), *acc);
            }
        }
        tail(reduce4_512(acc), wr, ar)
    }
}
