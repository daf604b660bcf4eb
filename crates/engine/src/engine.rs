//! The engine: one model, its paged KV cache, a workspace and a thread pool.
//! Sequences are created, extended with tokens (prefill in chunks, or one
//! decode token each, many sequences per forward pass) and freed.

use std::sync::Arc;
use troupe_gguf::GgufFile;
use troupe_models::{
    Batch, BatchError, KvCache, KvLayout, LoadError, Model, ModelConfig, ThreadPool, Workspace,
};

/// Engine limits; the defaults suit one interactive conversation.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Positions per sequence (prompt + generated), capped by the model's
    /// training context.
    pub n_ctx: usize,
    /// Total KV positions shared by all sequences.
    pub kv_positions: usize,
    /// Most tokens in one forward pass (prompts are split into chunks).
    pub max_batch_tokens: usize,
    /// Positions per KV block.
    pub block_size: usize,
    pub n_threads: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            n_ctx: 4096,
            kv_positions: 4096,
            max_batch_tokens: 512,
            block_size: 16,
            n_threads: troupe_kernels::pool::default_threads(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Gguf(#[from] troupe_gguf::GgufError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("sequence {0} does not exist")]
    NoSuchSequence(usize),
    #[error("context full: sequence would reach {need} positions, the limit is {limit}")]
    ContextFull { need: usize, limit: usize },
    #[error("KV cache exhausted: {need} more blocks needed, {free} free")]
    OutOfBlocks { need: usize, free: usize },
}

/// Handle of a sequence inside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(pub usize);

#[derive(Debug, Default)]
struct Sequence {
    blocks: Vec<u32>,
    len: usize,
}

/// One step's work for a sequence: append `tokens`; compute the logits of
/// the last one when `logits` is set.
pub struct Step<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
    pub logits: bool,
}

pub struct Engine {
    model: Box<dyn Model>,
    kv: KvCache,
    ws: Workspace,
    pool: ThreadPool,
    batch: Batch,
    seqs: Vec<Option<Sequence>>,
    free_blocks: Vec<u32>,
    n_ctx: usize,
    /// Logits rows of the last `step`, by the index of its `Step`.
    logit_index: Vec<Option<usize>>,
}

impl Engine {
    /// Opens and loads the model file at `path`.
    pub fn load(path: &std::path::Path, opts: EngineOptions) -> Result<Self, EngineError> {
        let file = Arc::new(GgufFile::open(path)?);
        let model = troupe_models::load(file)?;
        Ok(Self::new(model, opts))
    }

    pub fn new(model: Box<dyn Model>, opts: EngineOptions) -> Self {
        let cfg = model.config().clone();
        let n_ctx = opts.n_ctx.clamp(1, cfg.n_ctx_train.max(1));
        let bs = opts.block_size.max(1);
        let n_blocks = opts.kv_positions.max(n_ctx).div_ceil(bs);
        let kv = KvCache::new(KvLayout {
            n_layers: cfg.n_layer,
            n_kv_heads: cfg.n_head_kv,
            head_dim: cfg.head_dim,
            block_size: bs,
            n_blocks,
        });
        let pool = ThreadPool::new(opts.n_threads);
        let ws = Workspace::new(&cfg, opts.max_batch_tokens, n_ctx, pool.n_threads(), bs);
        Engine {
            model,
            kv,
            ws,
            pool,
            batch: Batch::new(),
            seqs: Vec::new(),
            free_blocks: (0..n_blocks as u32).rev().collect(),
            n_ctx,
            logit_index: Vec::new(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    pub fn max_batch_tokens(&self) -> usize {
        self.ws.max_tokens
    }

    /// Free KV blocks and the block size.
    pub fn kv_usage(&self) -> (usize, usize, usize) {
        (
            self.free_blocks.len(),
            self.kv.layout.n_blocks,
            self.kv.layout.block_size,
        )
    }

    /// A new, empty sequence.
    pub fn new_sequence(&mut self) -> SeqId {
        let slot = self.seqs.iter().position(Option::is_none);
        match slot {
            Some(i) => {
                self.seqs[i] = Some(Sequence::default());
                SeqId(i)
            }
            None => {
                self.seqs.push(Some(Sequence::default()));
                SeqId(self.seqs.len() - 1)
            }
        }
    }

    /// Frees a sequence and returns its blocks to the pool.
    pub fn free_sequence(&mut self, id: SeqId) {
        if let Some(Some(s)) = self.seqs.get_mut(id.0).map(Option::take) {
            self.free_blocks.extend(s.blocks);
        }
    }

    /// Number of positions of a sequence.
    pub fn seq_len(&self, id: SeqId) -> Result<usize, EngineError> {
        self.seq(id).map(|s| s.len)
    }

    /// Drops positions past `len` (to rewind a sequence).
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<(), EngineError> {
        let bs = self.kv.layout.block_size;
        let s = self.seq_mut(id)?;
        if len < s.len {
            s.len = len;
            let keep = len.div_ceil(bs);
            let freed: Vec<u32> = s.blocks.drain(keep..).collect();
            self.free_blocks.extend(freed);
        }
        Ok(())
    }

    fn seq(&self, id: SeqId) -> Result<&Sequence, EngineError> {
        self.seqs
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or(EngineError::NoSuchSequence(id.0))
    }

    fn seq_mut(&mut self, id: SeqId) -> Result<&mut Sequence, EngineError> {
        self.seqs
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or(EngineError::NoSuchSequence(id.0))
    }

    /// Runs one forward pass over all `steps` (whose tokens must fit in
    /// `max_batch_tokens` together). Afterwards [`Engine::logits`] gives the
    /// logits of each step that asked for them.
    pub fn step(&mut self, steps: &[Step<'_>]) -> Result<(), EngineError> {
        let bs = self.kv.layout.block_size;
        // Reserve blocks first so a failure leaves every sequence unchanged.
        let mut need_total = 0;
        for st in steps {
            let s = self.seq(st.seq)?;
            let new_len = s.len + st.tokens.len();
            if new_len > self.n_ctx {
                return Err(EngineError::ContextFull {
                    need: new_len,
                    limit: self.n_ctx,
                });
            }
            need_total += new_len.div_ceil(bs).saturating_sub(s.blocks.len());
        }
        if need_total > self.free_blocks.len() {
            return Err(EngineError::OutOfBlocks {
                need: need_total,
                free: self.free_blocks.len(),
            });
        }
        for st in steps {
            let s_len = self.seq(st.seq)?.len;
            let need = (s_len + st.tokens.len()).div_ceil(bs);
            while self.seq(st.seq)?.blocks.len() < need {
                let b = self
                    .free_blocks
                    .pop()
                    .ok_or(EngineError::OutOfBlocks { need: 1, free: 0 })?;
                self.seq_mut(st.seq)?.blocks.push(b);
            }
        }
        self.batch.clear();
        self.logit_index.clear();
        for st in steps {
            let s = self
                .seqs
                .get(st.seq.0)
                .and_then(Option::as_ref)
                .ok_or(EngineError::NoSuchSequence(st.seq.0))?;
            let want = st.logits && !st.tokens.is_empty();
            self.logit_index
                .push(want.then_some(self.batch.logits_rows.len()));
            self.batch.push(st.tokens, s.len, &s.blocks, want);
        }
        self.model
            .forward(&self.batch, &mut self.kv, &mut self.ws, &self.pool)?;
        for st in steps {
            self.seq_mut(st.seq)?.len += st.tokens.len();
        }
        Ok(())
    }

    /// Logits of step `i` of the last [`Engine::step`], if it asked for them.
    pub fn logits(&self, i: usize) -> Option<&[f32]> {
        self.logit_index
            .get(i)
            .copied()
            .flatten()
            .map(|r| self.ws.logits_row(r))
    }

    /// Appends `tokens` to one sequence, in chunks of `max_batch_tokens`,
    /// and returns the logits of the last token.
    pub fn prefill(&mut self, seq: SeqId, tokens: &[u32]) -> Result<&[f32], EngineError> {
        // All or nothing: check the limit first, and undo partial chunks if a
        // later one fails.
        let start = self.seq_len(seq)?;
        if start + tokens.len() > self.n_ctx {
            return Err(EngineError::ContextFull {
                need: start + tokens.len(),
                limit: self.n_ctx,
            });
        }
        let chunk = self.ws.max_tokens;
        let n_chunks = tokens.len().div_ceil(chunk).max(1);
        for (i, c) in tokens.chunks(chunk).enumerate() {
            let r = self.step(&[Step {
                seq,
                tokens: c,
                logits: i + 1 == n_chunks,
            }]);
            if let Err(e) = r {
                self.truncate(seq, start)?;
                return Err(e);
            }
        }
        self.logits(0).ok_or(EngineError::Batch(BatchError::Empty))
    }
}
