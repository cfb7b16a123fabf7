#!/usr/bin/env python3
"""The training benchmark's peer: the same model, batch and optimizer step in
JAX (jax.jit, XLA on CPU), timed the way `mlstack train bench` times the
Rust trainer. Prints one JSON line:
  {"tokens_per_sec", "ms_per_step", "ms_per_step_all", "steps", "jax", "threads"}

The step is forward + backward + global-norm clip + AdamW, jitted as one
function with the parameters and moments donated (updated in place). The
first two calls compile and are not timed. XLA's CPU backend uses every core
it is given; `mlstack train bench` runs this under `taskset` with the same
cores as the Rust run.

usage: train_bench_jax.py --config small --batch 8 --seq 128 --steps 8
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from llama_jax import CONFIGS, adamw, loss_fn, param_names, rope_tables  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    c = CONFIGS[a.config]
    rng = np.random.default_rng(0)
    names = param_names(c)
    p = {n: jnp.asarray((1.0 if len(s) == 1 else 0.02 * rng.standard_normal(s)) * np.ones(s, np.float32), dtype=jnp.float32)
         for n, s, _ in names}
    m = {k: jnp.zeros_like(v) for k, v in p.items()}
    v = {k: jnp.zeros_like(x) for k, x in p.items()}
    decay = {n: d for n, _, d in names}
    h = dict(lr=1e-3, min_lr=1e-4, warmup=10, max_steps=1000, wd=0.1, b1=0.9, b2=0.95, eps=1e-8, clip=1.0)
    cos, sin = rope_tables(c, a.seq)

    def step(p, m, v, tok, tgt, t, lr):
        loss, g = jax.value_and_grad(loss_fn)(p, tok, tgt, c, cos, sin)
        norm = jnp.sqrt(sum(jnp.sum(x * x) for x in g.values()))
        scale = jnp.minimum(h["clip"] / (norm + 1e-6), 1.0)
        p, m, v = adamw(p, g, m, v, t, lr, scale, h, decay)
        return p, m, v, loss

    jstep = jax.jit(step, donate_argnums=(0, 1, 2))
    times = []
    for i in range(a.steps + 2):
        tok = jnp.asarray(rng.integers(0, c.vocab, size=(a.batch, a.seq)), dtype=jnp.int32)
        tgt = jnp.asarray(rng.integers(0, c.vocab, size=(a.batch, a.seq)), dtype=jnp.int32)
        t0 = time.perf_counter()
        p, m, v, loss = jstep(p, m, v, tok, tgt, jnp.float32(i + 1), jnp.float32(1e-3))
        loss.block_until_ready()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    ms = 1e3 * times[len(times) // 2]
    print(json.dumps({
        "tokens_per_sec": a.batch * a.seq / (ms / 1e3),
        "ms_per_step": ms,
        "ms_per_step_all": [1e3 * x for x in times],
        "steps": a.steps,
        "loss": float(loss),
        "jax": jax.__version__,
        "threads": len(os.sched_getaffinity(0)),
    }))


if __name__ == "__main__":
    main()
