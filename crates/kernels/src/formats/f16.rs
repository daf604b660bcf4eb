//! F16: little-endian IEEE-754 half precision, one value per 2 bytes.
//! Dotted against F16, as in ggml (`ggml_vec_dot_f16`): both operands are
//! widened to f32 and multiplied; conversion from f32 rounds to nearest even
//! (F16C `vcvtps2ph` / the `half` crate, bit-identical).
//!
//! The scalar reference accumulates in f64 like ggml's scalar path. The SIMD
//! paths follow ggml's x86 `ggml_vec_dot_f16` step for step (four FMA
//! accumulators over 32 (AVX2) or 64 (AVX-512) values, its reduction, an f64
//! tail), so they give the numbers of a llama.cpp built for the same ISA.

use super::simd::{self, check_convert, check_dot, f16_to_f32, f32_to_f16};
use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

static SCALAR: QuantOps = QuantOps {
    ty: GgmlType::F16,
    vec_dot_type: GgmlType::F16,
    to_f32,
    from_f32,
    vec_dot,
};

/// The F16 kernels for `isa` (or the best slower ISA this CPU has).
pub fn ops(isa: Isa) -> &'static QuantOps {
    match simd::usable(isa) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &x86::AVX2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => &x86::AVX512,
        _ => &SCALAR,
    }
}

fn to_f32(src: &[u8], dst: &mut [f32]) {
    check_convert(GgmlType::F16, dst.len(), src);
    for (y, b) in dst.iter_mut().zip(src.as_chunks::<2>().0) {
        *y = f16_to_f32(u16::from_le_bytes(*b));
    }
}

/// Round to nearest even; overflow gives ±inf, NaN stays NaN.
fn from_f32(src: &[f32], dst: &mut [u8]) {
    check_convert(GgmlType::F16, src.len(), dst);
    for (b, &x) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
        *b = f32_to_f16(x).to_le_bytes();
    }
}

/// Products of widened values (exact in f32), summed in f64.
fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_dot(GgmlType::F16, GgmlType::F16, n, w, a);
    let (w, a) = (w.as_chunks::<2>().0, a.as_chunks::<2>().0);
    let sum = w.iter().zip(a).fold(0.0f64, |s, (w, a)| {
        let (w, a) = (u16::from_le_bytes(*w), u16::from_le_bytes(*a));
        s + (f16_to_f32(w) * f16_to_f32(a)) as f64
    });
    sum as f32
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! F16C conversions and AVX2 / AVX-512 dot products.

    use super::super::simd::x86::*;
    use super::*;
    use std::arch::x86_64::*;

    /// `vcvtps2ph` rounding: to nearest even (the 256-bit form takes only
    /// the 3-bit mode; the 512-bit form also suppresses exceptions).
    const RNE: i32 = _MM_FROUND_TO_NEAREST_INT;
    const RNE_SAE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    pub(super) static AVX2: QuantOps = QuantOps {
        ty: GgmlType::F16,
        vec_dot_type: GgmlType::F16,
        to_f32: to_f32_avx2,
        from_f32: from_f32_avx2,
        vec_dot: vec_dot_avx2,
    };

    pub(super) static AVX512: QuantOps = QuantOps {
        ty: GgmlType::F16,
        vec_dot_type: GgmlType::F16,
        to_f32: to_f32_avx512,
        from_f32: from_f32_avx512,
        vec_dot: vec_dot_avx512,
    };

    // SAFETY (all wrappers below): these tables are only handed out by
    // `ops()` after `simd::usable` confirmed the CPU has the features; the
    // kernels index their slices with checked arithmetic.

    fn to_f32_avx2(src: &[u8], dst: &mut [f32]) {
        check_convert(GgmlType::F16, dst.len(), src);
        // SAFETY: see above.
        unsafe { to_f32_avx2_k(src, dst) }
    }

    fn from_f32_avx2(src: &[f32], dst: &mut [u8]) {
        check_convert(GgmlType::F16, src.len(), dst);
        // SAFETY: see above.
        unsafe { from_f32_avx2_k(src, dst) }
    }

    fn vec_dot_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::F16, GgmlType::F16, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx2(w, a) }
    }

    fn to_f32_avx512(src: &[u8], dst: &mut [f32]) {
        check_convert(GgmlType::F16, dst.len(), src);
        // SAFETY: see above.
        unsafe { to_f32_avx512_k(src, dst) }
    }

    fn from_f32_avx512(src: &[f32], dst: &mut [u8]) {
        check_convert(GgmlType::F16, src.len(), dst);
        // SAFETY: see above.
        unsafe { from_f32_avx512_k(src, dst) }
    }

    fn vec_dot_avx512(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::F16, GgmlType::F16, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx512(w, a) }
    }

    /// 8 halves at byte `off` of `s`, widened.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn ld8(s: &[u8], off: usize) -> __m256 {
        _mm256_cvtph_ps(load_128(s, off))
    }

    /// 16 halves at byte `off` of `s`, widened.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    fn ld16(s: &[u8], off: usize) -> __m512 {
        _mm512_cvtph_ps(load_256(s, off))
    }

    /// The leftover products added to `sum` in f64 (ggml's tail).
    fn tail(sum: f32, w: &[u8], a: &[u8]) -> f32 {
        let (w, a) = (w.as_chunks::<2>().0, a.as_chunks::<2>().0);
        let sum = w.iter().zip(a).fold(sum as f64, |s, (w, a)| {
            let (w, a) = (u16::from_le_bytes(*w), u16::from_le_bytes(*a));
            s + (f16_to_f32(w) * f16_to_f32(a)) as f64
        });
        sum as f32
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn to_f32_avx2_k(src: &[u8], dst: &mut [f32]) {
        let (s8, sr) = src.as_chunks::<16>();
        let (d8, dr) = dst.as_chunks_mut::<8>();
        for (s, d) in s8.iter().zip(d8.iter_mut()) {
            store_ps_256(d, 0, ld8(s, 0));
        }
        to_f32(sr, dr);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn from_f32_avx2_k(src: &[f32], dst: &mut [u8]) {
        let (s8, sr) = src.as_chunks::<8>();
        let (d8, dr) = dst.as_chunks_mut::<16>();
        for (s, d) in s8.iter().zip(d8.iter_mut()) {
            store_128(d, 0, _mm256_cvtps_ph::<RNE>(load_ps_256(s, 0)));
        }
        from_f32(sr, dr);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2(w: &[u8], a: &[u8]) -> f32 {
        let (w4, wr) = w.as_chunks::<64>();
        let (a4, ar) = a.as_chunks::<64>();
        let mut acc = [_mm256_setzero_ps(); 4];
        for (w, a) in w4.iter().zip(a4) {
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(ld8(w, 16 * k), ld8(a, 16 * k), *acc);
            }
        }
        tail(reduce4_256(acc), wr, ar)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    fn to_f32_avx512_k(src: &[u8], dst: &mut [f32]) {
        let (s16, sr) = src.as_chunks::<32>();
        let (d16, dr) = dst.as_chunks_mut::<16>();
        for (s, d) in s16.iter().zip(d16.iter_mut()) {
            store_ps_512(d, 0, ld16(s, 0));
        }
        to_f32(sr, dr);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    fn from_f32_avx512_k(src: &[f32], dst: &mut [u8]) {
        let (s16, sr) = src.as_chunks::<16>();
        let (d16, dr) = dst.as_chunks_mut::<32>();
        for (s, d) in s16.iter().zip(d16.iter_mut()) {
            store_256(d, 0, _mm512_cvtps_ph::<RNE_SAE>(load_ps_512(s, 0)));
        }
        from_f32(sr, dr);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    fn dot_avx512(w: &[u8], a: &[u8]) -> f32 {
        let (w4, wr) = w.as_chunks::<128>();
        let (a4, ar) = a.as_chunks::<128>();
        let mut acc = [_mm512_setzero_ps(); 4];
        for (w, a) in w4.iter().zip(a4) {
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(ld16(w, 32 * k), ld16(a, 32 * k), *acc);
            }
        }
        tail(reduce4_512(acc), wr, ar)
    }
}
