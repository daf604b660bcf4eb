//! KV block accounting with prefix caching.
//!
//! Every block has a reference count: the sequences whose block tables hold
//! it. A block that is full can be *registered* under the hash of the whole
//! token prefix it ends (the hash chains through earlier blocks), so a later
//! sequence starting with the same tokens takes the block instead of
//! recomputing it. When its last holder lets go, a registered block is not
//! freed but parked in an LRU list, still findable; it is only reused for
//! other data (and forgotten) when no plain free block is left.

use std::collections::{BTreeMap, HashMap};

/// Hash of a block's tokens chained onto the hash of everything before it.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // FNV-1a over the parent hash and the token ids, then a final mix: fast,
    // stable across runs and platforms, and collisions are caught anyway by
    // comparing the stored tokens on lookup.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ parent.rotate_left(17);
    for &t in tokens {
        for b in t.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// What a registered block holds, to rule out hash collisions (its tokens
/// are kept in [`BlockPool::tokens`], so registering allocates nothing).
#[derive(Debug, Clone, Copy)]
struct Entry {
    parent: u64,
    len: usize,
}

/// Block ownership and the prefix cache.
#[derive(Debug)]
pub struct BlockPool {
    refs: Vec<u32>,
    /// The hash a block is registered under, if any.
    hash_of: Vec<Option<u64>>,
    by_hash: HashMap<u64, (u32, Entry)>,
    /// Unreferenced, unregistered blocks.
    free: Vec<u32>,
    /// Unreferenced registered blocks by last use (oldest first).
    lru: BTreeMap<u64, u32>,
    lru_tick_of: Vec<u64>,
    tick: u64,
    /// Tokens of each registered block, `block_size` per block, allocated
    /// on first use of each block size.
    tokens: Vec<u32>,
    block_size: usize,
}

impl BlockPool {
    pub fn new(n_blocks: usize) -> Self {
        BlockPool {
            refs: vec![0; n_blocks],
            hash_of: vec![None; n_blocks],
            by_hash: HashMap::with_capacity(n_blocks),
            free: (0..n_blocks as u32).rev().collect(),
            lru: BTreeMap::new(),
            lru_tick_of: vec![0; n_blocks],
            tick: 0,
            tokens: Vec::new(),
            block_size: 0,
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (free plus evictable cached ones).
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Blocks held by at least one sequence.
    pub fn used(&self) -> usize {
        self.n_blocks() - self.available()
    }

    /// Unreferenced blocks that still hold a cached prefix.
    pub fn cached_idle(&self) -> usize {
        self.lru.len()
    }

    /// Takes a block for new data: a free one, or else the least recently
    /// used cached one, which is forgotten.
    pub fn alloc(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first()?;
                self.forget(b);
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Adds a holder to a block.
    pub fn retain(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            self.lru.remove(&self.lru_tick_of[i]);
        }
        self.refs[i] += 1;
    }

    /// Drops a holder; the last one parks a registered block in the LRU list
    /// and frees any other.
    pub fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refs[i] > 0, "block {b} released too often");
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] == 0 {
            if self.hash_of[i].is_some() {
                self.tick += 1;
                self.lru_tick_of[i] = self.tick;
                self.lru.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }

    pub fn refs(&self, b: u32) -> u32 {
        self.refs[b as usize]
    }

    #[cfg(test)]
    pub fn is_registered(&self, b: u32) -> bool {
        self.hash_of[b as usize].is_some()
    }

    /// Records that full block `b` holds `tokens` after the prefix hashed
    /// `parent`; returns the block's chained hash. If another block already
    /// holds the same prefix, `b` stays unregistered (both stay valid).
    pub fn register(&mut self, b: u32, parent: u64, tokens: &[u32]) -> u64 {
        let h = chain_hash(parent, tokens);
        if self.hash_of[b as usize].is_none() && !self.by_hash.contains_key(&h) {
            if self.block_size != tokens.len() {
                // Blocks are one size in practice; a new size starts over.
                self.block_size = tokens.len();
                self.tokens = vec![0; self.n_blocks() * tokens.len()];
                for b in 0..self.n_blocks() {
                    self.forget(b as u32);
                }
            }
            let n = self.block_size;
            self.tokens[b as usize * n..(b as usize + 1) * n].copy_from_slice(tokens);
            self.hash_of[b as usize] = Some(h);
            let entry = Entry {
                parent,
                len: tokens.len(),
            };
            self.by_hash.insert(h, (b, entry));
        }
        h
    }

    /// Removes `b` from the prefix cache (its contents are about to change).
    pub fn forget(&mut self, b: u32) {
        if let Some(h) = self.hash_of[b as usize].take() {
            self.by_hash.remove(&h);
        }
    }

    /// The cached block holding `tokens` after the prefix hashed `parent`,
    /// and its hash.
    pub fn lookup(&self, parent: u64, tokens: &[u32]) -> Option<(u32, u64)> {
        let h = chain_hash(parent, tokens);
        let (b, e) = self.by_hash.get(&h)?;
        let n = self.block_size;
        let held = self.tokens.get(*b as usize * n..(*b as usize + 1) * n)?;
        (e.parent == parent && e.len == tokens.len() && held == tokens).then_some((*b, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_blocks_survive_release_until_evicted() {
        let mut p = BlockPool::new(2);
        let a = p.alloc().expect("block");
        let h = p.register(a, 0, &[1, 2]);
        p.release(a);
        assert_eq!(p.available(), 2);
        assert_eq!(p.lookup(0, &[1, 2]), Some((a, h)));
        // The plain free block goes first, then the cached one is evicted.
        let b = p.alloc().expect("block");
        assert_ne!(a, b);
        assert!(p.lookup(0, &[1, 2]).is_some());
        let c = p.alloc().expect("block");
        assert_eq!(c, a);
        assert!(p.lookup(0, &[1, 2]).is_none());
        assert!(p.alloc().is_none());
    }

    #[test]
    fn retain_takes_a_block_out_of_the_lru() {
        let mut p = BlockPool::new(1);
        let a = p.alloc().expect("block");
        p.register(a, 7, &[3]);
        p.release(a);
        p.retain(a);
        assert_eq!(p.available(), 0);
        assert!(p.alloc().is_none());
        p.release(a);
        assert_eq!(p.available(), 1);
    }

    #[test]
    fn lookup_checks_parent_and_tokens() {
        let mut p = BlockPool::new(2);
        let a = p.alloc().expect("block");
        let h = p.register(a, 1, &[5, 6]);
        assert!(p.lookup(2, &[5, 6]).is_none());
        assert!(p.lookup(1, &[5, 7]).is_none());
        let b = p.alloc().expect("block");
        assert_eq!(p.register(b, 1, &[5, 6]), h);
        assert!(!p.is_registered(b), "a duplicate stays unregistered");
    }

    #[test]
    fn eviction_is_least_recently_used_first() {
        let mut p = BlockPool::new(3);
        let blocks: Vec<u32> = (0..3).map(|_| p.alloc().expect("block")).collect();
        for (i, &b) in blocks.iter().enumerate() {
            p.register(b, 0, &[i as u32]);
        }
        p.release(blocks[2]);
        p.release(blocks[0]);
        p.release(blocks[1]);
        assert_eq!(p.alloc(), Some(blocks[2]));
        assert_eq!(p.alloc(), Some(blocks[0]));
        assert!(p.lookup(0, &[1]).is_some());
    }
}
