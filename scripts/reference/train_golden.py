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
import math
import os
import struct
import sys

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", False)

L, D, H, KVH, HD, FF, V = 2, 32, 4, 2, 8, 64, 256
EPS, BASE = 1e-5, 10000.0
B, T = 2, 16
STEPS = 10
HYPER = dict(lr=1e-2, min_lr=1e-3, warmup=3, max_steps=10, wd=0.1, b1=0.9, b2=0.95, eps=1e-8, clip=0.5)

rng = np.random.default_rng(20261130)


def names():
    out = [("model.embed_tokens.weight", (V, D), True)]
    for i in range(L):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (D,), False),
            (p + "self_attn.q_proj.weight", (H * HD, D), True),
            (p + "self_attn.k_proj.weight", (KVH * HD, D), True),
            (p + "self_attn.v_proj.weight", (KVH * HD, D), True),
            (p + "self_attn.o_proj.weight", (D, H * HD), True),
            (p + "post_attention_layernorm.weight", (D,), False),
            (p + "mlp.gate_proj.weight", (FF, D), True),
            (p + "mlp.up_proj.weight", (FF, D), True),
            (p + "mlp.down_proj.weight", (D, FF), True),
        ]
    out.append(("model.norm.weight", (D,), False))
    return out


NAMES = names()
init = {}
for n, shape, decay in NAMES:
    if len(shape) == 1:
        init[n] = (1.0 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
    else:
        init[n] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
targets = rng.integers(0, V, size=(B, T)).astype(np.int32)

# RoPE tables in float64, cast to float32 (as the trainer computes them).
j = np.arange(HD // 2)
theta = np.arange(T)[:, None] * BASE ** (-2.0 * j / HD)[None, :]
COS, SIN = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def rmsnorm(x, w):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + EPS) * w


def rope(x):  # x: (B, T, heads, HD)
    a, b = x[..., : HD // 2], x[..., HD // 2:]
    c, s = COS[None, :, None, :], SIN[None, :, None, :]
    return jnp.concatenate([a * c - b * s, a * s + b * c], axis=-1)


def forward(p, tok):
    x = p["model.embed_tokens.weight"][tok]  # (B, T, D)
    mask = jnp.tril(jnp.ones((T, T), dtype=bool))
    for i in range(L):
        w = lambda s: p[f"model.layers.{i}.{s}.weight"]  # noqa: E731
        xn = rmsnorm(x, w("input_layernorm"))
        q = (xn @ w("self_attn.q_proj").T).reshape(B, T, H, HD)
        k = (xn @ w("self_attn.k_proj").T).reshape(B, T, KVH, HD)
        v = (xn @ w("self_attn.v_proj").T).reshape(B, T, KVH, HD)
        q, k = rope(q), rope(k)
        k = jnp.repeat(k, H // KVH, axis=2)
        v = jnp.repeat(v, H // KVH, axis=2)
        s = jnp.einsum("bthd,buhd->bhtu", q, k) / math.sqrt(HD)
        s = jnp.where(mask[None, None], s, -jnp.inf)
        a = jax.nn.softmax(s, axis=-1)
        y = jnp.einsum("bhtu,buhd->bthd", a, v).reshape(B, T, H * HD)
        x = x + y @ w("self_attn.o_proj").T
        xn = rmsnorm(x, w("post_attention_layernorm"))
        g = xn @ w("mlp.gate_proj").T
        u = xn @ w("mlp.up_proj").T
        x = x + (jax.nn.silu(g) * u) @ w("mlp.down_proj").T
    x = rmsnorm(x, p["model.norm.weight"])
    return x @ p["model.embed_tokens.weight"].T  # (B, T, V)


def loss_fn(p, tok, tgt):
    logits = forward(p, tok)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
    return jnp.mean(lse - picked)


def lr_at(step):
    h = HYPER
    if step < h["warmup"]:
        return h["lr"] * (step + 1) / h["warmup"]
    if step >= h["max_steps"]:
        return h["min_lr"]
    ratio = (step - h["warmup"]) / max(h["max_steps"] - h["warmup"], 1)
    return h["min_lr"] + 0.5 * (1 + math.cos(math.pi * ratio)) * (h["lr"] - h["min_lr"])


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
        lr = lr_at(step)
        t = step + 1
        bc1, bc2 = 1 - h["b1"] ** t, 1 - h["b2"] ** t
        for k in p:
            gi = g[k] * scale
            m[k] = h["b1"] * m[k] + (1 - h["b1"]) * gi
            v2[k] = h["b2"] * v2[k] + (1 - h["b2"]) * gi * gi
            upd = (m[k] / bc1) / (jnp.sqrt(v2[k] / bc2) + h["eps"])
            if decay[k]:
                upd = upd + h["wd"] * p[k]
            p[k] = p[k] - lr * upd
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
