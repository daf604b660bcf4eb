//! Q4_K: ggml's 4-bit K-quant (`block_q4_K` in `ggml-common.h`), paired with
//! Q8_K activations.
//!
//! A super-block is 256 values in 8 sub-blocks of 32 (144 bytes):
//! `d: f16`, `dmin: f16`, `scales: [u8; 12]` (eight 6-bit scales `sc` and
//! eight 6-bit mins `m`, packed as ggml's `get_scale_min_k4` reads them),
//! `qs: [u8; 128]` (4-bit quants; byte `32c + l` holds element `64c + l` in
//! its low nibble and `64c + 32 + l` in its high one). Element `e` of
//! sub-block `s` is `(d * sc[s]) * q[e] - (dmin * m[s])`.
//!
//! The dot product with Q8_K is ggml's: the 4-bit quants are dotted with the
//! 8-bit activations in integers, and the mins are folded in through the
//! activation block's `bsums`. The scalar reference follows the float order
//! of ggml's `ggml_vec_dot_q4_K_q8_K_generic`, the fast paths that of its AVX2
//! kernel (see [`super::kquant_simd`]).
//!
//! The quantizer here (used by tests and tools, not by model loading) is
//! simpler than ggml's `make_qkx2_quants` search: each sub-block takes the
//! range `[min(0, lo), hi]` of its values, the super-block scales are the
//! largest sub-block scale / 63 and min / 63 in f16, sub-block scales are
//! rounded up (so no value clips) and mins to nearest. Its error per element
//! is at most `d * sc / 2 + dmin / 2` (plus rounding), measured in the tests.

use super::kquant_simd::{conv_blocks, dot_blocks, f16_at, f32_at, QK_K};
use super::{q8_k, QuantOps};
use crate::cpu::Isa;
use half::f16;
use troupe_gguf::GgmlType;

/// Bytes per super-block.
pub const BLOCK_BYTES: usize = 2 + 2 + 12 + QK_K / 2;
pub(crate) const D: usize = 0;
pub(crate) const DMIN: usize = 2;
pub(crate) const SCALES: usize = 4;
const QS: usize = 16;

// ---------------------------------------------------------------------------
// Scales and mins (shared with Q5_K).

/// Unpacks the 12 scale bytes into `[sc0..sc7, m0..m7]` as four u32 (the
/// byte order of ggml's `utmp` trick), each byte a 6-bit value.
#[inline]
pub(crate) fn unpack_scales_mins(s: &[u8]) -> [u32; 4] {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    [
        w0 & LOW6,                                      // sc0..sc3
        (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4),        // sc4..sc7
        w1 & LOW6,                                      // m0..m3
        ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4), // m4..m7
    ]
}

/// [`unpack_scales_mins`] as bytes: `[sc0..sc7, m0..m7]`.
#[inline]
pub(crate) fn scales_mins_bytes(s: &[u8]) -> [u8; 16] {
    let w = unpack_scales_mins(s);
    let mut out = [0u8; 16];
    for (i, v) in w.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// Packs eight 6-bit scales and mins into ggml's 12-byte layout (the inverse
/// of [`unpack_scales_mins`]).
pub(crate) fn pack_scales_mins(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..4 {
        out[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    out
}

/// One super-block quantized by [`quantize_affine`]: `q` holds unsigned
/// quants `0..=nmax`, element order.
pub(crate) struct AffineBlock {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub q: [u8; QK_K],
}

/// Quantizes 256 values to `(d * sc) * q - (dmin * m)` with `q` in
/// `0..=nmax` (15 for Q4_K, 31 for Q5_K); see the module docs.
pub(crate) fn quantize_affine(x: &[f32], nmax: u8) -> AffineBlock {
    let mut scale = [0.0f32; 8];
    let mut offset = [0.0f32; 8];
    for (s, sub) in x.chunks_exact(32).enumerate() {
        let lo = sub.iter().fold(0.0f32, |a, &v| a.min(v));
        let hi = sub.iter().fold(lo, |a, &v| a.max(v));
        scale[s] = (hi - lo) / f32::from(nmax);
        offset[s] = -lo;
    }
    let d = f16::from_f32(scale.iter().fold(0.0f32, |a, &v| a.max(v)) / 63.0);
    let dmin = f16::from_f32(offset.iter().fold(0.0f32, |a, &v| a.max(v)) / 63.0);
    let (df, dmf) = (d.to_f32(), dmin.to_f32());
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    let mut q = [0u8; QK_K];
    for s in 0..8 {
        if df > 0.0 {
            sc[s] = (scale[s] / df).ceil().min(63.0) as u8;
        }
        if dmf > 0.0 {
            m[s] = (offset[s] / dmf).round().min(63.0) as u8;
        }
        let step = df * f32::from(sc[s]);
        let shift = dmf * f32::from(m[s]);
        for e in 32 * s..32 * s + 32 {
            if step > 0.0 {
                q[e] = ((x[e] + shift) / step).round().clamp(0.0, f32::from(nmax)) as u8;
            }
        }
    }
    AffineBlock {
        d,
        dmin,
        scales: pack_scales_mins(&sc, &m),
        q,
    }
}

/// Scalar Q4_K/Q5_K dot with Q8_K in the float order of ggml's generic
/// kernels, given a decoder of one block's unsigned quants.
pub(crate) fn affine_dot_scalar(
    n: usize,
    w: &[u8],
    block_bytes: usize,
    a: &[u8],
    decode: fn(&[u8], &mut [u8; QK_K]),
) -> f32 {
    dot_blocks(n, w, block_bytes, a, q8_k::BLOCK_BYTES);
    let mut q = [0u8; QK_K];
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (x, y) in w
        .chunks_exact(block_bytes)
        .zip(a.chunks_exact(q8_k::BLOCK_BYTES))
    {
        decode(x, &mut q);
        let sm = scales_mins_bytes(&x[SCALES..SCALES + 12]);
        // Lane `l` gathers the elements `e` with `e % 8 == l`.
        let mut lanes = [0i32; 8];
        for (e, (&qe, ye)) in q.iter().zip(q8_k::qs(y)).enumerate() {
            lanes[e % 8] += i32::from(sm[e / 32]) * (i32::from(qe) * i32::from(ye));
        }
        let bsums = q8_k::bsums(y);
        let mins: i32 = (0..16)
            .map(|j| i32::from(bsums[j]) * i32::from(sm[8 + j / 2]))
            .sum();
        let yd = f32_at(y, q8_k::D);
        let d = f16_at(x, D) * yd;
        for (s, &l) in sums.iter_mut().zip(&lanes) {
            *s += d * l as f32;
        }
        let dmin = f16_at(x, DMIN) * yd;
        sumf -= dmin * mins as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Scalar Q4_K/Q5_K dequantization given a decoder of one block's quants.
pub(crate) fn affine_to_f32_scalar(
    src: &[u8],
    dst: &mut [f32],
    block_bytes: usize,
    decode: fn(&[u8], &mut [u8; QK_K]),
) {
    conv_blocks(dst.len(), src.len(), block_bytes);
    let mut q = [0u8; QK_K];
    for (x, y) in src
        .chunks_exact(block_bytes)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        decode(x, &mut q);
        let sm = scales_mins_bytes(&x[SCALES..SCALES + 12]);
        let (d, dmin) = (f16_at(x, D), f16_at(x, DMIN));
        for (s, (ys, qs)) in y.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
            let scale = d * f32::from(sm[s]);
            let min = dmin * f32::from(sm[8 + s]);
            for (o, &qe) in ys.iter_mut().zip(qs) {
                *o = scale * f32::from(qe) - min;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Scalar reference.

/// The 256 unsigned 4-bit quants of a block, element order.
pub(crate) fn decode(x: &[u8], q: &mut [u8; QK_K]) {
    for c in 0..4 {
        for l in 0..32 {
            let b = x[QS + 32 * c + l];
            q[64 * c + l] = b & 15;
            q[64 * c + 32 + l] = b >> 4;
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
        let b = quantize_affine(x, 15);
        y[D..D + 2].copy_from_slice(&b.d.to_bits().to_le_bytes());
        y[DMIN..DMIN + 2].copy_from_slice(&b.dmin.to_bits().to_le_bytes());
        y[SCALES..SCALES + 12].copy_from_slice(&b.scales);
        for c in 0..4 {
            for l in 0..32 {
                y[QS + 32 * c + l] = b.q[64 * c + l] | (b.q[64 * c + 32 + l] << 4);
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
    use super::{unpack_scales_mins, BLOCK_BYTES, D, DMIN, QS, SCALES};
    use crate::formats::kquant_simd::x86::{
        f16_at, f16x2_at, f32_at, hsum_f32x4, hsum_f32x8, load256, mins_dot_bsums, scale_pairs,
        scales_mins_i16, splat_scale, store_u8x32_affine, MaddAcc,
    };
    use crate::formats::kquant_simd::{conv_blocks, dot_blocks, QK_K};
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

    /// # Safety
    /// AVX2 + FMA + F16C.
    #[inline(always)]
    unsafe fn to_f32_body<M: MaddAcc>(src: &[u8], dst: &mut [f32]) {
        let nb = conv_blocks(dst.len(), src.len(), BLOCK_BYTES);
        // SAFETY: lengths checked above; features are the caller's.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            for i in 0..nb {
                let x = src.as_ptr().add(i * BLOCK_BYTES);
                let y = dst.as_mut_ptr().add(i * QK_K);
                let sm = block_scales(x).map(u32::to_le_bytes);
                let (d, dmin) = (f16_at(x.add(D)), f16_at(x.add(DMIN)));
                for c in 0..4 {
                    let (s0, s1) = (2 * c, 2 * c + 1);
                    let (sc0, m0) = (sm[s0 / 4][s0 % 4], sm[2 + s0 / 4][s0 % 4]);
                    let (sc1, m1) = (sm[s1 / 4][s1 % 4], sm[2 + s1 / 4][s1 % 4]);
                    let bits = load256(x.add(QS + 32 * c));
                    let lo = _mm256_and_si256(bits, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
                    let (d0, n0) = (d * f32::from(sc0), dmin * f32::from(m0));
                    let (d1, n1) = (d * f32::from(sc1), dmin * f32::from(m1));
                    store_u8x32_affine(y.add(64 * c), lo, d0, n0);
                    store_u8x32_affine(y.add(64 * c + 32), hi, d1, n1);
                }
            }
        }
    }

    /// The structure and float order of ggml's AVX2 `ggml_vec_dot_q4_K_q8_K`.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C (+ VNNI for `M = Vnni`).
    #[inline(always)]
    unsafe fn vec_dot_body<M: MaddAcc>(n: usize, w: &[u8], a: &[u8]) -> f32 {
        let nb = dot_blocks(n, w, BLOCK_BYTES, a, q8_k::BLOCK_BYTES);
        // SAFETY: lengths checked above; features are the caller's.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let mut acc = _mm256_setzero_ps();
            let mut acc_m = _mm_setzero_ps();
            for i in 0..nb {
                let x = w.as_ptr().add(i * BLOCK_BYTES);
                let y = a.as_ptr().add(i * q8_k::BLOCK_BYTES);
                let yd = f32_at(y.add(q8_k::D));
                let (xd, xdmin) = f16x2_at(x.add(D));
                let d = yd * xd;
                let dmin = -yd * xdmin;

                let mins_scales = scales_mins_i16(x.add(SCALES));
                let prod = mins_dot_bsums(mins_scales, y.add(q8_k::BSUMS));
                acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);

                let scales = scale_pairs(mins_scales);
                let q4 = x.add(QS);
                let q8 = y.add(q8_k::QS);
                let mut sumi = _mm256_setzero_si256();
                for j in 0..QK_K / 64 {
                    let bits = load256(q4.add(32 * j));
                    let q4l = _mm256_and_si256(bits, m4);
                    let q4h = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
                    let p16l = _mm256_maddubs_epi16(q4l, load256(q8.add(64 * j)));
                    let p16h = _mm256_maddubs_epi16(q4h, load256(q8.add(64 * j + 32)));
                    sumi = M::madd_acc(sumi, splat_scale(&scales, 2 * j), p16l);
                    sumi = M::madd_acc(sumi, splat_scale(&scales, 2 * j + 1), p16h);
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum_f32x8(acc) + hsum_f32x4(acc_m)
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
    ty: GgmlType::Q4_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: to_f32_scalar,
    from_f32: from_f32_scalar,
    vec_dot: vec_dot_scalar,
};

#[cfg(target_arch = "x86_64")]
static AVX2: QuantOps = QuantOps {
    ty: GgmlType::Q4_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::avx2,
    from_f32: from_f32_scalar,
    vec_dot: x86::vec_dot::avx2,
};

#[cfg(target_arch = "x86_64")]
static AVX512: QuantOps = QuantOps {
    ty: GgmlType::Q4_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::avx512,
    from_f32: from_f32_scalar,
    vec_dot: x86::vec_dot::avx512,
};

#[cfg(target_arch = "x86_64")]
static VNNI: QuantOps = QuantOps {
    ty: GgmlType::Q4_K,
    vec_dot_type: GgmlType::Q8_K,
    to_f32: x86::to_f32::vnni,
    from_f32: from_f32_scalar,
    vec_dot: x86::vec_dot::vnni,
};

/// The Q4_K kernels for `isa`. An `isa` this CPU lacks gets the scalar
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
