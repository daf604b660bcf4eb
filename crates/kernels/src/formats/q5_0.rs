//! PLACEHOLDER for the Q5_0 format: to be replaced by the real implementation.

use super::QuantOps;
use crate::cpu::Isa;
use troupe_gguf::GgmlType;

fn missing_to_f32(_: &[u8], _: &mut [f32]) {
    unimplemented!("Q5_0 not implemented yet")
}
fn missing_from_f32(_: &[f32], _: &mut [u8]) {
    unimplemented!("Q5_0 not implemented yet")
}
fn missing_dot(_: usize, _: &[u8], _: &[u8]) -> f32 {
    unimplemented!("Q5_0 not implemented yet")
}

static SCALAR: QuantOps = QuantOps {
    ty: GgmlType::Q5_0,
    vec_dot_type: GgmlType::Q5_0,
    to_f32: missing_to_f32,
    from_f32: missing_from_f32,
    vec_dot: missing_dot,
};

pub fn ops(_isa: Isa) -> &'static QuantOps {
    &SCALAR
}
