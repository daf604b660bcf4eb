//! Shared helpers of the legacy-format tests: a deterministic RNG, data
//! generators and the fixture reader. Each test crate uses a subset.
#![allow(dead_code)]

use troupe_kernels::{reference_ops, GgmlType};

/// The formats these tests cover.
pub const LEGACY: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
];

/// xorshift64* (Vigna), enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.f32() as f64; // (0, 1]
        let u2 = self.f32() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Quantizes `x` to `ty` with the scalar reference.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let bytes = ty.row_bytes(x.len()).expect("whole blocks");
    let mut out = vec![0u8; bytes];
    (reference_ops(ty).from_f32)(x, &mut out);
    out
}

/// Dequantizes `n` values of `ty` with the scalar reference.
pub fn dequantize(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    (reference_ops(ty).to_f32)(b, &mut out);
    out
}

/// Whether blocks of `ty` carry a minimum `m` (f16 at byte 2).
pub fn has_min(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1)
}

/// `n` random values' worth of `ty` blocks with random quant bits and
/// finite fp16 scales (|d|, |m| around 0.05); plain floats come from
/// Gaussian data.
pub fn random_blocks(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let bb = ty.block_bytes();
    let halves = match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return quantize(ty, &rng.normals(n)),
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => 2,
        _ => 1,
    };
    let mut b = rng.bytes(n / ty.block_elems() * bb);
    for blk in b.chunks_exact_mut(bb) {
        for h in 0..halves {
            let v = half::f16::from_f32(rng.normal() * 0.05).to_bits();
            blk[2 * h..2 * h + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    b
}

/// Magnitude of a dot product for relative tolerances: the sum of the
/// absolute terms, counting each block's `m` twice (once in `m * s`, once
/// in `d * q = w - m`).
pub fn dot_magnitude(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> f64 {
    let wf = dequantize(ty, w, n);
    let af = dequantize(reference_ops(ty).vec_dot_type, a, n);
    let (bb, be) = (ty.block_bytes(), ty.block_elems());
    let mut mag = 0.0f64;
    for (i, (&wv, &av)) in wf.iter().zip(&af).enumerate() {
        let m = if has_min(ty) {
            let off = i / be * bb + 2;
            half::f16::from_bits(u16::from_le_bytes([w[off], w[off + 1]])).to_f32()
        } else {
            0.0
        };
        mag += ((wv.abs() + 2.0 * m.abs()) * av.abs()) as f64;
    }
    mag
}

/// Records of a fixture file written by `scripts/fixtures/dequant_legacy.py`.
pub struct Fixture {
    records: Vec<(String, Vec<u8>)>,
}

impl Fixture {
    /// Reads `tests/fixtures/quants/legacy_<ty>.bin` of the repository.
    pub fn load(ty: GgmlType) -> Fixture {
        let path = format!(
            "{}/../../tests/fixtures/quants/legacy_{}.bin",
            env!("CARGO_MANIFEST_DIR"),
            ty.name().to_lowercase()
        );
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut records = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let nl = raw[i] as usize;
            let name = String::from_utf8(raw[i + 1..i + 1 + nl].to_vec()).expect("ascii name");
            i += 1 + nl;
            let len = u32::from_le_bytes(raw[i..i + 4].try_into().expect("4 bytes")) as usize;
            i += 4;
            records.push((name, raw[i..i + len].to_vec()));
            i += len;
        }
        Fixture { records }
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.records
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    pub fn bytes(&self, name: &str) -> &[u8] {
        self.get(name)
            .unwrap_or_else(|| panic!("fixture has no record {name}"))
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        self.bytes(name)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// `(rows, cols)` of the `input` record.
    pub fn shape(&self) -> (usize, usize) {
        let s = self.bytes("shape");
        let rd = |o: usize| u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]) as usize;
        (rd(0), rd(4))
    }
}
