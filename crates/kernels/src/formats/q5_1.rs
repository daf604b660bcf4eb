//! Q5_1: 32 weights per 24-byte block, `d: f16`, `m: f16`, `qh: u32` (bit
//! `i` = bit 4 of element `i`), then 16 bytes of low nibbles (`block_q5_1`
//! in ggml-common.h: byte `j` holds elements `j` and `j + 16`); value =
//! `d * q + m`. Dotted against Q8_1 activations, as in ggml: per block
//! `d_w * d_a * sum(q * a) + m * s_a`.

use super::simd::{self, check_convert, check_dot, f16_to_f32, f32_to_f16, u16_at, u32_at};
use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

/// Values per block.
const QK: usize = 32;
/// Bytes per block: `d` (2) + `m` (2) + `qh` (4) + `qs` (16).
const BYTES: usize = 24;
/// Bytes per Q8_1 activation block.
const A_BYTES: usize = 36;

static SCALAR: QuantOps = QuantOps {
    ty: GgmlType::Q5_1,
    vec_dot_type: GgmlType::Q8_1,
    to_f32,
    from_f32,
    vec_dot,
};

/// The Q5_1 kernels for `isa` (or the best slower ISA this CPU has). Plain
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
    let q = b[8 + j];
    let h0 = (qh >> j) & 1;
    let h1 = (qh >> (j + 16)) & 1;
    (
        ((q & 0x0F) as u32 | h0 << 4) as i32,
        ((q >> 4) as u32 | h1 << 4) as i32,
    )
}

/// ggml `dequantize_row_q5_1` (`q * d` then `+ m`, two roundings).
fn to_f32(src: &[u8], dst: &mut [f32]) {
    check_convert(GgmlType::Q5_1, dst.len(), src);
    for (b, y) in src.chunks_exact(BYTES).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(u16_at(b, 0)), f16_to_f32(u16_at(b, 2)));
        let qh = u32_at(b, 4);
        for j in 0..16 {
            let (q0, q1) = quants(b, qh, j);
            y[j] = q0 as f32 * d + m;
            y[j + 16] = q1 as f32 * d + m;
        }
    }
}

/// ggml `quantize_row_q5_1_ref`: `d = (max - min) / 31`, `m = min`,
/// `q = trunc((x - min) / d + 0.5)` (at most 31).
fn from_f32(src: &[f32], dst: &mut [u8]) {
    check_convert(GgmlType::Q5_1, src.len(), dst);
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(BYTES)) {
        let min = x.iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
        let max = x.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 31) as u32;
        let mut qh = 0u32;
        for j in 0..16 {
            let (q0, q1) = (q(x[j]), q(x[j + 16]));
            b[8 + j] = ((q0 & 0x0F) | (q1 & 0x0F) << 4) as u8;
            qh |= (q0 >> 4) << j | (q1 >> 4) << (j + 16);
        }
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        b[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
        b[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// One block's term (ggml `ggml_vec_dot_q5_1_q8_1`).
#[inline]
fn block_dot(w: &[u8], a: &[u8]) -> f32 {
    let qh = u32_at(w, 4);
    let mut sumi = 0i32;
    for j in 0..16 {
        let (q0, q1) = quants(w, qh, j);
        sumi += q0 * a[4 + j] as i8 as i32 + q1 * a[20 + j] as i8 as i32;
    }
    let d = f16_to_f32(u16_at(w, 0)) * f16_to_f32(u16_at(a, 0));
    d * sumi as f32 + f16_to_f32(u16_at(w, 2)) * f16_to_f32(u16_at(a, 2))
}

/// Scalar reference dot product (Q5_1 × Q8_1), summed block by block.
fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_dot(GgmlType::Q5_1, GgmlType::Q8_1, n, w, a);
    w.chunks_exact(BYTES)
        .zip(a.chunks_exact(A_BYTES))
        .fold(0.0, |s, (w, a)| s + block_dot(w, a))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 and AVX512-VNNI Q5_1 kernels, two blocks per step, in ggml's
    //! order: `d_w * d_a * sumi` FMA'd block by block into one accumulator,
    //! `m * s` (from lanes 1 and 5 of the scale vector) summed as a scalar.

    use super::super::simd::x86::*;
    use super::*;
    use std::arch::x86_64::*;

    pub(super) static AVX2: QuantOps = QuantOps {
        ty: GgmlType::Q5_1,
        vec_dot_type: GgmlType::Q8_1,
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
        check_convert(GgmlType::Q5_1, dst.len(), src);
        // SAFETY: see above.
        unsafe { to_f32_avx2_k(src, dst) }
    }

    fn vec_dot_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::Q5_1, GgmlType::Q8_1, n, w, a);
        // SAFETY: see above.
        unsafe { dot_avx2(w, a) }
    }

    fn vec_dot_vnni(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(GgmlType::Q5_1, GgmlType::Q8_1, n, w, a);
        // SAFETY: see above.
        unsafe { dot_vnni(w, a) }
    }

    /// The 32 quants (0..=31) of the block at `w[off..]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quants_256(w: &[u8], off: usize) -> __m256i {
        let hi = _mm256_and_si256(
            bits_to_bytes_256(u32_at(w, off + 4)),
            _mm256_set1_epi8(0x10),
        );
        _mm256_or_si256(nibbles_256(w, off + 8), hi)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn to_f32_avx2_k(src: &[u8], dst: &mut [f32]) {
        let (blocks, _) = src.as_chunks::<BYTES>();
        let (ys, _) = dst.as_chunks_mut::<QK>();
        for (b, y) in blocks.iter().zip(ys) {
            let d = _mm256_set1_ps(f16_to_f32(u16_at(b, 0)));
            let m = _mm256_set1_ps(f16_to_f32(u16_at(b, 2)));
            store_i8x32_scaled(quants_256(b, 0), d, Some(m), y);
        }
    }

    /// The 8 i32 sums of `q * a` over one block (`q` unsigned).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sums_256(w: &[u8], a: &[u8]) -> __m256i {
        dot_u8i8_256(quants_256(w, 0), load_256(a, 4))
    }

    /// Blocks are accumulated in order into one accumulator and the `m * s`
    /// terms into one scalar, like ggml.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2(w: &[u8], a: &[u8]) -> f32 {
        let (w2, wt) = w.as_chunks::<BYTES>().0.as_chunks::<2>();
        let (a2, at) = a.as_chunks::<A_BYTES>().0.as_chunks::<2>();
        let (mut acc, mut summs) = (_mm256_setzero_ps(), 0.0f32);
        for ([w0, w1], [a0, a1]) in w2.iter().zip(a2) {
            let s = scales_dm2(u32_at(w0, 0), u32_at(a0, 0), u32_at(w1, 0), u32_at(a1, 0));
            let (ms0, ms1) = ms_pair(s);
            summs = summs + ms0 + ms1;
            acc = fmadd2_256(acc, s, (0, 4), sums_256(w0, a0), sums_256(w1, a1));
        }
        let acc = tail(acc, &mut summs, wt, at);
        hsum_ps_256(acc) + summs
    }

    /// The last block of an odd count, into the same accumulators.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tail(mut acc: __m256, summs: &mut f32, wt: &[[u8; BYTES]], at: &[[u8; A_BYTES]]) -> __m256 {
        for (w, a) in wt.iter().zip(at) {
            let s = scales_dm2(u32_at(w, 0), u32_at(a, 0), 0, 0);
            *summs += ms_pair(s).0;
            acc = fmadd1_256(acc, s, 0, sums_256(w, a));
        }
        acc
    }

    /// Two blocks per 512-bit register; the two `qh` words form the mask that
    /// adds 16 to the high-bit bytes, then `vpdpbusd`; accumulated like
    /// [`dot_avx2`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    fn dot_vnni(w: &[u8], a: &[u8]) -> f32 {
        let (w2, wt) = w.as_chunks::<BYTES>().0.as_chunks::<2>();
        let (a2, at) = a.as_chunks::<A_BYTES>().0.as_chunks::<2>();
        let zero = _mm512_setzero_si512();
        let (mut acc, mut summs) = (_mm256_setzero_ps(), 0.0f32);
        for (wp, ap) in w2.iter().zip(a2) {
            let (w, a) = (wp.as_flattened(), ap.as_flattened());
            let hi = u32_at(w, 4) as u64 | (u32_at(w, BYTES + 4) as u64) << 32;
            let q = nibbles2_512(w, 8, BYTES + 8);
            let q = _mm512_mask_add_epi8(q, hi, q, _mm512_set1_epi8(16));
            let i = _mm512_dpbusd_epi32(zero, q, load2_256(a, 4, A_BYTES + 4));
            let s = scales_dm2(
                u32_at(w, 0),
                u32_at(a, 0),
                u32_at(w, BYTES),
                u32_at(a, A_BYTES),
            );
            let (ms0, ms1) = ms_pair(s);
            summs = summs + ms0 + ms1;
            let (i0, i1) = halves_512(i);
            acc = fmadd2_256(acc, s, (0, 4), i0, i1);
        }
        let acc = tail(acc, &mut summs, wt, at);
        hsum_ps_256(acc) + summs
    }
}
