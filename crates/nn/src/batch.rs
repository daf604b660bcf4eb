//! A ragged batch: new tokens of several sequences, each at its own
//! position, run through the model in one forward pass.

use std::ops::Range;

/// One sequence's part of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqSlice {
    /// Rows of the batch holding this sequence's new tokens.
    pub rows: Range<usize>,
    /// Position of the first new token (the number already cached).
    pub pos: usize,
    /// Range in [`Batch::block_tables`] of this sequence's block table.
    pub blocks: Range<usize>,
    /// Attention takes ggml's tiled path for these rows (see
    /// [`crate::attention::TILED_MIN_ROWS`]).
    pub tiled: bool,
}

/// Why a batch cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken { id: u32, n_vocab: usize },
    #[error("sequence {seq} needs {need} cache blocks for {len} positions but has {have}")]
    NotEnoughBlocks {
        seq: usize,
        len: usize,
        need: usize,
        have: usize,
    },
    #[error("block {block} is outside the cache of {n_blocks} blocks")]
    BadBlock { block: u32, n_blocks: usize },
    #[error("batch of {n} tokens exceeds the workspace limit of {max}")]
    TooManyTokens { n: usize, max: usize },
    #[error("logits row {row} is outside the batch")]
    BadLogitsRow { row: usize },
    #[error("empty batch")]
    Empty,
}

/// Buffers are reused across steps: `clear` keeps their capacity.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub tokens: Vec<u32>,
    /// Absolute position of each row.
    pub positions: Vec<u32>,
    /// Sequence index (into `seqs`) of each row.
    pub seq_of_row: Vec<u32>,
    pub seqs: Vec<SeqSlice>,
    /// All block tables, concatenated.
    pub block_tables: Vec<u32>,
    /// Rows whose logits are computed, in output order.
    pub logits_rows: Vec<usize>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        self.positions.clear();
        self.seq_of_row.clear();
        self.seqs.clear();
        self.block_tables.clear();
        self.logits_rows.clear();
    }

    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Adds a sequence's new `tokens`, starting at position `pos`, whose
    /// cache blocks are `blocks`; with `logits_last`, the logits of its last
    /// token are computed. `span` is the length of the whole run these tokens
    /// belong to (a prompt split into chunks): it picks the attention path,
    /// so results do not depend on chunking or on the rest of the batch.
    pub fn push(
        &mut self,
        tokens: &[u32],
        pos: usize,
        blocks: &[u32],
        logits_last: bool,
        span: usize,
    ) {
        let start = self.tokens.len();
        let seq = self.seqs.len() as u32;
        for (i, &t) in tokens.iter().enumerate() {
            self.tokens.push(t);
            self.positions.push((pos + i) as u32);
            self.seq_of_row.push(seq);
        }
        let b0 = self.block_tables.len();
        self.block_tables.extend_from_slice(blocks);
        self.seqs.push(SeqSlice {
            rows: start..self.tokens.len(),
            pos,
            blocks: b0..self.block_tables.len(),
            tiled: span.max(tokens.len()) >= crate::attention::TILED_MIN_ROWS,
        });
        if logits_last && !tokens.is_empty() {
            self.logits_rows.push(self.tokens.len() - 1);
        }
    }

    /// Block table of sequence `s`.
    pub fn blocks_of(&self, s: usize) -> &[u32] {
        &self.block_tables[self.seqs[s].blocks.clone()]
    }

    /// Checks everything the forward pass relies on.
    pub fn validate(
        &self,
        n_vocab: usize,
        block_size: usize,
        n_blocks: usize,
        max_tokens: usize,
    ) -> Result<(), BatchError> {
        if self.tokens.is_empty() {
            return Err(BatchError::Empty);
        }
        if self.tokens.len() > max_tokens {
            return Err(BatchError::TooManyTokens {
                n: self.tokens.len(),
                max: max_tokens,
            });
        }
        if let Some(&id) = self.tokens.iter().find(|&&id| id as usize >= n_vocab) {
            return Err(BatchError::BadToken { id, n_vocab });
        }
        if let Some(&block) = self.block_tables.iter().find(|&&b| b as usize >= n_blocks) {
            return Err(BatchError::BadBlock { block, n_blocks });
        }
        for (i, s) in self.seqs.iter().enumerate() {
            let len = s.pos + s.rows.len();
            let need = len.div_ceil(block_size);
            if s.blocks.len() < need {
                return Err(BatchError::NotEnoughBlocks {
                    seq: i,
                    len,
                    need,
                    have: s.blocks.len(),
                });
            }
        }
        if let Some(&row) = self.logits_rows.iter().find(|&&r| r >= self.tokens.len()) {
            return Err(BatchError::BadLogitsRow { row });
        }
        Ok(())
    }
}
