//! Legacy formats (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1):
//! every SIMD kernel of every ISA this CPU supports against the scalar
//! reference, and quantization error bounds.
//!
//! Dot-product tolerances are relative to the dot's magnitude (the sum of
//! the absolute terms, see `dot_magnitude`): the integer block sums are
//! exact, so fast and scalar differ only in the order of the f32 additions.
//! Conversions must match bit for bit.

mod legacy_util;

use legacy_util::{dequantize, dot_magnitude, quantize, random_blocks, Rng, LEGACY};
use troupe_kernels::{ops_for, reference_ops, GgmlType, Isa};

/// Fast vs scalar `vec_dot`, relative to the dot's magnitude (measured on
/// AVX2: at most 5.8e-8). The scalar references sum block by block (floats:
/// in f64) like ggml's generic code; the SIMD paths in ggml's x86 order.
const F32_DOT_TOL: f64 = 2e-6;
const F16_DOT_TOL: f64 = 2e-6;
const BF16_DOT_TOL: f64 = 2e-6;
/// Quantized formats: one f32 rounding per block term plus the sum order.
const Q4_0_DOT_TOL: f64 = 1e-6;
const Q4_1_DOT_TOL: f64 = 1e-6;
const Q5_0_DOT_TOL: f64 = 1e-6;
const Q5_1_DOT_TOL: f64 = 1e-6;
const Q8_0_DOT_TOL: f64 = 1e-6;
const Q8_1_DOT_TOL: f64 = 1e-6;

/// Mean `|x - dequant(quant(x))|` over 4096 uniform [-1, 1) values
/// (measured: F16 8.1e-5, BF16 6.6e-4, Q4_0 3.1e-2, Q4_1 2.8e-2, Q5_0 1.5e-2,
/// Q5_1 1.4e-2, Q8_0 and Q8_1 1.9e-3).
const F32_MEAN_ERR: f32 = 0.0;
const F16_MEAN_ERR: f32 = 1e-4;
const BF16_MEAN_ERR: f32 = 8e-4;
const Q4_0_MEAN_ERR: f32 = 3.5e-2;
const Q4_1_MEAN_ERR: f32 = 3.2e-2;
const Q5_0_MEAN_ERR: f32 = 1.7e-2;
const Q5_1_MEAN_ERR: f32 = 1.6e-2;
const Q8_0_MEAN_ERR: f32 = 2.1e-3;
const Q8_1_MEAN_ERR: f32 = 2.1e-3;

/// Largest `|x - dequant(quant(x))|` in a block over the block's max `|x|`,
/// bounded by the format's step (`d / 2`, or `d` where ggml clamps the
/// extreme code) plus the fp16 rounding of `d` and `m` (2^-12 relative;
/// more for Q8 blocks small enough that `d` is an fp16 subnormal, which
/// the 1e-3-scale test blocks are).
const F32_MAX_ERR: f32 = 0.0;
const F16_MAX_ERR: f32 = 4.9e-4; // 2^-11 (measured 4.5e-4)
const BF16_MAX_ERR: f32 = 3.9e-3; // 2^-8 (measured 3.4e-3)
const Q4_0_MAX_ERR: f32 = 0.126; // d = amax / 8, +8 clamps to +7 (measured 0.118)
const Q4_1_MAX_ERR: f32 = 0.068; // d / 2 = range / 30 <= amax / 15 (measured 0.067)
const Q5_0_MAX_ERR: f32 = 0.063; // d = amax / 16, +16 clamps to +15 (measured 0.055)
const Q5_1_MAX_ERR: f32 = 0.034; // range / 62 <= amax / 31 (measured 0.032)
const Q8_0_MAX_ERR: f32 = 5e-3; // amax / 254 + subnormal d (measured 4.5e-3)
const Q8_1_MAX_ERR: f32 = 5e-3;

fn dot_tol(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => F32_DOT_TOL,
        GgmlType::F16 => F16_DOT_TOL,
        GgmlType::BF16 => BF16_DOT_TOL,
        GgmlType::Q4_0 => Q4_0_DOT_TOL,
        GgmlType::Q4_1 => Q4_1_DOT_TOL,
        GgmlType::Q5_0 => Q5_0_DOT_TOL,
        GgmlType::Q5_1 => Q5_1_DOT_TOL,
        GgmlType::Q8_0 => Q8_0_DOT_TOL,
        GgmlType::Q8_1 => Q8_1_DOT_TOL,
        other => panic!("not a legacy format: {other}"),
    }
}

fn error_bounds(ty: GgmlType) -> (f32, f32) {
    match ty {
        GgmlType::F32 => (F32_MEAN_ERR, F32_MAX_ERR),
        GgmlType::F16 => (F16_MEAN_ERR, F16_MAX_ERR),
        GgmlType::BF16 => (BF16_MEAN_ERR, BF16_MAX_ERR),
        GgmlType::Q4_0 => (Q4_0_MEAN_ERR, Q4_0_MAX_ERR),
        GgmlType::Q4_1 => (Q4_1_MEAN_ERR, Q4_1_MAX_ERR),
        GgmlType::Q5_0 => (Q5_0_MEAN_ERR, Q5_0_MAX_ERR),
        GgmlType::Q5_1 => (Q5_1_MEAN_ERR, Q5_1_MAX_ERR),
        GgmlType::Q8_0 => (Q8_0_MEAN_ERR, Q8_0_MAX_ERR),
        GgmlType::Q8_1 => (Q8_1_MEAN_ERR, Q8_1_MAX_ERR),
        other => panic!("not a legacy format: {other}"),
    }
}

/// Row lengths to test: odd block counts exercise the kernels' tails.
fn lengths(ty: GgmlType) -> &'static [usize] {
    if ty.block_elems() == 1 {
        &[1, 7, 16, 33, 100, 257, 4133]
    } else {
        &[32, 64, 96, 256, 4128, 11008]
    }
}

/// Awkward but finite inputs for quantizers: a zero block, a constant one,
/// a one-hot one, exact rounding ties of the Q8 multiplier (`amax = 127`),
/// tiny and huge scales, and equal magnitudes of both signs.
fn edge_values(rng: &mut Rng) -> Vec<f32> {
    let mut v = vec![0.0f32; 32];
    v.extend([0.3f32; 32]);
    v.extend((0..32).map(|i| if i == 5 { -2.5 } else { 0.0 }));
    v.push(127.0);
    v.extend((0..31).map(|k| ((k / 2) as f32 + 0.5) * if k % 2 == 0 { 1.0 } else { -1.0 }));
    v.extend((0..32).map(|_| rng.normal() * 1e-6));
    v.extend((0..32).map(|_| rng.normal() * 1e4));
    v.extend((0..32).map(|i| match i {
        3 => -3.0,
        9 => 3.0,
        _ => rng.uniform(-1.0, 1.0),
    }));
    v
}

/// Special values for the float formats: signed zeros, infinities, NaNs,
/// subnormals, overflow and exact rounding ties of f16 and bf16.
fn special_floats() -> Vec<f32> {
    let bits: [u32; 16] = [
        0x3F80_1000,
        0x3F80_3000,
        0x3F80_8000,
        0x3F81_8000,
        0x477F_EFFF,
        0x477F_F000,
        0x47C3_5000,
        0x7F7F_FFFF,
        0x3300_0000,
        0x3340_0000,
        0x387F_C000,
        0x0000_0001,
        0x8000_0000,
        0x7F80_0000,
        0xFF80_0000,
        0x7FC0_0000,
    ];
    let mut v: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
    v.extend([
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0xFFC1_2345),
        -1e-40,
        3e38,
    ]);
    v
}

#[test]
fn tables_pair_formats_like_ggml() {
    let pairs = [
        (GgmlType::F32, GgmlType::F32),
        (GgmlType::F16, GgmlType::F16),
        (GgmlType::BF16, GgmlType::BF16),
        (GgmlType::Q4_0, GgmlType::Q8_0),
        (GgmlType::Q4_1, GgmlType::Q8_1),
        (GgmlType::Q5_0, GgmlType::Q8_0),
        (GgmlType::Q5_1, GgmlType::Q8_1),
        (GgmlType::Q8_0, GgmlType::Q8_0),
        (GgmlType::Q8_1, GgmlType::Q8_1),
    ];
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni] {
        for (ty, dot_ty) in pairs {
            // Unsupported ISAs fall back, so every request is answerable.
            let ops = ops_for(ty, isa);
            assert_eq!(
                (ops.ty, ops.vec_dot_type),
                (ty, dot_ty),
                "{ty} {}",
                isa.name()
            );
        }
    }
}

#[test]
fn fast_vec_dot_matches_scalar() {
    let mut rng = Rng::new(0x1e9ac7);
    for ty in LEGACY {
        let at = reference_ops(ty).vec_dot_type;
        let mut worst = [0.0f64; 4];
        for &n in lengths(ty) {
            // Weights quantized from Gaussian data, then random block bits.
            for random in [false, true] {
                let w = if random {
                    random_blocks(&mut rng, ty, n)
                } else {
                    quantize(ty, &rng.normals(n))
                };
                let a = quantize(at, &rng.normals(n));
                let want = (reference_ops(ty).vec_dot)(n, &w, &a);
                let mag = dot_magnitude(ty, &w, &a, n).max(f64::MIN_POSITIVE);
                for (k, isa) in Isa::all_supported().into_iter().enumerate() {
                    let got = (ops_for(ty, isa).vec_dot)(n, &w, &a);
                    let err = (got as f64 - want as f64).abs() / mag;
                    worst[k] = worst[k].max(err);
                    assert!(
                        err <= dot_tol(ty),
                        "{ty} {} n={n} random={random}: {got} vs {want} (rel err {err:e})",
                        isa.name()
                    );
                }
            }
        }
        let isas: Vec<_> = Isa::all_supported().iter().map(|i| i.name()).collect();
        eprintln!(
            "{ty}: max rel dot err {:?} for {isas:?}",
            &worst[..isas.len()]
        );
    }
}

#[test]
fn fast_to_f32_matches_scalar_bitwise() {
    let mut rng = Rng::new(0x70f32);
    for ty in LEGACY {
        for &n in lengths(ty) {
            let mut src = random_blocks(&mut rng, ty, n);
            if ty.block_elems() == 1 {
                // Every bit pattern, NaNs and subnormals included.
                src = rng.bytes(src.len());
            }
            let want = dequantize(ty, &src, n);
            for isa in Isa::all_supported() {
                let mut got = vec![0f32; n];
                (ops_for(ty, isa).to_f32)(&src, &mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{ty} {} n={n} [{i}]", isa.name());
                }
            }
        }
    }
}

#[test]
fn fast_from_f32_matches_scalar_bytewise() {
    let mut rng = Rng::new(0xf40f32);
    for ty in LEGACY {
        let mut inputs: Vec<Vec<f32>> = Vec::new();
        for &n in lengths(ty) {
            for scale in [1e-3f32, 1.0, 1e3] {
                inputs.push(rng.normals(n).iter().map(|x| x * scale).collect());
            }
        }
        inputs.push(edge_values(&mut rng));
        if ty.block_elems() == 1 {
            let specials = special_floats();
            inputs.push(specials.repeat(9)); // also through the vector loops
        }
        for x in &inputs {
            let want = quantize(ty, x);
            for isa in Isa::all_supported() {
                let mut got = vec![0u8; want.len()];
                (ops_for(ty, isa).from_f32)(x, &mut got);
                assert!(got == want, "{ty} {} n={}", isa.name(), x.len());
            }
        }
    }
}

#[test]
fn quantization_error_within_bounds() {
    let mut rng = Rng::new(0xe77);
    let x: Vec<f32> = (0..4096).map(|_| rng.uniform(-1.0, 1.0)).collect();
    // Blocks of very different scales for the per-block bound.
    let mut y = Vec::new();
    for k in 0..64 {
        let scale = 10f32.powi(k % 7 - 3);
        y.extend((0..32).map(|_| rng.normal() * scale + if k % 5 == 0 { scale } else { 0.0 }));
    }
    for ty in LEGACY {
        let (mean_tol, max_tol) = error_bounds(ty);
        let back = dequantize(ty, &quantize(ty, &x), x.len());
        let mean = x.iter().zip(&back).map(|(a, b)| (a - b).abs()).sum::<f32>() / x.len() as f32;
        let mut worst = 0.0f32;
        let back = dequantize(ty, &quantize(ty, &y), y.len());
        for (xb, bb) in y.chunks(32).zip(back.chunks(32)) {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = xb
                .iter()
                .zip(bb)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            worst = worst.max(err / amax);
        }
        eprintln!("{ty}: mean abs err {mean:.3e} (tol {mean_tol:e}), max block rel err {worst:.3e} (tol {max_tol:e})");
        assert!(mean <= mean_tol, "{ty}: mean error {mean:e} > {mean_tol:e}");
        assert!(
            worst <= max_tol,
            "{ty}: block error {worst:e} > {max_tol:e}"
        );
    }
}
