//! Element-wise and row-wise f32 operations of the transformer block.
//!
//! Numerics follow ggml's CPU ops where that changes results visibly (sums of
//! squares and softmax denominators in f64, GELU through an f16 table, RoPE
//! angles advanced by repeated multiplication), so that greedy decoding agrees
//! with llama.cpp token for token.

use half::f16;
use std::sync::OnceLock;

/// `out = x / rms(x) * w`, with the sum of squares in f64 (as ggml does).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == w.len() && x.len() == out.len());
    let scale = rms_scale(x, eps);
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = (xi * scale) * wi;
    }
}

/// In-place [`rms_norm`].
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    debug_assert!(x.len() == w.len());
    let scale = rms_scale(x, eps);
    for (xi, &wi) in x.iter_mut().zip(w) {
        *xi = (*xi * scale) * wi;
    }
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// In-place softmax with the denominator summed in f64.
pub fn softmax_inplace(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let mut sum = 0f64;
    for v in x.iter_mut() {
        let e = (*v - max).exp();
        *v = e;
        sum += e as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `e^x` exactly as ggml's AVX2 `ggml_v_expf` computes one lane: a
/// range reduction by `ln 2` split in two constants, a degree-5 polynomial,
/// and the exponent patched into the bits (ARM's optimized-routines
/// algorithm). Within 1.5 ulp of `expf`, but not always equal to it, so the
/// ops ggml vectorises must use this to agree bit for bit.
#[inline(always)]
pub fn ggml_v_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),
        (-n).mul_add(f32::from_bits(0x3f31_7200), x),
    );
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6) * b);
    let an = n.abs();
    // ggml's ordered `> 126` is false for NaN, so NaN takes this path too.
    if an.is_nan() || an <= 126.0 {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if an > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// SiLU as ggml's vector path computes it: `x / (1 + ggml_v_expf(-x))`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + ggml_v_expf(-x))
}

/// SiLU as ggml's scalar leftovers compute it, with libm `expf`.
#[inline]
fn silu_libm(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Lanes of ggml's AVX2 f32 vectors; element-wise ops use the vector
/// formula on whole groups of this many and the scalar one on the rest.
const GGML_F32_LANES: usize = 8;

/// `gate = silu(gate) * up` (SwiGLU), in place over `gate`, following
/// `ggml_vec_swiglu_f32` on AVX2 (vector exp on groups of 8, libm on the
/// tail).
pub fn swiglu_inplace(gate: &mut [f32], up: &[f32]) {
    debug_assert!(gate.len() == up.len());
    let n_vec = gate.len() / GGML_F32_LANES * GGML_F32_LANES;
    let (gv, gt) = gate.split_at_mut(n_vec);
    let (uv, ut) = up.split_at(n_vec);
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::best() >= crate::cpu::Isa::Avx512 {
        // SAFETY: the CPU has AVX-512 F/DQ and FMA.
        unsafe { x86::swiglu_avx512(gv, uv) };
    } else {
        swiglu_scalar(gv, uv);
    }
    #[cfg(not(target_arch = "x86_64"))]
    swiglu_scalar(gv, uv);
    for (g, &u) in gt.iter_mut().zip(ut) {
        *g = silu_libm(*g) * u;
    }
}

/// The vector part of [`swiglu_inplace`], one lane at a time (the reference).
pub fn swiglu_scalar(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! [`super::ggml_v_expf`] 16 lanes at a time: the same operations per
    //! lane, so the same bits; lanes outside the fast range (rare) are redone
    //! by the scalar code.

    use super::{ggml_v_expf, silu};
    use std::arch::x86_64::*;

    /// `gate = silu(gate) * up` over 16-float groups, the rest by the scalar
    /// formula (identical per lane).
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    pub(super) fn swiglu_avx512(gate: &mut [f32], up: &[f32]) {
        let (g16, gt) = gate.as_chunks_mut::<16>();
        let (u16s, ut) = up.as_chunks::<16>();
        for (g, u) in g16.iter_mut().zip(u16s) {
            // SAFETY: 16 readable/writable floats each.
            unsafe {
                let x = _mm512_loadu_ps(g.as_ptr());
                let e = expf_512(_mm512_sub_ps(_mm512_setzero_ps(), x), g);
                let one = _mm512_set1_ps(1.0);
                let s = _mm512_div_ps(x, _mm512_add_ps(one, e));
                _mm512_storeu_ps(
                    g.as_mut_ptr(),
                    _mm512_mul_ps(s, _mm512_loadu_ps(u.as_ptr())),
                );
            }
        }
        for (g, &u) in gt.iter_mut().zip(ut) {
            *g = silu(*g) * u;
        }
    }

    /// `x[i] = ggml_v_expf(x[i] - max)` over whole 16-float groups;
    /// returns how many were done and how many are left.
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    pub(super) fn exp_sub_512(x: &mut [f32], max: f32) -> (usize, usize) {
        let m = _mm512_set1_ps(max);
        let (groups, rest) = x.as_chunks_mut::<16>();
        for g in groups.iter_mut() {
            // SAFETY: 16 readable/writable floats.
            unsafe {
                let v = _mm512_sub_ps(_mm512_loadu_ps(g.as_ptr()), m);
                // A lane at -inf (a masked key) is 0, as the scalar code gives.
                let dead = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_set1_ps(f32::NEG_INFINITY));
                let mut neg = [0f32; 16];
                _mm512_storeu_ps(neg.as_mut_ptr(), _mm512_sub_ps(_mm512_setzero_ps(), v));
                let safe = _mm512_mask_mov_ps(v, dead, _mm512_setzero_ps());
                for (l, n) in neg.iter_mut().enumerate() {
                    if dead & (1 << l) != 0 {
                        *n = 0.0;
                    }
                }
                let e = expf_512(safe, &neg);
                _mm512_storeu_ps(
                    g.as_mut_ptr(),
                    _mm512_mask_mov_ps(e, dead, _mm512_setzero_ps()),
                );
            }
        }
        (groups.len() * 16, rest.len())
    }

    /// `ggml_v_expf` of each lane of `x`; `src` holds the inputs negated
    /// (for the scalar redo of out-of-range lanes).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    fn expf_512(x: __m512, src: &[f32; 16]) -> __m512 {
        let c = |b: u32| _mm512_set1_ps(f32::from_bits(b));
        let r = c(0x4b40_0000);
        let z = _mm512_fmadd_ps(x, c(0x3fb8_aa3b), r);
        let n = _mm512_sub_ps(z, r);
        let neg_n = _mm512_sub_ps(_mm512_setzero_ps(), n);
        let b = _mm512_fmadd_ps(
            neg_n,
            c(0x35bf_be8e),
            _mm512_fmadd_ps(neg_n, c(0x3f31_7200), x),
        );
        let e = _mm512_slli_epi32::<23>(_mm512_castps_si512(z));
        let k = _mm512_castsi512_ps(_mm512_add_epi32(e, _mm512_set1_epi32(0x3f80_0000)));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
                u,
                _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
            ),
            u,
            _mm512_mul_ps(c(0x3f7f_fff6), b),
        );
        let mut out = _mm512_fmadd_ps(j, k, k);
        let an = _mm512_abs_ps(n);
        let slow = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(an, _mm512_set1_ps(126.0));
        if slow != 0 {
            let mut v = [0f32; 16];
            // SAFETY: 16 writable floats.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), out) };
            for (l, o) in v.iter_mut().enumerate() {
                if slow & (1 << l) != 0 {
                    *o = ggml_v_expf(-src[l]);
                }
            }
            // SAFETY: 16 readable floats.
            out = unsafe { _mm512_loadu_ps(v.as_ptr()) };
        }
        out
    }
}

/// `exp(x[i] - max)` into `x`, returning the sum as ggml's AVX2
/// `ggml_vec_soft_max_f32` forms it: each group of 8 is reduced in f32
/// (`(v0+v4 + v2+v6) + (v1+v5 + v3+v7)`) and the group sums added in f64;
/// the tail uses libm `expf`.
#[inline(always)]
pub fn ggml_soft_max_exp(x: &mut [f32], max: f32) -> f64 {
    let mut sum = 0f64;
    let n_vec = x.len() / GGML_F32_LANES * GGML_F32_LANES;
    let (xv, xt) = x.split_at_mut(n_vec);
    #[cfg(target_arch = "x86_64")]
    let xv = if crate::cpu::best() >= crate::cpu::Isa::Avx512 {
        // SAFETY: the CPU has AVX-512 F/DQ and FMA.
        let (done, rest) = unsafe { x86::exp_sub_512(xv, max) };
        for c in xv[..done].chunks_exact(GGML_F32_LANES) {
            sum += group_sum(c);
        }
        &mut xv[done..][..rest]
    } else {
        xv
    };
    for c in xv.chunks_exact_mut(GGML_F32_LANES) {
        for v in c.iter_mut() {
            *v = ggml_v_expf(*v - max);
        }
        sum += group_sum(c);
    }
    for v in xt.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    sum
}

/// One group's sum as ggml's AVX2 reduction forms it.
#[inline(always)]
fn group_sum(c: &[f32]) -> f64 {
    let h: [f32; 4] = std::array::from_fn(|l| c[l + 4] + c[l]);
    ((h[0] + h[2]) + (h[1] + h[3])) as f64
}

/// Dot product of two f16-valued vectors (given as f32) in the order of
/// ggml's AVX2 `ggml_vec_dot_f16`: four 8-lane FMA accumulators over steps
/// of 32, a fixed tree reduction, and the tail added in f64.
#[inline(always)]
pub fn dot_f16_ggml(x: &[f32], y: &[f32]) -> f32 {
    debug_assert!(x.len() == y.len());
    const STEP: usize = 32;
    let np = x.len() / STEP * STEP;
    let mut acc = [[0f32; 8]; 4];
    for (xs, ys) in x[..np].chunks_exact(STEP).zip(y[..np].chunks_exact(STEP)) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, al) in a.iter_mut().enumerate() {
                *al = xs[j * 8 + l].mul_add(ys[j * 8 + l], *al);
            }
        }
    }
    let s: [f32; 8] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let t: [f32; 4] = std::array::from_fn(|l| s[l] + s[l + 4]);
    let mut sum = ((t[0] + t[1]) + (t[2] + t[3])) as f64;
    for (&a, &b) in x[np..].iter().zip(&y[np..]) {
        sum += (a * b) as f64;
    }
    sum as f32
}

/// Dot product as one sequential FMA chain from zero, the order of
/// ggml's `simd_gemm` (each output element accumulates along K in turn).
#[inline(always)]
pub fn dot_fma_chain(x: &[f32], y: &[f32]) -> f32 {
    debug_assert!(x.len() == y.len());
    x.iter()
        .zip(y)
        .fold(0f32, |acc, (&a, &b)| a.mul_add(b, acc))
}

const GELU_COEF_A: f32 = 0.044715;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GELU, tanh approximation, computed in f32.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// GELU as ggml evaluates it: input rounded to f16, output from a table of
/// f16-rounded values; identity above 10 and zero below -10.
#[inline]
pub fn gelu_table(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_f16_table()[f16::from_f32(x).to_bits() as usize]
    }
}

fn gelu_f16_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())).to_f32())
            .collect()
    })
}

/// `gate = gelu(gate) * up` (GEGLU), in place over `gate`.
pub fn geglu_inplace(gate: &mut [f32], up: &[f32]) {
    debug_assert!(gate.len() == up.len());
    let table = gelu_f16_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            table[f16::from_f32(x).to_bits() as usize] * u
        };
    }
}

/// `a += b`.
pub fn add_inplace(a: &mut [f32], b: &[f32]) {
    debug_assert!(a.len() == b.len());
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// `a *= s`.
pub fn scale_inplace(a: &mut [f32], s: f32) {
    for x in a.iter_mut() {
        *x *= s;
    }
}

/// f32 dot product (4 partial sums, so the compiler can vectorise).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert!(a.len() == b.len());
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for k in 0..8 {
            acc[k] += a[c * 8 + k] * b[c * 8 + k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `y += a * x`.
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    debug_assert!(y.len() == x.len());
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])` (llama arch in GGUF).
    Normal,
    /// Halves `(x[i], x[i + d/2])` (GPT-NeoX, Qwen2, Gemma).
    Neox,
}

/// Fills `cache` (length `n_dims`) with `cos, sin` pairs for position `pos`,
/// advancing the angle by repeated multiplication as ggml does.
pub fn rope_cache(pos: f32, n_dims: usize, freq_base: f32, cache: &mut [f32]) {
    let theta_scale = freq_base.powf(-2.0 / n_dims as f32);
    let mut theta = pos;
    for pair in cache[..n_dims].chunks_exact_mut(2) {
        pair[0] = theta.cos();
        pair[1] = theta.sin();
        theta *= theta_scale;
    }
}

/// `x0*cos - x1*sin` as GCC contracts ggml's `rotate_pairs`: the first
/// product fused, the second rounded.
#[inline]
fn rot0(x0: f32, x1: f32, c: f32, s: f32) -> f32 {
    x0.mul_add(c, -(x1 * s))
}

/// `x0*sin + x1*cos`, contracted the same way as [`rot0`].
#[inline]
fn rot1(x0: f32, x1: f32, c: f32, s: f32) -> f32 {
    x0.mul_add(s, x1 * c)
}

/// Rotates the first `n_dims` dimensions of one head in place using a cache
/// from [`rope_cache`]; the rest of the head is left as is.
pub fn rope_apply(head: &mut [f32], n_dims: usize, cache: &[f32], style: RopeStyle) {
    match style {
        RopeStyle::Normal => {
            for i in 0..n_dims / 2 {
                let (c, s) = (cache[2 * i], cache[2 * i + 1]);
                let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = rot0(x0, x1, c, s);
                head[2 * i + 1] = rot1(x0, x1, c, s);
            }
        }
        RopeStyle::Neox => {
            let half = n_dims / 2;
            for i in 0..half {
                let (c, s) = (cache[2 * i], cache[2 * i + 1]);
                let (x0, x1) = (head[i], head[i + half]);
                head[i] = rot0(x0, x1, c, s);
                head[i + half] = rot1(x0, x1, c, s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OP_TOL: f32 = 1e-6;

    #[test]
    fn rms_norm_unit_weight_has_unit_rms() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.37).collect();
        let w = vec![1.0; 64];
        let mut out = vec![0.0; 64];
        rms_norm(&x, &w, 0.0, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 64.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-5);
    }

    /// Parity (tolerance: exact): the AVX-512 exponentials and the group
    /// sums equal the scalar formula, masked (-inf) and extreme lanes too.
    #[test]
    fn soft_max_exp_matches_scalar_bitwise() {
        let mut x = 0x2545_f491u32;
        for n in [0usize, 7, 8, 16, 24, 64, 67] {
            let mut v: Vec<f32> = (0..n)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    match i % 11 {
                        3 => f32::NEG_INFINITY,
                        7 => -150.0,
                        _ => (x as f32 / u32::MAX as f32 - 0.5) * 40.0,
                    }
                })
                .collect();
            let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut want = v.clone();
            let mut sum = 0f64;
            let nv = n / 8 * 8;
            for c in want[..nv].chunks_exact_mut(8) {
                for e in c.iter_mut() {
                    *e = ggml_v_expf(*e - max);
                }
                sum += group_sum(c);
            }
            for e in want[nv..].iter_mut() {
                *e = (*e - max).exp();
                sum += *e as f64;
            }
            let got = ggml_soft_max_exp(&mut v, max);
            assert_eq!(got.to_bits(), sum.to_bits(), "n {n}");
            for (a, b) in v.iter().zip(&want) {
                assert_eq!(a.to_bits(), b.to_bits(), "n {n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_handles_masks() {
        let mut x = vec![1.0, 2.0, f32::NEG_INFINITY, 3.0];
        softmax_inplace(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < OP_TOL);
        assert_eq!(x[2], 0.0);
        assert!(x[3] > x[1] && x[1] > x[0]);
    }

    /// Parity (tolerance: exact): the SIMD SwiGLU equals the per-lane
    /// reference bit for bit, slow-path lanes (|x| > 87) included.
    #[test]
    fn swiglu_simd_matches_scalar_bitwise() {
        let mut gate: Vec<f32> = (0..4099).map(|i| (i as f32 - 2049.0) * 0.137).collect();
        gate.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            200.0,
            -200.0,
            1e-30,
        ]);
        let up: Vec<f32> = (0..gate.len())
            .map(|i| 1.0 + (i % 7) as f32 * 0.25)
            .collect();
        let n = gate.len() / 8 * 8;
        let mut fast = gate.clone();
        swiglu_inplace(&mut fast, &up);
        let mut want = gate.clone();
        swiglu_scalar(&mut want[..n], &up[..n]);
        for (i, (a, b)) in fast[..n].iter().zip(&want[..n]).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{i}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn gelu_table_is_close_to_exact() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            let d = (gelu_table(x) - gelu_tanh(x)).abs();
            assert!(d <= 2e-2 * gelu_tanh(x).abs().max(1e-2), "{x}");
        }
    }

    #[test]
    fn rope_preserves_norm_and_position_zero_is_identity() {
        let mut cache = vec![0.0; 64];
        rope_cache(0.0, 64, 10000.0, &mut cache);
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let mut h = x.clone();
            rope_apply(&mut h, 64, &cache, style);
            assert_eq!(h, x);
        }
        rope_cache(17.0, 64, 10000.0, &mut cache);
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let mut h = x.clone();
            rope_apply(&mut h, 64, &cache, style);
            let n0: f32 = x.iter().map(|v| v * v).sum();
            let n1: f32 = h.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() / n0 < 1e-5);
        }
    }
}
