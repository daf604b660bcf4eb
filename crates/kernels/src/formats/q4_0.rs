//! Q4_0: 32 weights per 18-byte block, `d: f16` then 16 bytes of nibbles
//! (`block_q4_0` in ggml-common.h): byte `j` holds element `j` in its low
//! nibble and element `j + 16` in its high nibble; value = `d * (q - 8)`.
//! Dotted against Q8_0 activations, as in ggml.

use super::simd::{self, check_convert, check_dot, f16_to_f32, f32_to_f16, u16_at};
use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

/// Values per block.
const QK: usize = 32;
/// Bytes per block: `d` (2) + `qs` (16).
const BYTES: usize = 18;
/// Bytes per Q8_0 activation block.
const A_BYTES: usize = 34;

static SCALAR: QuantOps = QuantOps {
    ty: GgmlType::Q4_0,
    vec_dot_type: GgmlType::Q8_0,
    to_f32,
    from_f32,
    vec_dot,
};

/// The Q4_0 kernels for `isa` (or the best slower ISA this CPU has). Plain
/// AVX-512 (no VNNI) uses the AVX2 kernels.
pub fn ops(isa: Isa) -> &'static QuantOps {
    match simd::usable(isa) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => &x86::AVX2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => &x86::VNNI,
        _ => &SCALAR,
    }
}

/// ggml `dequantize_row_q4_0`.
fn to_f32(src: &[u8], dst: &mut [f32]) {
    check_convert(GgmlType::Q4_0, dst.len(), src);
    for (b, y) in src.chunks_exact(BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(u16_at(b, 0));
        for (j, &q) in b[2..].iter().enumerate() {
            y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// ggml `quantize_row_q4_0_ref`: `d = max / -8` where `max` is the value of
/// largest magnitude (first one on ties), `q = min(15, trunc(x / d + 8.5))`.
fn from_f32(src: &[f32], dst: &mut [u8]) {
    check_convert(GgmlType::Q4_0, src.len(), dst);
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(BYTES)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            b[2 + j] = q(x[j]) | q(x[j + 16]) << 4;
        }
    }
}

/// One block's term, `sumi * (d_w * d_a)` (ggml `ggml_vec_dot_q4_0_q8_0`).
#[inline]
fn block_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sumi = 0i32;
    for j in 0..16 {
        let q = w[2 + j];
        sumi += ((q & 0x0F) as i32 - 8) * a[2 + j] as i8 as i32;
        sumi += ((q >> 4) as i32 - 8) * a[18 + j] as i8 as i32;
    }
    sumi as f32 * (f16_to_f32(u16_at(w, 0)) * f16_to_f32(u16_at(a, 0)))
}

/// Scalar reference dot product (Q4_0 × Q8_0), summed block by block.
fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_dot(GgmlType::Q4_0, GgmlType::Q8_0, n, w, a);
    w.chunks_exact(BYTES)
        .zip(a.chunks_exact(A_BYTES))
        .fold(0.0, |s, (w, a)| s + block_dot(w, a))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 and AVX512-VNNI Q4_0 kernels, two blocks per step.

    use super::super::simd::x86::*;
    use super::*;
    use std::arch::x86_64::*;

    pub(super) static AVX2: QuantOps = QuantOps {
        ty: GgmlType::Q4_0,
        vec_dot_type: GgmlType::Q8_0,
        to_f32: to_f32_avx2,
        from_f32,
        vec_dot: vec_dot_avx2,
    };

    pub(super) static VNNI: QuantOps = QuantOps {
        vec_dot: vec_dot_vnni,
        ..AVX2
    };

    // SAFETY (all wrappers below): these tables are only handed out by
    // `ops()` after `simd::usable` confirmed the CPU has the features; the
    // kernels index their slices with checked arithmetic.

    fn to_f32_avx2(src: &[u8], dst: &mut [f32]) {
        check_convert(GgmlType::Q4_0, dst.len(), src);
        // SAFETY: see above.
        unsafe { to_f32_avx2_k(src, dst) }
    }

    fn vec_dot_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::Q4_0, GgmlType::Q8_0, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx2(w, a) }
    }

    fn vec_dot_vnni(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::Q4_0, GgmlType::Q8_0, n, w, a);
        // SAFETY: see above.
        unsafe { dot_vnni(w, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn to_f32_avx2_k(src: &[u8], dst: &mut [f32]) {
        let (blocks, _) = src.as_chunks::<BYTES>();
        let (ys, _) = dst.as_chunks_mut::<QK>();
        for (b, y) in blocks.iter().zip(ys) {
            let d = _mm256_set1_ps(f16_to_f32(u16_at(b, 0)));
            let q = _mm256_sub_epi8(nibbles_256(b, 2), _mm256_set1_epi8(8));
            store_i8x32_scaled(q, d, None, y);
        }
    }

    /// The 8 i32 sums of `(q - 8) * a` over one block, as `q * a - 8 * a`
    /// with `vpmaddubsw` (same lanes as ggml's sign trick).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sums_256(w: &[u8], a: &[u8]) -> __m256i {
        dot_u8i8_off_256(nibbles_256(w, 2), load_256(a, 2), _mm256_set1_epi8(8))
    }

    /// Blocks are accumulated in order into one accumulator, like ggml.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2(w: &[u8], a: &[u8]) -> f32 {
        let (w2, wt) = w.as_chunks::<BYTES>().0.as_chunks::<2>();
        let (a2, at) = a.as_chunks::<A_BYTES>().0.as_chunks::<2>();
        let mut acc = _mm256_setzero_ps();
        for ([w0, w1], [a0, a1]) in w2.iter().zip(a2) {
            let d = scales_d2(u16_at(w0, 0), u16_at(a0, 0), u16_at(w1, 0), u16_at(a1, 0));
            let (i0, i1) = (sums_256(w0, a0), sums_256(w1, a1));
            acc = fmadd2_256(acc, _mm256_castps128_ps256(d), (0, 2), i0, i1);
        }
        hsum_ps_256(tail(acc, wt, at))
    }

    /// The last block of an odd count, into the same accumulator.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tail(mut acc: __m256, wt: &[[u8; BYTES]], at: &[[u8; A_BYTES]]) -> __m256 {
        for (w, a) in wt.iter().zip(at) {
            let d = scales_d2(u16_at(w, 0), u16_at(a, 0), 0, 0);
            acc = fmadd1_256(acc, _mm256_castps128_ps256(d), 0, sums_256(w, a));
        }
        acc
    }

    /// Two blocks per 512-bit register; `(q - 8) * a` as `vpdpbusd(q, a) -
    /// vpdpbusd(8, a)` (exact in i32), accumulated like [`dot_avx2`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn dot_vnni(w: &[u8], a: &[u8]) -> f32 {
        let (w2, wt) = w.as_chunks::<BYTES>().0.as_chunks::<2>();
        let (a2, at) = a.as_chunks::<A_BYTES>().0.as_chunks::<2>();
        let off = _mm512_set1_epi8(8);
        let zero = _mm512_setzero_si512();
        let mut acc = _mm256_setzero_ps();
        for (wp, ap) in w2.iter().zip(a2) {
            let (w, a) = (wp.as_flattened(), ap.as_flattened());
            let q = nibbles2_512(w, 2, BYTES + 2);
            let y = load2_256(a, 2, A_BYTES + 2);
            let i = _mm512_sub_epi32(
                _mm512_dpbusd_epi32(zero, q, y),
                _mm512_dpbusd_epi32(zero, off, y),
            );
            let d = scales_d2(
                u16_at(w, 0),
                u16_at(a, 0),
                u16_at(w, BYTES),
                u16_at(a, A_BYTES),
            );
            let (i0, i1) = halves_512(i);
            acc = fmadd2_256(acc, _mm256_castps128_ps256(d), (0, 2), i0, i1);
        }
        hsum_ps_256(tail(acc, wt, at))
    }
}
