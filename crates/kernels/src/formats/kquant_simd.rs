//! Helpers shared by the K-quant formats (Q4_K, Q5_K, Q6_K and their
//! activation format Q8_K): length checks, f16 fields, and the x86 SIMD
//! building blocks of their fast paths.
//!
//! Every fast kernel is written once against 256-bit registers, following
//! the structure of ggml's AVX2 kernels (`ggml-cpu/arch/x86/quants.c`), and
//! compiled three times by [`x86_entry_points!`]:
//!
//! * `avx2`: AVX2 + FMA + F16C;
//! * `avx512`: the same source with AVX-512 F/BW/VL/DQ enabled, so LLVM may
//!   use EVEX encodings and 32 vector registers;
//! * `vnni`: AVX512-VNNI on 256-bit registers (AVX512VL), where the
//!   `vpmaddwd` + `vpaddd` pair that applies a sub-block scale becomes one
//!   `vpdpwssd` ([`MaddAcc`]).
//!
//! The integer lanes are identical in all three and the float accumulation
//! follows ggml's AVX2 order, so the three give bit-identical results, equal
//! to ggml's AVX2 `ggml_vec_dot_*_q8_K` for the same inputs as GCC compiles
//! it (its default `-ffp-contract=fast` fuses one multiply-add in Q5_K, which
//! is written as an FMA here); `tests/kquant_formats.rs` checks this against
//! values recorded from a llama.cpp build.
//!
//! The parity tests run every variant the test machine supports; on a host
//! without AVX-512 the `avx512` and `vnni` variants are compiled, not run.

/// Elements per K-quant super-block.
pub(crate) const QK_K: usize = 256;

/// Checks the [`super::QuantOps::vec_dot`] preconditions and returns the
/// number of super-blocks.
///
/// # Panics
/// If `n` is not a multiple of 256 or a slice does not hold exactly
/// `n / 256` blocks (`w_block` and `a_block` bytes each). These are caller
/// bugs, and the fast paths read through raw pointers that rely on them.
#[inline]
pub(crate) fn dot_blocks(n: usize, w: &[u8], w_block: usize, a: &[u8], a_block: usize) -> usize {
    assert!(
        n.is_multiple_of(QK_K),
        "K-quant length {n} is not a multiple of {QK_K}"
    );
    let nb = n / QK_K;
    assert_eq!(
        w.len(),
        nb * w_block,
        "weight bytes do not match {n} elements"
    );
    assert_eq!(
        a.len(),
        nb * a_block,
        "activation bytes do not match {n} elements"
    );
    nb
}

/// Checks the `to_f32` / `from_f32` preconditions (`elems` floats against
/// `bytes` of blocks of `block` bytes) and returns the number of blocks.
///
/// # Panics
/// Same conditions as [`dot_blocks`].
#[inline]
pub(crate) fn conv_blocks(elems: usize, bytes: usize, block: usize) -> usize {
    assert!(
        elems.is_multiple_of(QK_K),
        "K-quant length {elems} is not a multiple of {QK_K}"
    );
    let nb = elems / QK_K;
    assert_eq!(
        bytes,
        nb * block,
        "block bytes do not match {elems} elements"
    );
    nb
}

/// The little-endian f16 at `b[off..off + 2]`, widened (exactly) to f32.
#[inline]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// The little-endian f32 at `b[off..off + 4]`.
#[inline]
pub(crate) fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Generates the three safe x86 entry points (`avx2`, `avx512`, `vnni`) of
/// one kernel body.
///
/// `$body` is an `#[inline(always)] unsafe fn` generic over [`MaddAcc`]
/// whose own safety requirement is only that the CPU has AVX2 + FMA + F16C
/// (plus VNNI for `Vnni`); each entry point compiles it under its
/// `#[target_feature]` set.
///
/// Soundness: the entry points are safe functions that execute
/// feature-gated instructions. They are reachable only through the format's
/// `ops(isa)` tables, and `ops` hands out a table only for an `isa` that
/// [`crate::Isa::supported`] confirms (it falls back to scalar otherwise).
#[cfg(target_arch = "x86_64")]
macro_rules! x86_entry_points {
    ($body:ident, fn($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        pub(crate) fn avx2($($arg: $ty),*) $(-> $ret)? {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn imp($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: the features `$body` needs are enabled here.
                unsafe { $body::<$crate::formats::kquant_simd::x86::Plain>($($arg),*) }
            }
            // SAFETY: see the macro's soundness note; `ops` gives this out
            // only where `Isa::Avx2` is supported.
            unsafe { imp($($arg),*) }
        }

        pub(crate) fn avx512($($arg: $ty),*) $(-> $ret)? {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
            unsafe fn imp($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: the features `$body` needs are enabled here.
                unsafe { $body::<$crate::formats::kquant_simd::x86::Plain>($($arg),*) }
            }
            // SAFETY: as for `avx2`, with `Isa::Avx512`.
            unsafe { imp($($arg),*) }
        }

        pub(crate) fn vnni($($arg: $ty),*) $(-> $ret)? {
            #[target_feature(
                enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"
            )]
            unsafe fn imp($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: the features `$body` needs, VNNI included, are
                // enabled here.
                unsafe { $body::<$crate::formats::kquant_simd::x86::Vnni>($($arg),*) }
            }
            // SAFETY: as for `avx2`, with `Isa::Avx512Vnni`.
            unsafe { imp($($arg),*) }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_entry_points;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// `acc + madd_epi16(a, b)`: the step that applies 16-bit sub-block
    /// scales to 16-bit partial dot products and accumulates them in i32.
    pub(crate) trait MaddAcc {
        /// # Safety
        /// The CPU must support the instructions of the implementation.
        unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
    }

    /// `vpmaddwd` + `vpaddd` (AVX2).
    pub(crate) struct Plain;

    /// `vpdpwssd` (AVX512-VNNI + AVX512VL). Exact: each i32 lane receives
    /// the same two products as with [`Plain`], added without saturation.
    pub(crate) struct Vnni;

    impl MaddAcc for Plain {
        #[inline(always)]
        unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: AVX2 is the caller's precondition.
            unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) }
        }
    }

    impl MaddAcc for Vnni {
        #[inline(always)]
        unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: AVX512-VNNI + AVX512VL are the caller's precondition.
            unsafe { _mm256_dpwssd_epi32(acc, a, b) }
        }
    }

    /// Unaligned 32-byte load.
    ///
    /// # Safety
    /// AVX; `p..p + 32` readable.
    #[inline(always)]
    pub(crate) unsafe fn load256(p: *const u8) -> __m256i {
        // SAFETY: caller's precondition.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    /// Unaligned 16-byte load.
    ///
    /// # Safety
    /// SSE2; `p..p + 16` readable.
    #[inline(always)]
    pub(crate) unsafe fn load128(p: *const u8) -> __m128i {
        // SAFETY: caller's precondition.
        unsafe { _mm_loadu_si128(p.cast()) }
    }

    /// The f16 at `p` (unaligned) as f32, converted with integer operations
    /// (exact, like any f16 -> f32 conversion). F16C would need a 2-byte
    /// vector load, which LLVM lowers as an insert into whatever register is
    /// free, chaining each block's scale to the previous block's sums.
    ///
    /// # Safety
    /// `p..p + 2` readable.
    #[inline(always)]
    pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
        // SAFETY: caller's precondition.
        let bits = unsafe { p.cast::<u16>().read_unaligned() };
        half::f16::from_bits(bits).to_f32_const()
    }

    /// The two consecutive f16 at `p` (unaligned) as f32: `(p[0], p[1])`.
    ///
    /// # Safety
    /// F16C; `p..p + 4` readable.
    #[inline(always)]
    pub(crate) unsafe fn f16x2_at(p: *const u8) -> (f32, f32) {
        // SAFETY: caller's precondition.
        unsafe {
            let v = _mm_cvtph_ps(_mm_loadu_si32(p));
            (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
        }
    }

    /// The f32 at `p` (unaligned).
    ///
    /// # Safety
    /// `p..p + 4` readable.
    #[inline(always)]
    pub(crate) unsafe fn f32_at(p: *const u8) -> f32 {
        // SAFETY: caller's precondition.
        unsafe { p.cast::<f32>().read_unaligned() }
    }

    /// Horizontal sum of 8 floats in ggml's order (`hsum_float_8`):
    /// high half + low half, then pairs, then the last two.
    ///
    /// # Safety
    /// AVX.
    #[inline(always)]
    pub(crate) unsafe fn hsum_f32x8(v: __m256) -> f32 {
        // SAFETY: caller's precondition.
        unsafe {
            let r = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
            hsum_f32x4(r)
        }
    }

    /// Horizontal sum of 4 floats in ggml's order: `(v0 + v2) + (v1 + v3)`.
    ///
    /// # Safety
    /// SSE3.
    #[inline(always)]
    pub(crate) unsafe fn hsum_f32x4(v: __m128) -> f32 {
        // SAFETY: caller's precondition.
        unsafe {
            let r = _mm_add_ps(v, _mm_movehl_ps(v, v));
            _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
        }
    }

    /// Horizontal sum of 8 i32 lanes (exact, wrapping).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(crate) unsafe fn hsum_i32x8(v: __m256i) -> i32 {
        // SAFETY: caller's precondition.
        unsafe {
            let r = _mm_add_epi32(_mm256_extracti128_si256::<1>(v), _mm256_castsi256_si128(v));
            let r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
            let r = _mm_add_epi32(r, _mm_shuffle_epi32::<0b01>(r));
            _mm_cvtsi128_si32(r)
        }
    }

    /// Writes `scale * q[i] - min` for the 32 unsigned bytes of `q` to
    /// `dst[0..32]`, as separate multiply and subtract (no FMA), so the
    /// result equals the scalar reference bit for bit.
    ///
    /// # Safety
    /// AVX2; `dst..dst + 32` writable.
    #[inline(always)]
    pub(crate) unsafe fn store_u8x32_affine(dst: *mut f32, q: __m256i, scale: f32, min: f32) {
        // SAFETY: caller's precondition.
        unsafe {
            let vs = _mm256_set1_ps(scale);
            let vm = _mm256_set1_ps(min);
            let lo = _mm256_castsi256_si128(q);
            let hi = _mm256_extracti128_si256::<1>(q);
            let parts = [
                lo,
                _mm_unpackhi_epi64(lo, lo),
                hi,
                _mm_unpackhi_epi64(hi, hi),
            ];
            for (k, p) in parts.into_iter().enumerate() {
                let f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(p));
                _mm256_storeu_ps(dst.add(8 * k), _mm256_sub_ps(_mm256_mul_ps(vs, f), vm));
            }
        }
    }

    /// Writes `scale * q[i]` for the 16 signed bytes of `q` to `dst[0..16]`.
    ///
    /// # Safety
    /// AVX2; `dst..dst + 16` writable.
    #[inline(always)]
    pub(crate) unsafe fn store_i8x16_scaled(dst: *mut f32, q: __m128i, scale: f32) {
        // SAFETY: caller's precondition.
        unsafe {
            let vs = _mm256_set1_ps(scale);
            let a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            let b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(q, q)));
            _mm256_storeu_ps(dst, _mm256_mul_ps(vs, a));
            _mm256_storeu_ps(dst.add(8), _mm256_mul_ps(vs, b));
        }
    }

    /// The Q4_K/Q5_K 6-bit scales and mins of one block, unpacked from the
    /// 12 bytes at `p` (ggml's `get_scale_min_k4` layout) and widened to
    /// i16: lanes 0..8 are the scales, lanes 8..16 the mins.
    ///
    /// # Safety
    /// AVX2; `p..p + 16` readable (the 4 bytes after the scales are loaded
    /// and ignored).
    #[inline(always)]
    pub(crate) unsafe fn scales_mins_i16(p: *const u8) -> __m256i {
        // SAFETY: caller's precondition.
        unsafe {
            let v = load128(p);
            // Byte k of the result, for k in 0..4:
            //   sc[k]     = s[k] & 63
            //   sc[4 + k] = (s[8 + k] & 15) | (s[k] >> 6) << 4
            //   m[k]      = s[4 + k] & 63
            //   m[4 + k]  = (s[8 + k] >> 4) | (s[4 + k] >> 6) << 4
            let low = _mm_shuffle_epi8(
                v,
                _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11),
            );
            let top = _mm_shuffle_epi8(
                v,
                _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7),
            );
            let keep = _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0);
            let high_nibble = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15);
            // 16-bit shifts pull bits in from the next byte; the masks drop them.
            let lo = _mm_or_si128(
                _mm_and_si128(low, keep),
                _mm_and_si128(_mm_srli_epi16::<4>(low), high_nibble),
            );
            let hi = _mm_and_si128(_mm_srli_epi16::<2>(top), _mm_set1_epi8(0x30));
            _mm256_cvtepu8_epi16(_mm_or_si128(lo, hi))
        }
    }

    /// `sum_j mins[j] * (bsums[2j] + bsums[2j+1])` of one Q4_K/Q5_K block
    /// as 4 i32 lanes (pairs of sub-blocks), given the block's
    /// [`scales_mins_i16`] and the Q8_K bsums at `bsums`.
    ///
    /// # Safety
    /// AVX2; `bsums..bsums + 32` readable.
    #[inline(always)]
    pub(crate) unsafe fn mins_dot_bsums(mins_scales: __m256i, bsums: *const u8) -> __m128i {
        // SAFETY: caller's precondition.
        unsafe {
            let q8sums = load256(bsums);
            let pairs = _mm_hadd_epi16(
                _mm256_castsi256_si128(q8sums),
                _mm256_extracti128_si256::<1>(q8sums),
            );
            _mm_madd_epi16(_mm256_extracti128_si256::<1>(mins_scales), pairs)
        }
    }

    /// The 8 sub-block scales (i16 lanes 0..8 of [`scales_mins_i16`]) laid
    /// out for [`splat_scale`]: each scale doubled into an i32, scales 0..4
    /// in both 128-bit halves of the first vector, 4..8 of the second.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(crate) unsafe fn scale_pairs(mins_scales: __m256i) -> [__m256i; 2] {
        // SAFETY: caller's precondition.
        unsafe {
            let sc = _mm256_castsi256_si128(mins_scales);
            [
                _mm256_broadcastsi128_si256(_mm_unpacklo_epi16(sc, sc)),
                _mm256_broadcastsi128_si256(_mm_unpackhi_epi16(sc, sc)),
            ]
        }
    }

    /// Scale `k` (0..8, a constant after unrolling) in all 16 i16 lanes.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(crate) unsafe fn splat_scale(pairs: &[__m256i; 2], k: usize) -> __m256i {
        // SAFETY: caller's precondition.
        unsafe {
            let v = pairs[k / 4];
            match k % 4 {
                0 => _mm256_shuffle_epi32::<0x00>(v),
                1 => _mm256_shuffle_epi32::<0x55>(v),
                2 => _mm256_shuffle_epi32::<0xAA>(v),
                _ => _mm256_shuffle_epi32::<0xFF>(v),
            }
        }
    }
}
