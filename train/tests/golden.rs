//! The trainer against an independent implementation: JAX, with gradients
//! by autodiff (scripts/reference/train_golden.py wrote golden.safetensors
//! from the same initial weights and batch).
//!
//! Tolerances (f32 on both sides, different summation orders):
//! - logits: max |Δ| ≤ 1e-4 · (1 + max |logit|)
//! - loss: |Δ| ≤ 1e-5 · loss
//! - every parameter's gradient: ‖Δ‖ ≤ 1e-4 · ‖g‖ per tensor
//! - the 10 losses along the AdamW run: |Δ| ≤ 1e-4 · loss
//! - every tensor after 10 AdamW steps: ‖Δ‖ ≤ 1e-4 · ‖θ‖

use std::collections::HashMap;

use train::configs::{Hyper, model_config};
use train::llama::Llama;
use train::optim::{AdamW, clip_factor, lr_at, sum_squares};

/// Must match HYPER in scripts/reference/train_golden.py.
fn hyper() -> Hyper {
    Hyper {
        micro_batch: 2,
        seq_len: 16,
        grad_accum: 1,
        max_steps: 10,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 3,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: 0.5,
        seed: 0,
    }
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let n: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum::<f64>().sqrt();
    d / n.max(1e-30)
}

#[test]
fn logits_loss_gradients_and_ten_adamw_steps_match_jax() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/golden.safetensors");
    let g: HashMap<String, (Vec<usize>, Vec<f32>)> =
        model::safetensors::read_file(&path).expect("golden file");
    let get = |n: &str| {
        &g.get(n)
            .unwrap_or_else(|| panic!("{n} missing from the golden file"))
            .1
    };
    let llama = Llama::new(model_config("golden").expect("config"), true);
    let h = hyper();
    let (b, t) = (h.micro_batch, h.seq_len);
    let mut p = vec![0f32; llama.layout.total];
    for e in &llama.layout.entries {
        p[e.offset..e.offset + e.len].copy_from_slice(get(&format!("init.{}", e.name)));
    }
    let tokens: Vec<u32> = get("tokens").iter().map(|&x| x as u32).collect();
    let targets: Vec<u32> = get("targets").iter().map(|&x| x as u32).collect();
    let mut acts = llama.acts(b, t, false);

    llama.forward(&p, &tokens, &mut acts);
    let want = get("logits");
    let scale = 1.0 + want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = acts
        .logits
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-4 * scale, "logits differ by {worst}");

    let mut grads = vec![0f32; p.len()];
    let loss = llama.forward_backward(
        &p,
        &mut grads,
        &tokens,
        &targets,
        &mut acts,
        1.0 / (b * t) as f32,
        &mut |_, _| {},
    ) / (b * t) as f64;
    let want_loss = f64::from(get("loss")[0]);
    assert!(
        (loss - want_loss).abs() <= 1e-5 * want_loss,
        "loss {loss} vs JAX {want_loss}"
    );
    for e in &llama.layout.entries {
        let r = rel(
            &grads[e.offset..e.offset + e.len],
            get(&format!("grad.{}", e.name)),
        );
        assert!(
            r <= 1e-4,
            "gradient of {}: relative difference {r:.2e}",
            e.name
        );
    }

    // Ten AdamW steps on the same batch, clipped, on the schedule.
    let mut opt = AdamW::new(&llama.layout, 0..p.len());
    let mut clipped = 0;
    for step in 0..h.max_steps {
        grads.iter_mut().for_each(|x| *x = 0.0);
        let l = llama.forward_backward(
            &p,
            &mut grads,
            &tokens,
            &targets,
            &mut acts,
            1.0 / (b * t) as f32,
            &mut |_, _| {},
        ) / (b * t) as f64;
        let want = f64::from(get("losses")[step as usize]);
        assert!(
            (l - want).abs() <= 1e-4 * want,
            "step {step}: loss {l} vs JAX {want}"
        );
        let clip = clip_factor(sum_squares(&grads).sqrt(), h.grad_clip);
        clipped += usize::from(clip < 1.0);
        let n = p.len();
        opt.step(&h, &mut p, &grads[..n], lr_at(&h, step), clip, step + 1);
    }
    assert!(clipped > 0, "the golden run must exercise clipping");
    for e in &llama.layout.entries {
        let r = rel(
            &p[e.offset..e.offset + e.len],
            get(&format!("final.{}", e.name)),
        );
        assert!(
            r <= 1e-4,
            "{} after 10 steps: relative difference {r:.2e}",
            e.name
        );
    }
}
