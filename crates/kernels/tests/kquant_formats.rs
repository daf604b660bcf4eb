//! K-quant formats (Q4_K, Q5_K, Q6_K, Q8_K): every fast path against the
//! scalar reference, the scalar reference against gguf-py and a numpy
//! transcription of ggml's Q8_K quantizer, the fast dot products against
//! values recorded from ggml's own build (fixtures written by
//! `scripts/fixtures/dequant_kquant.py`), and quantization error bounds.
//!
//! Tolerances are named below; dot-product tolerances are relative to
//! `sum |w_i * a_i|` (the scale of the rounding, which `|result|` is not when
//! terms cancel).

use troupe_kernels::{ops_for, GgmlType, Isa, QuantOps};

const QK_K: usize = 256;

/// Fast vs scalar `vec_dot`: same integer sums, different float order.
/// Measured worst: Q4_K 9e-9, Q5_K 1.8e-8, Q6_K 3.9e-8 (n up to 4096).
const Q4K_DOT_TOL: f32 = 1e-6;
const Q5K_DOT_TOL: f32 = 1e-6;
const Q6K_DOT_TOL: f32 = 1e-6;
/// Q8_K dot sums exact integers per block in the same float order: exact.
const Q8K_DOT_TOL: f32 = 0.0;
/// Scalar `vec_dot` vs the f64 dot of the dequantized operands (measured
/// worst 1.7e-8).
const SCALAR_DOT_VS_F64_TOL: f64 = 1e-6;

/// Quantize -> dequantize, largest error over the super-block's span
/// (`max(hi, 0) - min(lo, 0)`). Analytic bounds: Q4_K 1/30 + 1/1890 + 1/126
/// (half a rounded-up step plus half a min step), Q5_K 1/62 + 1/3906 + 1/126,
/// Q6_K 1/62 + 1/7874, Q8_K 1/254. Measured (scalar = fast): Q4_K 0.0333,
/// Q5_K 0.0161, Q6_K 0.0161, Q8_K 0.00394.
const Q4K_MAX_ERR_TOL: f32 = 0.042;
const Q5K_MAX_ERR_TOL: f32 = 0.025;
const Q6K_MAX_ERR_TOL: f32 = 0.0163;
const Q8K_MAX_ERR_TOL: f32 = 0.00395;
/// Quantize -> dequantize, RMS error over the RMS of Gaussian data.
/// Measured: Q4_K 0.0805, Q5_K 0.0397, Q6_K 0.0198, Q8_K 0.0068 (min-max
/// grids; ggml's searched scales do better on Q4_K-Q6_K).
const Q4K_RMSE_TOL: f64 = 0.085;
const Q5K_RMSE_TOL: f64 = 0.042;
const Q6K_RMSE_TOL: f64 = 0.021;
const Q8K_RMSE_TOL: f64 = 0.0072;

/// Lengths for the parity tests, in elements.
const LENGTHS: [usize; 5] = [256, 512, 1024, 7 * 256, 4096];

// ---------------------------------------------------------------------------
// Data.

/// xorshift64*: a tiny deterministic generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f32 {
        let u = 1.0 - self.f32();
        let v = self.f32();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

fn ops(ty: GgmlType, isa: Isa) -> &'static QuantOps {
    ops_for(ty, isa)
}

fn f16_le(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// Random blocks of `ty` (random bytes, f16 scale fields set to sane values).
fn random_weights(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut w = rng.bytes(n / QK_K * bb);
    for b in w.chunks_exact_mut(bb) {
        let d = 1e-3 + 0.05 * rng.f32();
        match ty {
            GgmlType::Q4_K | GgmlType::Q5_K => {
                b[0..2].copy_from_slice(&f16_le(d));
                b[2..4].copy_from_slice(&f16_le(0.04 * (rng.f32() - 0.5)));
            }
            GgmlType::Q6_K => b[bb - 2..].copy_from_slice(&f16_le(d)),
            _ => unreachable!("not a K-quant weight type"),
        }
    }
    w
}

/// Gaussian values, each super-block with its own scale in [0.01, 10).
fn gaussian(n: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x = Vec::with_capacity(n);
    for _ in 0..n / QK_K {
        let s = 0.01 * 1000f32.powf(rng.f32());
        x.extend((0..QK_K).map(|_| s * rng.normal()));
    }
    x
}

/// Q8_K activations quantized (by the scalar reference) from Gaussian data.
fn activations(n: usize, rng: &mut Rng) -> Vec<u8> {
    let x = gaussian(n, rng);
    let mut a = vec![0u8; GgmlType::Q8_K.row_bytes(n).unwrap_or(0)];
    (ops(GgmlType::Q8_K, Isa::Scalar).from_f32)(&x, &mut a);
    a
}

/// Q8_K blocks with random quants (all of -128..=127), consistent bsums.
fn random_activations(n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut a = rng.bytes(n / QK_K * 292);
    for b in a.chunks_exact_mut(292) {
        b[0..4].copy_from_slice(&(0.001 + 0.1 * rng.f32()).to_le_bytes());
        for j in 0..16 {
            let s: i32 = b[4 + 16 * j..4 + 16 * j + 16]
                .iter()
                .map(|&q| i32::from(q as i8))
                .sum();
            b[260 + 2 * j..262 + 2 * j].copy_from_slice(&(s as i16).to_le_bytes());
        }
    }
    a
}

fn dequant(ty: GgmlType, isa: Isa, bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0f32; bytes.len() / ty.block_bytes() * QK_K];
    (ops(ty, isa).to_f32)(bytes, &mut out);
    out
}

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i}: {g} != {w}"
        );
    }
}

// ---------------------------------------------------------------------------
// Fast paths vs the scalar reference.

const WEIGHT_TYPES: [(GgmlType, f32); 3] = [
    (GgmlType::Q4_K, Q4K_DOT_TOL),
    (GgmlType::Q5_K, Q5K_DOT_TOL),
    (GgmlType::Q6_K, Q6K_DOT_TOL),
];

#[test]
fn vec_dot_types_are_ggml_pairs() {
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        for isa in Isa::all_supported() {
            let o = ops(ty, isa);
            assert_eq!(o.ty, ty);
            assert_eq!(o.vec_dot_type, GgmlType::Q8_K, "{ty} {isa:?}");
        }
    }
}

#[test]
fn fast_to_f32_equals_scalar() {
    let mut rng = Rng::new(1);
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        for &n in &LENGTHS {
            let w = if ty == GgmlType::Q8_K {
                random_activations(n, &mut rng)
            } else {
                random_weights(ty, n, &mut rng)
            };
            let want = dequant(ty, Isa::Scalar, &w);
            for isa in Isa::all_supported() {
                assert_bits_eq(
                    &dequant(ty, isa, &w),
                    &want,
                    &format!("{ty} {} n={n}", isa.name()),
                );
            }
        }
    }
}

#[test]
fn fast_q8_k_from_f32_equals_scalar() {
    let mut rng = Rng::new(2);
    let q8k = GgmlType::Q8_K;
    for &n in &LENGTHS {
        let mut x = gaussian(n, &mut rng);
        x[..QK_K].fill(0.0); // an all-zero block
        if n >= 3 * QK_K {
            x[2 * QK_K + 5] = -1e3; // a lone extreme
            x[2 * QK_K + 9] = 1e3; // tie in magnitude: the first wins
        }
        let mut want = vec![0u8; q8k.row_bytes(n).unwrap_or(0)];
        (ops(q8k, Isa::Scalar).from_f32)(&x, &mut want);
        for isa in Isa::all_supported() {
            let mut got = vec![0xAAu8; want.len()];
            (ops(q8k, isa).from_f32)(&x, &mut got);
            assert!(got == want, "Q8_K from_f32 {} n={n}", isa.name());
        }
    }
}

/// `sum |w_i a_i|` and the f64 dot of the dequantized operands.
fn dot_scale(ty: GgmlType, w: &[u8], a: &[u8]) -> (f64, f64) {
    let wf = dequant(ty, Isa::Scalar, w);
    let af = dequant(GgmlType::Q8_K, Isa::Scalar, a);
    let mag = wf
        .iter()
        .zip(&af)
        .map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs())
        .sum();
    let dot = wf
        .iter()
        .zip(&af)
        .map(|(&p, &q)| f64::from(p) * f64::from(q))
        .sum();
    (mag, dot)
}

#[test]
fn fast_vec_dot_matches_scalar() {
    let mut rng = Rng::new(3);
    for (ty, tol) in WEIGHT_TYPES {
        let mut worst = 0.0f64;
        for &n in &LENGTHS {
            for random_acts in [false, true] {
                let w = random_weights(ty, n, &mut rng);
                let a = if random_acts {
                    random_activations(n, &mut rng)
                } else {
                    activations(n, &mut rng)
                };
                let want = (ops(ty, Isa::Scalar).vec_dot)(n, &w, &a);
                let (mag, _) = dot_scale(ty, &w, &a);
                for isa in Isa::all_supported() {
                    let got = (ops(ty, isa).vec_dot)(n, &w, &a);
                    let err = f64::from((got - want).abs()) / mag;
                    worst = worst.max(err);
                    assert!(
                        err <= f64::from(tol),
                        "{ty} {} n={n}: {got} vs {want} (rel err {err:e} > {tol:e})",
                        isa.name()
                    );
                }
            }
        }
        eprintln!("{ty}: fast vs scalar vec_dot, worst relative error {worst:e} (tol {tol:e})");
    }
}

#[test]
fn fast_q8_k_vec_dot_equals_scalar() {
    let mut rng = Rng::new(4);
    let q8k = GgmlType::Q8_K;
    for &n in &LENGTHS {
        let w = random_activations(n, &mut rng);
        let a = random_activations(n, &mut rng);
        let want = (ops(q8k, Isa::Scalar).vec_dot)(n, &w, &a);
        let (mag, _) = dot_scale(q8k, &w, &a);
        for isa in Isa::all_supported() {
            let got = (ops(q8k, isa).vec_dot)(n, &w, &a);
            let err = f64::from((got - want).abs()) / mag;
            assert!(
                err <= f64::from(Q8K_DOT_TOL),
                "Q8_K {} n={n}: {got} vs {want}",
                isa.name()
            );
        }
    }
}

/// The scalar reference dot equals the dot of the dequantized operands
/// (checks the integer scheme: mins via bsums, the `- 32` of Q6_K).
#[test]
fn scalar_vec_dot_matches_dequantized_dot() {
    let mut rng = Rng::new(5);
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        let mut worst = 0.0f64;
        for &n in &LENGTHS {
            let w = if ty == GgmlType::Q8_K {
                activations(n, &mut rng)
            } else {
                random_weights(ty, n, &mut rng)
            };
            let a = activations(n, &mut rng);
            let got = f64::from((ops(ty, Isa::Scalar).vec_dot)(n, &w, &a));
            let (mag, want) = dot_scale(ty, &w, &a);
            let err = (got - want).abs() / mag;
            worst = worst.max(err);
            assert!(
                err <= SCALAR_DOT_VS_F64_TOL,
                "{ty} n={n}: {got} vs {want} (rel err {err:e})"
            );
        }
        eprintln!("{ty}: scalar vec_dot vs f64 dequantized dot, worst relative error {worst:e}");
    }
}

#[test]
#[should_panic(expected = "multiple of 256")]
fn vec_dot_rejects_partial_blocks() {
    let w = vec![0u8; 144];
    let a = vec![0u8; 292];
    for isa in Isa::all_supported() {
        (ops(GgmlType::Q4_K, isa).vec_dot)(200, &w, &a);
    }
}

#[test]
#[should_panic(expected = "weight bytes")]
fn vec_dot_rejects_short_weights() {
    let w = vec![0u8; 209];
    let a = vec![0u8; 292];
    (ops(
        GgmlType::Q6_K,
        *Isa::all_supported().last().unwrap_or(&Isa::Scalar),
    )
    .vec_dot)(256, &w, &a);
}

// ---------------------------------------------------------------------------
// Scalar reference vs gguf-py (fixtures).

struct Fixture {
    ty_id: u32,
    blocks: Vec<u8>,
    values: Vec<f32>,
}

fn fixture(bytes: &[u8]) -> Fixture {
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    assert_eq!(&bytes[0..4], b"TQKF", "fixture magic");
    assert_eq!(u32_at(4), 1, "fixture version");
    let (ty_id, nb, bb) = (u32_at(8), u32_at(12) as usize, u32_at(16) as usize);
    let blocks = bytes[20..20 + nb * bb].to_vec();
    let values: Vec<f32> = bytes[20 + nb * bb..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(values.len(), nb * QK_K, "fixture values");
    Fixture {
        ty_id,
        blocks,
        values,
    }
}

macro_rules! fixture_file {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/quants/",
            $name
        ))
    };
}

#[test]
fn to_f32_matches_gguf_py() {
    let files: [(GgmlType, &[u8]); 3] = [
        (GgmlType::Q4_K, fixture_file!("q4_k.bin")),
        (GgmlType::Q5_K, fixture_file!("q5_k.bin")),
        (GgmlType::Q6_K, fixture_file!("q6_k.bin")),
    ];
    for (ty, bytes) in files {
        let f = fixture(bytes);
        assert_eq!(f.ty_id, ty.id());
        for isa in Isa::all_supported() {
            let got = dequant(ty, isa, &f.blocks);
            assert_bits_eq(&got, &f.values, &format!("{ty} {} vs gguf-py", isa.name()));
        }
    }
}

#[test]
fn q8_k_from_f32_matches_ggml_reference() {
    let f = fixture(fixture_file!("q8_k.bin"));
    assert_eq!(f.ty_id, GgmlType::Q8_K.id());
    for isa in Isa::all_supported() {
        let mut got = vec![0x55u8; f.blocks.len()];
        (ops(GgmlType::Q8_K, isa).from_f32)(&f.values, &mut got);
        for (b, (g, w)) in got
            .chunks_exact(292)
            .zip(f.blocks.chunks_exact(292))
            .enumerate()
        {
            assert!(
                g == w,
                "Q8_K {} block {b} differs from the ggml reference",
                isa.name()
            );
        }
    }
}

/// The fast paths follow ggml's AVX2 kernels' integer lanes and float
/// order, so they reproduce ggml's compiled `ggml_vec_dot_*_q8_K` bit for bit
/// (fixture recorded from a GCC `-march=native` AVX2 build of llama.cpp);
/// the scalar reference agrees within its dot tolerance.
#[test]
fn vec_dot_matches_ggml_build() {
    let bytes: &[u8] = fixture_file!("kquant_dot_ggml.bin");
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    assert_eq!(&bytes[0..4], b"TQKD", "fixture magic");
    assert_eq!(u32_at(4), 1, "fixture version");
    let mut off = 12;
    for case in 0..u32_at(8) {
        let (id, n) = (u32_at(off), u32_at(off + 4) as usize);
        let (ty, tol) = WEIGHT_TYPES
            .into_iter()
            .find(|(t, _)| t.id() == id)
            .unwrap_or_else(|| panic!("case {case}: unexpected type id {id}"));
        let wl = ty.row_bytes(n).unwrap_or(0);
        let al = GgmlType::Q8_K.row_bytes(n).unwrap_or(0);
        let w = &bytes[off + 8..off + 8 + wl];
        let a = &bytes[off + 8 + wl..off + 8 + wl + al];
        let p = off + 8 + wl + al;
        let want = f32::from_le_bytes([bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]]);
        off = p + 4;
        let (mag, _) = dot_scale(ty, w, a);
        for isa in Isa::all_supported() {
            let got = (ops(ty, isa).vec_dot)(n, w, a);
            if isa == Isa::Scalar {
                let err = f64::from((got - want).abs()) / mag;
                assert!(
                    err <= f64::from(tol),
                    "case {case} {ty} scalar: {got} vs ggml {want}"
                );
            } else {
                assert!(
                    got.to_bits() == want.to_bits(),
                    "case {case} {ty} {}: {got} vs ggml {want}",
                    isa.name()
                );
            }
        }
    }
    assert_eq!(off, bytes.len(), "fixture length");
}

// ---------------------------------------------------------------------------
// Quantization error.

/// Largest error over each super-block's span `max(hi, 0) - min(lo, 0)`
/// (the formats' grids always include zero), and RMS error over RMS value,
/// of a quantize -> dequantize round trip through `isa`.
fn round_trip_error(ty: GgmlType, isa: Isa, x: &[f32]) -> (f32, f64) {
    let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap_or(0)];
    (ops(ty, isa).from_f32)(x, &mut q);
    let y = dequant(ty, isa, &q);
    let mut max_rel = 0.0f32;
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.chunks_exact(QK_K)) {
        let lo = xb.iter().fold(0.0f32, |a, &v| a.min(v));
        let hi = xb.iter().fold(0.0f32, |a, &v| a.max(v));
        let err = xb
            .iter()
            .zip(yb)
            .fold(0.0f32, |a, (&p, &q)| a.max((p - q).abs()));
        max_rel = max_rel.max(err / (hi - lo));
    }
    let se: f64 = x
        .iter()
        .zip(&y)
        .map(|(&p, &q)| f64::from(p - q).powi(2))
        .sum();
    let ss: f64 = x.iter().map(|&p| f64::from(p).powi(2)).sum();
    (max_rel, (se / ss).sqrt())
}

#[test]
fn quantization_error_is_bounded() {
    let cases = [
        (GgmlType::Q4_K, Q4K_MAX_ERR_TOL, Q4K_RMSE_TOL),
        (GgmlType::Q5_K, Q5K_MAX_ERR_TOL, Q5K_RMSE_TOL),
        (GgmlType::Q6_K, Q6K_MAX_ERR_TOL, Q6K_RMSE_TOL),
        (GgmlType::Q8_K, Q8K_MAX_ERR_TOL, Q8K_RMSE_TOL),
    ];
    let mut rng = Rng::new(6);
    let gauss = gaussian(64 * QK_K, &mut rng);
    // Shifted uniform data exercises the mins (all positive, all negative).
    let mut shifted: Vec<f32> = (0..16 * QK_K).map(|_| 1.0 + rng.f32()).collect();
    shifted.extend((0..16 * QK_K).map(|_| -3.0 - 2.0 * rng.f32()));
    for (ty, max_tol, rmse_tol) in cases {
        for isa in Isa::all_supported() {
            let (max_g, rmse) = round_trip_error(ty, isa, &gauss);
            let (max_s, _) = round_trip_error(ty, isa, &shifted);
            if isa == Isa::Scalar {
                eprintln!("{ty}: max error / range {max_g:.5} (gaussian) {max_s:.5} (shifted), rel rmse {rmse:.5}");
            }
            assert!(
                max_g <= max_tol && max_s <= max_tol,
                "{ty} {}: max err {max_g} / {max_s}",
                isa.name()
            );
            assert!(rmse <= rmse_tol, "{ty} {}: rel rmse {rmse}", isa.name());
        }
    }
}

/// Quantizing what a block dequantizes to gives the same values back for
/// real model blocks (a fixed point for Q8_K; for the others, the simple
/// quantizer stays within its bound on real weight distributions).
#[test]
fn quantization_error_on_model_weights() {
    for (ty, bytes, tol) in [
        (
            GgmlType::Q4_K,
            fixture_file!("q4_k.bin") as &[u8],
            Q4K_MAX_ERR_TOL,
        ),
        (
            GgmlType::Q6_K,
            fixture_file!("q6_k.bin") as &[u8],
            Q6K_MAX_ERR_TOL,
        ),
    ] {
        let f = fixture(bytes);
        // The first 8 blocks are real ones (see MANIFEST.kquant.txt).
        let real = &f.values[..8 * QK_K];
        let (max_rel, _) = round_trip_error(ty, Isa::Scalar, real);
        assert!(
            max_rel <= tol,
            "{ty}: max err / range {max_rel} on model weights"
        );
    }
}

// ---------------------------------------------------------------------------
// Speed (ignored: run with `--release -- --ignored --nocapture`).

#[test]
#[ignore = "benchmark; run in release with --ignored --nocapture"]
fn bench_kquant_vec_dot() {
    use std::time::Instant;
    let mut rng = Rng::new(7);
    // 64 rows of 4864 elements (Qwen2.5-0.5B's ffn_down rows): ~175 KB of
    // Q4_K, L2-resident, so this measures the kernel rather than DRAM.
    let n = 4864 / QK_K * QK_K;
    let rows = 64;
    let a = activations(n, &mut rng);
    let mut lines = Vec::new();
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let w: Vec<u8> = (0..rows)
            .flat_map(|_| random_weights(ty, n, &mut rng))
            .collect();
        let rb = ty.row_bytes(n).unwrap_or(0);
        for isa in Isa::all_supported() {
            let f = ops(ty, isa).vec_dot;
            let mut sink = 0.0f32;
            let mut best = f64::INFINITY;
            for _ in 0..20 {
                let t = Instant::now();
                for r in 0..rows {
                    sink += f(n, &w[r * rb..(r + 1) * rb], &a);
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let gbs = (rows * rb) as f64 / best / 1e9;
            println!(
                "{:5} {:12} {:7.2} GB/s weights ({:.1} ns/row) [{sink:e}]",
                ty.name(),
                isa.name(),
                gbs,
                best / rows as f64 * 1e9
            );
            lines.push(format!(
                r#"{{"type":"{}","isa":"{}","gb_per_s":{gbs:.3}}}"#,
                ty.name(),
                isa.name()
            ));
        }
    }
    let x = gaussian(n, &mut rng);
    let mut q = vec![0u8; GgmlType::Q8_K.row_bytes(n).unwrap_or(0)];
    for isa in Isa::all_supported() {
        let f = ops(GgmlType::Q8_K, isa).from_f32;
        let mut best = f64::INFINITY;
        for _ in 0..200 {
            let t = Instant::now();
            f(&x, &mut q);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let gbs = (n * 4) as f64 / best / 1e9;
        println!("Q8_K  {:12} {:7.2} GB/s f32 in (from_f32)", isa.name(), gbs);
        lines.push(format!(
            r#"{{"type":"Q8_K_from_f32","isa":"{}","gb_per_s":{gbs:.3}}}"#,
            isa.name()
        ));
    }
    println!("[{}]", lines.join(","));
}
