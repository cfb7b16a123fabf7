//! Softmax cross-entropy over the vocabulary, fused with its backward as in
//! llm.c: the logits buffer becomes dlogits in place, so the (n, vocab)
//! probabilities are never stored twice (at vocab 49152 one copy is 100 MB
//! for 512 tokens).
//!
//! loss_i = logsumexp(z_i) − z_i[target_i];  dz_i = (softmax(z_i) − onehot) · scale

use rayon::prelude::*;

/// Per-token losses (n,) for logits (n, vocab), without touching the logits.
pub fn cross_entropy_forward(losses: &mut [f32], logits: &[f32], targets: &[u32], vocab: usize) {
    losses
        .par_iter_mut()
        .zip(logits.par_chunks(vocab))
        .zip(targets.par_iter())
        .for_each(|((l, z), &t)| {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = z.iter().map(|v| (v - max).exp()).sum();
            *l = sum.ln() + max - z[t as usize];
        });
}

/// Writes dlogits over the logits, in place, and returns the per-token losses.
/// logits → dlogits: (n, vocab)   losses: (n,)
/// `scale` is d(loss)/d(loss_i): 1/(tokens in the full batch) for a mean.
pub fn cross_entropy_backward_inplace(
    logits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    vocab: usize,
    scale: f32,
) {
    logits
        .par_chunks_mut(vocab)
        .zip(losses.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|((z, l), &t)| {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let t = t as usize;
            let zt = z[t] - max;
            // Vectorized exp (Cephes polynomial, < 2e-7 relative): at vocab
            // 49,152 the scalar libm exp made this op a tenth of the step.
            let sum = kernels::vec::exp_shifted(z, max);
            *l = sum.ln() - zt;
            let inv = 1.0 / sum;
            for v in z.iter_mut() {
                *v *= inv * scale;
            }
            z[t] -= scale;
        });
}
