//! Every prefix of a small valid file is an error, and every single-byte
//! corruption gives an error or a file whose tensors can all be read; no
//! input may panic.

mod common;

use common::sample;
use std::panic::{catch_unwind, AssertUnwindSafe};
use troupe_gguf::{GgufError, GgufFile};

/// Parses and, on success, reads every tensor's bytes and every value.
fn parse_and_touch(bytes: Vec<u8>) -> Result<u64, GgufError> {
    let f = GgufFile::from_bytes(bytes)?;
    let mut sum = 0u64;
    for t in f.tensors() {
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, t.size);
        sum += data.iter().map(|&b| u64::from(b)).sum::<u64>();
        assert_eq!(f.tensor(&t.name).map(|x| x.offset), Some(t.offset));
    }
    for (k, v) in f.metadata() {
        assert!(f.get(k).is_some());
        sum += v.type_name().len() as u64;
    }
    Ok(sum)
}

fn no_panic(bytes: Vec<u8>, what: &str) -> Result<u64, GgufError> {
    match catch_unwind(AssertUnwindSafe(|| parse_and_touch(bytes))) {
        Ok(r) => r,
        Err(_) => panic!("the reader panicked on {what}"),
    }
}

#[test]
fn every_prefix_is_an_error() {
    for version in [2, 3] {
        let mut w = sample();
        w.version = version;
        let full = w.build();
        assert!(no_panic(full.clone(), "the full file").is_ok());
        for len in 0..full.len() {
            let r = no_panic(full[..len].to_vec(), &format!("a prefix of {len} bytes"));
            assert!(r.is_err(), "v{version}: prefix of {len} bytes parsed");
        }
    }
}

#[test]
fn prefixes_report_truncation_or_a_consequence_of_it() {
    let full = sample().build();
    for len in 0..full.len() {
        match GgufFile::from_bytes(full[..len].to_vec()) {
            Err(
                GgufError::BadMagic { .. }
                | GgufError::Truncated { .. }
                | GgufError::AbsurdCount { .. }
                | GgufError::OutOfBounds { .. },
            ) => {}
            other => panic!("prefix of {len} bytes: unexpected {other:?}"),
        }
    }
}

#[test]
fn single_byte_corruptions_never_panic() {
    let full = sample().build();
    let mut parsed = 0;
    for i in 0..full.len() {
        for v in [
            0x00,
            0xff,
            full[i] ^ 0x01,
            full[i] ^ 0x80,
            full[i].wrapping_add(1),
        ] {
            let mut bytes = full.clone();
            bytes[i] = v;
            if no_panic(bytes, &format!("byte {i} set to {v:#04x}")).is_ok() {
                parsed += 1;
            }
        }
    }
    // Most corruptions land in values or tensor data and still parse.
    assert!(parsed > full.len(), "{parsed}");
}

#[test]
fn appended_bytes_are_ignored() {
    let mut bytes = sample().build();
    let before = parse_and_touch(bytes.clone()).expect("valid");
    bytes.extend_from_slice(&[0xAB; 100]);
    assert_eq!(parse_and_touch(bytes).ok(), Some(before));
}
