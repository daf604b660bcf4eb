//! Parsing of the header, metadata and tensor infos, with bounds checks.

use crate::{Array, GgmlType, GgufError, Result, Value};
use std::collections::HashMap;
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;
const MAX_ARRAY_DEPTH: usize = 4;
/// Most elements reserved up front from a count read from the file. Counts
/// are only bounded by the file's length, and a multi-GB file could
/// otherwise make us reserve several times its size before finding that the
/// items are not there; past this, vectors grow as items really parse.
const MAX_PREALLOC: usize = 1 << 16;

/// Where a tensor lives and what it is. `shape[0]` is the innermost
/// (contiguous) dimension, as in ggml: a weight `[n_in, n_out]` has rows of
/// `n_in` elements.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size in bytes, computed from shape and type.
    pub size: u64,
}

impl TensorInfo {
    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file: metadata and tensor infos in memory, tensor data left
/// in the mapped file until asked for.
pub struct GgufFile {
    storage: Storage,
    pub version: u32,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; if another process truncates the file
        // under us we may fault, the usual memmap caveat shared by every
        // mmap-based model loader. We never write through it.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_storage(Storage::Mmap(mmap))
    }

    /// Parses a file held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<Self> {
        let parsed = parse(storage.bytes())?;
        Ok(GgufFile {
            storage,
            version: parsed.version,
            metadata: parsed.metadata,
            meta_index: parsed.meta_index,
            tensors: parsed.tensors,
            tensor_index: parsed.tensor_index,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Drops the parsed metadata arrays with more than `min_len` elements
    /// (a tokenizer's vocabulary and merges: tens of MiB as strings) once
    /// their users have read them; the keys then read as absent.
    pub fn forget_large_arrays(&mut self, min_len: usize) {
        let big: Vec<String> = self
            .metadata
            .iter()
            .filter(|(_, v)| v.as_array().is_some_and(|a| a.len() > min_len))
            .map(|(k, _)| k.clone())
            .collect();
        self.metadata.retain(|(k, _)| !big.contains(k));
        self.metadata.shrink_to_fit();
        self.meta_index = self
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    fn wrong(key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: v.type_name(),
        }
    }

    /// An integer value of any width.
    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong(key, "unsigned integer", v))
    }

    /// An integer value that must fit in usize.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| Self::wrong(key, "unsigned integer", v))
    }

    /// Optional integer: missing is `Ok(None)`, present but wrong is an error.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.usize(key).map(Some)
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| Self::wrong(key, "float", v))
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.f32(key).map(Some)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Self::wrong(key, "bool", v)),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "string", v))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Self::wrong(key, "string", v)),
        }
    }

    pub fn array(&self, key: &str) -> Result<&Array> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, "array", v))
    }

    pub fn str_array(&self, key: &str) -> Result<&[String]> {
        match self.array(key)? {
            Array::String(v) => Ok(v),
            _ => Err(GgufError::WrongType {
                key: key.to_string(),
                expected: "array of strings",
                found: "array",
            }),
        }
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's bytes; bounds were checked at parse time.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_offset + info.offset as usize;
        &self.bytes()[start..start + info.size as usize]
    }

    /// A tensor by name with its bytes.
    pub fn tensor_by_name(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        Ok((info, self.tensor_data(info)))
    }
}

struct Parsed {
    version: u32,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: usize,
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                len: self.buf.len(),
            }),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_item_bytes` each: rejected when the
    /// rest of the file could not possibly hold them, before any allocation.
    fn count(&mut self, what: &'static str, min_item_bytes: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let max = self.remaining() / min_item_bytes.max(1);
        if n > max as u64 {
            return Err(GgufError::AbsurdCount {
                what,
                count: n,
                len: self.buf.len(),
            });
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &'static str) -> Result<String> {
        let n = self.count(what, 1)?;
        let offset = self.pos;
        let s = self.take(n, what)?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| GgufError::BadUtf8 { offset })
    }
}

fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor { buf, pos: 0 };
    let magic: [u8; 4] = match c.array(MAGIC_WHAT) {
        Ok(m) => m,
        Err(_) => {
            let mut found = [0u8; 4];
            found[..buf.len().min(4)].copy_from_slice(&buf[..buf.len().min(4)]);
            return Err(GgufError::BadMagic { found });
        }
    };
    if &magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // Minimal sizes: a tensor info is at least name len (8) + n_dims (4) +
    // type (4) + offset (8); a key/value at least key len (8) + type (4) + 1.
    let n_tensors_raw = c.u64("tensor count")?;
    let n_kv_raw = c.u64("metadata count")?;
    let rest = c.remaining() as u64;
    if n_tensors_raw > rest / 24 {
        return Err(GgufError::AbsurdCount {
            what: "tensor",
            count: n_tensors_raw,
            len: buf.len(),
        });
    }
    if n_kv_raw > rest / 13 {
        return Err(GgufError::AbsurdCount {
            what: "metadata",
            count: n_kv_raw,
            len: buf.len(),
        });
    }

    let mut metadata = Vec::with_capacity(prealloc(n_kv_raw));
    let mut meta_index = HashMap::with_capacity(prealloc(n_kv_raw));
    for _ in 0..n_kv_raw {
        let key = c.string("metadata key")?;
        let ty = c.u32("metadata value type")?;
        let value = read_value(&mut c, &key, ty, 0)?;
        if meta_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(GgufError::DuplicateKey(key));
        }
        metadata.push((key, value));
    }

    let alignment = match meta_index.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => {
            let a = metadata[i].1.as_u64().unwrap_or(0);
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment(a));
            }
            a
        }
    };

    let mut tensors = Vec::with_capacity(prealloc(n_tensors_raw));
    let mut tensor_index = HashMap::with_capacity(prealloc(n_tensors_raw));
    for _ in 0..n_tensors_raw {
        let info = read_tensor_info(&mut c, alignment)?;
        if tensor_index
            .insert(info.name.clone(), tensors.len())
            .is_some()
        {
            return Err(GgufError::DuplicateTensor(info.name));
        }
        tensors.push(info);
    }

    // The data section starts at the next multiple of the alignment; a file
    // without tensors may end right after the infos.
    let pos = c.pos as u64;
    let data_offset = pos.div_ceil(alignment).saturating_mul(alignment);
    check_layout(&tensors, data_offset, buf.len())?;

    Ok(Parsed {
        version,
        metadata,
        meta_index,
        tensors,
        tensor_index,
        alignment,
        data_offset: data_offset as usize,
    })
}

const MAGIC_WHAT: &str = "magic";

/// Capacity to reserve for `n` items announced by the file.
fn prealloc(n: u64) -> usize {
    n.min(MAX_PREALLOC as u64) as usize
}

fn read_tensor_info(c: &mut Cursor<'_>, alignment: u64) -> Result<TensorInfo> {
    let name = c.string("tensor name")?;
    let n_dims = c.u32("tensor dimension count")?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims { name, n_dims });
    }
    let mut shape = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        shape.push(c.u64("tensor dimension")?);
    }
    let type_id = c.u32("tensor type")?;
    let offset = c.u64("tensor offset")?;
    let Some(ty) = GgmlType::from_id(type_id) else {
        return Err(GgufError::UnknownTensorType { name, id: type_id });
    };
    let bad = |why| GgufError::BadShape {
        name: name.clone(),
        shape: shape.clone(),
        why,
    };
    if shape.contains(&0) {
        return Err(bad("a dimension is zero"));
    }
    let n_elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("element count overflows"))?;
    let row = shape.first().copied().unwrap_or(1);
    if !row.is_multiple_of(ty.block_elems() as u64) {
        return Err(bad("first dimension is not a multiple of the block size"));
    }
    let size = (n_elements / ty.block_elems() as u64)
        .checked_mul(ty.block_bytes() as u64)
        .ok_or_else(|| bad("byte size overflows"))?;
    if !offset.is_multiple_of(alignment) {
        return Err(GgufError::Misaligned {
            name,
            offset,
            alignment,
        });
    }
    Ok(TensorInfo {
        name,
        shape,
        ty,
        offset,
        size,
    })
}

fn check_layout(tensors: &[TensorInfo], data_offset: u64, len: usize) -> Result<()> {
    for t in tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start, end) {
            (Some(_), Some(e)) if e <= len as u64 => {}
            _ => {
                return Err(GgufError::OutOfBounds {
                    name: t.name.clone(),
                    start: data_offset.saturating_add(t.offset),
                    end: data_offset.saturating_add(t.offset).saturating_add(t.size),
                    len,
                })
            }
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for w in order.windows(2) {
        if w[0].offset + w[0].size > w[1].offset {
            return Err(GgufError::Overlap {
                a: w[0].name.clone(),
                b: w[1].name.clone(),
            });
        }
    }
    Ok(())
}

fn read_value(c: &mut Cursor<'_>, key: &str, ty: u32, depth: usize) -> Result<Value> {
    Ok(match ty {
        0 => Value::U8(c.u8("u8 value")?),
        1 => Value::I8(c.u8("i8 value")? as i8),
        2 => Value::U16(c.u16("u16 value")?),
        3 => Value::I16(c.u16("i16 value")? as i16),
        4 => Value::U32(c.u32("u32 value")?),
        5 => Value::I32(c.u32("i32 value")? as i32),
        6 => Value::F32(f32::from_bits(c.u32("f32 value")?)),
        7 => Value::Bool(c.u8("bool value")? != 0),
        8 => Value::String(c.string("string value")?),
        9 => Value::Array(read_array(c, key, depth + 1)?),
        10 => Value::U64(c.u64("u64 value")?),
        11 => Value::I64(c.u64("i64 value")? as i64),
        12 => Value::F64(f64::from_bits(c.u64("f64 value")?)),
        _ => {
            return Err(GgufError::UnknownValueType {
                key: key.to_string(),
                ty,
            })
        }
    })
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::TooDeep(MAX_ARRAY_DEPTH));
    }
    let ty = c.u32("array element type")?;
    macro_rules! prim {
        ($variant:ident, $size:expr, $read:expr) => {{
            let n = c.count("array element", $size)?;
            let mut v = Vec::with_capacity(prealloc(n as u64));
            for _ in 0..n {
                v.push($read(&mut *c)?);
            }
            Array::$variant(v)
        }};
    }
    Ok(match ty {
        0 => prim!(U8, 1, |c: &mut Cursor| c.u8("array u8")),
        1 => prim!(I8, 1, |c: &mut Cursor| c.u8("array i8").map(|x| x as i8)),
        2 => prim!(U16, 2, |c: &mut Cursor| c.u16("array u16")),
        3 => prim!(I16, 2, |c: &mut Cursor| c
            .u16("array i16")
            .map(|x| x as i16)),
        4 => prim!(U32, 4, |c: &mut Cursor| c.u32("array u32")),
        5 => prim!(I32, 4, |c: &mut Cursor| c
            .u32("array i32")
            .map(|x| x as i32)),
        6 => prim!(F32, 4, |c: &mut Cursor| c
            .u32("array f32")
            .map(f32::from_bits)),
        7 => prim!(Bool, 1, |c: &mut Cursor| c.u8("array bool").map(|x| x != 0)),
        8 => prim!(String, 8, |c: &mut Cursor| c.string("array string")),
        9 => {
            let n = c.count("nested array", 12)?;
            let mut v = Vec::with_capacity(prealloc(n as u64));
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(v)
        }
        10 => prim!(U64, 8, |c: &mut Cursor| c.u64("array u64")),
        11 => prim!(I64, 8, |c: &mut Cursor| c
            .u64("array i64")
            .map(|x| x as i64)),
        12 => prim!(F64, 8, |c: &mut Cursor| c
            .u64("array f64")
            .map(f64::from_bits)),
        _ => {
            return Err(GgufError::UnknownValueType {
                key: key.to_string(),
                ty,
            })
        }
    })
}
