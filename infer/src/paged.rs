//! The paged KV cache (Kwon et al., "Efficient Memory Management for Large
//! Language Model Serving with PagedAttention", SOSP '23), on the CPU.
//!
//! KV memory is one pool of fixed-size blocks; a sequence owns a *block table*
//! (logical block i → physical block) instead of a contiguous region sized for
//! its maximum length, so memory is allocated 16 tokens at a time as the
//! sequence grows and waste is bounded by one partly filled block per
//! sequence.
//!
//! ```text
//!  sequence A: table [7, 2, 9]       pool (n_blocks × [n_layers × 16 tokens × kv_dim] f16, K and V)
//!  tokens 0..16  → block 7  ───────▶ ┌──┬──┬──┬──┬──┬──┬──┬──┬──┬──┐
//!  tokens 16..32 → block 2  ───────▶ │0 │1 │2 │3 │4 │5 │6 │7 │8 │9 │ ...
//!  tokens 32..37 → block 9 (5/16)    └──┴──┴──┴──┴──┴──┴──┴──┴──┴──┘
//!  sequence B (same system prompt):   refcount[7] = 2: B's table starts [7, ...]
//! ```
//!
//! **Prefix caching.** A block that fills up is registered under a hash of
//! its 16 token ids chained with the hash of everything before it, so equal
//! hashes mean equal prefixes. A new sequence whose prompt starts with
//! registered blocks takes them by reference count instead of recomputing them.
//! When its last user releases a registered block it is not freed but parked
//! in an LRU list, still findable; allocation takes truly free blocks first and
//! evicts the least recently used parked block only when none are left.
//!
//! Invariants (checked by `check`, used in tests): every block is exactly one
//! of free, parked (refcount 0, registered) or in use (refcount > 0); the hash
//! index points only at registered blocks; counts add up to `n_blocks`.

use std::collections::{BTreeMap, HashMap};

use half::f16;

use crate::model::{Config, KvStore, SegmentFn};

/// A physical block id.
pub type BlockId = u32;

/// Hash of a full block given its prefix's hash (FNV-1a over the token ids,
/// seeded with the parent hash; collisions would need equal 64-bit values).
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = parent ^ 0xcbf2_9ce4_8422_2325;
    for &t in tokens {
        for b in t.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // Mix the length in so a prefix of a block never equals the block.
    h ^ (tokens.len() as u64).rotate_left(32)
}

/// Reference-counted blocks with a prefix-cache index and LRU eviction.
#[derive(Debug)]
pub struct BlockAllocator {
    refcount: Vec<u32>,
    /// Blocks never used or freed unregistered; LIFO keeps hot memory hot.
    free: Vec<BlockId>,
    /// Registered blocks with refcount 0: tick → block, oldest first.
    parked: BTreeMap<u64, BlockId>,
    parked_tick: Vec<Option<u64>>,
    hash_of: Vec<Option<u64>>,
    by_hash: HashMap<u64, BlockId>,
    tick: u64,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
}

impl BlockAllocator {
    pub fn new(n_blocks: usize) -> BlockAllocator {
        BlockAllocator {
            refcount: vec![0; n_blocks],
            free: (0..n_blocks as BlockId).rev().collect(),
            parked: BTreeMap::new(),
            parked_tick: vec![None; n_blocks],
            hash_of: vec![None; n_blocks],
            by_hash: HashMap::new(),
            tick: 0,
            prefix_queries: 0,
            prefix_hits: 0,
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.refcount.len()
    }

    /// Blocks an allocation can take now (free + parked).
    pub fn available(&self) -> usize {
        self.free.len() + self.parked.len()
    }

    /// Blocks with at least one user.
    pub fn used(&self) -> usize {
        self.n_blocks() - self.available()
    }

    /// A block for one user: a free one, else the least recently parked one
    /// (dropping its prefix-cache entry). None when every block is in use.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (&tick, &b) = self.parked.iter().next()?;
                self.parked.remove(&tick);
                self.parked_tick[b as usize] = None;
                if let Some(h) = self.hash_of[b as usize].take() {
                    self.by_hash.remove(&h);
                }
                b
            }
        };
        debug_assert_eq!(self.refcount[b as usize], 0, "allocated block {b} in use");
        self.refcount[b as usize] = 1;
        Some(b)
    }

    /// One more user of `b` (a prefix-cache hit on a parked block revives it).
    fn retain(&mut self, b: BlockId) {
        if self.refcount[b as usize] == 0
            && let Some(t) = self.parked_tick[b as usize].take()
        {
            self.parked.remove(&t);
        }
        self.refcount[b as usize] += 1;
    }

    /// One user fewer; at zero the block is parked (registered) or freed.
    pub fn release(&mut self, b: BlockId) {
        let rc = &mut self.refcount[b as usize];
        assert!(*rc > 0, "release of free block {b}");
        *rc -= 1;
        if *rc == 0 {
            if self.hash_of[b as usize].is_some() {
                self.tick += 1;
                self.parked.insert(self.tick, b);
                self.parked_tick[b as usize] = Some(self.tick);
            } else {
                self.free.push(b);
            }
        }
    }

    /// The registered block with this prefix hash, retained for the caller.
    pub fn lookup(&mut self, hash: u64) -> Option<BlockId> {
        self.prefix_queries += 1;
        let b = *self.by_hash.get(&hash)?;
        self.prefix_hits += 1;
        self.retain(b);
        Some(b)
    }

    /// Registers a block that just filled up under its prefix hash (a block
    /// with the same hash already registered keeps the entry).
    pub fn register(&mut self, b: BlockId, hash: u64) {
        if self.hash_of[b as usize].is_none() && !self.by_hash.contains_key(&hash) {
            self.hash_of[b as usize] = Some(hash);
            self.by_hash.insert(hash, b);
        }
    }

    /// Checks the invariants in the module doc; Err names the first broken one.
    pub fn check(&self) -> Result<(), String> {
        let mut state = vec![0u8; self.n_blocks()];
        for &b in &self.free {
            state[b as usize] += 1;
            if self.refcount[b as usize] != 0 || self.hash_of[b as usize].is_some() {
                return Err(format!("free block {b} has users or a hash"));
            }
        }
        for &b in self.parked.values() {
            state[b as usize] += 1;
            if self.refcount[b as usize] != 0 || self.hash_of[b as usize].is_none() {
                return Err(format!("parked block {b} has users or no hash"));
            }
        }
        for (b, s) in state.iter().enumerate() {
            let in_use = self.refcount[b] > 0;
            if usize::from(*s) + usize::from(in_use) != 1 {
                return Err(format!(
                    "block {b}: {s} lists, refcount {}",
                    self.refcount[b]
                ));
            }
        }
        for (h, &b) in &self.by_hash {
            if self.hash_of[b as usize] != Some(*h) {
                return Err(format!("hash index points at block {b} with another hash"));
            }
        }
        Ok(())
    }
}

/// The block pool plus its allocator.
///
/// k, v: (n_blocks, n_layers, block_tokens, kv_dim) f16
#[derive(Debug)]
pub struct PagedKvCache {
    pub block_tokens: usize,
    n_layers: usize,
    kv_dim: usize,
    k: Vec<f16>,
    v: Vec<f16>,
    pub alloc: BlockAllocator,
}

impl PagedKvCache {
    /// Bytes one block takes (K and V, every layer).
    pub fn block_bytes(config: &Config, block_tokens: usize) -> usize {
        2 * config.n_layers * block_tokens * config.kv_dim() * std::mem::size_of::<f16>()
    }

    /// As many blocks as fit in `budget_bytes` (at least one).
    pub fn with_budget(config: &Config, block_tokens: usize, budget_bytes: usize) -> PagedKvCache {
        let n_blocks = (budget_bytes / Self::block_bytes(config, block_tokens)).max(1);
        let per_block = config.n_layers * block_tokens * config.kv_dim();
        PagedKvCache {
            block_tokens,
            n_layers: config.n_layers,
            kv_dim: config.kv_dim(),
            k: vec![f16::ZERO; n_blocks * per_block],
            v: vec![f16::ZERO; n_blocks * per_block],
            alloc: BlockAllocator::new(n_blocks),
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.alloc.n_blocks()
    }

    /// Element offset of (block, layer, slot).
    fn at(&self, block: BlockId, layer: usize, slot: usize) -> usize {
        ((block as usize * self.n_layers + layer) * self.block_tokens + slot) * self.kv_dim
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_tokens)
    }
}

impl KvStore for PagedKvCache {
    fn write(&mut self, table: &[u32], layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let block = table[pos / self.block_tokens];
        let at = self.at(block, layer, pos % self.block_tokens);
        for (d, &s) in self.k[at..at + self.kv_dim].iter_mut().zip(k) {
            *d = f16::from_f32(s);
        }
        for (d, &s) in self.v[at..at + self.kv_dim].iter_mut().zip(v) {
            *d = f16::from_f32(s);
        }
    }

    fn segments(&self, table: &[u32], layer: usize, n_keys: usize, f: &mut SegmentFn<'_>) {
        let mut done = 0;
        for &block in table {
            if done >= n_keys {
                break;
            }
            let n = (n_keys - done).min(self.block_tokens);
            let at = self.at(block, layer, 0);
            let len = self.block_tokens * self.kv_dim;
            f(&self.k[at..at + len], &self.v[at..at + len], n);
            done += n;
        }
        assert_eq!(done, n_keys, "block table covers {done} of {n_keys} keys");
    }

    fn kv_dim(&self) -> usize {
        self.kv_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parked_blocks_are_reused_by_hash_and_evicted_lru() {
        let mut a = BlockAllocator::new(3);
        let (x, y) = (a.allocate().expect("x"), a.allocate().expect("y"));
        a.register(x, 11);
        a.register(y, 22);
        a.release(x);
        a.release(y);
        assert_eq!((a.available(), a.used()), (3, 0));
        // A hit revives the parked block for a new user.
        assert_eq!(a.lookup(22), Some(y));
        assert_eq!(a.used(), 1);
        // Free blocks go first, then the least recently parked (x).
        let z = a.allocate().expect("z");
        assert!(z != x && z != y);
        assert_eq!(a.allocate(), Some(x));
        assert_eq!(a.lookup(11), None, "evicted block left the index");
        assert_eq!(a.allocate(), None, "all in use");
        a.check().expect("invariants");
        assert_eq!((a.prefix_queries, a.prefix_hits), (2, 1));
    }

    proptest! {
        /// Random allocate / register / lookup / release sequences keep every
        /// invariant, and releasing everything leaves every block available.
        #[test]
        fn allocator_invariants_hold_under_random_use(ops in prop::collection::vec((0u8..4, 0u64..6), 1..300)) {
            let mut a = BlockAllocator::new(8);
            let mut held: Vec<BlockId> = Vec::new();
            for (op, h) in ops {
                match op {
                    0 => if let Some(b) = a.allocate() { held.push(b) },
                    1 => if let Some(&b) = held.last() { a.register(b, h) },
                    2 => if let Some(b) = a.lookup(h) { held.push(b) },
                    _ => if let Some(b) = held.pop() { a.release(b) },
                }
                prop_assert!(a.check().is_ok(), "{:?}", a.check());
                prop_assert_eq!(a.used(), held.iter().collect::<std::collections::HashSet<_>>().len());
            }
            for b in held.drain(..) {
                a.release(b);
            }
            prop_assert_eq!(a.available(), 8);
            prop_assert!(a.check().is_ok());
        }
    }

    #[test]
    fn hashes_chain_over_the_prefix() {
        let a = block_hash(0, &[1, 2, 3]);
        assert_ne!(a, block_hash(0, &[1, 2, 4]));
        assert_ne!(
            block_hash(a, &[5]),
            block_hash(block_hash(0, &[9, 9, 9]), &[5])
        );
        assert_eq!(
            block_hash(a, &[5]),
            block_hash(block_hash(0, &[1, 2, 3]), &[5])
        );
    }
}
