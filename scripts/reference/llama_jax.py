"""The Llama the trainer implements, written in JAX: one definition shared by
the golden-file generator (train_golden.py) and the benchmark peer
(train_bench_jax.py). Same math as train/src/llama.rs: token embedding,
RMSNorm, RoPE in Hugging Face's half-split layout, causal grouped-query
attention, SwiGLU, a tied head, mean cross-entropy; AdamW with decoupled
decay on matrices and the embedding only."""
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Config:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab: int
    rms_eps: float = 1e-5
    rope_base: float = 10000.0

    @property
    def head_dim(self):
        return self.d_model // self.n_heads


# train/src/configs.rs
CONFIGS = {
    "golden": Config(2, 32, 4, 2, 64, 256),
    "tiny": Config(2, 64, 4, 2, 128, 512),
    "small": Config(6, 256, 8, 4, 768, 49152),
}


def param_names(c):
    """(name, shape, decays) in the trainer's layout order."""
    hd = c.head_dim
    out = [("model.embed_tokens.weight", (c.vocab, c.d_model), True)]
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (c.d_model,), False),
            (p + "self_attn.q_proj.weight", (c.n_heads * hd, c.d_model), True),
            (p + "self_attn.k_proj.weight", (c.n_kv_heads * hd, c.d_model), True),
            (p + "self_attn.v_proj.weight", (c.n_kv_heads * hd, c.d_model), True),
            (p + "self_attn.o_proj.weight", (c.d_model, c.n_heads * hd), True),
            (p + "post_attention_layernorm.weight", (c.d_model,), False),
            (p + "mlp.gate_proj.weight", (c.d_ff, c.d_model), True),
            (p + "mlp.up_proj.weight", (c.d_ff, c.d_model), True),
            (p + "mlp.down_proj.weight", (c.d_model, c.d_ff), True),
        ]
    out.append(("model.norm.weight", (c.d_model,), False))
    return out


def rope_tables(c, seq):
    """cos, sin of pos·θ_j in float64, cast to float32 (as the trainer)."""
    j = np.arange(c.head_dim // 2)
    theta = np.arange(seq)[:, None] * c.rope_base ** (-2.0 * j / c.head_dim)[None, :]
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def forward(p, tok, c, cos, sin):
    """logits (B, T, V) for tokens (B, T)."""
    b, t = tok.shape
    hd = c.head_dim

    def rmsnorm(x, w):
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + c.rms_eps) * w

    def rope(x):  # (B, T, heads, hd)
        a, bb = x[..., : hd // 2], x[..., hd // 2:]
        cc, ss = cos[None, :t, None, :], sin[None, :t, None, :]
        return jnp.concatenate([a * cc - bb * ss, a * ss + bb * cc], axis=-1)

    x = p["model.embed_tokens.weight"][tok]
    mask = jnp.tril(jnp.ones((t, t), dtype=bool))
    for i in range(c.n_layers):
        def w(s):
            return p[f"model.layers.{i}.{s}.weight"]
        xn = rmsnorm(x, w("input_layernorm"))
        q = (xn @ w("self_attn.q_proj").T).reshape(b, t, c.n_heads, hd)
        k = (xn @ w("self_attn.k_proj").T).reshape(b, t, c.n_kv_heads, hd)
        v = (xn @ w("self_attn.v_proj").T).reshape(b, t, c.n_kv_heads, hd)
        q, k = rope(q), rope(k)
        k = jnp.repeat(k, c.n_heads // c.n_kv_heads, axis=2)
        v = jnp.repeat(v, c.n_heads // c.n_kv_heads, axis=2)
        s = jnp.einsum("bthd,buhd->bhtu", q, k) / math.sqrt(hd)
        s = jnp.where(mask[None, None], s, -jnp.inf)
        a = jax.nn.softmax(s, axis=-1)
        y = jnp.einsum("bhtu,buhd->bthd", a, v).reshape(b, t, c.n_heads * hd)
        x = x + y @ w("self_attn.o_proj").T
        xn = rmsnorm(x, w("post_attention_layernorm"))
        g = xn @ w("mlp.gate_proj").T
        u = xn @ w("mlp.up_proj").T
        x = x + (jax.nn.silu(g) * u) @ w("mlp.down_proj").T
    x = rmsnorm(x, p["model.norm.weight"])
    return x @ p["model.embed_tokens.weight"].T


def loss_fn(p, tok, tgt, c, cos, sin):
    logits = forward(p, tok, c, cos, sin)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
    return jnp.mean(lse - picked)


def lr_at(h, step):
    if step < h["warmup"]:
        return h["lr"] * (step + 1) / h["warmup"]
    if step >= h["max_steps"]:
        return h["min_lr"]
    ratio = (step - h["warmup"]) / max(h["max_steps"] - h["warmup"], 1)
    return h["min_lr"] + 0.5 * (1 + math.cos(math.pi * ratio)) * (h["lr"] - h["min_lr"])


def adamw(p, g, m, v, t, lr, scale, h, decay):
    """One AdamW update of every tensor (gradients first scaled by `scale`)."""
    bc1, bc2 = 1 - h["b1"] ** t, 1 - h["b2"] ** t
    p2, m2, v2 = {}, {}, {}
    for k in p:
        gi = g[k] * scale
        m2[k] = h["b1"] * m[k] + (1 - h["b1"]) * gi
        v2[k] = h["b2"] * v[k] + (1 - h["b2"]) * gi * gi
        upd = (m2[k] / bc1) / (jnp.sqrt(v2[k] / bc2) + h["eps"])
        if decay[k]:
            upd = upd + h["wd"] * p[k]
        p2[k] = p[k] - lr * upd
    return p2, m2, v2
