#!/usr/bin/env python3
"""llama.cpp's side of `mlstack infer bench-engine`: prefill and decode speed of
llama-cpp-python on the same GGUF, the same prompt token ids and the same
thread count, measured the way mlstack measures itself. Prints one JSON object.

  python3 scripts/reference/llamacpp_bench.py --model M.gguf --threads 2 \\
      --prompt-ids ids.json --decode-tokens 64 --repeats 3

prefill_N: time of one llm.eval() of the first N prompt ids on a fresh
context (llm.reset()), median over repeats, after one unmeasured warm-up pass. decode_ctxN: after that prefill,
greedy single-token llm.eval() steps; tokens/s over `--decode-tokens` steps.
peak_rss_mb: this process's VmHWM (the Python interpreter included).
"""
import argparse
import json
import statistics
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ids = json.load(open(args.prompt_ids))
    llm = Llama(
        model_path=args.model,
        n_ctx=2048,
        n_batch=2048,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    out = {"llama_cpp_python": llama_cpp.__version__, "threads": args.threads}
    # One unmeasured pass first (a prefill and a few decode steps): the
    # benchmark starts this script once per repeat, so without it every
    # sample would be a cold process's first eval, while mlstack's engine
    # stays warm between repeats. mlstack runs the same warm-up.
    llm.reset()
    llm.eval(ids[:128])
    for _ in range(4):
        llm.eval([ids[0]])
    for n in (128, 1024):
        prompt = ids[:n]
        pre, dec = [], []
        for _ in range(args.repeats):
            llm.reset()
            t = time.perf_counter()
            llm.eval(prompt)
            pre.append(n / (time.perf_counter() - t))
            ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            tok = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))))
            t = time.perf_counter()
            for _ in range(args.decode_tokens):
                llm.eval([tok])
                ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
                tok = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))))
            dec.append(args.decode_tokens / (time.perf_counter() - t))
        out[f"prefill_{n}"] = statistics.median(pre)
        out[f"decode_ctx{n}"] = statistics.median(dec)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
