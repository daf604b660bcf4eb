//! Access to weights inside a memory-mapped GGUF file, with shape checks.

use std::sync::Arc;
use troupe_gguf::{GgmlType, GgufFile};

/// A model that does not fit its code: the file parsed, but a tensor or a
/// hyper-parameter is missing or has the wrong shape or type.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] troupe_gguf::GgufError),
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor {name:?} has type {ty}, which cannot be used here ({why})")]
    Type {
        name: String,
        ty: GgmlType,
        why: &'static str,
    },
    #[error("bad model hyper-parameter: {0}")]
    Param(String),
}

/// Hands out weights by name from a shared GGUF file.
#[derive(Clone)]
pub struct WeightSource {
    pub file: Arc<GgufFile>,
}

/// A weight matrix (or vector) that stays in the mapped file.
#[derive(Clone)]
pub struct MappedTensor {
    file: Arc<GgufFile>,
    start: usize,
    len: usize,
    pub ty: GgmlType,
    /// ggml order: `shape[0]` is the contiguous (row) length.
    pub shape: Vec<usize>,
}

impl MappedTensor {
    pub fn bytes(&self) -> &[u8] {
        &self.file.bytes()[self.start..self.start + self.len]
    }
}

impl WeightSource {
    pub fn new(file: Arc<GgufFile>) -> Self {
        WeightSource { file }
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    /// The tensor `name`, which must have exactly `shape` (ggml order).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<MappedTensor, LoadError> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| troupe_gguf::GgufError::MissingTensor(name.to_string()))?;
        let found: Vec<u64> = info.shape.clone();
        let expected: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        // Trailing 1-dims are equivalent in ggml.
        let trim = |v: &[u64]| {
            let mut v = v.to_vec();
            while v.len() > 1 && v.last() == Some(&1) {
                v.pop();
            }
            v
        };
        if trim(&found) != trim(&expected) {
            return Err(LoadError::Shape {
                name: name.to_string(),
                found,
                expected,
            });
        }
        Ok(MappedTensor {
            file: Arc::clone(&self.file),
            start: self.file.data_offset + info.offset as usize,
            len: info.size as usize,
            ty: info.ty,
            shape: shape.to_vec(),
        })
    }

    /// A 1-D tensor of `n` values converted to f32 (norm weights, biases).
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, LoadError> {
        let t = self.tensor(name, &[n])?;
        let mut out = vec![0f32; n];
        (troupe_kernels::reference_ops(t.ty).to_f32)(t.bytes(), &mut out);
        Ok(out)
    }
}
