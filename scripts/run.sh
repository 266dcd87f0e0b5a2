#!/usr/bin/env bash
# `make run`: brings the whole system up locally and prints the URL to open.
#
#   - Kafka: the development broker on 127.0.0.1:9092 (scripts/kafka.sh), unless SOUNDLINE_KAFKA_BROKERS names
#     brokers to use instead (comma-separated host:port);
#   - the web app: `trunk watch` builds it into dist/ (SOUNDLINE_RUN_DIST) and builds it again whenever a file
#     under www/, web/ or shared/ changes (reload the page to get the new build);
#   - the relay (soundline-relay serve) on http://127.0.0.1:8080 (SOUNDLINE_LISTEN), producing to topic
#     $SOUNDLINE_TOPIC (default aicp-sound), serving dist/ and the WebSockets from one origin.
#
# Why the relay serves the page, and not `trunk serve`: Trunk 0.21's proxy does not pass `Sec-WebSocket-Protocol`
# through, and the page offers `soundline.v1` (and the access token, `bearer.<token>`) as subprotocols, so
# Chromium refused every proxied socket and nothing could be recorded. Served by the relay, the page meets the
# relay exactly as it does in production: one origin, the relay's Content-Security-Policy and cache headers, no
# proxy in between. Any other SOUNDLINE_* setting (README, Configuration) reaches the relay as it is.
#
# Ctrl+C stops the relay and the web app's watcher; the broker keeps running for the next `make run`
# (`make kafka-stop`). `tests/tests/make_run.rs` runs this script as it is and records through its page.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

export SOUNDLINE_LISTEN="${SOUNDLINE_LISTEN:-127.0.0.1:8080}"
dist="${SOUNDLINE_RUN_DIST:-$REPO_ROOT/dist}"
mkdir -p "$dist"
dist="$(cd "$dist" && pwd)"

if [[ -z "${SOUNDLINE_KAFKA_BROKERS:-}" ]]; then
  bash scripts/kafka.sh start
  export SOUNDLINE_KAFKA_BROKERS="127.0.0.1:${KAFKA_PORT:-9092}"
fi

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    pkill -TERM -P "$pid" 2>/dev/null || true # trunk's cargo and wasm-bindgen
    kill -TERM "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building the relay"
cargo build -p soundline-relay --locked
relay_bin="$(target_dir)/debug/soundline-relay"

say "building the web app into $dist (trunk watch: rebuilt on every change)"
stamp="$(mktemp)"
trunk watch --dist "$dist" &
pids+=($!)
trunk_pid=$!
until [[ "$dist/index.html" -nt "$stamp" ]] && compgen -G "$dist/*.wasm" >/dev/null; do
  kill -0 "$trunk_pid" 2>/dev/null || die "trunk watch exited before its first build (see its output above)"
  sleep 0.5
done
rm -f "$stamp"

SOUNDLINE_STATIC_DIR="$dist" "$relay_bin" serve &
pids+=($!)
relay_pid=$!
for _ in $(seq 1 150); do
  curl -fsS "http://$SOUNDLINE_LISTEN/healthz" >/dev/null 2>&1 && break
  kill -0 "$relay_pid" 2>/dev/null || die "the relay exited during start-up (see its log above)"
  sleep 0.2
done

say "Kafka: $SOUNDLINE_KAFKA_BROKERS   relay: http://$SOUNDLINE_LISTEN (metrics at /metrics, readiness at /readyz)"
say "open http://$SOUNDLINE_LISTEN/   (Ctrl+C stops the relay and the web app)"
status=0
wait -n "$relay_pid" "$trunk_pid" || status=$?
# 0 or a signal's status: stopped by Ctrl+C (or SIGTERM). Anything else: one of them failed.
((status == 0 || status > 128)) && exit 0
die "$(kill -0 "$relay_pid" 2>/dev/null && echo "trunk watch" || echo "the relay") exited with status $status (see its output above)"
