//! Fuzz target: `GgufFile::from_bytes` on arbitrary bytes must return an
//! error or a file whose every tensor and value can be read without a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use troupe_gguf::{GgufFile, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let mut acc = 0u64;
    for t in f.tensors() {
        let bytes = f.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.size);
        assert!(t.n_elements() > 0);
        // Touch every byte of every tensor.
        acc = bytes
            .iter()
            .fold(acc, |a, &b| a.rotate_left(5) ^ u64::from(b));
        let (info, same) = f.tensor_by_name(&t.name).expect("listed tensor is found");
        assert_eq!(info.offset, t.offset);
        assert_eq!(same.len(), bytes.len());
    }
    for (k, v) in f.metadata() {
        assert!(f.get(k).is_some());
        acc ^= match v {
            Value::Array(a) => a.len() as u64 ^ a.to_i64_vec().map_or(0, |v| v.len() as u64),
            Value::String(s) => s.len() as u64,
            v => v.as_u64().unwrap_or(1) ^ v.as_f32().map_or(0, |x| x.to_bits().into()),
        };
        let _ = (
            f.u64(k),
            f.str(k),
            f.str_array(k),
            f.opt_bool(k),
            f.opt_f32(k),
        );
    }
    std::hint::black_box(acc);
});
