//! Q5_0: 32 weights per 22-byte block, `d: f16`, `qh: u32` (bit `i` = bit 4
//! of element `i`), then 16 bytes of low nibbles (`block_q5_0` in
//! ggml-common.h: byte `j` holds elements `j` and `j + 16`); value =
//! `d * (q - 16)`. Dotted against Q8_0 activations, as in ggml.

use super::simd::{self, check_convert, check_dot, f16_to_f32, f32_to_f16, u16_at, u32_at};
use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

/// Values per block.
const QK: usize = 32;
/// Bytes per block: `d` (2) + `qh` (4) + `qs` (16).
const BYTES: usize = 22;
/// Bytes per Q8_0 activation block.
const A_BYTES: usize = 34;

static SCALAR: QuantOps = QuantOps {
    ty: GgmlType::Q5_0,
    vec_dot_type: GgmlType::Q8_0,
    to_f32,
    from_f32,
    vec_dot,
};

/// The Q5_0 kernels for `isa` (or the best slower ISA this CPU has). Plain
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

/// The 5-bit quants of elements `j` and `j + 16` (0..=31).
#[inline]
fn quants(b: &[u8], qh: u32, j: usize) -> (i32, i32) {
    let q = b[6 + j];
    let h0 = (qh >> j) & 1;
    let h1 = (qh >> (j + 16)) & 1;
    (
        ((q & 0x0F) as u32 | h0 << 4) as i32,
        ((q >> 4) as u32 | h1 << 4) as i32,
    )
}

/// ggml `dequantize_row_q5_0`.
fn to_f32(src: &[u8], dst: &mut [f32]) {
    check_convert(GgmlType::Q5_0, dst.len(), src);
    for (b, y) in src.chunks_exact(BYTES).zip(dst.chunks_exact_mut(QK)) {
        let (d, qh) = (f16_to_f32(u16_at(b, 0)), u32_at(b, 2));
        for j in 0..16 {
            let (q0, q1) = quants(b, qh, j);
            y[j] = (q0 - 16) as f32 * d;
            y[j + 16] = (q1 - 16) as f32 * d;
        }
    }
}

/// ggml `quantize_row_q5_0_ref`: `d = max / -16` where `max` is the value of
/// largest magnitude (first one on ties), `q = min(31, trunc(x / d + 16.5))`.
fn from_f32(src: &[f32], dst: &mut [u8]) {
    check_convert(GgmlType::Q5_0, src.len(), dst);
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(BYTES)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| ((v * id + 16.5) as i32).clamp(0, 31) as u32;
        let mut qh = 0u32;
        for j in 0..16 {
            let (q0, q1) = (q(x[j]), q(x[j + 16]));
            b[6 + j] = ((q0 & 0x0F) | (q1 & 0x0F) << 4) as u8;
            qh |= (q0 >> 4) << j | (q1 >> 4) << (j + 16);
        }
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        b[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// One block's term, `sumi * (d_w * d_a)` (ggml `ggml_vec_dot_q5_0_q8_0`).
#[inline]
fn block_dot(w: &[u8], a: &[u8]) -> f32 {
    let qh = u32_at(w, 2);
    let mut sumi = 0i32;
    for j in 0..16 {
        let (q0, q1) = quants(w, qh, j);
        sumi += (q0 - 16) * a[2 + j] as i8 as i32 + (q1 - 16) * a[18 + j] as i8 as i32;
    }
    sumi as f32 * (f16_to_f32(u16_at(w, 0)) * f16_to_f32(u16_at(a, 0)))
}

/// Scalar reference dot product (Q5_0 × Q8_0), summed block by block.
fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_dot(GgmlType::Q5_0, GgmlType::Q8_0, n, w, a);
    w.chunks_exact(BYTES)
        .zip(a.chunks_exact(A_BYTES))
        .fold(0.0, |s, (w, a)| s + block_dot(w, a))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 and AVX512-VNNI Q5_0 kernels, two blocks per step.

    use super::super::simd::x86::*;
    use super::*;
    use std::arch::x86_64::*;

    pub(super) static AVX2: QuantOps = QuantOps {
        ty: GgmlType::Q5_0,
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
        check_convert(GgmlType::Q5_0, dst.len(), src);
        // SAFETY: see above.
        unsafe { to_f32_avx2_k(src, dst) }
    }

    fn vec_dot_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::Q5_0, GgmlType::Q8_0, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx2(w, a) }
    }

    fn vec_dot_vnni(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::Q5_0, GgmlType::Q8_0, n, w, a);
        // SAFETY: see above.
        unsafe { dot_vnni(w, a) }
    }

    /// The 32 quants (0..=31) of the block at `w[off..]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quants_256(w: &[u8], off: usize) -> __m256i {
        let hi = _mm256_and_si256(
            bits_to_bytes_256(u32_at(w, off + 2)),
            _mm256_set1_epi8(0x10),
        );
        _mm256_or_si256(nibbles_256(w, off + 6), hi)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn to_f32_avx2_k(src: &[u8], dst: &mut [f32]) {
        let (blocks, _) = src.as_chunks::<BYTES>();
        let (ys, _) = dst.as_chunks_mut::<QK>();
        for (b, y) in blocks.iter().zip(ys) {
            let d = _mm256_set1_ps(f16_to_f32(u16_at(b, 0)));
            let q = _mm256_sub_epi8(quants_256(b, 0), _mm256_set1_epi8(16));
            store_i8x32_scaled(q, d, None, y);
        }
    }

    /// The 8 i32 sums of `(q - 16) * a` over one block, as `q * a - 16 * a`
    /// with `vpmaddubsw`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sums_256(w: &[u8], a: &[u8]) -> __m256i {
        dot_u8i8_off_256(quants_256(w, 0), load_256(a, 2), _mm256_set1_epi8(16))
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

    /// Two blocks per 512-bit register; the two `qh` words form the mask
    /// that adds 16 to the high-bit bytes, then `(q - 16) * a` is
    /// `vpdpbusd(q, a) - vpdpbusd(16, a)`, accumulated like [`dot_avx2`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn dot_vnni(w: &[u8], a: &[u8]) -> f32 {
        let (w2, wt) = w.as_chunks::<BYTES>().0.as_chunks::<2>();
        let (a2, at) = a.as_chunks::<A_BYTES>().0.as_chunks::<2>();
        let off = _mm512_set1_epi8(16);
        let zero = _mm512_setzero_si512();
        let mut acc = _mm256_setzero_ps();
        for (wp, ap) in w2.iter().zip(a2) {
            let (w, a) = (wp.as_flattened(), ap.as_flattened());
            let hi = u32_at(w, 2) as u64 | (u32_at(w, BYTES + 2) as u64) << 32;
            let q = nibbles2_512(w, 6, BYTES + 6);
            let q = _mm512_mask_add_epi8(q, hi, q, off);
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
