//! Legacy formats against the independent reference: the fixtures that
//! `scripts/fixtures/dequant_legacy.py` made with gguf-py (`gguf.quants`, the
//! numpy port of ggml-quants.c) and with numpy transcriptions of the ggml
//! functions gguf-py lacks (Q8_1, and ggml-cpu's x86 activation quantizers).

mod legacy_util;

use legacy_util::{dequantize, quantize, Fixture, Rng, LEGACY};
use troupe_kernels::formats::{q8_0, q8_1};
use troupe_kernels::{ops_for, reference_ops, GgmlType, Isa};

/// Scalar `vec_dot` vs an f64 dot of the dequantized operands, relative to
/// the sum of the absolute products. Formats with a minimum use Q8_1's fp16
/// `s = d * sum(q)`, whose rounding (2^-11 relative) enters `m * s`.
const DOT_VS_DEQUANT_TOL: f64 = 1e-6;
const DOT_VS_DEQUANT_MIN_TOL: f64 = 1e-3;

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // NaN payloads included: both sides widen the same bits.
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: {g} vs {w}");
    }
}

/// First differing byte, for messages.
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn from_f32_matches_gguf_py() {
    for ty in LEGACY {
        let fx = Fixture::load(ty);
        let x = fx.f32s("input");
        let want = fx.bytes("quant");
        // Q8_0 and Q8_1's `from_f32` is the activation quantizer; gguf-py's
        // (and our `quantize_ref`) is ggml's model-file one, checked below.
        let got = match ty {
            GgmlType::Q8_0 => quantize_with(q8_0::quantize_ref, ty, &x),
            GgmlType::Q8_1 => quantize_with(q8_1::quantize_ref, ty, &x),
            _ => quantize(ty, &x),
        };
        assert!(
            got == want,
            "{ty}: first diff at byte {:?}",
            first_diff(&got, want)
        );
    }
}

fn quantize_with(f: fn(&[f32], &mut [u8]), ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len()).expect("whole blocks")];
    f(x, &mut out);
    out
}

#[test]
fn q8_activation_quantizers_match_ggml_cpu_x86() {
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
        let fx = Fixture::load(ty);
        let x = fx.f32s("input");
        let want = fx.bytes("quant_cpu");
        for isa in Isa::all_supported() {
            let mut got = vec![0u8; want.len()];
            (ops_for(ty, isa).from_f32)(&x, &mut got);
            let diff = first_diff(&got, want);
            assert!(
                diff.is_none(),
                "{ty} {}: first diff at byte {diff:?}",
                isa.name()
            );
        }
        // The fixture's tie block is where the two quantizers part ways.
        assert!(
            want != fx.bytes("quant"),
            "{ty}: fixture lacks rounding ties"
        );
    }
}

#[test]
fn to_f32_matches_gguf_py() {
    for ty in LEGACY {
        let fx = Fixture::load(ty);
        for (bytes, values) in [("quant", "dequant"), ("rand_blocks", "rand_dequant")] {
            let Some(src) = fx.get(bytes) else { continue };
            let want = fx.f32s(values);
            for isa in Isa::all_supported() {
                let mut got = vec![0f32; want.len()];
                (ops_for(ty, isa).to_f32)(src, &mut got);
                assert_bits_eq(&got, &want, &format!("{ty} {} {bytes}", isa.name()));
            }
        }
    }
}

#[test]
fn float_special_values_match_numpy() {
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let fx = Fixture::load(ty);
        let x = fx.f32s("special_input");
        let want = fx.bytes("special_quant");
        for isa in Isa::all_supported() {
            let mut got = vec![0u8; want.len()];
            (ops_for(ty, isa).from_f32)(&x, &mut got);
            let diff = first_diff(&got, want);
            assert!(
                diff.is_none(),
                "{ty} {}: first diff at byte {diff:?}",
                isa.name()
            );
        }
    }
}

#[test]
fn scalar_vec_dot_matches_dequantized_dot() {
    let mut rng = Rng::new(0xd07);
    for ty in LEGACY {
        let fx = Fixture::load(ty);
        let at = reference_ops(ty).vec_dot_type;
        let (rows, cols) = fx.shape();
        let mut weights: Vec<(Vec<u8>, Vec<f32>)> = Vec::new();
        let row_bytes = ty.row_bytes(cols).expect("whole blocks");
        let (quant, deq) = (fx.bytes("quant"), fx.f32s("dequant"));
        for r in 0..rows {
            let q = quant[r * row_bytes..(r + 1) * row_bytes].to_vec();
            weights.push((q, deq[r * cols..(r + 1) * cols].to_vec()));
        }
        if let Some(rb) = fx.get("rand_blocks") {
            let n = fx.f32s("rand_dequant").len();
            weights.push((rb.to_vec(), fx.f32s("rand_dequant")[..n].to_vec()));
        }
        let tol = match ty {
            GgmlType::Q4_1 | GgmlType::Q5_1 => DOT_VS_DEQUANT_MIN_TOL,
            _ => DOT_VS_DEQUANT_TOL,
        };
        let mut worst = 0.0f64;
        for (w, wf) in &weights {
            let n = wf.len();
            let a = quantize(at, &rng.normals(n));
            let af = dequantize(at, &a, n);
            let exact: f64 = wf.iter().zip(&af).map(|(x, y)| *x as f64 * *y as f64).sum();
            let mag: f64 = wf
                .iter()
                .zip(&af)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum();
            let got = (reference_ops(ty).vec_dot)(n, w, &a) as f64;
            let err = (got - exact).abs() / mag.max(f64::MIN_POSITIVE);
            worst = worst.max(err);
            assert!(err <= tol, "{ty} n={n}: {got} vs {exact} (rel err {err:e})");
        }
        eprintln!("{ty}: scalar dot vs dequantized f64 dot, max rel err {worst:.3e}");
    }
}
