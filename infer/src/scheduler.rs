//! Iteration-level scheduling (Yu et al., "Orca", OSDI '22) over the paged KV
//! cache, the way vLLM does it: the batch is rebuilt at every model step, so a
//! finished sequence's slot is refilled at the next step instead of waiting
//! for the whole batch to finish.
//!
//! Sequences move `waiting → running → finished`, and back to `waiting` when
//! preempted. The scheduler only decides *what runs next* and owns the block
//! tables; the serving engine ([`crate::engine_loop`]) runs the model and samples.

use std::collections::{BTreeMap, HashMap};

use crate::paged::{BlockId, PagedKvCache, block_hash};

/// Sequence id.
pub type SeqId = u64;

/// Limits of one scheduling step.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Tokens through the model per step (decode tokens + prefill chunks).
    pub max_batched_tokens: usize,
    /// Sequences running at once.
    pub max_running_seqs: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batched_tokens: 512,
            max_running_seqs: 64,
        }
    }
}

/// What the scheduler tracks per sequence.
#[derive(Debug)]
pub struct SeqState {
    pub id: SeqId,
    /// Higher runs first; ties go to the earlier arrival (FCFS).
    pub priority: i32,
    arrival: u64,
    /// Prompt followed by the tokens generated so far.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    pub computed: usize,
    pub table: Vec<BlockId>,
    /// Prefix hash of each full, registered block of `table`.
    hashes: Vec<u64>,
    pub preemptions: u32,
    /// Prompt tokens served from the prefix cache at admission.
    pub cached_tokens: usize,
}

impl SeqState {
    fn order(&self) -> (i64, u64) {
        (-i64::from(self.priority), self.arrival)
    }
}

/// One sequence's share of a step: `tokens[start..start + len]` go through the
/// model; `sample` when this chunk reaches the last token (logits needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub id: SeqId,
    pub start: usize,
    pub len: usize,
    pub sample: bool,
}

/// What happened in a step besides the batch.
#[derive(Debug, Default)]
pub struct StepReport {
    pub batch: Vec<Scheduled>,
    /// Sequences preempted this step (blocks freed, back to waiting).
    pub preempted: Vec<SeqId>,
    /// Sequences that can never fit (more blocks than the pool has).
    pub unschedulable: Vec<SeqId>,
}

/// The scheduler: waiting and running queues over one paged cache.
#[derive(Debug)]
pub struct Scheduler {
    pub config: SchedulerConfig,
    pub cache: PagedKvCache,
    seqs: HashMap<SeqId, SeqState>,
    /// (order key) → id, earliest first.
    waiting: BTreeMap<(i64, u64), SeqId>,
    running: BTreeMap<(i64, u64), SeqId>,
    next_arrival: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, cache: PagedKvCache) -> Scheduler {
        Scheduler {
            config,
            cache,
            seqs: HashMap::new(),
            waiting: BTreeMap::new(),
            running: BTreeMap::new(),
            next_arrival: 0,
        }
    }

    /// Queues a new sequence (its prompt must be non-empty).
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>, priority: i32) {
        assert!(!prompt.is_empty(), "empty prompt for sequence {id}");
        self.next_arrival += 1;
        let s = SeqState {
            id,
            priority,
            arrival: self.next_arrival,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            table: Vec::new(),
            hashes: Vec::new(),
            preemptions: 0,
            cached_tokens: 0,
        };
        self.waiting.insert(s.order(), id);
        self.seqs.insert(id, s);
    }

    pub fn get(&self, id: SeqId) -> Option<&SeqState> {
        self.seqs.get(&id)
    }

    pub fn n_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn n_running(&self) -> usize {
        self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn ids(&self) -> Vec<SeqId> {
        self.seqs.keys().copied().collect()
    }

    /// Token slots holding keys right now ÷ slots in the blocks allocated to
    /// sequences (the vLLM paper's utilization; shared blocks count once).
    pub fn kv_utilization(&self) -> f64 {
        let used_blocks = self.cache.alloc.used();
        if used_blocks == 0 {
            return 1.0;
        }
        let mut seen = std::collections::HashSet::new();
        let mut slots = 0usize;
        for s in self.seqs.values() {
            for (i, &b) in s.table.iter().enumerate() {
                if seen.insert(b) {
                    let start = i * self.cache.block_tokens;
                    slots += s
                        .computed
                        .saturating_sub(start)
                        .min(self.cache.block_tokens);
                }
            }
        }
        slots as f64 / (used_blocks * self.cache.block_tokens) as f64
    }

    /// Appends a sampled token to a running sequence.
    pub fn append(&mut self, id: SeqId, token: u32) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.tokens.push(token);
        }
    }

    /// Removes a sequence (finished, cancelled or failed) and frees its blocks.
    pub fn finish(&mut self, id: SeqId) -> Option<SeqState> {
        let mut s = self.seqs.remove(&id)?;
        self.waiting.remove(&s.order());
        self.running.remove(&s.order());
        for b in s.table.drain(..) {
            self.cache.alloc.release(b);
        }
        Some(s)
    }

    /// Frees a running sequence's blocks and returns it to the waiting queue
    /// in its original place (its arrival order), to be recomputed later.
    fn preempt(&mut self, id: SeqId) {
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        self.running.remove(&s.order());
        for b in s.table.drain(..) {
            self.cache.alloc.release(b);
        }
        s.hashes.clear();
        s.computed = 0;
        s.preemptions += 1;
        self.waiting.insert(s.order(), id);
    }

    /// Blocks so that `s.table` covers `upto` tokens; false (nothing kept of
    /// this call's allocations) if the pool runs dry.
    fn grow(cache: &mut PagedKvCache, s: &mut SeqState, upto: usize) -> bool {
        let need = cache.blocks_for(upto);
        let mut got = Vec::new();
        while s.table.len() + got.len() < need {
            match cache.alloc.allocate() {
                Some(b) => got.push(b),
                None => {
                    for b in got {
                        cache.alloc.release(b);
                    }
                    return false;
                }
            }
        }
        s.table.extend(got);
        true
    }

    /// Builds the next batch.
    ///
    /// 1. Running sequences first, oldest (highest priority) first: each gets
    ///    its next token (decode) or its next prompt chunk (a prefill that was
    ///    chunked or is being recomputed), within the token budget. A sequence
    ///    whose next token needs a block when none is free preempts the
    ///    *newest, lowest-priority* running sequence (possibly itself): its
    ///    blocks are freed and it waits, in its original place in line, to be
    ///    recomputed. Victims come from the back so old requests keep making
    ///    progress and the same sequence is not evicted over and over.
    /// 2. Then waiting sequences in order (priority, then arrival), while the
    ///    budget, `max_running_seqs` and free blocks allow. On first admission
    ///    the prompt's full blocks are looked up in the prefix cache; hits are
    ///    shared, not recomputed. Admission stops at the first sequence that
    ///    does not fit (no overtaking: FCFS stays fair), and is skipped in a
    ///    step that preempted (no thrash).
    pub fn schedule(&mut self) -> StepReport {
        let mut report = StepReport::default();
        let mut budget = self.config.max_batched_tokens;
        let running: Vec<SeqId> = self.running.values().copied().collect();
        for id in running {
            if budget == 0 {
                break;
            }
            let s = &self.seqs[&id];
            if !self.running.contains_key(&s.order()) {
                continue; // preempted earlier in this loop
            }
            let remaining = s.tokens.len() - s.computed;
            if remaining == 0 {
                continue;
            }
            let len = remaining.min(budget);
            let upto = s.computed + len;
            loop {
                let s = self.seqs.get_mut(&id).expect("running sequence");
                if Self::grow(&mut self.cache, s, upto) {
                    let start = s.computed;
                    report.batch.push(Scheduled {
                        id,
                        start,
                        len,
                        sample: upto == s.tokens.len(),
                    });
                    budget -= len;
                    break;
                }
                let victim = *self.running.values().next_back().expect("id is running");
                // Never preempt a sequence already in this batch: its step is
                // about to run.
                if report.batch.iter().any(|b| b.id == victim) {
                    self.preempt(id);
                    report.preempted.push(id);
                    break;
                }
                self.preempt(victim);
                report.preempted.push(victim);
                if victim == id {
                    break;
                }
            }
        }

        // A step that had to preempt admits nobody: memory is short, and a
        // sequence admitted now would be the next victim (preempt → re-admit →
        // preempt thrash, as vLLM also avoids).
        while report.preempted.is_empty()
            && budget > 0
            && self.running.len() < self.config.max_running_seqs
        {
            let Some((&key, &id)) = self.waiting.iter().next() else {
                break;
            };
            let s = self.seqs.get_mut(&id).expect("waiting sequence");
            if self.cache.blocks_for(s.tokens.len()) > self.cache.n_blocks() {
                self.waiting.remove(&key);
                report.unschedulable.push(id);
                continue;
            }
            if s.computed == 0 && s.table.is_empty() {
                // Prefix cache: whole blocks of the prompt, leaving at least
                // the last token to compute (its logits are needed).
                let bt = self.cache.block_tokens;
                let mut parent = 0u64;
                for chunk in s.tokens[..s.tokens.len() - 1].chunks_exact(bt) {
                    let h = block_hash(parent, chunk);
                    match self.cache.alloc.lookup(h) {
                        Some(b) => {
                            s.table.push(b);
                            s.hashes.push(h);
                            s.computed += bt;
                            parent = h;
                        }
                        None => break,
                    }
                }
                if s.preemptions == 0 {
                    s.cached_tokens = s.computed;
                }
            }
            let len = (s.tokens.len() - s.computed).min(budget);
            let upto = s.computed + len;
            if !Self::grow(&mut self.cache, s, upto) {
                // Not enough blocks now: give back the prefix hits too (they
                // stay parked and findable) and retry next step.
                for b in s.table.drain(..) {
                    self.cache.alloc.release(b);
                }
                s.hashes.clear();
                s.computed = 0;
                break;
            }
            self.waiting.remove(&key);
            self.running.insert(key, id);
            report.batch.push(Scheduled {
                id,
                start: s.computed,
                len,
                sample: upto == s.tokens.len(),
            });
            budget -= len;
        }
        report
    }

    /// Marks a scheduled chunk as computed and registers the blocks it filled
    /// in the prefix cache.
    pub fn computed(&mut self, step: &Scheduled) {
        let Some(s) = self.seqs.get_mut(&step.id) else {
            return;
        };
        s.computed = step.start + step.len;
        let bt = self.cache.block_tokens;
        while s.hashes.len() < s.computed / bt {
            let i = s.hashes.len();
            let parent = s.hashes.last().copied().unwrap_or(0);
            let h = block_hash(parent, &s.tokens[i * bt..(i + 1) * bt]);
            self.cache.alloc.register(s.table[i], h);
            s.hashes.push(h);
        }
    }

    /// Every sequence's table and the allocator agree (tests, debug).
    pub fn check(&self) -> Result<(), String> {
        self.cache.alloc.check()?;
        let mut users: HashMap<BlockId, u32> = HashMap::new();
        for s in self.seqs.values() {
            for &b in &s.table {
                *users.entry(b).or_default() += 1;
            }
        }
        if users.len() != self.cache.alloc.used() {
            return Err(format!(
                "{} blocks referenced by tables, {} in use by the allocator",
                users.len(),
                self.cache.alloc.used()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Config;

    fn tiny(blocks: usize) -> Scheduler {
        let config = Config {
            n_layers: 1,
            d_model: 64,
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 64,
            d_ff: 64,
            vocab_size: 100,
            rope_base: 1e4,
            rms_eps: 1e-5,
            context_length: 1024,
            rope_layout: kernels::ops::RopeLayout::Interleaved,
        };
        let bytes = PagedKvCache::block_bytes(&config, 4) * blocks;
        Scheduler::new(
            SchedulerConfig {
                max_batched_tokens: 8,
                max_running_seqs: 4,
            },
            PagedKvCache::with_budget(&config, 4, bytes),
        )
    }

    fn run_step(s: &mut Scheduler) -> StepReport {
        let r = s.schedule();
        for b in &r.batch {
            s.computed(b);
            if b.sample {
                s.append(b.id, 7);
            }
        }
        s.check().expect("consistent");
        r
    }

    #[test]
    fn prefill_is_chunked_to_the_budget_then_decodes_together() {
        let mut s = tiny(16);
        s.add(1, vec![1; 10], 0);
        s.add(2, vec![2; 3], 0);
        let r = run_step(&mut s);
        // 8-token budget: 8 of seq 1's 10 prompt tokens, no room for seq 2.
        assert_eq!(
            r.batch,
            vec![Scheduled {
                id: 1,
                start: 0,
                len: 8,
                sample: false
            }]
        );
        let r = run_step(&mut s);
        assert_eq!(
            r.batch,
            vec![
                Scheduled {
                    id: 1,
                    start: 8,
                    len: 2,
                    sample: true
                },
                Scheduled {
                    id: 2,
                    start: 0,
                    len: 3,
                    sample: true
                },
            ]
        );
        let r = run_step(&mut s);
        assert_eq!(
            r.batch.iter().map(|b| b.len).collect::<Vec<_>>(),
            [1, 1],
            "both decode"
        );
    }

    #[test]
    fn the_newest_sequence_is_preempted_and_keeps_its_place() {
        // 4 blocks of 4 tokens: two sequences of 7 prompt tokens take 2 each.
        let mut s = tiny(4);
        s.add(1, vec![1; 7], 0);
        s.add(2, vec![2; 7], 0);
        // Step 1: seq 1's prompt (7) and 1 token of seq 2 (budget 8). Step 2:
        // seq 1 decodes, seq 2 finishes its prompt: 4 blocks in use. Step 3:
        // seq 1 needs a third block at token 9 and the pool is empty, so the
        // newer sequence (2) is preempted.
        let mut preempted = Vec::new();
        for _ in 0..6 {
            preempted.extend(run_step(&mut s).preempted);
        }
        assert_eq!(preempted.first(), Some(&2));
        assert!(
            s.get(1).expect("seq 1").preemptions == 0,
            "the oldest never loses its blocks"
        );
        // Seq 2 waits first in line, ahead of a later arrival.
        s.add(3, vec![3; 2], 0);
        s.finish(1);
        let r = run_step(&mut s);
        assert_eq!(
            r.batch[0].id, 2,
            "the preempted sequence resumes before newer ones"
        );
        assert!(s.get(2).expect("seq 2").preemptions >= 1);
    }

    #[test]
    fn shared_prefixes_hit_the_cache_and_blocks_all_come_back() {
        let mut s = tiny(16);
        let prompt: Vec<u32> = (0..13).collect();
        s.add(1, prompt.clone(), 0);
        while s.get(1).expect("seq").computed < 13 {
            run_step(&mut s);
        }
        s.finish(1);
        // Same 12-token prefix: 3 full blocks found, only 1 token computed.
        s.add(2, prompt.clone(), 0);
        let r = run_step(&mut s);
        assert_eq!(
            r.batch,
            vec![Scheduled {
                id: 2,
                start: 12,
                len: 1,
                sample: true
            }]
        );
        assert_eq!(s.get(2).expect("seq").cached_tokens, 12);
        // Seq 1's admission looked up its first block and missed (4 queries).
        assert_eq!(
            (s.cache.alloc.prefix_hits, s.cache.alloc.prefix_queries),
            (3, 4)
        );
        s.finish(2);
        assert_eq!(s.cache.alloc.used(), 0);
        assert_eq!(s.cache.alloc.available(), 16);
        s.check().expect("consistent");
    }

    #[test]
    fn a_sequence_larger_than_the_pool_is_reported_not_stuck() {
        let mut s = tiny(2);
        s.add(1, vec![1; 9], 0); // needs 3 blocks of 4
        let r = s.schedule();
        assert_eq!(r.unschedulable, vec![1]);
        s.finish(1);
        assert!(s.is_idle());
    }

    #[test]
    fn priority_runs_first() {
        let mut s = tiny(16);
        s.add(1, vec![1; 8], 0);
        s.add(2, vec![2; 8], 5);
        let r = run_step(&mut s);
        assert_eq!(r.batch[0].id, 2);
    }
}
