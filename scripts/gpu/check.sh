#!/usr/bin/env bash
# The CUDA checks and benchmarks, run on the GPU machine from what
# prepare.sh carried (see there). Writes everything under $OUT; each step's
# status goes in $OUT/steps.txt so one failure does not hide the others.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"   # gpu-carry/
bin="$here/bin/mlstack"
export MLSTACK_CUDA_CACHE="$here/bin/cuda-cache"
out="${OUT:-/tmp/gpu-out}"
mkdir -p "$out"
step() { local name=$1; shift; echo "== $name"; "$@" >"$out/$name.log" 2>&1; echo "$name exit $?" | tee -a "$out/steps.txt"; tail -n 40 "$out/$name.log"; }

step nvidia-smi nvidia-smi
# 1. Every kernel variant against its CPU reference, then timed beside a
#    device-to-device copy (achieved GB/s and % of copy bandwidth).
step kernels "$bin" kernels bench --iters 50 --out "$out/kernels-cuda.json"
# 2. End to end on the real model: CUDA greedy text == CPU greedy text.
model="$here/model.gguf"
if [ -f "$here/model-a/part" ] && [ -f "$here/model-b/part" ]; then
  cat "$here/model-a/part" "$here/model-b/part" > "$model"
  if [ "$(sha256sum "$model" | awk '{print $1}')" = "$(cat "$here/model-b/sha256")" ]; then
    prompt="The capital of France is"
    for dev in cpu cuda; do
      "$bin" infer generate --model "$model" --prompt "$prompt" --max-tokens 32 --device "$dev" \
        >"$out/generate-$dev.txt" 2>"$out/generate-$dev.log"
      echo "generate-$dev exit $?" | tee -a "$out/steps.txt"
    done
    if cmp -s "$out/generate-cpu.txt" "$out/generate-cuda.txt"; then
      echo "generate-equal exit 0" | tee -a "$out/steps.txt"
    else
      echo "generate-equal exit 1 (compare generate-cpu.txt and generate-cuda.txt)" | tee -a "$out/steps.txt"
    fi
    # 3. Prefill and decode tokens/s on the GPU, graphs on and off.
    step bench-engine-cuda "$bin" infer bench-engine --model "$model" --device cuda --systems mlstack --repeats 5 --out "$out/infer-engine-cuda.json"
    MLSTACK_CUDA_GRAPHS=0 step bench-engine-cuda-nographs "$bin" infer bench-engine --model "$model" --device cuda --systems mlstack --repeats 5 --out "$out/infer-engine-cuda-nographs.json"
  else
    echo "model checksum mismatch: skipped the model steps" | tee -a "$out/steps.txt"
  fi
else
  echo "no model parts carried: skipped the model steps" | tee -a "$out/steps.txt"
fi
# 4. The peers on the same device: PyTorch SDPA and a Triton kernel
#    (flex_attention, compiled by inductor) on the attention shapes, and
#    Hugging Face transformers decoding a random-weight model of
#    SmolLM2-135M's shapes (bf16, static cache, torch.compile).
step torch-peers python3 "$here/scripts/torch_peers.py" --out "$out/torch-peers.json"
cat "$out/steps.txt"
