#!/usr/bin/env python3
"""The CUDA kernels' peers, measured on the GPU machine (scripts/gpu/check.sh).

Same shapes as `mlstack kernels bench` (SmolLM2-135M: 9 query heads, 3 KV
heads, head_dim 64, f16 cache):
  - PyTorch's scaled_dot_product_attention (its flash / memory-efficient
    kernels, GQA through enable_gqa) on decode and prefill attention;
  - a Triton kernel: flex_attention compiled by torch.compile (inductor
    writes and autotunes a Triton kernel for the mask);
  - Hugging Face transformers decoding a random-weight LlamaConfig of
    SmolLM2-135M's shapes in bf16 with a static cache and torch.compile,
    at batch 1 and 16 (tokens/s of the decode steps).
Prints a table and writes the JSON convention (flat rows of system,
workload, metric, value, unit). A peer that cannot run here (a missing
package) is reported as skipped with the reason, never as a number.
"""
import argparse
import json
import platform
import statistics
import sys
import time

import torch

N_HEADS, N_KV, HD = 9, 3, 64


def time_us(fn, iters=50, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b) * 1000.0)
    return statistics.median(samples)


def attention_rows(rows, skipped):
    dev = "cuda"
    # Decode: one query per sequence over ctx cached positions.
    for batch, ctx in [(1, 128), (1, 1024), (16, 1024), (64, 4096)]:
        q = torch.randn(batch, N_HEADS, 1, HD, device=dev, dtype=torch.float16)
        k = torch.randn(batch, N_KV, ctx, HD, device=dev, dtype=torch.float16)
        v = torch.randn_like(k)
        name = f"paged_attention_decode_b{batch}_ctx{ctx}"
        bytes_ = batch * ctx * N_KV * HD * 2 * 2
        t = time_us(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        rows += [row("torch-sdpa", name, "time_us", t, "us"), row("torch-sdpa", name, "gbytes_per_sec", bytes_ / t / 1e3, "GB/s")]
        try:
            from torch.nn.attention.flex_attention import flex_attention
            flex = torch.compile(flex_attention, dynamic=False)
            t = time_us(lambda: flex(q, k, v, enable_gqa=True))
            rows += [row("triton-flex", name, "time_us", t, "us"), row("triton-flex", name, "gbytes_per_sec", bytes_ / t / 1e3, "GB/s")]
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            skipped.append(f"triton-flex {name}: {type(e).__name__}: {e}")
    # Prefill: the last n_q positions of a ctx-long sequence, causal.
    for n_q, ctx in [(128, 128), (512, 1024)]:
        start = ctx - n_q
        q = torch.randn(1, N_HEADS, n_q, HD, device=dev, dtype=torch.float16)
        k = torch.randn(1, N_KV, ctx, HD, device=dev, dtype=torch.float16)
        v = torch.randn_like(k)
        # Causal with the queries at the end of the keys: the lower-right
        # alignment, which SDPA's fused kernels take (a boolean mask would
        # send it to the slow math path).
        from torch.nn.attention.bias import causal_lower_right
        mask = causal_lower_right(n_q, ctx)
        name = f"flash_attention_prefill_q{n_q}_ctx{ctx}"
        flops = 4.0 * n_q * N_HEADS * HD * (start + n_q / 2)
        try:
            t = time_us(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))
            rows += [row("torch-sdpa", name, "time_us", t, "us"), row("torch-sdpa", name, "tflops", flops / t / 1e6, "TFLOP/s")]
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            skipped.append(f"torch-sdpa {name}: {type(e).__name__}: {e}")
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            bm = create_block_mask(lambda b, h, qi, ki: qi + start >= ki, None, None, n_q, ctx, device=dev)
            flex = torch.compile(flex_attention, dynamic=False)
            t = time_us(lambda: flex(q, k, v, block_mask=bm, enable_gqa=True))
            rows += [row("triton-flex", name, "time_us", t, "us"), row("triton-flex", name, "tflops", flops / t / 1e6, "TFLOP/s")]
        except Exception as e:  # noqa: BLE001
            skipped.append(f"triton-flex {name}: {type(e).__name__}: {e}")


def hf_rows(rows, skipped, new_tokens=128):
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        skipped.append(f"transformers: not installed ({e})")
        return
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=N_HEADS, num_key_value_heads=N_KV, max_position_embeddings=8192,
                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    model.generation_config.cache_implementation = "static"
    model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    for batch in (1, 16):
        ids = torch.randint(0, cfg.vocab_size, (batch, 128), device="cuda")
        gen = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

        def run(n):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, **gen)
            torch.cuda.synchronize()
            return time.perf_counter() - t0

        run(new_tokens)  # compiles and captures
        run(new_tokens)
        prefill = statistics.median(run(1) for _ in range(3))
        total = statistics.median(run(new_tokens) for _ in range(3))
        tps = batch * (new_tokens - 1) / max(total - prefill, 1e-9)
        rows.append(row("hf-transformers", f"decode_b{batch}_ctx128", "tokens_per_sec", tps, "tokens/s"))


def row(system, workload, metric, value, unit):
    return {"system": system, "workload": workload, "metric": metric, "value": float(value), "unit": unit}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device visible to torch", file=sys.stderr)
        sys.exit(2)
    rows, skipped = [], []
    attention_rows(rows, skipped)
    hf_rows(rows, skipped)
    for r in rows:
        print(f"{r['system']:<16} {r['workload']:<40} {r['metric']:<16} {r['value']:>12.2f} {r['unit']}")
    for s in skipped:
        print(f"skipped: {s}")
    doc = {
        "component": "kernels",
        "bench": "cuda-peers",
        "machine": {"device": torch.cuda.get_device_name(0), "host": platform.node()},
        "config": {"torch": torch.__version__, "skipped": skipped},
        "results": rows,
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
