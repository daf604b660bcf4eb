//! Compute kernels: tensor formats (scalar reference + SIMD fast paths chosen
//! at run time), f32 vector ops, and the persistent thread pool.
//!
//! Quantized dot products follow ggml's scheme: activations are quantized
//! to an 8-bit block format ([`QuantOps::vec_dot_type`]) once per matmul, and
//! every weight row is dotted against them with integer arithmetic.

pub mod cpu;
pub mod formats;
pub mod ops;
pub mod pool;

pub use cpu::Isa;
pub use formats::{fast_ops, ops_for, reference_ops, QuantOps};
pub use troupe_gguf::GgmlType;
