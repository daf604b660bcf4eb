//! Linear layers over quantized weights, embeddings and RMSNorm.
//!
//! A matmul quantizes its input rows once into the weight format's
//! `vec_dot_type` ([`QuantizedInput`]), then splits the weight rows over the
//! pool; each weight row is read once and dotted with every token of the
//! batch while it is hot in cache.
//!
//! For repacked Q4_K and tiled Q6_K weights the dot product follows the
//! kernel llama.cpp picks for the batch (`formats::ggml_mm`), so, as in
//! llama.cpp, a row's result can depend on the batch size and on its place
//! in the batch (a sequence in a ragged batch is then not bit-identical to
//! the same sequence run alone).

use crate::tensor::{LoadError, MappedTensor, WeightSource};
use troupe_gguf::GgmlType;
use troupe_kernels::formats::gemm::{self, GemmFn, PackedInput, GROUP};
use troupe_kernels::formats::ggml_mm::{self, Kernel};
use troupe_kernels::formats::kgemm::{self, KPacked, KScratch};
use troupe_kernels::pool::{ThreadPool, UnsafeSlice};
use troupe_kernels::{fast_ops, QuantOps};

/// Weight rows handed to one thread at a time (keeps output writes of
/// different threads on different cache lines).
const ROW_ALIGN: usize = 16;

/// Weight rows the single-token path prefetches ahead.
const PREFETCH_ROWS: usize = 4;

/// `y = x W^T (+ b)` with `W` stored as `[n_out rows, n_in cols]` in any
/// supported format.
pub struct Linear {
    w: MappedTensor,
    ops: &'static QuantOps,
    /// Multi-token kernel, used for batches of two tokens or more.
    gemm: Option<GemmFn>,
    bias: Option<Vec<f32>>,
    pub n_in: usize,
    pub n_out: usize,
}

impl Linear {
    /// Loads `{name}.weight` of shape `[n_in, n_out]` (ggml order) and, when
    /// `with_bias`, `{name}.bias` of `n_out`.
    pub fn load(
        src: &WeightSource,
        name: &str,
        n_in: usize,
        n_out: usize,
        with_bias: bool,
    ) -> Result<Self, LoadError> {
        let w = src.tensor(&format!("{name}.weight"), &[n_in, n_out])?;
        let bias = if with_bias {
            Some(src.vector(&format!("{name}.bias"), n_out)?)
        } else {
            None
        };
        Self::from_tensor(w, bias)
    }

    /// A linear layer over an already-fetched tensor (tied embeddings).
    pub fn from_tensor(w: MappedTensor, bias: Option<Vec<f32>>) -> Result<Self, LoadError> {
        let (n_in, n_out) = (w.shape[0], w.shape.get(1).copied().unwrap_or(1));
        if !n_in.is_multiple_of(w.ty.block_elems()) || w.ty == GgmlType::Q8_K {
            return Err(LoadError::Type {
                name: "linear weight".into(),
                ty: w.ty,
                why: "rows must be whole blocks of a weight format",
            });
        }
        Ok(Linear {
            ops: fast_ops(w.ty),
            gemm: gemm::kernel(w.ty),
            w,
            bias,
            n_in,
            n_out,
        })
    }

    /// Format the input must be quantized to.
    pub fn input_type(&self) -> GgmlType {
        self.ops.vec_dot_type
    }

    /// `out[t, :] = W x[t, :] + b` for every token `t` of `x` (quantized
    /// beforehand with [`QuantizedInput::prepare`]); `out` is `[n_tokens, n_out]`.
    pub fn forward(&self, x: &QuantizedInput, out: &mut [f32], pool: &ThreadPool) {
        let n_tokens = x.n_tokens;
        assert_eq!(x.cols, self.n_in, "input width mismatch");
        assert!(out.len() >= n_tokens * self.n_out, "output too small");
        if let (Some(k), Some(packed)) = (self.gemm, x.packed(self.ops.vec_dot_type)) {
            return self.forward_gemm(k, packed, out, pool);
        }
        let split = self.kgemm_tokens(n_tokens);
        if split > 0 && x.kpacked.n_tokens() == n_tokens {
            return self.forward_kgemm(x, split, out, pool);
        }
        let (xq, x_row) = x.rows(self.ops.vec_dot_type);
        let w = self.w.bytes();
        let w_row = w.len() / self.n_out;
        let n_in = self.n_in;
        let n_out = self.n_out;
        // Where llama.cpp's matmul for this batch size is not `vec_dot`
        // (repacked or tiled K-quants), follow its float order instead.
        let dots = troupe_kernels::formats::ggml_mm::matmul_dots(
            self.w.ty,
            n_out,
            n_tokens,
            self.ops.vec_dot,
        );
        let bias = self.bias.as_deref();
        let out = UnsafeSlice::new(&mut out[..n_tokens * n_out]);
        pool.for_ranges(n_out, ROW_ALIGN, |rows| {
            let end = rows.end;
            for r in rows {
                let ahead = (r + PREFETCH_ROWS).min(end);
                troupe_kernels::cpu::prefetch(&w[ahead * w_row..(ahead + 1).min(end) * w_row]);
                let wr = &w[r * w_row..(r + 1) * w_row];
                let b = bias.map_or(0.0, |b| b[r]);
                for t in 0..n_tokens {
                    let dot = dots.for_row(t);
                    let v = dot(n_in, wr, &xq[t * x_row..(t + 1) * x_row]) + b;
                    // SAFETY: each thread owns a disjoint set of rows `r`.
                    unsafe { out.write(t * n_out + r, v) };
                }
            }
        });
    }
}

impl Linear {
    /// How many leading tokens of an `n_tokens` batch the K-quant
    /// multi-token kernel takes (the rest keep llama.cpp's per-row kernel):
    /// those of the repacked Q4_K gemm or the tiled Q6_K matmul.
    fn kgemm_tokens(&self, n_tokens: usize) -> usize {
        if n_tokens < 2 || !kgemm::supports(self.w.ty) {
            return 0;
        }
        match ggml_mm::plan(self.w.ty, self.n_out, n_tokens) {
            (split, Kernel::Q4KGemm | Kernel::Q6KTiled, _) => split,
            _ => 0,
        }
    }

    /// [`Linear::forward`] with the K-quant multi-token kernel for tokens
    /// `0..split` and the per-row kernel for the rest.
    fn forward_kgemm(&self, x: &QuantizedInput, split: usize, out: &mut [f32], pool: &ThreadPool) {
        thread_local! {
            static SCRATCH: std::cell::RefCell<KScratch> = std::cell::RefCell::new(KScratch::default());
        }
        let (n_tokens, n_out, n_in) = (x.n_tokens, self.n_out, self.n_in);
        let (xq, x_row) = x.rows(self.ops.vec_dot_type);
        let w = self.w.bytes();
        let w_row = w.len() / n_out;
        let tail = ggml_mm::matmul_dots(self.w.ty, n_out, n_tokens, self.ops.vec_dot).tail;
        let bias = self.bias.as_deref();
        let out = UnsafeSlice::new(&mut out[..n_tokens * n_out]);
        let ty = self.w.ty;
        pool.for_ranges(n_out, ROW_ALIGN, |rows| {
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                kgemm::matmul(
                    ty,
                    w,
                    rows.clone(),
                    &x.kpacked,
                    split,
                    &mut s,
                    &mut |t, r, v| {
                        let b = bias.map_or(0.0, |b| b[r]);
                        // SAFETY: each thread owns a disjoint set of rows.
                        unsafe { out.write(t * n_out + r, v + b) };
                    },
                );
            });
            for r in rows {
                let wr = &w[r * w_row..(r + 1) * w_row];
                let b = bias.map_or(0.0, |b| b[r]);
                for t in split..n_tokens {
                    let v = tail(n_in, wr, &xq[t * x_row..(t + 1) * x_row]) + b;
                    // SAFETY: as above.
                    unsafe { out.write(t * n_out + r, v) };
                }
            }
        });
    }

    /// [`Linear::forward`] with the multi-token kernel: each thread takes
    /// tiles of [`ROW_ALIGN`] weight rows and runs every token group over a
    /// tile while it is in L1.
    fn forward_gemm(&self, k: GemmFn, x: &PackedInput, out: &mut [f32], pool: &ThreadPool) {
        let (n_tokens, n_out, nb) = (x.n_tokens(), self.n_out, x.blocks());
        let w = self.w.bytes();
        let w_row = w.len() / n_out;
        let bias = self.bias.as_deref();
        let out = UnsafeSlice::new(&mut out[..n_tokens * n_out]);
        pool.for_ranges(n_out, ROW_ALIGN, |rows| {
            let mut tile = [[0f32; GROUP]; ROW_ALIGN];
            let mut r0 = rows.start;
            while r0 < rows.end {
                let r1 = (r0 + ROW_ALIGN).min(rows.end);
                let tile = &mut tile[..r1 - r0];
                for g in 0..n_tokens.div_ceil(GROUP) {
                    let nt = (n_tokens - g * GROUP).min(GROUP);
                    k(nb, &w[r0 * w_row..rows.end * w_row], x.group(g), nt, tile);
                    for t in g * GROUP..((g + 1) * GROUP).min(n_tokens) {
                        for (i, o) in tile.iter().enumerate() {
                            let b = bias.map_or(0.0, |b| b[r0 + i]);
                            // SAFETY: each thread owns a disjoint set of rows.
                            unsafe { out.write(t * n_out + r0 + i, o[t - g * GROUP] + b) };
                        }
                    }
                }
                r0 = r1;
            }
        });
    }
}

/// A batch of activation rows quantized for the weight formats that will
/// consume them; buffers are kept between calls (no allocation per token
/// once warmed up).
#[derive(Default)]
pub struct QuantizedInput {
    bufs: Vec<(GgmlType, Vec<u8>, usize)>,
    /// The same rows packed for multi-token kernels (two tokens or more).
    packed: Vec<PackedInput>,
    /// Q8_K rows packed for the K-quant multi-token kernel.
    kpacked: KPacked,
    n_tokens: usize,
    cols: usize,
}

impl QuantizedInput {
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `x` (`[n_tokens, cols]`) once for each distinct input type
    /// of `layers`.
    pub fn prepare(
        &mut self,
        x: &[f32],
        n_tokens: usize,
        cols: usize,
        layers: &[&Linear],
        pool: &ThreadPool,
    ) {
        self.n_tokens = n_tokens;
        self.cols = cols;
        for b in &mut self.bufs {
            b.2 = 0; // mark stale
        }
        for p in &mut self.packed {
            p.reset_stale();
        }
        self.kpacked.reset_stale();
        for l in layers {
            let ty = l.input_type();
            let Some(row_bytes) = ty.row_bytes(cols) else {
                continue;
            };
            let idx = match self.bufs.iter().position(|b| b.0 == ty) {
                Some(i) => i,
                None => {
                    self.bufs.push((ty, Vec::new(), 0));
                    self.bufs.len() - 1
                }
            };
            let (_, buf, rb) = &mut self.bufs[idx];
            if *rb == row_bytes {
                continue; // already done for this x
            }
            *rb = row_bytes;
            let need = row_bytes * n_tokens;
            if buf.len() < need {
                buf.resize(need, 0);
            }
            let quant = fast_ops(ty).from_f32;
            let dst = UnsafeSlice::new(&mut buf[..need]);
            pool.for_ranges(n_tokens, 1, |toks| {
                for t in toks {
                    // SAFETY: token rows are disjoint between threads.
                    let d = unsafe { dst.slice_mut(t * row_bytes..(t + 1) * row_bytes) };
                    quant(&x[t * cols..(t + 1) * cols], d);
                }
            });
            if n_tokens >= 2
                && layers
                    .iter()
                    .any(|l| l.gemm.is_some() && l.input_type() == ty)
            {
                self.pack(idx, pool);
            }
            if layers
                .iter()
                .any(|l| l.input_type() == ty && l.kgemm_tokens(n_tokens) > 0)
            {
                self.kpack(idx, pool);
            }
        }
    }

    /// Packs quantized buffer `idx` for the multi-token kernels.
    fn pack(&mut self, idx: usize, pool: &ThreadPool) {
        let (ty, ref buf, row_bytes) = self.bufs[idx];
        let p = match self.packed.iter().position(|p| p.ty() == Some(ty)) {
            Some(i) => i,
            None => {
                self.packed.push(PackedInput::default());
                self.packed.len() - 1
            }
        };
        let packed = &mut self.packed[p];
        let groups = packed.reset(ty, self.n_tokens, self.cols);
        let nb = packed.blocks();
        let rows = &buf[..row_bytes * self.n_tokens];
        let recs = UnsafeSlice::new(packed.recs_mut());
        pool.for_ranges(groups, 1, |gs| {
            for g in gs {
                let t1 = ((g + 1) * GROUP).min(self.n_tokens);
                // SAFETY: groups are disjoint between threads.
                let dst = unsafe { recs.slice_mut(g * nb..(g + 1) * nb) };
                gemm::pack_group(ty, nb, &rows[g * GROUP * row_bytes..t1 * row_bytes], dst);
            }
        });
    }

    /// Packs the Q8_K buffer `idx` for the K-quant multi-token kernel.
    fn kpack(&mut self, idx: usize, pool: &ThreadPool) {
        let (_, ref buf, row_bytes) = self.bufs[idx];
        let nb = self.cols / 256;
        let n_tokens = self.n_tokens;
        let groups = self.kpacked.reset(n_tokens, nb);
        let rows = &buf[..row_bytes * n_tokens];
        let recs = UnsafeSlice::new(self.kpacked.recs_mut());
        pool.for_ranges(groups, 1, |gs| {
            for g in gs {
                let t1 = ((g + 1) * kgemm::LANES).min(n_tokens);
                // SAFETY: groups are disjoint between threads.
                let dst = unsafe { recs.slice_mut(g * nb..(g + 1) * nb) };
                kgemm::pack_group(nb, &rows[g * kgemm::LANES * row_bytes..t1 * row_bytes], dst);
            }
        });
    }

    fn packed(&self, ty: GgmlType) -> Option<&PackedInput> {
        self.packed
            .iter()
            .find(|p| p.ty() == Some(ty) && p.n_tokens() != 0)
    }

    fn rows(&self, ty: GgmlType) -> (&[u8], usize) {
        match self.bufs.iter().find(|b| b.0 == ty && b.2 != 0) {
            Some((_, buf, rb)) => (&buf[..rb * self.n_tokens], *rb),
            None => panic!("input not prepared for {ty}"),
        }
    }
}

/// Token embedding table, dequantized row by row on lookup.
pub struct Embedding {
    pub table: MappedTensor,
    ops: &'static QuantOps,
    pub n_embd: usize,
    pub n_vocab: usize,
}

impl Embedding {
    pub fn load(
        src: &WeightSource,
        name: &str,
        n_embd: usize,
        n_vocab: usize,
    ) -> Result<Self, LoadError> {
        let table = src.tensor(name, &[n_embd, n_vocab])?;
        Ok(Embedding {
            ops: fast_ops(table.ty),
            table,
            n_embd,
            n_vocab,
        })
    }

    /// Writes the embedding of each token into `out` (`[tokens.len(), n_embd]`).
    /// Token ids must be `< n_vocab` (checked by the batch builder).
    pub fn forward(&self, tokens: &[u32], out: &mut [f32]) {
        let bytes = self.table.bytes();
        let row = bytes.len() / self.n_vocab;
        for (t, &id) in tokens.iter().enumerate() {
            let id = id as usize;
            (self.ops.to_f32)(
                &bytes[id * row..(id + 1) * row],
                &mut out[t * self.n_embd..(t + 1) * self.n_embd],
            );
        }
    }
}

/// RMS normalisation with a learned scale.
pub struct RmsNorm {
    pub w: Vec<f32>,
    pub eps: f32,
}

impl RmsNorm {
    pub fn load(src: &WeightSource, name: &str, n: usize, eps: f32) -> Result<Self, LoadError> {
        Ok(RmsNorm {
            w: src.vector(&format!("{name}.weight"), n)?,
            eps,
        })
    }

    /// Normalises each row of `x` (`[rows, n]`) into `out`.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        let n = self.w.len();
        for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            troupe_kernels::ops::rms_norm(xr, &self.w, self.eps, or);
        }
    }

    /// Normalises each row of `x` in place.
    pub fn forward_inplace(&self, x: &mut [f32]) {
        let n = self.w.len();
        for xr in x.chunks_exact_mut(n) {
            troupe_kernels::ops::rms_norm_inplace(xr, &self.w, self.eps);
        }
    }
}
