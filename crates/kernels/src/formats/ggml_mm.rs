//! The float order of the matmul paths llama.cpp's CPU backend takes instead
//! of `vec_dot` for some K-quant weights, so that our logits match its bit
//! for bit.
//!
//! Reference build: llama.cpp `0c1e570` (vendored in llama-cpp-python
//! 0.3.36), ggml-cpu built for AVX2 (`-mavx2 -mfma -mf16c`), weight
//! repacking on (llama-server's default). There, `ggml_compute_forward_mul_mat`
//! does not call `vec_dot` for:
//!
//! * **Q4_K** weights whose row count is a multiple of 8: they sit in the
//!   `CPU_REPACK` buffer as `block_q4_Kx8` and every matmul, whatever its
//!   batch, goes through `ggml_gemm_q4_K_8x8_q8_K` for the first
//!   `rows - rows % 4` activation rows (4 at a time) and
//!   `ggml_gemv_q4_K_8x8_q8_K` for the rest (`ggml-cpu/arch/x86/repack.cpp`).
//!   Both keep, per output, one accumulator for the scales and one for the
//!   mins, result `acc - accm`. The gemv feeds them once per super-block:
//!   `acc  = fma(f32(Σ_s sc_s · q·a), d_w · d_a, acc)`,
//!   `accm = fma(f32(Σ_s m_s · bsum_s), dmin_w · d_a, accm)`; the gemm once
//!   per pair of sub-blocks (64 elements), the sums running over the pair.
//!   (The gemm's 4-row activation quantizer, `ggml_quantize_mat_q8_K_4x8`,
//!   gives the same bytes as `quantize_row_q8_K` except when a block's
//!   largest magnitude occurs with both signs.)
//! * **Q6_K** (and the other K-quants, not repacked on x86) when the
//!   activation has at least [`TILED_MIN_ROWS`] rows: the "tiled" K-quant
//!   matmul (`ggml-cpu/tiled/`, AVX2 micro-kernel), per output and super-block
//!   `acc = fma(d_w · f32(Σ_s sc_s · (q - 32)·a), d_a, acc)`.
//!
//! The integer sums are exact, so only these float steps matter; the
//! kernels below compute the sums plainly and apply the steps in that order.
//!
//! Not followed yet (no model of the golden tests has them): the tiled path
//! of Q5_K, Q3_K, Q2_K, IQ* and of Q4_K weights whose row count is not a
//! multiple of 8 (its Q4_K/Q5_K epilogue also folds the mins in with an
//! `fnmadd`), and the other repacked formats (Q4_0, IQ4_NL, MXFP4, and Q2_K
//! with AVX-512). A native AVX-512 build of llama.cpp uses other kernels
//! again (AVX-512 repack and tiled variants, AMX); see
//! `scripts/fixtures/README.md`.

use super::kquant_simd::{dot_blocks, f16_at, f32_at, QK_K};
use super::{q4_k, q6_k, q8_k};
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

/// A dot product of `n` elements (`w` in the weight format, `a` in Q8_K).
pub type DotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// ggml's `ggml_tiled_min_batch`: the tiled K-quant matmul runs from this
/// many activation rows on.
pub const TILED_MIN_ROWS: usize = 8;

/// A kernel of the matmul paths above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The weight format's own `vec_dot`.
    VecDot,
    /// Repacked Q4_K, `ggml_gemm_q4_K_8x8_q8_K` (groups of 4 rows).
    Q4KGemm,
    /// Repacked Q4_K, `ggml_gemv_q4_K_8x8_q8_K` (single rows).
    Q4KGemv,
    /// The tiled Q6_K matmul.
    Q6KTiled,
}

/// Which kernel llama.cpp uses for each activation row of a matmul of
/// `rows` rows against `ty` weights with `n_out` rows: `(split, head,
/// tail)`, rows `0..split` use `head`, the others `tail`.
pub fn plan(ty: GgmlType, n_out: usize, rows: usize) -> (usize, Kernel, Kernel) {
    match ty {
        GgmlType::Q4_K if n_out.is_multiple_of(8) => {
            (rows - rows % 4, Kernel::Q4KGemm, Kernel::Q4KGemv)
        }
        GgmlType::Q6_K if rows >= TILED_MIN_ROWS => (rows, Kernel::Q6KTiled, Kernel::VecDot),
        _ => (0, Kernel::VecDot, Kernel::VecDot),
    }
}

/// The implementation of `k` for `isa` (`Isa::Scalar`: the reference);
/// `vec_dot` is the weight format's.
pub fn kernel_fn(k: Kernel, isa: Isa, vec_dot: DotFn) -> DotFn {
    let fast = cfg!(target_arch = "x86_64") && isa >= Isa::Avx2 && isa.supported();
    match (k, fast) {
        (Kernel::VecDot, _) => vec_dot,
        (Kernel::Q4KGemm, true) => x86_q4_k_gemm(),
        (Kernel::Q4KGemm, false) => q4_k_gemm_scalar,
        (Kernel::Q4KGemv, true) => x86_q4_k_gemv(),
        (Kernel::Q4KGemv, false) => q4_k_gemv_scalar,
        (Kernel::Q6KTiled, true) => x86_q6_k_tiled(),
        (Kernel::Q6KTiled, false) => q6_k_tiled_scalar,
    }
}

/// The dot products of one matmul (see [`plan`]): activation rows
/// `0..split` use `head`, the others `tail`.
#[derive(Clone, Copy)]
pub struct MatmulDots {
    pub split: usize,
    pub head: DotFn,
    pub tail: DotFn,
}

impl MatmulDots {
    /// The dot product for activation row `t`.
    #[inline]
    pub fn for_row(&self, t: usize) -> DotFn {
        if t < self.split {
            self.head
        } else {
            self.tail
        }
    }
}

/// The dot products llama.cpp uses for a matmul of `rows` activation rows
/// against `ty` weights with `n_out` rows, on this CPU; `vec_dot` is the
/// weight format's.
pub fn matmul_dots(ty: GgmlType, n_out: usize, rows: usize, vec_dot: DotFn) -> MatmulDots {
    let (split, head, tail) = plan(ty, n_out, rows);
    let isa = crate::cpu::best();
    MatmulDots {
        split,
        head: kernel_fn(head, isa, vec_dot),
        tail: kernel_fn(tail, isa, vec_dot),
    }
}

/// The activation block's `bsums[j]`.
#[inline(always)]
fn bsum(a: &[u8], j: usize) -> i32 {
    let o = q8_k::BSUMS + 2 * j;
    i16::from_le_bytes([a[o], a[o + 1]]) as i32
}

/// `(Σ_s sc_s · Σ q·a, Σ_s m_s · (bsums[2s] + bsums[2s + 1]))` over the
/// sub-block pair `s = 2c, 2c + 1` of one Q4_K super-block `w` against one
/// Q8_K block `a`, for `c` in `0..4`.
#[inline(always)]
fn q4_k_pair_ints(w: &[u8], a: &[u8]) -> [(i32, i32); 4] {
    let sm = q4_k::scales_mins_bytes(&w[q4_k::SCALES..q4_k::SCALES + 12]);
    let qs = &w[q4_k::SCALES + 12..q4_k::SCALES + 12 + QK_K / 2];
    let aq = &a[q8_k::QS..q8_k::QS + QK_K];
    let mut out = [(0i32, 0i32); 4];
    for (c, o) in out.iter_mut().enumerate() {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let b = qs[32 * c + l];
            lo += (b & 15) as i32 * aq[64 * c + l] as i8 as i32;
            hi += (b >> 4) as i32 * aq[64 * c + 32 + l] as i8 as i32;
        }
        let (s0, s1) = (2 * c, 2 * c + 1);
        let isum = sm[s0] as i32 * lo + sm[s1] as i32 * hi;
        let imin = sm[8 + s0] as i32 * (bsum(a, 2 * s0) + bsum(a, 2 * s0 + 1))
            + sm[8 + s1] as i32 * (bsum(a, 2 * s1) + bsum(a, 2 * s1 + 1));
        *o = (isum, imin);
    }
    out
}

/// `Σ_s sc_s · Σ (q - 32)·a` of one Q6_K super-block against one Q8_K block.
#[inline(always)]
fn q6_k_block_int(w: &[u8], a: &[u8]) -> i32 {
    let mut q = [0u8; QK_K];
    q6_k::decode(w, &mut q);
    let aq = &a[q8_k::QS..q8_k::QS + QK_K];
    let mut isum = 0i32;
    for s in 0..QK_K / 16 {
        let mut t = 0i32;
        for e in 16 * s..16 * s + 16 {
            t += (q[e] as i32 - 32) * aq[e] as i8 as i32;
        }
        isum += w[q6_k::SCALES + s] as i8 as i32 * t;
    }
    isum
}

/// The repacked Q4_K float steps; `PER_PAIR`: the gemm (one step per
/// sub-block pair) rather than the gemv (one per super-block).
/// The exact integer sums of one super-block, by some instruction set.
trait BlockInts {
    /// [`q4_k_pair_ints`].
    fn q4_k_pairs(w: &[u8], a: &[u8]) -> [(i32, i32); 4];
    /// [`q6_k_block_int`].
    fn q6_k(w: &[u8], a: &[u8]) -> i32;
}

/// Portable Rust.
struct Scalar;

impl BlockInts for Scalar {
    #[inline(always)]
    fn q4_k_pairs(w: &[u8], a: &[u8]) -> [(i32, i32); 4] {
        q4_k_pair_ints(w, a)
    }
    #[inline(always)]
    fn q6_k(w: &[u8], a: &[u8]) -> i32 {
        q6_k_block_int(w, a)
    }
}

#[inline(always)]
fn q4_k_repack_body<I: BlockInts, const PER_PAIR: bool>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = dot_blocks(n, w, q4_k::BLOCK_BYTES, a, q8_k::BLOCK_BYTES);
    let (mut acc, mut accm) = (0.0f32, 0.0f32);
    for i in 0..nb {
        let wb = &w[i * q4_k::BLOCK_BYTES..(i + 1) * q4_k::BLOCK_BYTES];
        let ab = &a[i * q8_k::BLOCK_BYTES..(i + 1) * q8_k::BLOCK_BYTES];
        let pairs = I::q4_k_pairs(wb, ab);
        let da = f32_at(ab, q8_k::D);
        let (dd, dm) = (f16_at(wb, q4_k::D) * da, f16_at(wb, q4_k::DMIN) * da);
        if PER_PAIR {
            for (isum, imin) in pairs {
                acc = (isum as f32).mul_add(dd, acc);
                accm = (imin as f32).mul_add(dm, accm);
            }
        } else {
            let isum: i32 = pairs.iter().map(|p| p.0).sum();
            let imin: i32 = pairs.iter().map(|p| p.1).sum();
            acc = (isum as f32).mul_add(dd, acc);
            accm = (imin as f32).mul_add(dm, accm);
        }
    }
    acc - accm
}

#[inline(always)]
fn q6_k_tiled_body<I: BlockInts>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = dot_blocks(n, w, q6_k::BLOCK_BYTES, a, q8_k::BLOCK_BYTES);
    let mut acc = 0.0f32;
    for i in 0..nb {
        let wb = &w[i * q6_k::BLOCK_BYTES..(i + 1) * q6_k::BLOCK_BYTES];
        let ab = &a[i * q8_k::BLOCK_BYTES..(i + 1) * q8_k::BLOCK_BYTES];
        let res = f16_at(wb, q6_k::D) * I::q6_k(wb, ab) as f32;
        acc = res.mul_add(f32_at(ab, q8_k::D), acc);
    }
    acc
}

/// Scalar reference of the repacked Q4_K gemv (see the module docs).
pub fn q4_k_gemv_scalar(n: usize, w: &[u8], a: &[u8]) -> f32 {
    q4_k_repack_body::<Scalar, false>(n, w, a)
}

/// Scalar reference of the repacked Q4_K gemm (see the module docs).
pub fn q4_k_gemm_scalar(n: usize, w: &[u8], a: &[u8]) -> f32 {
    q4_k_repack_body::<Scalar, true>(n, w, a)
}

/// Scalar reference of the tiled Q6_K matmul (see the module docs).
pub fn q6_k_tiled_scalar(n: usize, w: &[u8], a: &[u8]) -> f32 {
    q6_k_tiled_body::<Scalar>(n, w, a)
}

// The same bodies with AVX2 integer sums (exact, so equal to the scalar
// ones) and `mul_add` as one `vfmadd`: bit for bit the scalar results.
/// An AVX2 + FMA entry point for `$body` (handed out only where AVX2 is
/// supported, see [`kernel_fn`]).
macro_rules! avx2_entry {
    ($name:ident, $body:expr) => {
        #[cfg(target_arch = "x86_64")]
        fn $name() -> DotFn {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn imp(n: usize, w: &[u8], a: &[u8]) -> f32 {
                $body(n, w, a)
            }
            fn entry(n: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: `kernel_fn` gives this out only where AVX2,
                // FMA and F16C are supported.
                unsafe { imp(n, w, a) }
            }
            entry
        }
    };
}
avx2_entry!(x86_q4_k_gemv, q4_k_repack_body::<x86::Avx2, false>);
avx2_entry!(x86_q4_k_gemm, q4_k_repack_body::<x86::Avx2, true>);
avx2_entry!(x86_q6_k_tiled, q6_k_tiled_body::<x86::Avx2>);

#[cfg(not(target_arch = "x86_64"))]
fn x86_q4_k_gemv() -> DotFn {
    q4_k_gemv_scalar
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_q4_k_gemm() -> DotFn {
    q4_k_gemm_scalar
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_q6_k_tiled() -> DotFn {
    q6_k_tiled_scalar
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{bsum, BlockInts};
    use crate::formats::kquant_simd::QK_K;
    use crate::formats::{q4_k, q6_k, q8_k};
    use std::arch::x86_64::*;

    /// AVX2 sums. Only the AVX2 entry points above use it, inside functions
    /// compiled with AVX2 enabled on CPUs that have it.
    pub(super) struct Avx2;

    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: callers pass 32 readable bytes.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    /// Sum of the eight i32 lanes (exact).
    #[inline(always)]
    unsafe fn hsum(v: __m256i) -> i32 {
        // SAFETY: AVX2 is the caller's.
        unsafe {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            _mm_cvtsi128_si32(s)
        }
    }

    /// Bits `SH..SH + 2` of each byte of `hb`, moved to bits 4..6.
    #[inline(always)]
    unsafe fn q6_high<const SH: i32>(hb: __m256i) -> __m256i {
        // SAFETY: AVX2 is the caller's.
        unsafe {
            let v = _mm256_srli_epi16::<SH>(hb);
            _mm256_slli_epi16::<4>(_mm256_and_si256(v, _mm256_set1_epi8(3)))
        }
    }

    impl BlockInts for Avx2 {
        #[inline(always)]
        fn q4_k_pairs(w: &[u8], a: &[u8]) -> [(i32, i32); 4] {
            assert!(w.len() >= q4_k::BLOCK_BYTES && a.len() >= q8_k::BLOCK_BYTES);
            let sm = q4_k::scales_mins_bytes(&w[q4_k::SCALES..q4_k::SCALES + 12]);
            let mut out = [(0i32, 0i32); 4];
            // SAFETY: AVX2 is enabled in every caller (see `Avx2`); the
            // loads stay inside the blocks checked above.
            unsafe {
                let qs = w.as_ptr().add(q4_k::SCALES + 12);
                let aq = a.as_ptr().add(q8_k::QS);
                let m4 = _mm256_set1_epi8(15);
                for (c, o) in out.iter_mut().enumerate() {
                    let q = load(qs.add(32 * c));
                    let lo = _mm256_and_si256(q, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                    // u4 * i8 pairs fit i16 (2 * 15 * 127).
                    let plo = _mm256_maddubs_epi16(lo, load(aq.add(64 * c)));
                    let phi = _mm256_maddubs_epi16(hi, load(aq.add(64 * c + 32)));
                    let s0 = _mm256_set1_epi16(sm[2 * c] as i16);
                    let s1 = _mm256_set1_epi16(sm[2 * c + 1] as i16);
                    let v =
                        _mm256_add_epi32(_mm256_madd_epi16(plo, s0), _mm256_madd_epi16(phi, s1));
                    let (t0, t1) = (2 * c, 2 * c + 1);
                    let imin = sm[8 + t0] as i32 * (bsum(a, 2 * t0) + bsum(a, 2 * t0 + 1))
                        + sm[8 + t1] as i32 * (bsum(a, 2 * t1) + bsum(a, 2 * t1 + 1));
                    *o = (hsum(v), imin);
                }
            }
            out
        }

        #[inline(always)]
        fn q6_k(w: &[u8], a: &[u8]) -> i32 {
            assert!(w.len() >= q6_k::BLOCK_BYTES && a.len() >= q8_k::BLOCK_BYTES);
            let sc = &w[q6_k::SCALES..q6_k::SCALES + QK_K / 16];
            // 32 * Σ_s sc_s * bsum_s: the `- 32` of every quant.
            let offset: i32 = (0..QK_K / 16)
                .map(|s| sc[s] as i8 as i32 * bsum(a, s))
                .sum();
            // SAFETY: as for `q4_k_pairs`.
            unsafe {
                let (ql, qh) = (w.as_ptr(), w.as_ptr().add(QK_K / 2));
                let aq = a.as_ptr().add(q8_k::QS);
                let m4 = _mm256_set1_epi8(15);
                let mut acc = _mm256_setzero_si256();
                for h in 0..2 {
                    let l0 = load(ql.add(64 * h));
                    let l1 = load(ql.add(64 * h + 32));
                    let hb = load(qh.add(32 * h));
                    let q = [
                        _mm256_or_si256(_mm256_and_si256(l0, m4), q6_high::<0>(hb)),
                        _mm256_or_si256(_mm256_and_si256(l1, m4), q6_high::<2>(hb)),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                            q6_high::<4>(hb),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                            q6_high::<6>(hb),
                        ),
                    ];
                    for (k, qk) in q.into_iter().enumerate() {
                        let e = 128 * h + 32 * k;
                        // u6 * i8 pairs fit i16 (2 * 63 * 127).
                        let p = _mm256_maddubs_epi16(qk, load(aq.add(e)));
                        let s = e / 16;
                        let scales = _mm256_setr_m128i(
                            _mm_set1_epi16(sc[s] as i8 as i16),
                            _mm_set1_epi16(sc[s + 1] as i8 as i16),
                        );
                        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scales));
                    }
                }
                hsum(acc) - 32 * offset
            }
        }
    }
}
