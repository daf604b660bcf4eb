//! Shared pieces of the legacy-format kernels (F32/F16/BF16, Q4_0 … Q8_1):
//! ISA fallback, slice-length preconditions, scalar fp16 helpers, and the x86
//! SIMD building blocks the per-format kernels are assembled from.
//!
//! The numerics follow ggml-cpu (`ggml-cpu/arch/x86/quants.c`, `vec.cpp`):
//! integer dot products per 32-element block, one f32 scale per block
//! (`d_w * d_a`, both widened from fp16), FMA'd block by block into one
//! 8-lane accumulator and reduced with ggml's horizontal sum. With the same
//! per-lane integer sums this gives ggml's (and llamafile tinyBLAS's) x86
//! results bit for bit; the 512-bit kernels do the integer work two blocks at
//! a time but keep that float order.

use crate::cpu::Isa;
use troupe_gguf::GgmlType;

/// The best ISA that is `<= isa` and that this CPU supports, so that a table
/// of `#[target_feature]` kernels is only ever handed out when it can run.
pub(crate) fn usable(isa: Isa) -> Isa {
    [Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2]
        .into_iter()
        .find(|i| *i <= isa && i.supported())
        .unwrap_or(Isa::Scalar)
}

/// fp16 bits to f32 (exact).
#[inline]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// f32 to fp16 bits, rounding to nearest even (like F16C and ggml).
#[inline]
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// The little-endian u16 at `b[off..off + 2]`.
#[inline]
pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// The little-endian u32 at `b[off..off + 4]`.
#[inline]
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Bytes of `n` elements of `ty`; panics (documented precondition of
/// [`super::QuantOps`]) when `n` is not a whole number of blocks.
#[inline]
pub(crate) fn row_bytes(ty: GgmlType, n: usize) -> usize {
    match ty.row_bytes(n) {
        Some(b) => b,
        None => panic!("{ty}: {n} elements is not a whole number of blocks"),
    }
}

/// Checks the [`super::QuantOps::vec_dot`] precondition: `w` holds exactly
/// `n` elements of `wt` and `a` exactly `n` elements of `at`. The SIMD
/// kernels read through raw pointers, so this is a hard assert.
#[inline]
pub(crate) fn check_dot(wt: GgmlType, at: GgmlType, n: usize, w: &[u8], a: &[u8]) {
    let (wb, ab) = (row_bytes(wt, n), row_bytes(at, n));
    assert!(
        w.len() == wb && a.len() == ab,
        "vec_dot {wt}x{at}: n={n} needs {wb}+{ab} bytes, got {}+{}",
        w.len(),
        a.len()
    );
}

/// Checks the `to_f32`/`from_f32` precondition: `bytes` holds exactly `n`
/// elements of `ty`.
#[inline]
pub(crate) fn check_convert(ty: GgmlType, n: usize, bytes: &[u8]) {
    let want = row_bytes(ty, n);
    assert!(
        bytes.len() == want,
        "{ty}: {n} elements need {want} bytes, got {}",
        bytes.len()
    );
}

/// x86 building blocks. Each is a `#[target_feature]` fn, so it inlines into
/// kernels compiled with the same features; the kernels are only reached
/// through tables that [`usable`] vetted. Loads and stores take a slice and a
/// constant offset: the bounds check folds away when the slice comes from
/// `as_chunks::<N>()`, and any mistake panics instead of reading out of bounds.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// Rounding mode of ggml's `_mm256_round_ps(v, _MM_ROUND_NEAREST)`.
    pub(crate) const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    // ------------------------------------------------------ loads / stores

    /// 16 bytes of `s` at `off`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn load_128(s: &[u8], off: usize) -> __m128i {
        let s = &s[off..off + 16];
        // SAFETY: `s` is 16 readable bytes; the load is unaligned.
        unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
    }

    /// 32 bytes of `s` at `off`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn load_256(s: &[u8], off: usize) -> __m256i {
        let s = &s[off..off + 32];
        // SAFETY: `s` is 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
    }

    /// 8 floats of `s` at `off`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn load_ps_256(s: &[f32], off: usize) -> __m256 {
        let s = &s[off..off + 8];
        // SAFETY: `s` is 8 readable floats.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }

    /// Stores 8 floats into `s` at `off`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn store_ps_256(s: &mut [f32], off: usize, v: __m256) {
        let s = &mut s[off..off + 8];
        // SAFETY: `s` is 8 writable floats.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }

    /// Stores 16 bytes into `s` at `off`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn store_128(s: &mut [u8], off: usize, v: __m128i) {
        let s = &mut s[off..off + 16];
        // SAFETY: `s` is 16 writable bytes.
        unsafe { _mm_storeu_si128(s.as_mut_ptr().cast(), v) }
    }

    /// Stores 32 bytes into `s` at `off`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn store_256(s: &mut [u8], off: usize, v: __m256i) {
        let s = &mut s[off..off + 32];
        // SAFETY: `s` is 32 writable bytes.
        unsafe { _mm256_storeu_si256(s.as_mut_ptr().cast(), v) }
    }

    /// 64 bytes of `s` at `off`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(crate) fn load_512(s: &[u8], off: usize) -> __m512i {
        let s = &s[off..off + 64];
        // SAFETY: `s` is 64 readable bytes; the load is unaligned.
        unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
    }

    /// 16 floats of `s` at `off`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(crate) fn load_ps_512(s: &[f32], off: usize) -> __m512 {
        let s = &s[off..off + 16];
        // SAFETY: `s` is 16 readable floats.
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }

    /// Stores 16 floats into `s` at `off`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(crate) fn store_ps_512(s: &mut [f32], off: usize, v: __m512) {
        let s = &mut s[off..off + 16];
        // SAFETY: `s` is 16 writable floats.
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    }

    // ----------------------------------------------------------------- AVX2

    /// Sum of the 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn hsum_ps_256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// ggml's `GGML_F32x8_REDUCE` of four accumulators: `(x0 + x2) + (x1 +
    /// x3)`, halves added, then two `hadd`s. Float dots that mirror ggml's
    /// loop order and end with this give its numbers bit for bit.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn reduce4_256(x: [__m256; 4]) -> f32 {
        let v = _mm256_add_ps(_mm256_add_ps(x[0], x[2]), _mm256_add_ps(x[1], x[3]));
        let t0 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let t1 = _mm_hadd_ps(t0, t0);
        _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
    }

    /// Sum of the 8 i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn hsum_epi32_256(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_extracti128_si256::<1>(v), _mm256_castsi256_si128(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// The 32 nibbles of a legacy 4-bit block (16 bytes of `s` at `off`) as
    /// bytes in element order: low nibbles are elements 0..16, high 16..32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn nibbles_256(s: &[u8], off: usize) -> __m256i {
        let q = load_128(s, off);
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(q), q);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }

    /// 32 bits to 32 bytes: byte `i` is 0xFF where bit `i` of `bits` is set.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn bits_to_bytes_256(bits: u32) -> __m256i {
        let v = _mm256_set1_epi32(bits as i32);
        // Byte i takes source byte i / 8 (shuffles stay inside 128-bit lanes).
        let pick = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let v = _mm256_and_si256(_mm256_shuffle_epi8(v, pick), bit);
        _mm256_cmpeq_epi8(v, bit)
    }

    /// Sums of 4 adjacent `u * s` products (u8 × i8) in 8 i32 lanes.
    /// Exact while every pair sum fits i16 (e.g. `u ≤ 128`, `|s| ≤ 127`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn dot_u8i8_256(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    /// Like [`dot_u8i8_256`] for `(u - off) * s`, the offset folded in at 16
    /// bits. Exact while `u ≤ 31`, `off ≤ 16` (no i16 overflow).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn dot_u8i8_off_256(u: __m256i, s: __m256i, off: __m256i) -> __m256i {
        let p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, s), _mm256_maddubs_epi16(off, s));
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }

    /// Sums of 4 adjacent `x * y` products (i8 × i8) in 8 i32 lanes, as
    /// `|x| * sign(y, x)`. Exact for `y != -128` (activations from
    /// `from_f32` are in -127..=127), like ggml's `mul_sum_i8_pairs_float`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn dot_i8i8_256(x: __m256i, y: __m256i) -> __m256i {
        dot_u8i8_256(_mm256_abs_epi8(x), _mm256_sign_epi8(y, x))
    }

    /// fp16 → f32 of 4 values.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn f16x4(a: u16, b: u16, c: u16, d: u16) -> __m128 {
        let bits = a as u64 | (b as u64) << 16 | (c as u64) << 32 | (d as u64) << 48;
        _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
    }

    /// Scales of two blocks of a `d`-only format: lanes 0 and 2 hold
    /// `f32(wd0) * f32(ad0)` and `f32(wd1) * f32(ad1)` (lanes 1, 3: junk).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn scales_d2(wd0: u16, ad0: u16, wd1: u16, ad1: u16) -> __m128 {
        let v = f16x4(wd0, ad0, wd1, ad1);
        _mm_mul_ps(v, _mm_movehdup_ps(v))
    }

    /// Scales of two blocks of a `(d, m)` weight format against Q8_1 `(d, s)`
    /// activations, from the blocks' first 4 bytes: lanes 0 and 4 hold
    /// `wd * ad` of block 0 and 1, lanes 1 and 5 hold `wm * as` (others junk).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn scales_dm2(w0: u32, a0: u32, w1: u32, a1: u32) -> __m256 {
        let v = _mm256_cvtph_ps(_mm_setr_epi32(w0 as i32, a0 as i32, w1 as i32, a1 as i32));
        // [wd, wm, ad, as] * [ad, as, wd, wm] in each 128-bit half.
        _mm256_mul_ps(v, _mm256_permute_ps::<0b01_00_11_10>(v))
    }

    /// `acc += d * f32(i)` for two consecutive blocks, in block order: the
    /// per-block FMA into one 8-lane accumulator that ggml's AVX2 `vec_dot`
    /// and llamafile's tinyBLAS use, so sums come out bit-identical to theirs.
    /// `d` holds the blocks' scales in lanes `l0` and `l1`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn fmadd2_256(
        acc: __m256,
        d: __m256,
        (l0, l1): (i32, i32),
        i0: __m256i,
        i1: __m256i,
    ) -> __m256 {
        fmadd1_256(fmadd1_256(acc, d, l0, i0), d, l1, i1)
    }

    /// `acc += d[l] * f32(i)`: one block of [`fmadd2_256`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn fmadd1_256(acc: __m256, d: __m256, l: i32, i: __m256i) -> __m256 {
        let d = _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(l));
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc)
    }

    /// The `m * s` products of a [`scales_dm2`] vector (lanes 1 and 5).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn ms_pair(s: __m256) -> (f32, f32) {
        let lo = _mm_movehdup_ps(_mm256_castps256_ps128(s));
        let hi = _mm_movehdup_ps(_mm256_extractf128_ps::<1>(s));
        (_mm_cvtss_f32(lo), _mm_cvtss_f32(hi))
    }

    /// Widens 32 i8 to f32, scales by `d` (then adds `m` unless `None`, as a
    /// separate add like ggml's dequantizers) and stores them at `y[off..]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn store_i8x32_scaled(q: __m256i, d: __m256, m: Option<__m256>, y: &mut [f32]) {
        let lo = _mm256_castsi256_si128(q);
        let hi = _mm256_extracti128_si256::<1>(q);
        let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
        for (k, p) in parts.into_iter().enumerate() {
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(p)), d);
            let v = match m {
                Some(m) => _mm256_add_ps(v, m),
                None => v,
            };
            store_ps_256(y, 8 * k, v);
        }
    }

    /// Quantizes 32 floats like ggml-cpu's x86 `quantize_row_q8_0`: scale
    /// `amax / 127`, multiplier `127 / amax`, round half to even. Writes the
    /// quants to `qs[..32]`, returns the f32 scale and the sum of the quants.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn quantize_q8_block_256(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
        let v = [0, 8, 16, 24].map(|o| load_ps_256(x, o));
        let sign = _mm256_set1_ps(-0.0);
        let m01 = _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
        let m23 = _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
        let m = _mm256_max_ps(m01, m23);
        let m = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q = v.map(|v| _mm256_cvtps_epi32(_mm256_round_ps::<RNE>(_mm256_mul_ps(v, id))));
        let sum = hsum_epi32_256(_mm256_add_epi32(
            _mm256_add_epi32(q[0], q[1]),
            _mm256_add_epi32(q[2], q[3]),
        ));
        // The packs work per 128-bit lane: put the dwords back in order.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        store_256(qs, 0, p);
        (d, sum)
    }

    /// f32 → fp16 bits, round to nearest even (F16C; same as `half`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn f32_to_f16_f16c(x: f32) -> u16 {
        _mm_extract_epi16::<0>(_mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_set_ss(x))) as u16
    }

    // -------------------------------------------------------------- AVX-512

    /// The nibbles of two legacy 4-bit blocks (16 bytes of `s` at `off0` and
    /// at `off1`) as 64 bytes in element order: `[blk0 0..32, blk1 0..32]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(crate) fn nibbles2_512(s: &[u8], off0: usize, off1: usize) -> __m512i {
        let (q0, q1) = (load_128(s, off0), load_128(s, off1));
        // 128-bit lanes [q0, q0, q1, q1]; lanes 1 and 3 take the high nibbles.
        let v = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(q0), 0xFF00, q1);
        let v = _mm512_mask_blend_epi64(0b1100_1100, v, _mm512_srli_epi16::<4>(v));
        _mm512_and_si512(v, _mm512_set1_epi8(0x0F))
    }

    /// 32 bytes of `s` at `off0` then 32 bytes at `off1`, in one register.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(crate) fn load2_256(s: &[u8], off0: usize, off1: usize) -> __m512i {
        let (a, b) = (load_256(s, off0), load_256(s, off1));
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b)
    }

    /// The two 256-bit halves of a register of i32 sums (block 0, block 1).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(crate) fn halves_512(i: __m512i) -> (__m256i, __m256i) {
        (_mm512_castsi512_si256(i), _mm512_extracti64x4_epi64::<1>(i))
    }

    /// GCC's `_mm512_reduce_add_ps` (what ggml's AVX-512 builds call):
    /// halves added, quarters added, then `(t0 + t2) + (t1 + t3)`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(crate) fn reduce_add_512(v: __m512) -> f32 {
        let t = _mm256_add_ps(_mm512_extractf32x8_ps::<1>(v), _mm512_castps512_ps256(v));
        let t = _mm_add_ps(_mm256_extractf128_ps::<1>(t), _mm256_castps256_ps128(t));
        let t = _mm_add_ps(t, _mm_shuffle_ps::<0b01_00_11_10>(t, t));
        _mm_cvtss_f32(t) + _mm_cvtss_f32(_mm_movehdup_ps(t))
    }

    /// ggml's `GGML_F32x16_REDUCE` of four accumulators: `(x0 + x2) + (x1 +
    /// x3)`, then [`reduce_add_512`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(crate) fn reduce4_512(x: [__m512; 4]) -> f32 {
        reduce_add_512(_mm512_add_ps(
            _mm512_add_ps(x[0], x[2]),
            _mm512_add_ps(x[1], x[3]),
        ))
    }

    /// AVX-512 version of [`quantize_q8_block_256`] (same numbers).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(crate) fn quantize_q8_block_512(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
        let (v0, v1) = (load_ps_512(x, 0), load_ps_512(x, 16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q0 = _mm512_cvt_roundps_epi32::<RNE>(_mm512_mul_ps(v0, id));
        let q1 = _mm512_cvt_roundps_epi32::<RNE>(_mm512_mul_ps(v1, id));
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        store_128(qs, 0, _mm512_cvtsepi32_epi8(q0));
        store_128(qs, 16, _mm512_cvtsepi32_epi8(q1));
        (d, sum)
    }
}
