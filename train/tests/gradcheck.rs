//! Every backward against finite differences.
//!
//! The check is on directional derivatives: for a random direction v over a
//! tensor, (L(θ + hv) − L(θ − hv)) / 2h against ⟨∇L, v⟩. A directional
//! derivative sums over the whole tensor, so in f32 it rises far above the
//! rounding noise of the loss, which a one-coordinate check would not.
//! Tolerance: |numeric − analytic| ≤ 2%·|analytic| + 2e-4, with h = 1e-3
//! (central differences are exact to O(h²)).

use train::configs::model_config;
use train::llama::Llama;
use train::ops::attention::{AttnShape, attention_backward, attention_forward};
use train::ops::cross_entropy::{cross_entropy_backward_inplace, cross_entropy_forward};
use train::ops::matmul::{matmul_backward, matmul_forward};
use train::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use train::ops::rope::{RopeTable, rope_backward, rope_forward};
use train::ops::swiglu::{swiglu_backward, swiglu_forward};
use train::rng::Rng;

const H: f32 = 1e-3;

fn randn(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * std) as f32).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

fn check(what: &str, numeric: f64, analytic: f64) {
    let tol = 0.02 * analytic.abs() + 2e-4;
    assert!(
        (numeric - analytic).abs() <= tol,
        "{what}: numeric {numeric:.6} vs analytic {analytic:.6} (tolerance {tol:.2e})"
    );
}

/// The directional derivative of `f` at `x` along `v`, numerically.
fn numeric(x: &[f32], v: &[f32], f: &mut dyn FnMut(&[f32]) -> f64) -> f64 {
    let plus: Vec<f32> = x.iter().zip(v).map(|(a, b)| a + H * b).collect();
    let minus: Vec<f32> = x.iter().zip(v).map(|(a, b)| a - H * b).collect();
    (f(&plus) - f(&minus)) / (2.0 * f64::from(H))
}

#[test]
fn matmul_rmsnorm_swiglu_and_rope_backwards_match_finite_differences() {
    let mut rng = Rng::new(1);
    let (n, inp, out) = (6, 8, 5);
    let x = randn(&mut rng, n * inp, 1.0);
    let w = randn(&mut rng, out * inp, 0.5);
    let r = randn(&mut rng, n * out, 1.0); // L = Σ r ⊙ y
    let mut dx = vec![0f32; n * inp];
    let mut dw = vec![0f32; out * inp];
    matmul_backward(Some(&mut dx), &mut dw, &r, &x, &w, n, inp, out, false);
    let (vx, vw) = (
        randn(&mut rng, n * inp, 1.0),
        randn(&mut rng, out * inp, 1.0),
    );
    let mut y = vec![0f32; n * out];
    check(
        "matmul dx",
        numeric(&x, &vx, &mut |x| {
            matmul_forward(&mut y, x, &w, n, inp, out);
            dot(&y, &r)
        }),
        dot(&dx, &vx),
    );
    check(
        "matmul dw",
        numeric(&w, &vw, &mut |w| {
            matmul_forward(&mut y, &x, w, n, inp, out);
            dot(&y, &r)
        }),
        dot(&dw, &vw),
    );

    let d = 16;
    let x = randn(&mut rng, n * d, 1.0);
    let g = randn(&mut rng, d, 1.0);
    let r = randn(&mut rng, n * d, 1.0);
    let (mut y, mut rstd) = (vec![0f32; n * d], vec![0f32; n]);
    rmsnorm_forward(&mut y, &mut rstd, &x, &g, d, 1e-5);
    let (mut dx, mut dg) = (vec![0f32; n * d], vec![0f32; d]);
    rmsnorm_backward(&mut dx, &mut dg, &r, &x, &g, &rstd, d, false);
    let (vx, vg) = (randn(&mut rng, n * d, 1.0), randn(&mut rng, d, 1.0));
    check(
        "rmsnorm dx",
        numeric(&x, &vx, &mut |x| {
            rmsnorm_forward(&mut y, &mut rstd, x, &g, d, 1e-5);
            dot(&y, &r)
        }),
        dot(&dx, &vx),
    );
    check(
        "rmsnorm dw",
        numeric(&g, &vg, &mut |g| {
            rmsnorm_forward(&mut y, &mut rstd, &x, g, d, 1e-5);
            dot(&y, &r)
        }),
        dot(&dg, &vg),
    );

    let gate = randn(&mut rng, n * d, 2.0);
    let up = randn(&mut rng, n * d, 1.0);
    let mut h = vec![0f32; n * d];
    let (mut dgate, mut dup) = (vec![0f32; n * d], vec![0f32; n * d]);
    swiglu_backward(&mut dgate, &mut dup, &r, &gate, &up);
    let (v1, v2) = (randn(&mut rng, n * d, 1.0), randn(&mut rng, n * d, 1.0));
    check(
        "swiglu dg",
        numeric(&gate, &v1, &mut |g| {
            swiglu_forward(&mut h, g, &up);
            dot(&h, &r)
        }),
        dot(&dgate, &v1),
    );
    check(
        "swiglu du",
        numeric(&up, &v2, &mut |u| {
            swiglu_forward(&mut h, &gate, u);
            dot(&h, &r)
        }),
        dot(&dup, &v2),
    );

    let (heads, hd, t) = (2, 8, 3);
    let table = RopeTable::new(t, hd, 10_000.0);
    let x = randn(&mut rng, t * heads * hd, 1.0);
    let r = randn(&mut rng, t * heads * hd, 1.0);
    let mut dx = r.clone();
    rope_backward(&mut dx, &table, heads, t);
    let v = randn(&mut rng, x.len(), 1.0);
    check(
        "rope",
        numeric(&x, &v, &mut |x| {
            let mut y = x.to_vec();
            rope_forward(&mut y, &table, heads, t);
            dot(&y, &r)
        }),
        dot(&dx, &v),
    );
}

#[test]
fn causal_gqa_attention_backward_matches_finite_differences() {
    let mut rng = Rng::new(2);
    let s = AttnShape {
        batch: 2,
        seq: 5,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let nq = s.batch * s.n_heads * s.seq * s.head_dim;
    let nkv = s.batch * s.n_kv_heads * s.seq * s.head_dim;
    let (q, k, v) = (
        randn(&mut rng, nq, 1.0),
        randn(&mut rng, nkv, 1.0),
        randn(&mut rng, nkv, 1.0),
    );
    let r = randn(&mut rng, nq, 1.0);
    let mut y = vec![0f32; nq];
    let mut att = vec![0f32; s.batch * s.n_heads * s.seq * s.seq];
    attention_forward(&mut y, &mut att, &q, &k, &v, s);
    let (mut dq, mut dk, mut dv) = (vec![0f32; nq], vec![0f32; nkv], vec![0f32; nkv]);
    attention_backward(&mut dq, &mut dk, &mut dv, &r, &att, &q, &k, &v, s);
    let f = |q: &[f32], k: &[f32], v: &[f32]| {
        let mut y = vec![0f32; nq];
        let mut att = vec![0f32; s.batch * s.n_heads * s.seq * s.seq];
        attention_forward(&mut y, &mut att, q, k, v, s);
        dot(&y, &r)
    };
    let (vq, vk, vv) = (
        randn(&mut rng, nq, 1.0),
        randn(&mut rng, nkv, 1.0),
        randn(&mut rng, nkv, 1.0),
    );
    check(
        "attention dq",
        numeric(&q, &vq, &mut |x| f(x, &k, &v)),
        dot(&dq, &vq),
    );
    check(
        "attention dk",
        numeric(&k, &vk, &mut |x| f(&q, x, &v)),
        dot(&dk, &vk),
    );
    check(
        "attention dv",
        numeric(&v, &vv, &mut |x| f(&q, &k, x)),
        dot(&dv, &vv),
    );
    // Causality: the last key and value cannot influence the first query.
    let mut k2 = k.clone();
    k2[(s.seq - 1) * s.head_dim] += 5.0;
    let mut y2 = vec![0f32; nq];
    attention_forward(&mut y2, &mut att, &q, &k2, &v, s);
    assert_eq!(
        y2[..s.head_dim],
        y[..s.head_dim],
        "query 0 saw a future key"
    );
}

#[test]
fn cross_entropy_backward_matches_finite_differences_and_the_forward() {
    let mut rng = Rng::new(3);
    let (n, vocab) = (4, 11);
    let z = randn(&mut rng, n * vocab, 2.0);
    let targets = [0u32, 3, 10, 7];
    let mut losses = vec![0f32; n];
    cross_entropy_forward(&mut losses, &z, &targets, vocab);
    let mut dz = z.clone();
    let mut l2 = vec![0f32; n];
    cross_entropy_backward_inplace(&mut dz, &mut l2, &targets, vocab, 1.0 / n as f32);
    for (a, b) in losses.iter().zip(&l2) {
        assert!((a - b).abs() < 1e-5, "fused loss {b} vs forward {a}");
    }
    let v = randn(&mut rng, z.len(), 1.0);
    let mut f = |z: &[f32]| {
        let mut l = vec![0f32; n];
        cross_entropy_forward(&mut l, z, &targets, vocab);
        l.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64
    };
    check("cross-entropy", numeric(&z, &v, &mut f), dot(&dz, &v));
}

/// The whole model, tensor by tensor, tied and untied.
#[test]
fn every_parameter_tensor_of_the_model_matches_finite_differences() {
    for tied in [true, false] {
        let llama = Llama::new(model_config("golden").expect("golden"), tied);
        let (b, t) = (2, 8);
        let mut p = llama.init(7);
        // Norm gains away from 1 so their gradients are not special.
        let mut rng = Rng::new(11);
        for e in llama.layout.entries.iter().filter(|e| e.shape.len() == 1) {
            for x in &mut p[e.offset..e.offset + e.len] {
                *x = 1.0 + 0.3 * rng.normal() as f32;
            }
        }
        let vocab = llama.config.vocab_size as u64;
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
        let mut acts = llama.acts(b, t, false);
        let mut grads = vec![0f32; llama.layout.total];
        llama.forward_backward(
            &p,
            &mut grads,
            &tokens,
            &targets,
            &mut acts,
            1.0 / (b * t) as f32,
            &mut |_, _| {},
        );
        for e in &llama.layout.entries {
            let mut v = vec![0f32; p.len()];
            for x in &mut v[e.offset..e.offset + e.len] {
                *x = rng.normal() as f32;
            }
            let num = numeric(&p, &v, &mut |q| llama.loss(q, &tokens, &targets, &mut acts));
            check(&format!("{} (tied {tied})", e.name), num, dot(&grads, &v));
        }
    }
}

#[test]
fn recomputation_gives_the_same_gradient_with_less_activation_memory() {
    let llama = Llama::new(model_config("tiny").expect("tiny"), true);
    let (b, t) = (2, 32);
    let p = llama.init(3);
    let mut rng = Rng::new(5);
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(512) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.below(512) as u32).collect();
    let mut g1 = vec![0f32; p.len()];
    let mut g2 = vec![0f32; p.len()];
    let mut full = llama.acts(b, t, false);
    let mut rec = llama.acts(b, t, true);
    let l1 = llama.forward_backward(
        &p,
        &mut g1,
        &tokens,
        &targets,
        &mut full,
        0.01,
        &mut |_, _| {},
    );
    let l2 = llama.forward_backward(
        &p,
        &mut g2,
        &tokens,
        &targets,
        &mut rec,
        0.01,
        &mut |_, _| {},
    );
    assert_eq!(l1, l2);
    assert_eq!(g1, g2, "recomputed activations are the same numbers");
    assert!(
        rec.bytes() < full.bytes(),
        "{} !< {}",
        rec.bytes(),
        full.bytes()
    );
}

#[test]
fn four_micro_batches_give_the_gradient_of_one_batch_of_four() {
    let llama = Llama::new(model_config("tiny").expect("tiny"), true);
    let (b, t) = (4, 16);
    let p = llama.init(9);
    let mut rng = Rng::new(6);
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(512) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.below(512) as u32).collect();
    let scale = 1.0 / (b * t) as f32;
    let mut whole = vec![0f32; p.len()];
    let mut acts = llama.acts(b, t, false);
    let l_whole = llama.forward_backward(
        &p,
        &mut whole,
        &tokens,
        &targets,
        &mut acts,
        scale,
        &mut |_, _| {},
    );
    let mut accum = vec![0f32; p.len()];
    let mut acts1 = llama.acts(1, t, false);
    let mut l_acc = 0.0;
    for m in 0..b {
        let r = m * t..(m + 1) * t;
        l_acc += llama.forward_backward(
            &p,
            &mut accum,
            &tokens[r.clone()],
            &targets[r],
            &mut acts1,
            scale,
            &mut |_, _| {},
        );
    }
    assert!((l_whole - l_acc).abs() < 1e-4 * l_whole.abs());
    let norm: f64 = whole
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    let diff: f64 = whole
        .iter()
        .zip(&accum)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(diff <= 1e-5 * norm, "relative difference {}", diff / norm);
    // And the scale matters: without it the accumulated gradient is 4× off.
    assert!(norm > 0.0);
}
