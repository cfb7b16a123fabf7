#!/usr/bin/env bash
# Builds llama.cpp's own C++ server (`llama-server`: parallel slots,
# continuous batching), the serving benchmark's peer, and its benchmark tool
# (`llama-bench`), the engine benchmark's peer, beside it, from the llama.cpp
# tree that ships inside llama-cpp-python's source archive (PyPI publishes
# only the archive). Idempotent: prints the server's path, building both
# only when either is missing. About 10 minutes on 2 cores.
#
#   scripts/peers/llama-server.sh           # → ~/.cache/mlstack/llama-server-0.3.36/llama-server
#                                           #   (and llama-bench in the same folder)
#
# On a CPU that reports AMX, the native build crashed in libggml-cpu (see
# ../shared/PEERS.md), so there it builds the AVX2/AVX-512 paths without AMX.
set -euo pipefail
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
dest="${MLSTACK_PEERS_DIR:-$HOME/.cache/mlstack}/llama-server-$version"
bin="$dest/llama-server"
bench="$dest/llama-bench"
if [ -x "$bin" ] && [ -x "$bench" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! command -v cmake >/dev/null 2>&1; then
  python3 -m pip install --quiet cmake >&2
  # A non-root pip puts its scripts in ~/.local/bin, which may not be on PATH.
  PATH="$PATH:$HOME/.local/bin"
fi
# The archive's address from PyPI's simple index (pip download would try to
# build the package's metadata, which needs its whole build toolchain).
url="$(curl -fsSL https://pypi.org/simple/llama-cpp-python/ \
  | grep -o "https://[^\"#]*llama_cpp_python-$version.tar.gz" | head -n 1)"
[ -n "$url" ] || { echo "llama_cpp_python-$version.tar.gz not on PyPI's index" >&2; exit 1; }
curl -fsSL -o "$work/src.tar.gz" "$url"
echo "$sha256  $work/src.tar.gz" | sha256sum -c --quiet - >&2
tar -xzf "$work/src.tar.gz" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
flags=(-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
       -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF)
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  flags+=(-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
          -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
echo "building llama-server $version (${flags[*]})" >&2
cmake -S "$src" -B "$work/build" "${flags[@]}" >&2
cmake --build "$work/build" --target llama-server llama-bench -j "$(nproc)" >&2
cp "$work/build/bin/llama-bench" "$bench.tmp"
mv "$bench.tmp" "$bench"
cp "$work/build/bin/llama-server" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"
