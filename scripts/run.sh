#!/usr/bin/env bash
# `make run`: brings the whole system up locally and prints the URL to open.
#
#   - Kafka: the development broker on 127.0.0.1:9092 (scripts/kafka.sh), unless SOUNDLINE_KAFKA_BROKERS names
#     brokers to use instead (comma-separated host:port);
#   - the web app, built and served by `trunk serve` on http://127.0.0.1:${WEB_PORT:-8080}.
#
# Ctrl+C stops the web app; the broker keeps running for the next `make run` (`make kafka-stop` stops it).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

WEB_PORT="${WEB_PORT:-8080}"
if [[ -z "${SOUNDLINE_KAFKA_BROKERS:-}" ]]; then
  bash scripts/kafka.sh start
  export SOUNDLINE_KAFKA_BROKERS="127.0.0.1:${KAFKA_PORT:-9092}"
fi
say "Kafka: $SOUNDLINE_KAFKA_BROKERS"
say "web app: open http://127.0.0.1:$WEB_PORT/ (Ctrl+C stops it)"
exec trunk serve --address 127.0.0.1 --port "$WEB_PORT"
