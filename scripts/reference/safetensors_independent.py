#!/usr/bin/env python3
"""An independently written Hugging Face Llama checkpoint and its logits.

mlstack's safetensors reader must load what the field writes, not only what
mlstack's own writer writes. This script writes a tiny random Llama with the
`safetensors` Python package (numpy arrays; some tensors in float16, the rest
in float32; untied head) under Hugging Face's names and layouts
(`model.layers.{i}.self_attn.q_proj.weight`: (out, in), Q/K rows in HF order,
half-split RoPE as in `transformers`' `rotate_half`), and computes the logits
of a token sequence with a plain numpy forward pass written from the
`transformers` LlamaModel definition, in float64.

Output (committed; `infer/tests/safetensors.rs` reads it, no Python at test
time):
  infer/tests/data/independent/model.safetensors
  infer/tests/data/independent/config.json
  infer/tests/data/independent/expected.json   {"tokens": [...], "logits": [[...], ...]}

Run: pip install numpy safetensors && python3 scripts/reference/safetensors_independent.py
"""

import json
import os

import numpy as np
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "infer", "tests", "data", "independent")

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 64,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}

# Stored as float16 (the reader converts); the reference uses the rounded values.
HALF = {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}


def weights(rng):
    c = CONFIG
    d, ff, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd, nh, nkv = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    t = {}

    def mat(rows, cols, scale):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    t["model.embed_tokens.weight"] = mat(v, d, 1.0)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        t[p + "self_attn.q_proj.weight"] = mat(nh * hd, d, d ** -0.5)
        t[p + "self_attn.k_proj.weight"] = mat(nkv * hd, d, d ** -0.5)
        t[p + "self_attn.v_proj.weight"] = mat(nkv * hd, d, d ** -0.5)
        t[p + "self_attn.o_proj.weight"] = mat(d, nh * hd, (nh * hd) ** -0.5)
        t[p + "mlp.gate_proj.weight"] = mat(ff, d, d ** -0.5)
        t[p + "mlp.up_proj.weight"] = mat(ff, d, d ** -0.5)
        t[p + "mlp.down_proj.weight"] = mat(d, ff, ff ** -0.5)
    t["model.norm.weight"] = (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    t["lm_head.weight"] = mat(v, d, d ** -0.5)
    stored = {}
    for k, a in t.items():
        half = any(h in k for h in HALF)
        stored[k] = a.astype(np.float16) if half else a
    return stored


def rms_norm(x, w, eps):
    # transformers' LlamaRMSNorm: x / sqrt(mean(x^2) + eps) * w
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward(t, tokens):
    """Logits (n, vocab), float64, from transformers' LlamaModel."""
    c = CONFIG
    w = {k: v.astype(np.float64) for k, v in t.items()}
    hd, nh, nkv = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    eps = c["rms_norm_eps"]
    n = len(tokens)
    x = w["model.embed_tokens.weight"][tokens]  # (n, d)
    inv_freq = 1.0 / (c["rope_theta"] ** (np.arange(0, hd, 2) / hd))  # (hd/2,)
    ang = np.outer(np.arange(n), inv_freq)  # (n, hd/2)
    emb = np.concatenate([ang, ang], axis=-1)  # (n, hd)
    cos, sin = np.cos(emb), np.sin(emb)
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, nh, hd).transpose(1, 0, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = nh // nkv
        k = np.repeat(k, rep, axis=0)  # (nh, n, hd)
        v = np.repeat(v, rep, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask  # (nh, n, n)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s = s / s.sum(axis=-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(n, nh * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    return x @ w["lm_head.weight"].T


def main():
    rng = np.random.default_rng(20261130)
    t = weights(rng)
    os.makedirs(OUT, exist_ok=True)
    save_file(t, os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    tokens = [int(x) for x in rng.integers(0, CONFIG["vocab_size"], size=12)]
    logits = forward(t, np.array(tokens))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"tokens": tokens, "logits": [[round(float(v), 6) for v in row] for row in logits]}, f)
    print(f"wrote {OUT}: {len(t)} tensors, logits {logits.shape}, |max| {np.abs(logits).max():.3f}")


if __name__ == "__main__":
    main()
