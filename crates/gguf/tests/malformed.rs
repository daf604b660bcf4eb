//! Crafted broken files: each breaks one rule of the GGUF spec and must give
//! the matching [`GgufError`], never a panic.

mod common;

use common::{nested_array_bytes, put_bytes, put_u32, put_u64, sample, GgufWriter, TensorSpec};
use troupe_gguf::{GgmlType, GgufError, GgufFile, Value};

fn parse(w: &GgufWriter) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(w.build())
}

fn err(w: &GgufWriter) -> GgufError {
    parse(w).expect_err("the file is broken")
}

/// One tensor, valid unless the test changes it.
fn one(t: TensorSpec) -> GgufWriter {
    GgufWriter::default().tensor(t)
}

#[test]
fn the_sample_file_is_valid() {
    let f = parse(&sample()).expect("valid");
    assert_eq!(f.tensors().len(), 3);
}

#[test]
fn bad_magic() {
    let mut w = sample();
    w.magic = *b"GGML";
    assert!(matches!(err(&w), GgufError::BadMagic { found } if &found == b"GGML"));
    for short in [&b""[..], b"G", b"GGU"] {
        let e = GgufFile::from_bytes(short.to_vec()).expect_err("short");
        assert!(matches!(e, GgufError::BadMagic { .. }), "{e:?}");
    }
}

#[test]
fn unsupported_versions() {
    for v in [0, 1, 4, u32::MAX] {
        let mut w = sample();
        w.version = v;
        assert!(matches!(err(&w), GgufError::UnsupportedVersion(x) if x == v));
    }
    // A big-endian v3 file: the version reads as 0x03000000.
    let mut bytes = sample().build();
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    let e = GgufFile::from_bytes(bytes).expect_err("big-endian");
    assert!(
        matches!(e, GgufError::UnsupportedVersion(0x0300_0000)),
        "{e:?}"
    );
}

#[test]
fn absurd_counts_are_rejected_before_reading() {
    for n in [u64::MAX, 1 << 40, 1_000_000] {
        let mut w = sample();
        w.tensor_count = Some(n);
        assert!(matches!(
            err(&w),
            GgufError::AbsurdCount { what: "tensor", .. }
        ));
        let mut w = sample();
        w.kv_count = Some(n);
        assert!(matches!(
            err(&w),
            GgufError::AbsurdCount {
                what: "metadata",
                ..
            }
        ));
    }
    // String lengths and array counts.
    let mut huge_string = Vec::new();
    put_u64(&mut huge_string, u64::MAX);
    let w = GgufWriter::default().raw_kv(b"k", 8, huge_string.clone());
    assert!(matches!(err(&w), GgufError::AbsurdCount { .. }));
    let mut key = Vec::new();
    put_u64(&mut key, u64::MAX);
    let mut bytes = GgufWriter {
        kv_count: Some(1),
        ..GgufWriter::default()
    }
    .build();
    bytes.extend_from_slice(&key);
    bytes.extend_from_slice(&[0; 16]);
    let e = GgufFile::from_bytes(bytes).expect_err("huge key length");
    assert!(matches!(e, GgufError::AbsurdCount { .. }), "{e:?}");
    for elem_ty in 0..=12u32 {
        let mut arr = Vec::new();
        put_u32(&mut arr, elem_ty);
        put_u64(&mut arr, u64::MAX / 2 + 1);
        let w = GgufWriter::default().raw_kv(b"k", 9, arr);
        assert!(
            matches!(err(&w), GgufError::AbsurdCount { .. }),
            "element type {elem_ty}"
        );
    }
}

#[test]
fn counts_just_above_what_fits_are_rejected() {
    // 100 u32 elements announced, 99 present.
    let mut arr = Vec::new();
    put_u32(&mut arr, 4);
    put_u64(&mut arr, 100);
    arr.extend_from_slice(&[0; 4 * 99]);
    let w = GgufWriter::default().raw_kv(b"k", 9, arr);
    assert!(matches!(err(&w), GgufError::AbsurdCount { .. }));
}

#[test]
fn unknown_metadata_value_types() {
    for ty in [13, 100, u32::MAX] {
        let w = GgufWriter::default().raw_kv(b"k", ty, vec![0; 16]);
        assert!(
            matches!(err(&w), GgufError::UnknownValueType { ref key, ty: t } if key == "k" && t == ty)
        );
        let mut arr = Vec::new();
        put_u32(&mut arr, ty);
        put_u64(&mut arr, 0);
        let w = GgufWriter::default().raw_kv(b"arr", 9, arr);
        assert!(matches!(err(&w), GgufError::UnknownValueType { .. }));
    }
}

#[test]
fn unknown_tensor_types() {
    // 4 and 5 are the removed Q4_2/Q4_3, 10/11 are Q2_K/Q3_K (unsupported),
    // 39 is past every ggml type.
    for id in [4, 5, 10, 11, 16, 39, u32::MAX] {
        let mut t = TensorSpec::new("t", &[32], GgmlType::F32);
        t.type_id = id;
        assert!(
            matches!(err(&one(t)), GgufError::UnknownTensorType { ref name, id: i } if name == "t" && i == id),
            "type {id}"
        );
    }
}

#[test]
fn too_many_dimensions() {
    let t = TensorSpec::new("t", &[1, 1, 1, 1, 1], GgmlType::F32);
    assert!(matches!(
        err(&one(t)),
        GgufError::TooManyDims { n_dims: 5, .. }
    ));
    // A huge count must not be used to size anything.
    let mut t = TensorSpec::new("t", &[1], GgmlType::F32);
    t.n_dims = Some(u32::MAX);
    assert!(matches!(err(&one(t)), GgufError::TooManyDims { .. }));
}

#[test]
fn four_dims_and_scalars_are_fine() {
    let w = one(TensorSpec::new("t", &[2, 3, 4, 5], GgmlType::F16));
    let f = parse(&w).expect("4 dims");
    assert_eq!(f.tensors()[0].n_elements(), 120);
    assert_eq!(f.tensors()[0].size, 240);
    // No dimensions: one element, as in ggml.
    let f = parse(&one(TensorSpec::new("s", &[], GgmlType::F32))).expect("scalar");
    assert_eq!(f.tensors()[0].size, 4);
}

fn bad_shape(w: &GgufWriter) -> &'static str {
    match err(w) {
        GgufError::BadShape { why, .. } => why,
        e => panic!("expected BadShape, got {e:?}"),
    }
}

#[test]
fn zero_dimension() {
    let t = TensorSpec::new("t", &[32, 0, 2], GgmlType::F32);
    assert_eq!(bad_shape(&one(t)), "a dimension is zero");
}

#[test]
fn element_count_overflow() {
    let t = TensorSpec::new("t", &[1 << 32, 1 << 32, 2], GgmlType::F32);
    assert_eq!(bad_shape(&one(t)), "element count overflows");
    let t = TensorSpec::new("t", &[u64::MAX, 2], GgmlType::Q8_0);
    assert!(matches!(err(&one(t)), GgufError::BadShape { .. }));
    // Elements fit in u64 but bytes do not.
    let t = TensorSpec::new("t", &[1 << 62, 2], GgmlType::F32);
    assert_eq!(bad_shape(&one(t)), "byte size overflows");
}

#[test]
fn first_dim_must_be_whole_blocks() {
    let t = TensorSpec::new("t", &[33, 2], GgmlType::Q4_0);
    assert_eq!(
        bad_shape(&one(t)),
        "first dimension is not a multiple of the block size"
    );
    let t = TensorSpec::new("t", &[128], GgmlType::Q6_K);
    assert!(matches!(err(&one(t)), GgufError::BadShape { .. }));
}

#[test]
fn misaligned_offset() {
    let w = one(TensorSpec::new("a", &[8], GgmlType::F32))
        .tensor(TensorSpec::new("b", &[8], GgmlType::F32).at(36));
    assert!(matches!(
        err(&w),
        GgufError::Misaligned { ref name, offset: 36, alignment: 32 } if name == "b"
    ));
}

#[test]
fn tensor_past_the_end() {
    // Data section one byte short.
    let mut w = one(TensorSpec::new("t", &[8], GgmlType::F32));
    w.data_len = Some(31);
    assert!(matches!(err(&w), GgufError::OutOfBounds { ref name, .. } if name == "t"));
    // Far beyond, and where offset + size overflows u64.
    for off in [1 << 40, !31] {
        let mut w = one(TensorSpec::new("t", &[8], GgmlType::F32).at(off));
        w.data_len = Some(64);
        assert!(matches!(err(&w), GgufError::OutOfBounds { .. }), "{off}");
    }
    // Huge but valid shape: the size is fine in u64, the file is small.
    let w = one(TensorSpec::new("t", &[1 << 40, 1 << 20], GgmlType::Q4_0));
    assert!(matches!(err(&w), GgufError::OutOfBounds { .. }));
}

#[test]
fn overlapping_tensors() {
    let w = one(TensorSpec::new("a", &[16], GgmlType::F32).at(0))
        .tensor(TensorSpec::new("b", &[16], GgmlType::F32).at(32));
    assert!(matches!(err(&w), GgufError::Overlap { .. }));
    // Same offset, listed out of order, and one inside another.
    let w = one(TensorSpec::new("a", &[8], GgmlType::F32).at(64))
        .tensor(TensorSpec::new("b", &[64], GgmlType::F32).at(0));
    assert!(matches!(err(&w), GgufError::Overlap { .. }));
    let w = one(TensorSpec::new("a", &[8], GgmlType::F32).at(0))
        .tensor(TensorSpec::new("b", &[8], GgmlType::F32).at(0));
    assert!(matches!(err(&w), GgufError::Overlap { .. }));
    // Touching is fine.
    let w = one(TensorSpec::new("a", &[8], GgmlType::F32).at(0))
        .tensor(TensorSpec::new("b", &[8], GgmlType::F32).at(32));
    assert!(parse(&w).is_ok());
}

#[test]
fn duplicate_key() {
    let w = GgufWriter::default()
        .kv("a", Value::U32(1))
        .kv("b", Value::U32(2))
        .kv("a", Value::String("again".into()));
    assert!(matches!(err(&w), GgufError::DuplicateKey(ref k) if k == "a"));
}

#[test]
fn duplicate_tensor_name() {
    let w = one(TensorSpec::new("w", &[8], GgmlType::F32)).tensor(TensorSpec::new(
        "w",
        &[8],
        GgmlType::F32,
    ));
    assert!(matches!(err(&w), GgufError::DuplicateTensor(ref n) if n == "w"));
}

#[test]
fn bad_alignment_values() {
    for a in [0u32, 3, 48, 1000] {
        let w = sample().kv("general.alignment", Value::U32(a));
        assert!(
            matches!(err(&w), GgufError::BadAlignment(x) if x == u64::from(a)),
            "{a}"
        );
    }
    for v in [
        Value::String("32".into()),
        Value::I32(-32),
        Value::F32(32.0),
    ] {
        let w = sample().kv("general.alignment", v);
        assert!(matches!(err(&w), GgufError::BadAlignment(_)));
    }
}

#[test]
fn custom_alignment_is_honoured() {
    for a in [1u64, 8, 64, 4096] {
        let mut w = sample().kv("general.alignment", Value::U32(a as u32));
        w.alignment = a;
        let f = parse(&w).expect("valid with custom alignment");
        assert_eq!(f.alignment, a);
        assert_eq!(f.data_offset as u64 % a, 0);
    }
    // Offsets must follow the declared alignment, not the default.
    let mut w = one(TensorSpec::new("t", &[4], GgmlType::F32).at(32))
        .kv("general.alignment", Value::U32(64));
    w.alignment = 64;
    w.data_len = Some(64);
    assert!(matches!(
        err(&w),
        GgufError::Misaligned { alignment: 64, .. }
    ));
}

#[test]
fn non_utf8_strings() {
    let bad = b"ab\xff\xfecd".to_vec();
    let w = GgufWriter::default().raw_kv(&bad, 4, vec![0; 4]);
    assert!(matches!(err(&w), GgufError::BadUtf8 { .. }), "key");
    let mut s = Vec::new();
    put_bytes(&mut s, &bad);
    let w = GgufWriter::default().raw_kv(b"k", 8, s);
    assert!(matches!(err(&w), GgufError::BadUtf8 { .. }), "value");
    let mut arr = Vec::new();
    put_u32(&mut arr, 8);
    put_u64(&mut arr, 2);
    put_bytes(&mut arr, b"fine");
    put_bytes(&mut arr, &bad);
    let w = GgufWriter::default().raw_kv(b"k", 9, arr);
    assert!(
        matches!(err(&w), GgufError::BadUtf8 { .. }),
        "array element"
    );
    let mut t = TensorSpec::new("t", &[8], GgmlType::F32);
    t.name = bad;
    assert!(
        matches!(err(&one(t)), GgufError::BadUtf8 { .. }),
        "tensor name"
    );
    // A truncated multi-byte sequence at the very end of a string.
    let mut s = Vec::new();
    put_bytes(&mut s, "é".as_bytes().get(..1).unwrap_or_default());
    let w = GgufWriter::default().raw_kv(b"k", 8, s);
    assert!(matches!(err(&w), GgufError::BadUtf8 { .. }), "cut sequence");
}

#[test]
fn deeply_nested_arrays() {
    let ok = GgufWriter::default().raw_kv(b"k", 9, nested_array_bytes(4));
    let f = parse(&ok).expect("4 levels are allowed");
    assert!(f.array("k").is_ok());
    for depth in [5, 6, 100, 100_000] {
        let w = GgufWriter::default().raw_kv(b"k", 9, nested_array_bytes(depth));
        assert!(matches!(err(&w), GgufError::TooDeep(4)), "{depth}");
    }
}

#[test]
fn errors_print_something_useful() {
    let t = TensorSpec::new("blk.0.attn_q.weight", &[33, 2], GgmlType::Q4_0);
    let msg = err(&one(t)).to_string();
    assert!(
        msg.contains("blk.0.attn_q.weight") && msg.contains("block"),
        "{msg}"
    );
    let mut w = sample();
    w.tensor_count = Some(u64::MAX);
    let msg = err(&w).to_string();
    assert!(msg.contains(&u64::MAX.to_string()), "{msg}");
}
