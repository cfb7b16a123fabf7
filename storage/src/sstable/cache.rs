//! The block cache: decoded blocks kept in memory, bounded in bytes.
//!
//! Sharded CLOCK (second chance): 16 shards, each with its own lock so
//! concurrent readers rarely contend; within a shard a hit sets the block's
//! reference bit, and eviction sweeps a hand over the slots, clearing set bits and
//! evicting the first block whose bit is clear. CLOCK approximates LRU without
//! moving list nodes on every hit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::block::Block;

const SHARDS: usize = 16;

/// (table file number, block offset)
pub type CacheKey = (u64, u64);

#[derive(Debug)]
struct Slot {
    key: CacheKey,
    block: Arc<Block>,
    charge: usize,
    referenced: bool,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<CacheKey, usize>,
    slots: Vec<Slot>,
    hand: usize,
    used: usize,
}

impl Shard {
    fn evict_one(&mut self) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            if self.slots[self.hand].referenced {
                self.slots[self.hand].referenced = false;
                self.hand += 1;
                continue;
            }
            let victim = self.slots.swap_remove(self.hand);
            self.map.remove(&victim.key);
            self.used -= victim.charge;
            if let Some(moved) = self.slots.get(self.hand) {
                self.map.insert(moved.key, self.hand);
            }
            return true;
        }
    }
}

/// A sharded CLOCK cache of blocks.
#[derive(Debug)]
pub struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    shard_capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl BlockCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: capacity_bytes / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &CacheKey) -> &Mutex<Shard> {
        let h = key.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (key.1 >> 12).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        &self.shards[(h >> 59) as usize % SHARDS]
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Block>> {
        let mut s = self.shard(key).lock();
        match s.map.get(key).copied() {
            Some(i) => {
                s.slots[i].referenced = true;
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(s.slots[i].block.clone())
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn insert(&self, key: CacheKey, block: Arc<Block>) {
        let charge = block.size() + 64;
        if charge > self.shard_capacity {
            return;
        }
        let mut s = self.shard(&key).lock();
        if let Some(&i) = s.map.get(&key) {
            s.slots[i].referenced = true;
            return;
        }
        while s.used + charge > self.shard_capacity {
            if !s.evict_one() {
                break;
            }
        }
        let idx = s.slots.len();
        s.slots.push(Slot {
            key,
            block,
            charge,
            referenced: false,
        });
        s.map.insert(key, idx);
        s.used += charge;
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    pub fn used_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().used).sum()
    }

    pub fn capacity_bytes(&self) -> usize {
        self.shard_capacity * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::BlockBuilder;
    use super::*;

    fn block(n: usize) -> Arc<Block> {
        let mut b = BlockBuilder::new(16);
        for i in 0..n {
            b.add(format!("{i:08}").as_bytes(), &[0u8; 100]);
        }
        Arc::new(Block::parse(b.finish()).expect("block"))
    }

    #[test]
    fn stays_within_capacity_and_counts_hits_and_misses() {
        let cache = BlockCache::new(64 << 10);
        let b = block(8);
        for i in 0..1000u64 {
            cache.insert((i, i * 4096), b.clone());
        }
        assert!(
            cache.used_bytes() <= cache.capacity_bytes(),
            "{}",
            cache.used_bytes()
        );
        assert!(
            cache.get(&(999, 999 * 4096)).is_some(),
            "newest entry evicted"
        );
        assert!(cache.get(&(123_456, 0)).is_none());
        assert_eq!(cache.hits(), 1);
        assert_eq!(cache.misses(), 1);
    }

    #[test]
    fn referenced_blocks_survive_a_sweep() {
        let cache = BlockCache::new(16 * (block(8).size() + 64) * 4);
        let b = block(8);
        // Fill, touch key 0 repeatedly while inserting more: it must survive.
        for i in 0..200u64 {
            cache.insert((0, i), b.clone());
            let _ = cache.get(&(0, 0));
        }
        assert!(cache.get(&(0, 0)).is_some());
    }
}
