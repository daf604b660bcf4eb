//! GGUF reader (versions 2 and 3), following the GGUF spec in ggml's
//! `docs/gguf.md`: header, metadata key/values, tensor infos, aligned data.
//!
//! The file is memory-mapped and every count, size and offset is checked
//! against the bytes that are really there before it is used, so a malformed
//! file gives a [`GgufError`] and never a panic or an out-of-bounds read.

mod reader;
mod types;
mod value;

pub use reader::{GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{Array, Value};

/// Everything that can be wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")")]
    BadMagic { found: [u8; 4] },
    #[error(
        "GGUF version {0} is not supported (only 2 and 3; big-endian files are not supported)"
    )]
    UnsupportedVersion(u32),
    #[error("file is truncated: needed {needed} bytes at offset {offset} while reading {what}, file has {len}")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        len: usize,
    },
    #[error("{what} count {count} is impossible for a file of {len} bytes")]
    AbsurdCount {
        what: &'static str,
        count: u64,
        len: usize,
    },
    #[error("metadata key {key:?} has unknown value type {ty}")]
    UnknownValueType { key: String, ty: u32 },
    #[error("metadata arrays nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("string at offset {offset} is not valid UTF-8")]
    BadUtf8 { offset: usize },
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    #[error("tensor {name:?} has unknown or unsupported type id {id}")]
    UnknownTensorType { name: String, id: u32 },
    #[error("tensor {name:?} has {n_dims} dimensions (at most 4)")]
    TooManyDims { name: String, n_dims: u32 },
    #[error("tensor {name:?} has bad shape {shape:?}: {why}")]
    BadShape {
        name: String,
        shape: Vec<u64>,
        why: &'static str,
    },
    #[error("tensor {name:?} offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {name:?} (bytes {start}..{end} of the file) lies outside the file of {len} bytes"
    )]
    OutOfBounds {
        name: String,
        start: u64,
        end: u64,
        len: usize,
    },
    #[error("tensors {a:?} and {b:?} overlap")]
    Overlap { a: String, b: String },
    #[error("general.alignment {0} is not a positive power of two")]
    BadAlignment(u64),
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;
