#!/usr/bin/env python3
"""The trainer's independent reference: the same Llama, loss and optimizer
written in JAX, differentiated by JAX's autodiff rather than by hand.

Writes train/tests/golden/golden.safetensors with the initial weights, the
batch, and what the Rust trainer must reproduce (train/tests/golden.rs):
  logits (B*T, V), loss, the gradient of every parameter, and the weights and
  losses after 10 AdamW steps with gradient clipping and the warmup + cosine
  schedule. CI needs no JAX: the file is committed; rerun this script
  (pip install "jax[cpu]==0.10.2") after changing the math on either side.

The model is the trainer's `golden` config (2 layers, d_model 32, 4 query
heads over 2 KV heads of 8, SwiGLU 64, vocabulary 256, tied head, RMSNorm
eps 1e-5, RoPE base 10000 in Hugging Face's half-split layout). The
constants below must match train/tests/golden.rs.
"""
import json
import math  # noqa: F401
import os
import struct
import sys

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", False)

from llama_jax import CONFIGS, adamw, forward as llama_forward, loss_fn as llama_loss, lr_at, param_names, rope_tables  # noqa: E402

C = CONFIGS["golden"]
V = C.vocab
B, T = 2, 16
STEPS = 10
HYPER = dict(lr=1e-2, min_lr=1e-3, warmup=3, max_steps=10, wd=0.1, b1=0.9, b2=0.95, eps=1e-8, clip=0.5)

rng = np.random.default_rng(20261130)
NAMES = param_names(C)
init = {}
for n, shape, decay in NAMES:
    if len(shape) == 1:
        init[n] = (1.0 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
    else:
        init[n] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
COS, SIN = rope_tables(C, T)


def forward(p, tok):
    return llama_forward(p, tok, C, COS, SIN)


def loss_fn(p, tok, tgt):
    return llama_loss(p, tok, tgt, C, COS, SIN)


def main(out_path):
    p = {k: jnp.asarray(v) for k, v in init.items()}
    tok, tgt = jnp.asarray(tokens), jnp.asarray(targets)
    logits = forward(p, tok)
    loss, grads = jax.value_and_grad(loss_fn)(p, tok, tgt)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    m = {k: jnp.zeros_like(v) for k, v in p.items()}
    v2 = {k: jnp.zeros_like(v) for k, v in p.items()}
    decay = {n: d for n, _, d in NAMES}
    h = HYPER
    losses, norms, clipped = [], [], 0
    for step in range(STEPS):
        l, g = grad_fn(p, tok, tgt)
        norm = math.sqrt(sum(float(np.sum(np.asarray(x, dtype=np.float64) ** 2)) for x in g.values()))
        scale = min(h["clip"] / (norm + 1e-6), 1.0)
        clipped += scale < 1.0
        p, m, v2 = adamw(p, g, m, v2, step + 1, lr_at(h, step), scale, h, decay)
        losses.append(float(l))
        norms.append(norm)
    tensors = {"tokens": tokens.astype(np.float32).reshape(-1), "targets": targets.astype(np.float32).reshape(-1),
               "logits": np.asarray(logits).reshape(B * T, V), "loss": np.array([float(loss)], np.float32),
               "losses": np.array(losses, np.float32), "grad_norms": np.array(norms, np.float32)}
    for n, _, _ in NAMES:
        tensors["init." + n] = init[n]
        tensors["grad." + n] = np.asarray(grads[n])
        tensors["final." + n] = np.asarray(p[n])
    meta = {"jax": jax.__version__, "hyper": json.dumps(HYPER), "clipped_steps": str(clipped)}
    write_safetensors(out_path, tensors, meta)
    print(f"wrote {out_path}: loss {float(loss):.6f}, losses {losses[0]:.4f} -> {losses[-1]:.4f}, "
          f"grad norms {norms[0]:.3f} -> {norms[-1]:.3f}, clipped on {clipped}/{STEPS} steps, jax {jax.__version__}")


def write_safetensors(path, tensors, meta):
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "..", "train", "tests", "golden", "golden.safetensors"))
