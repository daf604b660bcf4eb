//! Files written by the test writer read back exactly: every metadata value
//! type, versions 2 and 3, tensor infos and tensor bytes.

mod common;

use common::{data_byte, every_value, sample, GgufWriter, TensorSpec};
use troupe_gguf::{Array, GgmlType, GgufFile, Value};

#[test]
fn every_value_type_round_trips() {
    let f = GgufFile::from_bytes(sample().build()).expect("valid");
    let want = every_value();
    // File order is kept, and lookup by key agrees.
    for ((k, v), (wk, wv)) in f.metadata().iter().zip(&want) {
        assert_eq!(k, wk);
        assert_eq!(v, wv, "{k}");
        assert_eq!(f.get(k), Some(wv));
    }
    assert_eq!(f.metadata().len(), want.len() + 1);
}

#[test]
fn typed_getters() {
    let f = GgufFile::from_bytes(sample().build()).expect("valid");
    assert_eq!(f.u64("t.u8").ok(), Some(200));
    assert_eq!(f.u64("t.u64").ok(), Some(u64::MAX));
    assert!(f.u64("t.i8").is_err(), "negative is not unsigned");
    assert_eq!(f.usize("t.u32").ok(), Some(4_000_000_000));
    assert_eq!(f.opt_usize("absent").ok(), Some(None));
    assert!(f.opt_usize("t.str").is_err());
    assert_eq!(f.f32("t.f64").ok(), Some(std::f64::consts::PI as f32));
    assert_eq!(f.opt_bool("t.bool.true").ok(), Some(Some(true)));
    assert_eq!(f.str("general.architecture").ok(), Some("llama"));
    assert_eq!(f.opt_str("absent").ok(), Some(None));
    assert_eq!(
        f.str_array("t.a.str").ok(),
        Some(&["a".to_string(), String::new(), "ü".to_string()][..])
    );
    assert!(f.str_array("t.a.u8").is_err());
    assert_eq!(
        f.array("t.a.i16").ok().and_then(Array::to_i64_vec),
        Some(vec![-32768, 32767])
    );
    assert!(matches!(
        f.str("missing.key"),
        Err(troupe_gguf::GgufError::MissingKey { .. })
    ));
    assert!(matches!(
        f.str("t.u8"),
        Err(troupe_gguf::GgufError::WrongType { .. })
    ));
}

#[test]
fn versions_2_and_3_read_the_same() {
    let mut v2 = sample();
    v2.version = 2;
    let a = GgufFile::from_bytes(v2.build()).expect("v2");
    let b = GgufFile::from_bytes(sample().build()).expect("v3");
    assert_eq!((a.version, b.version), (2, 3));
    assert_eq!(a.metadata(), b.metadata());
    assert_eq!(a.tensors(), b.tensors());
    assert_eq!(a.bytes()[8..], b.bytes()[8..]);
}

#[test]
fn tensor_infos_and_bytes() {
    let w = sample();
    let f = GgufFile::from_bytes(w.build()).expect("valid");
    let offsets = w.offsets();
    let want = [
        ("a.weight", vec![32, 2], GgmlType::Q8_0, 68),
        ("b.bias", vec![3], GgmlType::F32, 12),
        ("c.weight", vec![256], GgmlType::Q4_K, 144),
    ];
    assert_eq!(f.tensors().len(), want.len());
    for ((t, (name, shape, ty, size)), &off) in f.tensors().iter().zip(want).zip(&offsets) {
        assert_eq!(
            (t.name.as_str(), &t.shape, t.ty, t.size),
            (name, &shape, ty, size)
        );
        assert_eq!(t.offset, off);
        assert_eq!(t.offset % 32, 0);
        let (info, data) = f.tensor_by_name(name).expect("present");
        assert_eq!(info, t);
        let expect: Vec<u8> = (off..off + size).map(data_byte).collect();
        assert_eq!(data, &expect[..], "{name}");
    }
    assert_eq!(f.data_offset % 32, 0);
    assert_eq!(offsets, [0, 96, 128]);
    // The last tensor ends the file.
    assert_eq!(f.data_offset as u64 + 128 + 144, f.bytes().len() as u64);
    assert!(f.tensor_by_name("nope").is_err());
}

#[test]
fn every_tensor_type_has_the_right_size() {
    let mut w = GgufWriter::default();
    for ty in GgmlType::ALL {
        w = w.tensor(TensorSpec::new(ty.name(), &[256, 3], ty));
    }
    let f = GgufFile::from_bytes(w.build()).expect("valid");
    for (t, ty) in f.tensors().iter().zip(GgmlType::ALL) {
        assert_eq!(t.ty, ty);
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        assert_eq!(Some(t.size as usize), ty.row_bytes(256).map(|r| r * 3));
    }
}

#[test]
fn empty_files_are_fine() {
    let f = GgufFile::from_bytes(GgufWriter::default().build()).expect("no tensors, no metadata");
    assert!(f.tensors().is_empty() && f.metadata().is_empty());
    // Metadata only, no tensors: the file may end right after the last value.
    let w = GgufWriter::default().kv("k", Value::Bool(true));
    let f = GgufFile::from_bytes(w.build()).expect("metadata only");
    assert_eq!(f.get("k"), Some(&Value::Bool(true)));
}

#[test]
fn large_arrays_can_be_forgotten() {
    let big: Vec<String> = (0..5000).map(|i| format!("tok{i}")).collect();
    let bytes = sample()
        .kv("t.big", Value::Array(Array::String(big)))
        .build();
    let mut f = GgufFile::from_bytes(bytes).expect("valid");
    assert_eq!(f.str_array("t.big").map(<[String]>::len).ok(), Some(5000));
    f.forget_large_arrays(4096);
    assert!(f.get("t.big").is_none());
    // Small arrays and every other key stay, and lookups still agree.
    assert_eq!(f.str_array("t.a.str").map(<[String]>::len).ok(), Some(3));
    assert_eq!(f.str("general.architecture").ok(), Some("llama"));
    for (k, v) in f.metadata() {
        assert_eq!(f.get(k), Some(v));
    }
}
