//! Tensor parallelism as in Megatron-LM (Shoeybi et al., 2019): each layer's
//! matrices split across the T ranks of a tensor-parallel group.
//!
//! ```text
//!            column-parallel (rows of W split)        row-parallel (columns of W split)
//! attention: Wq, Wk, Wv: heads r·H/T .. (r+1)·H/T  →  Wo: the same heads' columns  → all-reduce (n, d)
//! MLP:       Wg, Wu: rows r·F/T .. (r+1)·F/T       →  Wd: the same columns         → all-reduce (n, d)
//! ```
//!
//! Each rank runs the layer as a Llama with H/T query heads, KV/T KV heads
//! and F/T hidden units (its *local* config); the outputs of Wo and Wd are
//! partial sums over the ranks' heads and units, so one all-reduce after
//! each gives every rank the full residual update (Megatron's `g`). In the
//! backward, the gradients flowing into the normed inputs of Wq/Wk/Wv and of
//! Wg/Wu are partial sums the same way: one all-reduce each (Megatron's
//! `f`). Two all-reduces forward, two backward, per layer.
//!
//! The embedding, the norms and the head stay whole on every rank
//! (replicated): their inputs are the same on every rank after the
//! all-reduces, so their gradients are too, and they need no communication.
//! (Megatron splits the embedding and head over the vocabulary as well; at
//! two ranks and this model size the replicated head costs each rank the
//! head's FLOPs, which the benchmark counts.)

use std::ops::Range;
use std::sync::Mutex;

use model::Config;

use crate::dist::group::ProcessGroup;
use crate::error::{Result, TrainError, config_err};
use crate::params::{Entry, Layout};

/// How one tensor is split across the tensor-parallel ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Whole on every rank.
    Replicated,
    /// Rows `r·rows/T .. (r+1)·rows/T` (Wq, Wk, Wv, Wg, Wu).
    Rows,
    /// Columns `r·cols/T .. (r+1)·cols/T` (Wo, Wd).
    Columns,
}

/// The split of the tensor named `name`.
pub fn split_of(name: &str) -> Split {
    if ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"]
        .iter()
        .any(|p| name.ends_with(&format!("{p}.weight")))
    {
        Split::Rows
    } else if ["o_proj", "down_proj"]
        .iter()
        .any(|p| name.ends_with(&format!("{p}.weight")))
    {
        Split::Columns
    } else {
        Split::Replicated
    }
}

/// The config one of `t` tensor-parallel ranks runs.
pub fn local_config(c: &Config, t: usize) -> Result<Config> {
    if t == 0
        || !c.n_heads.is_multiple_of(t)
        || !c.n_kv_heads.is_multiple_of(t)
        || !c.d_ff.is_multiple_of(t)
    {
        return Err(config_err(
            "tp",
            format!(
                "{t} ranks must divide n_heads {}, n_kv_heads {} and d_ff {}",
                c.n_heads, c.n_kv_heads, c.d_ff
            ),
        ));
    }
    let mut l = c.clone();
    l.n_heads /= t;
    l.n_kv_heads /= t;
    l.d_ff /= t;
    l.validate()?;
    Ok(l)
}

/// The part of `full` (a tensor of `e_full`'s shape) rank `r` of `t` holds.
fn shard_of(e_full: &Entry, full: &[f32], r: usize, t: usize) -> Vec<f32> {
    match split_of(&e_full.name) {
        Split::Replicated => full.to_vec(),
        Split::Rows => {
            let (rows, cols) = (e_full.shape[0], e_full.shape[1]);
            let rl = rows / t;
            full[r * rl * cols..(r + 1) * rl * cols].to_vec()
        }
        Split::Columns => {
            let (rows, cols) = (e_full.shape[0], e_full.shape[1]);
            let cl = cols / t;
            (0..rows)
                .flat_map(|i| {
                    full[i * cols + r * cl..i * cols + (r + 1) * cl]
                        .iter()
                        .copied()
                })
                .collect()
        }
    }
}

/// Rank `r`'s local flat buffer (in `local`'s layout) from a full one.
pub fn shard(
    full_layout: &Layout,
    full: &[f32],
    local_layout: &Layout,
    r: usize,
    t: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; local_layout.total];
    for (ef, el) in full_layout.entries.iter().zip(&local_layout.entries) {
        let s = shard_of(ef, &full[ef.offset..ef.offset + ef.len], r, t);
        out[el.offset..el.offset + el.len].copy_from_slice(&s);
    }
    out
}

/// The full flat buffer from every rank's local one (`locals[r]`).
pub fn unshard(full_layout: &Layout, local_layout: &Layout, locals: &[&[f32]]) -> Vec<f32> {
    let t = locals.len();
    let mut full = vec![0f32; full_layout.total];
    for (ef, el) in full_layout.entries.iter().zip(&local_layout.entries) {
        let dst = &mut full[ef.offset..ef.offset + ef.len];
        match split_of(&ef.name) {
            Split::Replicated => dst.copy_from_slice(&locals[0][el.offset..el.offset + el.len]),
            Split::Rows => {
                for (r, l) in locals.iter().enumerate() {
                    dst[r * el.len..(r + 1) * el.len]
                        .copy_from_slice(&l[el.offset..el.offset + el.len]);
                }
            }
            Split::Columns => {
                let (rows, cols) = (ef.shape[0], ef.shape[1]);
                let cl = cols / t;
                for (r, l) in locals.iter().enumerate() {
                    let src = &l[el.offset..el.offset + el.len];
                    for i in 0..rows {
                        dst[i * cols + r * cl..i * cols + (r + 1) * cl]
                            .copy_from_slice(&src[i * cl..(i + 1) * cl]);
                    }
                }
            }
        }
    }
    full
}

/// The ranges of a local layout that are split (each rank holds different
/// values) as opposed to replicated: the global gradient norm sums the
/// split ones over ranks and counts the replicated ones once.
pub fn split_ranges(local_layout: &Layout) -> Vec<Range<usize>> {
    local_layout
        .entries
        .iter()
        .filter(|e| split_of(&e.name) != Split::Replicated)
        .map(|e| e.offset..e.offset + e.len)
        .collect()
}

/// A rank's tensor-parallel group, shared by the forward and backward
/// (behind a mutex: the model's passes take `&self`). A collective that
/// fails is remembered and every later one skipped, so the pass finishes
/// (with garbage) and the trainer reports the first error after it.
#[derive(Debug)]
pub struct TpGroup {
    pub rank: usize,
    pub size: usize,
    inner: Mutex<(ProcessGroup, Option<TrainError>)>,
}

impl TpGroup {
    pub fn new(group: ProcessGroup) -> TpGroup {
        TpGroup {
            rank: group.rank,
            size: group.world,
            inner: Mutex::new((group, None)),
        }
    }

    /// Sums `buf` over the tensor-parallel ranks (Megatron's f and g).
    pub fn all_reduce(&self, buf: &mut [f32]) {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.1.is_some() {
            return;
        }
        if let Err(e) = g.0.all_reduce(buf) {
            g.1 = Some(e);
        }
    }

    /// The first collective error since the last call.
    pub fn take_error(&self) -> Option<TrainError> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .take()
    }

    /// Runs `f` on the group (for the trainer's own collectives).
    pub fn with<T>(&self, f: impl FnOnce(&mut ProcessGroup) -> Result<T>) -> Result<T> {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = g.1.take() {
            return Err(e);
        }
        f(&mut g.0)
    }

    /// Bytes sent and seconds spent in this group's collectives.
    pub fn stats(&self) -> crate::dist::group::CommStats {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_then_unshard_is_the_identity_and_splits_follow_megatron() {
        let full_c = crate::configs::model_config("tiny").expect("tiny");
        let full = Layout::new(&full_c, true);
        let local = Layout::new(&local_config(&full_c, 2).expect("local"), true);
        let p: Vec<f32> = (0..full.total).map(|i| i as f32).collect();
        let s0 = shard(&full, &p, &local, 0, 2);
        let s1 = shard(&full, &p, &local, 1, 2);
        assert_eq!(unshard(&full, &local, &[&s0, &s1]), p);
        assert_eq!(
            split_of("model.layers.3.self_attn.q_proj.weight"),
            Split::Rows
        );
        assert_eq!(
            split_of("model.layers.3.mlp.down_proj.weight"),
            Split::Columns
        );
        assert_eq!(split_of("model.norm.weight"), Split::Replicated);
        assert!(
            local_config(&full_c, 3).is_err(),
            "3 does not divide 4 heads"
        );
    }
}
