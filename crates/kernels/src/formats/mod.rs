//! Tensor formats. Each file implements one ggml type: its scalar reference
//! (dequantize, quantize, dot) and its SIMD fast paths.
//!
//! Layouts follow ggml's block structs (`ggml-common.h`); the weight format
//! is paired with an activation format for dot products exactly as ggml pairs
//! them (`vec_dot_type`), so integer dot products give ggml's numbers.

use crate::cpu::Isa;
use troupe_gguf::GgmlType;

pub mod bf16;
pub mod f16;
pub mod f32;
pub mod gemm;
pub mod ggml_mm;
pub mod kgemm;
pub(crate) mod kquant_simd;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
pub(crate) mod simd;

/// The operations of one tensor format, as plain function pointers so that a
/// matmul picks its kernel once and calls it per row.
///
/// All lengths are in elements and must be whole blocks of the format; byte
/// slices must hold exactly those blocks.
pub struct QuantOps {
    pub ty: GgmlType,
    /// Format the other operand of [`QuantOps::vec_dot`] must be in.
    pub vec_dot_type: GgmlType,
    /// Dequantize `dst.len()` elements from `src`.
    pub to_f32: fn(src: &[u8], dst: &mut [f32]),
    /// Quantize `src.len()` elements into `dst` (reference rounding).
    pub from_f32: fn(src: &[f32], dst: &mut [u8]),
    /// Dot product of `n` elements: `w` in this format, `a` in `vec_dot_type`.
    pub vec_dot: fn(n: usize, w: &[u8], a: &[u8]) -> f32,
}

/// The scalar reference implementation of `ty`.
pub fn reference_ops(ty: GgmlType) -> &'static QuantOps {
    ops_for(ty, Isa::Scalar)
}

/// The fastest implementation of `ty` on this CPU.
pub fn fast_ops(ty: GgmlType) -> &'static QuantOps {
    ops_for(ty, crate::cpu::best())
}

/// The implementation of `ty` for `isa` (falling back to the best slower one
/// the format has). The caller must ensure `isa.supported()`.
pub fn ops_for(ty: GgmlType, isa: Isa) -> &'static QuantOps {
    match ty {
        GgmlType::F32 => f32::ops(isa),
        GgmlType::F16 => f16::ops(isa),
        GgmlType::BF16 => bf16::ops(isa),
        GgmlType::Q4_0 => q4_0::ops(isa),
        GgmlType::Q4_1 => q4_1::ops(isa),
        GgmlType::Q5_0 => q5_0::ops(isa),
        GgmlType::Q5_1 => q5_1::ops(isa),
        GgmlType::Q8_0 => q8_0::ops(isa),
        GgmlType::Q8_1 => q8_1::ops(isa),
        GgmlType::Q4_K => q4_k::ops(isa),
        GgmlType::Q5_K => q5_k::ops(isa),
        GgmlType::Q6_K => q6_k::ops(isa),
        GgmlType::Q8_K => q8_k::ops(isa),
    }
}
