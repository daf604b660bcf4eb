//! A small GGUF writer for the reader's tests: it builds valid files
//! (spec: ggml `docs/gguf.md`), and every field can be overridden so a test
//! can break exactly one thing.
#![allow(dead_code)] // each test file uses a different part of it

use troupe_gguf::{Array, GgmlType, Value};

/// Default data alignment of GGUF.
pub const ALIGN: u64 = 32;
/// Tensors whose computed size is above this get no data written (they are
/// only ever used to provoke errors).
const MAX_WRITTEN: u64 = 1 << 20;

/// One tensor info. `offset: None` places the tensor at the next aligned
/// offset after the previous one.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: Vec<u8>,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub offset: Option<u64>,
    /// Written dimension count; `None`: `dims.len()`.
    pub n_dims: Option<u32>,
}

impl TensorSpec {
    pub fn new(name: &str, dims: &[u64], ty: GgmlType) -> Self {
        TensorSpec {
            name: name.as_bytes().to_vec(),
            dims: dims.to_vec(),
            type_id: ty.id(),
            offset: None,
            n_dims: None,
        }
    }

    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Byte size from dims and type, when the type is known and it fits.
    pub fn size(&self) -> Option<u64> {
        let ty = GgmlType::from_id(self.type_id)?;
        let n = self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        (n / ty.block_elems() as u64).checked_mul(ty.block_bytes() as u64)
    }
}

/// A metadata value: a typed [`Value`] or raw bytes after a raw type id.
#[derive(Clone, Debug)]
pub enum Kv {
    Value(Value),
    Raw { ty: u32, bytes: Vec<u8> },
}

/// The whole file; `build` serialises it.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    pub magic: [u8; 4],
    pub version: u32,
    /// Written counts; `None`: the real ones.
    pub tensor_count: Option<u64>,
    pub kv_count: Option<u64>,
    pub kvs: Vec<(Vec<u8>, Kv)>,
    pub tensors: Vec<TensorSpec>,
    /// Alignment used to place the data section and automatic offsets.
    pub alignment: u64,
    /// Length of the data section; `None`: up to the end of the last tensor.
    pub data_len: Option<u64>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter {
            magic: *b"GGUF",
            version: 3,
            tensor_count: None,
            kv_count: None,
            kvs: Vec::new(),
            tensors: Vec::new(),
            alignment: ALIGN,
            data_len: None,
        }
    }
}

impl GgufWriter {
    pub fn kv(mut self, key: &str, v: Value) -> Self {
        self.kvs.push((key.as_bytes().to_vec(), Kv::Value(v)));
        self
    }

    pub fn raw_kv(mut self, key: &[u8], ty: u32, bytes: Vec<u8>) -> Self {
        self.kvs.push((key.to_vec(), Kv::Raw { ty, bytes }));
        self
    }

    pub fn tensor(mut self, t: TensorSpec) -> Self {
        self.tensors.push(t);
        self
    }

    /// Tensor offsets as they will be written.
    pub fn offsets(&self) -> Vec<u64> {
        let mut next = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let off = t.offset.unwrap_or(next);
                let end = off.saturating_add(t.size().unwrap_or(0));
                next = next.max(end.div_ceil(self.alignment).saturating_mul(self.alignment));
                off
            })
            .collect()
    }

    /// Serialises the file.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        put_u32(&mut out, self.version);
        put_u64(
            &mut out,
            self.tensor_count.unwrap_or(self.tensors.len() as u64),
        );
        put_u64(&mut out, self.kv_count.unwrap_or(self.kvs.len() as u64));
        for (key, kv) in &self.kvs {
            put_bytes(&mut out, key);
            match kv {
                Kv::Value(v) => put_value(&mut out, v),
                Kv::Raw { ty, bytes } => {
                    put_u32(&mut out, *ty);
                    out.extend_from_slice(bytes);
                }
            }
        }
        let offsets = self.offsets();
        for (t, off) in self.tensors.iter().zip(&offsets) {
            put_bytes(&mut out, &t.name);
            put_u32(&mut out, t.n_dims.unwrap_or(t.dims.len() as u32));
            for &d in &t.dims {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.type_id);
            put_u64(&mut out, *off);
        }
        if self.tensors.is_empty() && self.data_len.is_none() {
            return out;
        }
        let start = (out.len() as u64).div_ceil(self.alignment) * self.alignment;
        out.resize(start as usize, 0);
        let data_len = self.data_len.unwrap_or_else(|| {
            self.tensors
                .iter()
                .zip(&offsets)
                .filter_map(|(t, &off)| t.size().map(|s| off.saturating_add(s)))
                .filter(|&end| end <= MAX_WRITTEN)
                .max()
                .unwrap_or(0)
        });
        out.extend((0..data_len).map(data_byte));
        out
    }
}

/// The byte at position `i` of the data section: tensors are filled with a
/// fixed pattern so a test can check `tensor_data` returns the right bytes.
pub fn data_byte(i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(7) % 251) as u8
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A GGUF string: u64 length then the bytes (not necessarily UTF-8).
pub fn put_bytes(out: &mut Vec<u8>, s: &[u8]) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Type id of a value as GGUF numbers them.
pub fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// Element type id of an array.
pub fn array_type(a: &Array) -> u32 {
    match a {
        Array::U8(_) => 0,
        Array::I8(_) => 1,
        Array::U16(_) => 2,
        Array::I16(_) => 3,
        Array::U32(_) => 4,
        Array::I32(_) => 5,
        Array::F32(_) => 6,
        Array::Bool(_) => 7,
        Array::String(_) => 8,
        Array::Array(_) => 9,
        Array::U64(_) => 10,
        Array::I64(_) => 11,
        Array::F64(_) => 12,
    }
}

/// Type id then payload.
pub fn put_value(out: &mut Vec<u8>, v: &Value) {
    put_u32(out, value_type(v));
    put_payload(out, v);
}

fn put_payload(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => put_u32(out, *x),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_bytes(out, s.as_bytes()),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => put_u64(out, *x),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Element type, count, elements (nested arrays repeat this, no type id).
pub fn put_array(out: &mut Vec<u8>, a: &Array) {
    put_u32(out, array_type(a));
    put_u64(out, a.len() as u64);
    macro_rules! each {
        ($v:expr, $variant:ident) => {
            for x in $v {
                put_payload(out, &Value::$variant(x.clone()));
            }
        };
    }
    match a {
        Array::U8(v) => each!(v, U8),
        Array::I8(v) => each!(v, I8),
        Array::U16(v) => each!(v, U16),
        Array::I16(v) => each!(v, I16),
        Array::U32(v) => each!(v, U32),
        Array::I32(v) => each!(v, I32),
        Array::F32(v) => each!(v, F32),
        Array::Bool(v) => each!(v, Bool),
        Array::String(v) => each!(v, String),
        Array::Array(v) => {
            for inner in v {
                put_array(out, inner);
            }
        }
        Array::U64(v) => each!(v, U64),
        Array::I64(v) => each!(v, I64),
        Array::F64(v) => each!(v, F64),
    }
}

/// One value of every scalar type, and arrays of each, nested and empty.
pub fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f32", Value::F32(-1.5e-7)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("t.bool.true", Value::Bool(true)),
        ("t.bool.false", Value::Bool(false)),
        ("t.str", Value::String("héllo, 世界 🎭".to_string())),
        ("t.str.empty", Value::String(String::new())),
        ("t.a.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("t.a.i8", Value::Array(Array::I8(vec![-128, 0, 127]))),
        ("t.a.u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("t.a.i16", Value::Array(Array::I16(vec![-32768, 32767]))),
        ("t.a.u32", Value::Array(Array::U32(vec![7, u32::MAX]))),
        ("t.a.i32", Value::Array(Array::I32(vec![i32::MIN, -1]))),
        ("t.a.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("t.a.i64", Value::Array(Array::I64(vec![i64::MAX, -5]))),
        ("t.a.f32", Value::Array(Array::F32(vec![0.25, -0.0, 1e30]))),
        ("t.a.f64", Value::Array(Array::F64(vec![1e-300, 2.5]))),
        (
            "t.a.bool",
            Value::Array(Array::Bool(vec![true, false, true])),
        ),
        (
            "t.a.str",
            Value::Array(Array::String(vec!["a".into(), String::new(), "ü".into()])),
        ),
        ("t.a.empty", Value::Array(Array::F32(vec![]))),
        (
            "t.a.nested",
            Value::Array(Array::Array(vec![
                Array::U32(vec![1, 2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::Bool(vec![true])]),
                Array::I64(vec![]),
            ])),
        ),
    ]
}

/// A small valid file: metadata of every type and three tensors of
/// different types; the last tensor ends exactly at the end of the file.
pub fn sample() -> GgufWriter {
    let mut w = GgufWriter::default();
    for (k, v) in every_value() {
        w = w.kv(k, v);
    }
    w.kv("general.architecture", Value::String("llama".into()))
        .tensor(TensorSpec::new("a.weight", &[32, 2], GgmlType::Q8_0))
        .tensor(TensorSpec::new("b.bias", &[3], GgmlType::F32))
        .tensor(TensorSpec::new("c.weight", &[256], GgmlType::Q4_K))
}

/// Nested array of `depth` levels around an empty u8 array, as the payload
/// after a value type of 9.
pub fn nested_array_bytes(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 1..depth {
        put_u32(&mut out, 9);
        put_u64(&mut out, 1);
    }
    put_u32(&mut out, 0);
    put_u64(&mut out, 0);
    out
}
