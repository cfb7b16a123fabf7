//! AdamW (Loshchilov & Hutter, 2019), the learning-rate schedule, and
//! clipping by global gradient norm.
//!
//! Per parameter, at step t (1-based):
//!   m ← β₁m + (1−β₁)g,   v ← β₂v + (1−β₂)g²,
//!   m̂ = m/(1−β₁ᵗ),  v̂ = v/(1−β₂ᵗ),
//!   θ ← θ − lr·(m̂/(√v̂ + ε) + λθ)       (λ only where the entry decays)
//! Decoupled: the decay is not part of the gradient, so Adam's scaling does
//! not shrink it.

use rayon::prelude::*;

use crate::configs::Hyper;
use crate::params::Layout;

/// The learning rate at 0-based step `step`: linear warmup to `lr` over
/// `warmup_steps`, then cosine decay to `min_lr` at `max_steps` (nanoGPT).
pub fn lr_at(h: &Hyper, step: u64) -> f32 {
    if step < h.warmup_steps {
        return h.lr * (step + 1) as f32 / h.warmup_steps as f32;
    }
    if step >= h.max_steps {
        return h.min_lr;
    }
    let span = (h.max_steps - h.warmup_steps).max(1) as f64;
    let ratio = (step - h.warmup_steps) as f64 / span;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    (f64::from(h.min_lr) + coeff * f64::from(h.lr - h.min_lr)) as f32
}

/// Σ g² over `g`, in f64, summed over fixed chunks in order (deterministic).
pub fn sum_squares(g: &[f32]) -> f64 {
    g.par_chunks(1 << 16)
        .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
        .collect::<Vec<f64>>()
        .into_iter()
        .sum()
}

/// The factor that brings a gradient of global norm `norm` under `max_norm`
/// (PyTorch's `clip_grad_norm_`: max_norm / (norm + 1e-6), at most 1).
pub fn clip_factor(norm: f64, max_norm: f32) -> f32 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    (f64::from(max_norm) / (norm + 1e-6)).min(1.0) as f32
}

/// Adam's moments for a range of the parameters (all of them, or this rank's
/// shard under ZeRO-1).
#[derive(Debug, Clone)]
pub struct AdamW {
    /// The range of the flat parameter buffer these moments cover.
    pub range: std::ops::Range<usize>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Whether each element of the range decays (from the layout).
    decay: Vec<bool>,
}

impl AdamW {
    pub fn new(layout: &Layout, range: std::ops::Range<usize>) -> AdamW {
        let mut decay = vec![false; range.len()];
        for e in &layout.entries {
            let (a, b) = (e.offset.max(range.start), (e.offset + e.len).min(range.end));
            if a < b && e.decay {
                decay[a - range.start..b - range.start].fill(true);
            }
        }
        AdamW {
            m: vec![0.0; range.len()],
            v: vec![0.0; range.len()],
            range,
            decay,
        }
    }

    /// One update of `params` (the range's slice) from `grads` (the same
    /// slice), each gradient first multiplied by `grad_scale` (the clip).
    /// `t` is the 1-based step number.
    pub fn step(
        &mut self,
        h: &Hyper,
        params: &mut [f32],
        grads: &[f32],
        lr: f32,
        grad_scale: f32,
        t: u64,
    ) {
        assert_eq!(params.len(), self.range.len());
        assert_eq!(grads.len(), self.range.len());
        let (b1, b2, eps, wd) = (h.beta1, h.beta2, h.eps, h.weight_decay);
        let bc1 = 1.0 - b1.powi(t.min(i32::MAX as u64) as i32);
        let bc2 = 1.0 - b2.powi(t.min(i32::MAX as u64) as i32);
        const CHUNK: usize = 1 << 14;
        params
            .par_chunks_mut(CHUNK)
            .zip(grads.par_chunks(CHUNK))
            .zip(self.m.par_chunks_mut(CHUNK))
            .zip(
                self.v
                    .par_chunks_mut(CHUNK)
                    .zip(self.decay.par_chunks(CHUNK)),
            )
            .for_each(|(((p, g), m), (v, decay))| {
                for i in 0..p.len() {
                    let gi = g[i] * grad_scale;
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    let mhat = m[i] / bc1;
                    let vhat = v[i] / bc2;
                    let decay_term = if decay[i] { wd * p[i] } else { 0.0 };
                    p[i] -= lr * (mhat / (vhat.sqrt() + eps) + decay_term);
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_linearly_then_decays_by_cosine_to_min() {
        let h = Hyper {
            lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 10,
            max_steps: 110,
            ..Hyper::default()
        };
        assert!((lr_at(&h, 0) - 0.1).abs() < 1e-6);
        assert!((lr_at(&h, 9) - 1.0).abs() < 1e-6);
        assert!((lr_at(&h, 10) - 1.0).abs() < 1e-6);
        assert!(
            (lr_at(&h, 60) - 0.55).abs() < 1e-6,
            "half way: the mean of lr and min_lr"
        );
        assert!((lr_at(&h, 110) - 0.1).abs() < 1e-6);
        assert!((lr_at(&h, 1000) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn first_adamw_step_moves_each_weight_by_about_lr_and_decays_only_matrices() {
        let c = crate::configs::model_config("golden").expect("config");
        let layout = Layout::new(&c, true);
        let h = Hyper {
            weight_decay: 0.5,
            ..Hyper::default()
        };
        let mut opt = AdamW::new(&layout, 0..layout.total);
        let mut p = vec![1.0f32; layout.total];
        let g = vec![0.25f32; layout.total];
        opt.step(&h, &mut p, &g, 0.01, 1.0, 1);
        // m̂ = g, v̂ = g², so the Adam term is 1 (ε aside) and the decay 0.5.
        let norm = layout.entry(model::names::NORM).expect("norm").offset;
        assert!((p[norm] - (1.0 - 0.01)).abs() < 1e-6);
        assert!((p[0] - (1.0 - 0.01 * 1.5)).abs() < 1e-6);
        assert!((clip_factor(2.0, 1.0) - 0.5).abs() < 1e-6);
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
    }
}
