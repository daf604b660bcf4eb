//! The engine: one model, its paged KV cache, a workspace and a thread pool.
//! Sequences are created, extended with tokens (prefill in chunks, or one
//! decode token each, many sequences per forward pass) and freed.

use crate::blocks::BlockPool;
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
    /// The tokens in the cache (to hash blocks as they fill).
    tokens: Vec<u32>,
    /// Chained hash of each full block, in order.
    hashes: Vec<u64>,
}

/// Block usage of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvStats {
    pub n_blocks: usize,
    pub block_size: usize,
    /// Blocks held by live sequences.
    pub used: usize,
    /// Blocks no sequence holds that still cache a prefix (reusable at once).
    pub cached_idle: usize,
    /// Blocks that can be handed out now (free plus cached idle).
    pub available: usize,
}

/// Cached prefix blocks held apart from any sequence (see
/// [`Engine::hold_prefix`]). Dropping it without `release_hold` leaks the
/// blocks for the engine's lifetime, never corrupts them.
#[derive(Debug)]
pub struct PrefixHold {
    blocks: Vec<u32>,
    key: u64,
}

impl PrefixHold {
    /// The chained hash of the whole held prefix: equal keys, equal tokens.
    pub fn key(&self) -> u64 {
        self.key
    }

    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Positions covered.
    pub fn n_tokens(&self, block_size: usize) -> usize {
        self.blocks.len() * block_size
    }
}

/// One step's work for a sequence: append `tokens`; compute the logits of
/// the last one when `logits` is set.
pub struct Step<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
    pub logits: bool,
    /// Length of the run `tokens` belong to: the whole prompt when a prompt
    /// is fed in chunks, else `tokens.len()` (0 means that). It picks the
    /// attention path, as one unchunked pass of that many tokens would.
    pub span: usize,
}

impl<'a> Step<'a> {
    /// A step whose tokens are a run of their own.
    pub fn new(seq: SeqId, tokens: &'a [u32], logits: bool) -> Self {
        Step {
            seq,
            tokens,
            logits,
            span: 0,
        }
    }
}

pub struct Engine {
    model: Box<dyn Model>,
    kv: KvCache,
    ws: Workspace,
    pool: ThreadPool,
    batch: Batch,
    seqs: Vec<Option<Sequence>>,
    blocks: BlockPool,
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
            blocks: BlockPool::new(n_blocks),
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

    /// Bytes the KV cache takes (allocated up front, touched as used).
    pub fn kv_bytes(&self) -> usize {
        self.kv.layout.bytes()
    }

    /// Block usage of the KV cache.
    pub fn kv_stats(&self) -> KvStats {
        KvStats {
            n_blocks: self.blocks.n_blocks(),
            block_size: self.kv.layout.block_size,
            used: self.blocks.used(),
            cached_idle: self.blocks.cached_idle(),
            available: self.blocks.available(),
        }
    }

    /// Starts the empty sequence `id` with as much of `prompt` as the prefix
    /// cache holds, in whole blocks, always leaving at least the last token
    /// to compute (its logits are needed). Returns the cached length.
    pub fn attach_prefix(&mut self, id: SeqId, prompt: &[u32]) -> Result<usize, EngineError> {
        let bs = self.kv.layout.block_size;
        if self.seq(id)?.len != 0 {
            return Ok(0);
        }
        let usable = prompt.len().saturating_sub(1) / bs;
        let mut parent = 0u64;
        let mut found = Vec::new();
        for blk in prompt.chunks_exact(bs).take(usable) {
            match self.blocks.lookup(parent, blk) {
                Some((b, h)) => {
                    found.push((b, h));
                    parent = h;
                }
                None => break,
            }
        }
        for &(b, _) in &found {
            self.blocks.retain(b);
        }
        let n = found.len() * bs;
        let s = self.seq_mut(id)?;
        s.blocks.clear();
        s.blocks.extend(found.iter().map(|&(b, _)| b));
        s.hashes.clear();
        s.hashes.extend(found.iter().map(|&(_, h)| h));
        s.tokens.clear();
        s.tokens.extend_from_slice(&prompt[..n]);
        s.len = n;
        Ok(n)
    }

    /// Holds the cached blocks that start with `tokens` (whole blocks, as
    /// far as the prefix cache has them), so they survive the sequences
    /// that made them and are never evicted, until [`Engine::release_hold`].
    /// `None` when not even the first block is cached.
    pub fn hold_prefix(&mut self, tokens: &[u32]) -> Option<PrefixHold> {
        let bs = self.kv.layout.block_size;
        let mut parent = 0u64;
        let mut blocks = Vec::new();
        for blk in tokens.chunks_exact(bs) {
            match self.blocks.lookup(parent, blk) {
                Some((b, h)) => {
                    blocks.push(b);
                    parent = h;
                }
                None => break,
            }
        }
        if blocks.is_empty() {
            return None;
        }
        for &b in &blocks {
            self.blocks.retain(b);
        }
        Some(PrefixHold {
            blocks,
            key: parent,
        })
    }

    /// Distinct blocks that only `holds` keep (no sequence holds them).
    pub fn held_only(&self, holds: &[PrefixHold]) -> usize {
        let mut count: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for b in holds.iter().flat_map(|h| &h.blocks) {
            *count.entry(*b).or_default() += 1;
        }
        count
            .iter()
            .filter(|&(&b, &n)| self.blocks.refs(b) == n)
            .count()
    }

    /// Lets go of a held prefix; its blocks become ordinary cached blocks.
    pub fn release_hold(&mut self, hold: PrefixHold) {
        for b in hold.blocks {
            self.blocks.release(b);
        }
    }

    /// A new, empty sequence, with room for a whole context reserved, so
    /// that decoding never allocates.
    pub fn new_sequence(&mut self) -> SeqId {
        let blocks = self.n_ctx.div_ceil(self.kv.layout.block_size);
        let fresh = Sequence {
            blocks: Vec::with_capacity(blocks),
            len: 0,
            tokens: Vec::with_capacity(self.n_ctx),
            hashes: Vec::with_capacity(blocks),
        };
        let slot = self.seqs.iter().position(Option::is_none);
        match slot {
            Some(i) => {
                self.seqs[i] = Some(fresh);
                SeqId(i)
            }
            None => {
                self.seqs.push(Some(fresh));
                SeqId(self.seqs.len() - 1)
            }
        }
    }

    /// Frees a sequence and returns its blocks to the pool (full blocks
    /// stay in the prefix cache until their space is needed).
    pub fn free_sequence(&mut self, id: SeqId) {
        if let Some(Some(s)) = self.seqs.get_mut(id.0).map(Option::take) {
            for b in s.blocks {
                self.blocks.release(b);
            }
        }
    }

    /// Number of KV blocks a sequence holds (shared ones included).
    pub fn seq_blocks(&self, id: SeqId) -> Result<usize, EngineError> {
        self.seq(id).map(|s| s.blocks.len())
    }

    /// Number of positions of a sequence.
    pub fn seq_len(&self, id: SeqId) -> Result<usize, EngineError> {
        self.seq(id).map(|s| s.len)
    }

    /// Drops positions past `len` (to rewind a sequence). A kept block that
    /// will be written again is made private first (copy-on-write if another
    /// sequence shares it, else just taken out of the prefix cache).
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<(), EngineError> {
        let bs = self.kv.layout.block_size;
        let s = self.seq_mut(id)?;
        if len >= s.len {
            return Ok(());
        }
        s.len = len;
        s.tokens.truncate(len);
        s.hashes.truncate(len / bs);
        let keep = len.div_ceil(bs);
        let dropped: Vec<u32> = s.blocks.drain(keep..).collect();
        let partial = (!len.is_multiple_of(bs)).then(|| s.blocks[keep - 1]);
        for b in dropped {
            self.blocks.release(b);
        }
        if let Some(b) = partial {
            if self.blocks.refs(b) > 1 {
                let fresh = self
                    .blocks
                    .alloc()
                    .ok_or(EngineError::OutOfBlocks { need: 1, free: 0 })?;
                self.kv.copy_block(b as usize, fresh as usize);
                self.blocks.release(b);
                self.seq_mut(id)?.blocks[keep - 1] = fresh;
            } else {
                self.blocks.forget(b);
            }
        }
        Ok(())
    }

    /// Records `tokens` as cached and registers blocks they filled.
    fn commit(&mut self, id: SeqId, tokens: &[u32]) -> Result<(), EngineError> {
        let bs = self.kv.layout.block_size;
        let s = self
            .seqs
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or(EngineError::NoSuchSequence(id.0))?;
        s.len += tokens.len();
        s.tokens.extend_from_slice(tokens);
        while s.hashes.len() < s.len / bs {
            let i = s.hashes.len();
            let parent = s.hashes.last().copied().unwrap_or(0);
            let h = self
                .blocks
                .register(s.blocks[i], parent, &s.tokens[i * bs..(i + 1) * bs]);
            s.hashes.push(h);
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
        if need_total > self.blocks.available() {
            return Err(EngineError::OutOfBlocks {
                need: need_total,
                free: self.blocks.available(),
            });
        }
        for st in steps {
            let s_len = self.seq(st.seq)?.len;
            let need = (s_len + st.tokens.len()).div_ceil(bs);
            while self.seq(st.seq)?.blocks.len() < need {
                let b = self
                    .blocks
                    .alloc()
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
            self.batch.push(st.tokens, s.len, &s.blocks, want, st.span);
        }
        self.model
            .forward(&self.batch, &mut self.kv, &mut self.ws, &self.pool)?;
        for st in steps {
            self.commit(st.seq, st.tokens)?;
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
                span: tokens.len(),
            }]);
            if let Err(e) = r {
                self.truncate(seq, start)?;
                return Err(e);
            }
        }
        self.logits(0).ok_or(EngineError::Batch(BatchError::Empty))
    }
}
