//! The llama.cpp matmul paths of `formats::ggml_mm` (repacked Q4_K gemm /
//! gemv, tiled Q6_K): fast entry points bit-identical to the scalar
//! references, the references close to the f64 dot of the dequantized
//! operands, and the dispatch rules (which rows get which kernel).
//! Bit-exactness against llama.cpp itself is checked end to end by the
//! golden tests (`crates/engine/tests/golden.rs`).

use troupe_kernels::formats::ggml_mm::{kernel_fn, plan, DotFn, Kernel, TILED_MIN_ROWS};
use troupe_kernels::{ops_for, GgmlType, Isa};

/// Scalar reference vs the f64 dot of the dequantized operands, relative to
/// `sum |w_i * a_i|` (f32 accumulation over at most 16 blocks).
const VS_F64_TOL: f64 = 1e-5;

const LENGTHS: [usize; 4] = [256, 1024, 7 * 256, 19 * 256];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // Roughly Gaussian: sum of four uniforms in [-1, 1).
        let u = |v: u64, s: u32| ((v >> s) & 0xffff) as f32 / 32768.0 - 1.0;
        u(self.0, 0) + u(self.0, 16) + u(self.0, 32) + u(self.0, 48)
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len()).expect("whole blocks")];
    (ops_for(ty, Isa::Scalar).from_f32)(x, &mut out);
    out
}

fn dequantize(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    (ops_for(ty, Isa::Scalar).to_f32)(b, &mut out);
    out
}

/// (weights, activations) of `n` elements in `ty` and Q8_K.
fn operands(ty: GgmlType, n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let w = rng.vec(n, 0.05);
    let a = rng.vec(n, 1.5);
    (quantize(ty, &w), quantize(GgmlType::Q8_K, &a))
}

fn kernels() -> [(GgmlType, Kernel); 3] {
    [
        (GgmlType::Q4_K, Kernel::Q4KGemv),
        (GgmlType::Q4_K, Kernel::Q4KGemm),
        (GgmlType::Q6_K, Kernel::Q6KTiled),
    ]
}

fn vec_dot(ty: GgmlType) -> DotFn {
    ops_for(ty, Isa::Scalar).vec_dot
}

#[test]
fn fast_paths_match_scalar_bit_for_bit() {
    for isa in Isa::all_supported() {
        for (ty, k) in kernels() {
            let reference = kernel_fn(k, Isa::Scalar, vec_dot(ty));
            let fast = kernel_fn(k, isa, vec_dot(ty));
            for (k, &n) in LENGTHS.iter().enumerate() {
                for seed in 0..8 {
                    let (w, a) = operands(ty, n, 1000 * k as u64 + seed);
                    let (r, f) = (reference(n, &w, &a), fast(n, &w, &a));
                    assert_eq!(
                        r.to_bits(),
                        f.to_bits(),
                        "{k:?} {isa:?} n={n} seed={seed}: {r} vs {f}"
                    );
                }
            }
        }
    }
}

#[test]
fn references_close_to_f64_dot() {
    for (ty, kern) in kernels() {
        let reference = kernel_fn(kern, Isa::Scalar, vec_dot(ty));
        for (k, &n) in LENGTHS.iter().enumerate() {
            let (w, a) = operands(ty, n, 77 + k as u64);
            let (wf, af) = (dequantize(ty, &w, n), dequantize(GgmlType::Q8_K, &a, n));
            let exact: f64 = wf.iter().zip(&af).map(|(x, y)| *x as f64 * *y as f64).sum();
            let scale: f64 = wf
                .iter()
                .zip(&af)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum();
            let got = reference(n, &w, &a) as f64;
            let err = (got - exact).abs() / scale;
            assert!(
                err < VS_F64_TOL,
                "{kern:?} n={n}: {got} vs {exact} (rel {err:e})"
            );
        }
    }
}

#[test]
fn dispatch_follows_llama_cpp() {
    use Kernel::*;
    // Repacked Q4_K (weight rows a multiple of 8): gemm for whole groups of
    // 4 activation rows, gemv for the rest, whatever the batch.
    for rows in [1usize, 3, 4, 7, 8, 13] {
        assert_eq!(
            plan(GgmlType::Q4_K, 896, rows),
            (rows - rows % 4, Q4KGemm, Q4KGemv)
        );
    }
    // Not repackable: the format's vec_dot.
    assert_eq!(plan(GgmlType::Q4_K, 900, 16).0, 0);
    assert_eq!(plan(GgmlType::Q4_K, 900, 16).2, VecDot);
    // Q6_K: tiled from TILED_MIN_ROWS rows on, vec_dot below.
    assert_eq!(plan(GgmlType::Q6_K, 896, TILED_MIN_ROWS - 1).2, VecDot);
    assert_eq!(plan(GgmlType::Q6_K, 896, TILED_MIN_ROWS - 1).0, 0);
    assert_eq!(
        plan(GgmlType::Q6_K, 896, TILED_MIN_ROWS),
        (TILED_MIN_ROWS, Q6KTiled, VecDot)
    );
    // Legacy formats: always vec_dot (tinyBLAS, where it runs, has its order).
    for ty in [
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_1,
        GgmlType::Q5_K,
    ] {
        assert_eq!(plan(ty, 896, 64), (0, VecDot, VecDot));
    }
}
