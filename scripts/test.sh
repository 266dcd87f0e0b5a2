#!/usr/bin/env bash
# `make test`: every check and every test, against a real Kafka broker this script starts (and stops).
#
#   1. cargo fmt --check
#   2. clippy -D warnings, host (whole workspace, all targets) and wasm32 (shared + web)
#   3. a fresh single-node Kafka with a SASL listener (scripts/kafka.sh), and a fresh three-node KRaft cluster
#      (replication 3, min.insync.replicas 2; scripts/kafka.sh cluster), both started while 1-2 run
#   4. trunk build --release of the web app into dist/ (the browser tests load it)
#   5. the web crate's tests as WebAssembly in headless Chromium (wasm-bindgen-test + chromedriver)
#   6. cargo test: unit, property, golden, integration and end-to-end browser tests against that broker, the
#      hostile-input battery, the fault tests and the 2-minute soak
#   (and before the broker is needed: a 10 s smoke run of each fuzz target)
#   (and, while the broker starts: the relay binary, and the deployment files via scripts/check-deploy.sh)
#
# Settings: SOUNDLINE_TEST_KAFKA_PORT (default 19092; uses that port and the next four),
#           SOUNDLINE_TEST_CLUSTER_PORT (default 19192; the cluster uses that port and the next five).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

export KAFKA_PORT="${SOUNDLINE_TEST_KAFKA_PORT:-19092}"
export KAFKA_STATE_DIR="${TMPDIR:-/tmp}/soundline-test-kafka-$KAFKA_PORT"
export KAFKA_CLUSTER_PORT="${SOUNDLINE_TEST_CLUSTER_PORT:-19192}"
export KAFKA_CLUSTER_DIR="${TMPDIR:-/tmp}/soundline-test-cluster-$KAFKA_CLUSTER_PORT"
# Integration tests must never skip for want of a broker; tests/src/lib.rs fails them instead.
export CI="${CI:-}"

declare -a timings=()
run_step() { # run_step NAME CMD...: run, time, and stop everything on failure
  local name="$1" start=$SECONDS
  shift
  say "$name"
  if ! "$@"; then
    die "step failed: $name"
  fi
  timings+=("$(printf '%5ss  %s' $((SECONDS - start)) "$name")")
}

kafka_log="$(mktemp)"
cluster_log="$(mktemp)"
cleanup() {
  bash scripts/kafka.sh stop >/dev/null 2>&1 || true
  bash scripts/kafka.sh cluster stop >/dev/null 2>&1 || true
  rm -f "$kafka_log" "$cluster_log"
}
trap cleanup EXIT

# A fresh broker for every run: no topics or records left from an earlier one.
bash scripts/kafka.sh stop >/dev/null 2>&1 || true
rm -rf "$KAFKA_STATE_DIR"
bash scripts/kafka.sh start --sasl >"$kafka_log" 2>&1 &
kafka_pid=$!
bash scripts/kafka.sh cluster stop >/dev/null 2>&1 || true
rm -rf "$KAFKA_CLUSTER_DIR"
bash scripts/kafka.sh cluster start >"$cluster_log" 2>&1 &
cluster_pid=$!

run_step "cargo fmt --check" cargo fmt --all --check
run_step "clippy (host)" cargo clippy --workspace --all-targets --locked -- -D warnings
run_step "clippy (wasm32)" cargo clippy -p soundline-shared -p soundline-web --lib --target wasm32-unknown-unknown --locked -- -D warnings

# The SIGTERM tests run the real binary; tests find it beside their own executable.
# The fuzz targets' smoke run (10 s each; `scripts/fuzz.sh` alone runs 10 minutes each) while the broker starts.
# Its own target dir: the fuzz build uses nightly and sanitizer flags.
run_step "fuzz smoke (frame, control, envelope decoders; 10 s each)" env -u CARGO_TARGET_DIR bash scripts/fuzz.sh 10

# The SIGTERM, soak and hostile-input tests run the real binaries; tests find them beside their own executable.
run_step "cargo build (relay and loadgen binaries)" cargo build -p soundline-relay -p soundline-loadgen --locked
SOUNDLINE_RELAY_BIN="$(target_dir)/debug/soundline-relay"
SOUNDLINE_LOADGEN_BIN="$(target_dir)/debug/soundline-loadgen"
SOUNDLINE_FLOOR_BIN="$(target_dir)/debug/soundline-floor"
export SOUNDLINE_RELAY_BIN SOUNDLINE_LOADGEN_BIN SOUNDLINE_FLOOR_BIN
run_step "deployment files (hadolint, kubernetes-validate, compose schema, relay config)" bash scripts/check-deploy.sh

if ! wait "$kafka_pid"; then
  cat "$kafka_log" >&2
  die "the test Kafka broker did not start (see above)"
fi
cat "$kafka_log" >&2
eval "$(bash scripts/kafka.sh env | sed 's/^/export /')"
if ! wait "$cluster_pid"; then
  cat "$cluster_log" >&2
  die "the test Kafka cluster did not start (see above)"
fi
cat "$cluster_log" >&2
eval "$(bash scripts/kafka.sh cluster env | sed 's/^/export /')"
# For tests that run Kafka's own Java tools (the console producer checks the partitioner).
SOUNDLINE_KAFKA_CLASSPATH="$(bash scripts/kafka.sh classpath)"
export SOUNDLINE_KAFKA_CLASSPATH

run_step "trunk build --release" trunk build --release --locked
[[ -f dist/index.html ]] && compgen -G 'dist/*.wasm' >/dev/null || die "trunk build did not produce dist/index.html and a .wasm"
run_step "web crate tests in headless Chromium (wasm-bindgen-test)" \
  env CHROMEDRIVER="$(command -v chromedriver)" cargo test -p soundline-web --target wasm32-unknown-unknown --locked
run_step "cargo test (unit, property, integration and browser tests against Kafka at $SOUNDLINE_TEST_KAFKA)" \
  cargo test --workspace --locked

say "all steps passed"
printf '%s\n' "${timings[@]}" >&2
