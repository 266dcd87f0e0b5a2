#!/usr/bin/env bash
# `make run`: brings the whole system up locally and prints the URL to open.
#
#   - Kafka: the development broker on 127.0.0.1:9092 (scripts/kafka.sh), unless SOUNDLINE_KAFKA_BROKERS names
#     brokers to use instead (comma-separated host:port);
#   - the relay (soundline-relay serve) on 127.0.0.1:8081, producing to topic $SOUNDLINE_TOPIC (default aicp-sound);
#   - the web app, built and served by `trunk serve` on http://127.0.0.1:8080, which forwards /ws/* to the relay.
#
# Ctrl+C stops the relay and the web app; the broker keeps running for the next `make run` (`make kafka-stop`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

WEB_PORT=8080
RELAY_ADDR=127.0.0.1:8081 # Trunk.toml's proxy points here
if [[ -z "${SOUNDLINE_KAFKA_BROKERS:-}" ]]; then
  bash scripts/kafka.sh start
  export SOUNDLINE_KAFKA_BROKERS="127.0.0.1:${KAFKA_PORT:-9092}"
fi

say "building the relay"
cargo build --release -p soundline-relay --locked
relay_bin="$(target_dir)/release/soundline-relay"

# The page comes from trunk serve (another origin than the relay behind its proxy): allow it.
SOUNDLINE_ALLOWED_ORIGINS="${SOUNDLINE_ALLOWED_ORIGINS:-http://127.0.0.1:$WEB_PORT,http://localhost:$WEB_PORT}" \
  SOUNDLINE_LISTEN="$RELAY_ADDR" "$relay_bin" serve &
relay_pid=$!
trap 'kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://$RELAY_ADDR/healthz" >/dev/null 2>&1 && break
  kill -0 "$relay_pid" 2>/dev/null || die "the relay exited during start-up (see its log above)"
  sleep 0.2
done

say "Kafka: $SOUNDLINE_KAFKA_BROKERS   relay: http://$RELAY_ADDR (metrics at /metrics, readiness at /readyz)"
say "open http://127.0.0.1:$WEB_PORT/   (Ctrl+C stops the relay and the web app)"
trunk serve --address 127.0.0.1 --port "$WEB_PORT"
