//! BF16: the top 16 bits of an IEEE-754 f32, little-endian, 2 bytes each.
//! Dotted against BF16, as in ggml (`ggml_vec_dot_bf16`): both operands are
//! widened to f32 and multiplied. Conversion from f32 is ggml's
//! `ggml_compute_fp32_to_bf16`: round to nearest even, NaN forced quiet.
//!
//! The scalar reference accumulates in f64 like ggml's scalar path. The SIMD
//! paths follow ggml's x86 `ggml_vec_dot_bf16` step for step (AVX2: four
//! accumulators, AVX-512: two, over 32 values per step, products and sums
//! rounded separately, an f64 tail), so they give the numbers of a
//! llama.cpp built for the same ISA. (AVX512-BF16 `vdpbf16ps`, which ggml
//! uses where present, is not part of [`Isa`].)

use super::simd::{self, check_convert, check_dot};
use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

static SCALAR: QuantOps = QuantOps {
    ty: GgmlType::BF16,
    vec_dot_type: GgmlType::BF16,
    to_f32,
    from_f32,
    vec_dot,
};

/// The BF16 kernels for `isa` (or the best slower ISA this CPU has).
pub fn ops(isa: Isa) -> &'static QuantOps {
    match simd::usable(isa) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &x86::AVX2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => &x86::AVX512,
        _ => &SCALAR,
    }
}

/// bf16 bits to f32 (exact).
#[inline]
fn widen(b: [u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
}

/// f32 to bf16 bits like ggml: NaN → quiet NaN with the top payload bits,
/// otherwise round to nearest even (overflow rounds to ±inf).
#[inline]
fn narrow(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    // No overflow: the largest non-NaN pattern is 0xff80_0000 (-inf).
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

fn to_f32(src: &[u8], dst: &mut [f32]) {
    check_convert(GgmlType::BF16, dst.len(), src);
    for (y, b) in dst.iter_mut().zip(src.as_chunks::<2>().0) {
        *y = widen(*b);
    }
}

fn from_f32(src: &[f32], dst: &mut [u8]) {
    check_convert(GgmlType::BF16, src.len(), dst);
    for (b, &x) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
        *b = narrow(x).to_le_bytes();
    }
}

/// Products of widened values, summed in f64.
fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_dot(GgmlType::BF16, GgmlType::BF16, n, w, a);
    let (w, a) = (w.as_chunks::<2>().0, a.as_chunks::<2>().0);
    let sum = w
        .iter()
        .zip(a)
        .fold(0.0f64, |s, (w, a)| s + (widen(*w) * widen(*a)) as f64);
    sum as f32
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 / AVX-512 conversions (integer rounding, bit-identical to the
    //! scalar one) and dot products.

    use super::super::simd::x86::*;
    use super::*;
    use std::arch::x86_64::*;

    pub(super) static AVX2: QuantOps = QuantOps {
        ty: GgmlType::BF16,
        vec_dot_type: GgmlType::BF16,
        to_f32: to_f32_avx2,
        from_f32: from_f32_avx2,
        vec_dot: vec_dot_avx2,
    };

    pub(super) static AVX512: QuantOps = QuantOps {
        ty: GgmlType::BF16,
        vec_dot_type: GgmlType::BF16,
        to_f32: to_f32_avx512,
        from_f32: from_f32_avx512,
        vec_dot: vec_dot_avx512,
    };

    // SAFETY (all wrappers below): these tables are only handed out by
    // `ops()` after `simd::usable` confirmed the CPU has the features; the
    // kernels index their slices with checked arithmetic.

    fn to_f32_avx2(src: &[u8], dst: &mut [f32]) {
        check_convert(GgmlType::BF16, dst.len(), src);
        // SAFETY: see above.
        unsafe { to_f32_avx2_k(src, dst) }
    }

    fn from_f32_avx2(src: &[f32], dst: &mut [u8]) {
        check_convert(GgmlType::BF16, src.len(), dst);
        // SAFETY: see above.
        unsafe { from_f32_avx2_k(src, dst) }
    }

    fn vec_dot_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::BF16, GgmlType::BF16, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx2(w, a) }
    }

    fn to_f32_avx512(src: &[u8], dst: &mut [f32]) {
        check_convert(GgmlType::BF16, dst.len(), src);
        // SAFETY: see above.
        unsafe { to_f32_avx512_k(src, dst) }
    }

    fn from_f32_avx512(src: &[f32], dst: &mut [u8]) {
        check_convert(GgmlType::BF16, src.len(), dst);
        // SAFETY: see above.
        unsafe { from_f32_avx512_k(src, dst) }
    }

    fn vec_dot_avx512(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::BF16, GgmlType::BF16, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx512(w, a) }
    }

    /// 8 bf16 at byte `off` of `s`, widened.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn ld8(s: &[u8], off: usize) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load_128(
            s, off,
        ))))
    }

    /// 16 bf16 at byte `off` of `s`, widened.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    fn ld16(s: &[u8], off: usize) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(load_256(
            s, off,
        ))))
    }

    /// The leftover products added to `sum` in f64 (ggml's tail).
    fn tail(sum: f64, w: &[u8], a: &[u8]) -> f32 {
        let (w, a) = (w.as_chunks::<2>().0, a.as_chunks::<2>().0);
        let sum = w
            .iter()
            .zip(a)
            .fold(sum, |s, (w, a)| s + (widen(*w) * widen(*a)) as f64);
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

    /// [`narrow`] on 8 lanes; the results sit in the low 16 bits of each.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn narrow8(v: __m256) -> __m256i {
        let u = _mm256_castps_si256(v);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
        let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb);
        let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(u, bias));
        let abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fff_ffff));
        let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f80_0000));
        let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(64));
        _mm256_blendv_epi8(rounded, quiet, nan)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn from_f32_avx2_k(src: &[f32], dst: &mut [u8]) {
        let (s8, sr) = src.as_chunks::<8>();
        let (d8, dr) = dst.as_chunks_mut::<16>();
        for (s, d) in s8.iter().zip(d8.iter_mut()) {
            let r = narrow8(load_ps_256(s, 0));
            // packus works per 128-bit lane: gather quadwords 0 and 2.
            let p = _mm256_permute4x64_epi64::<0b10_00>(_mm256_packus_epi32(r, r));
            store_128(d, 0, _mm256_castsi256_si128(p));
        }
        from_f32(sr, dr);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2(w: &[u8], a: &[u8]) -> f32 {
        let (w4, wr) = w.as_chunks::<64>();
        let (a4, ar) = a.as_chunks::<64>();
        let mut c = [_mm256_setzero_ps(); 4];
        for (w, a) in w4.iter().zip(a4) {
            for (k, c) in c.iter_mut().enumerate() {
                *c = _mm256_add_ps(_mm256_mul_ps(ld8(w, 16 * k), ld8(a, 16 * k)), *c);
            }
        }
        let v = _mm256_add_ps(_mm256_add_ps(c[0], c[2]), _mm256_add_ps(c[1], c[3]));
        tail(hsum_ps_256(v) as f64, wr, ar)
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
            let u = _mm512_castps_si512(load_ps_512(s, 0));
            let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(1));
            let bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb);
            let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(u, bias));
            let abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fff_ffff));
            let nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
            let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(64));
            let r = _mm512_mask_blend_epi32(nan, rounded, quiet);
            store_256(d, 0, _mm512_cvtepi32_epi16(r));
        }
        from_f32(sr, dr);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    fn dot_avx512(w: &[u8], a: &[u8]) -> f32 {
        let (w2, wr) = w.as_chunks::<64>();
        let (a2, ar) = a.as_chunks::<64>();
        let mut c = [_mm512_setzero_ps(); 2];
        for (w, a) in w2.iter().zip(a2) {
            for (k, c) in c.iter_mut().enumerate() {
                *c = _mm512_add_ps(_mm512_mul_ps(ld16(w, 32 * k), ld16(a, 32 * k)), *c);
            }
        }
        let sum = reduce_add_512(c[0]) as f64 + reduce_add_512(c[1]) as f64;
        tail(sum, wr, ar)
    }
}
