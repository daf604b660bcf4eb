//! Paged key/value cache storage.
//!
//! Positions of a sequence live in fixed-size blocks named by a block table
//! (vLLM's PagedAttention layout), so sequences can share prefix blocks and
//! the engine can hand blocks out and take them back without moving data.
//! This type only stores; which block belongs to whom is the engine's job.

use half::f16;

/// Geometry of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions per block.
    pub block_size: usize,
    pub n_blocks: usize,
}

impl KvLayout {
    /// Elements of K (or V) per block per layer.
    fn block_elems(&self) -> usize {
        self.n_kv_heads * self.block_size * self.head_dim
    }

    /// Bytes the whole cache takes (K and V, all layers).
    pub fn bytes(&self) -> usize {
        2 * self.n_layers * self.n_blocks * self.block_elems() * std::mem::size_of::<f16>()
    }
}

/// K and V in f16, per layer laid out as
/// `[block][kv_head][slot][head_dim]`, so one head's keys within a block are
/// contiguous for the attention loop.
pub struct KvCache {
    pub layout: KvLayout,
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

impl KvCache {
    /// Allocates the cache. The memory is zero-filled lazily by the OS, so
    /// untouched blocks cost nothing until used.
    pub fn new(layout: KvLayout) -> Self {
        let per_layer = layout.n_blocks * layout.block_elems();
        KvCache {
            layout,
            k: (0..layout.n_layers)
                .map(|_| vec![f16::ZERO; per_layer])
                .collect(),
            v: (0..layout.n_layers)
                .map(|_| vec![f16::ZERO; per_layer])
                .collect(),
        }
    }

    #[inline]
    fn offset(&self, block: usize, head: usize, slot: usize) -> usize {
        let l = &self.layout;
        ((block * l.n_kv_heads + head) * l.block_size + slot) * l.head_dim
    }

    /// Stores one position's K and V (`[n_kv_heads * head_dim]` each).
    pub fn write(&mut self, layer: usize, block: usize, slot: usize, k: &[f32], v: &[f32]) {
        let hd = self.layout.head_dim;
        for h in 0..self.layout.n_kv_heads {
            let o = self.offset(block, h, slot);
            for (dst, &src) in self.k[layer][o..o + hd]
                .iter_mut()
                .zip(&k[h * hd..(h + 1) * hd])
            {
                *dst = f16::from_f32(src);
            }
            for (dst, &src) in self.v[layer][o..o + hd]
                .iter_mut()
                .zip(&v[h * hd..(h + 1) * hd])
            {
                *dst = f16::from_f32(src);
            }
        }
    }

    /// Keys of `head` in `block`: `[block_size][head_dim]`.
    #[inline]
    pub fn k_block(&self, layer: usize, block: usize, head: usize) -> &[f16] {
        let o = self.offset(block, head, 0);
        &self.k[layer][o..o + self.layout.block_size * self.layout.head_dim]
    }

    /// Values of `head` in `block`: `[block_size][head_dim]`.
    #[inline]
    pub fn v_block(&self, layer: usize, block: usize, head: usize) -> &[f16] {
        let o = self.offset(block, head, 0);
        &self.v[layer][o..o + self.layout.block_size * self.layout.head_dim]
    }

    /// Copies one block's contents (all layers) to another, for
    /// copy-on-write of a shared, partly filled block.
    pub fn copy_block(&mut self, from: usize, to: usize) {
        let n = self.layout.block_elems();
        for layer in 0..self.layout.n_layers {
            self.k[layer].copy_within(from * n..(from + 1) * n, to * n);
            self.v[layer].copy_within(from * n..(from + 1) * n, to * n);
        }
    }
}
