# Shared by the scripts in this folder: where caches live, how errors are said. Sourced, never run.
# shellcheck shell=bash

# Everything slow to fetch or build is cached here, outside the repo, so fresh clones reuse it.
SOUNDLINE_CACHE="${SOUNDLINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/soundline}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SOUNDLINE_CACHE REPO_ROOT

# One line naming the problem, on stderr, then exit 1.
die() { printf 'soundline: %s\n' "$*" >&2; exit 1; }
say() { printf '==> %s\n' "$*" >&2; }

# Where cargo puts its builds (honours CARGO_TARGET_DIR, as CI sets it).
target_dir() {
  cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}

need() { # need CMD "what it is for and how to get it"
  command -v "$1" >/dev/null 2>&1 || die "$1 is missing: $2"
}

# The benchmarks' cleanup: on exit, stop the relay whose pid is in $relay_pid (if any) and the benchmark broker.
stop_bench_on_exit() {
  relay_pid=""
  trap 'if [[ -n "$relay_pid" ]]; then kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null; fi; bash "$REPO_ROOT/scripts/kafka.sh" stop >/dev/null 2>&1 || true' EXIT
}

# start_bench_relay BIN TOPIC PARTITIONS CODEC LOG: a relay for the benchmarks (per-client limits out of the way)
# on $listen against $bootstrap, logging to LOG; its pid in $relay_pid once /readyz answers.
start_bench_relay() {
  SOUNDLINE_KAFKA_BROKERS="$bootstrap" SOUNDLINE_TOPIC="$2" SOUNDLINE_PARTITIONS="$3" SOUNDLINE_LISTEN="$listen" \
    SOUNDLINE_COMPRESSION="$4" SOUNDLINE_MAX_CONNECTIONS=20000 SOUNDLINE_MAX_CONNECTIONS_PER_CLIENT=20000 \
    SOUNDLINE_MAX_MESSAGES_PER_S=1000000 SOUNDLINE_MAX_BYTES_PER_S=10000000000 "$1" serve >"$5" 2>&1 &
  relay_pid=$!
  until curl -fsS "http://$listen/readyz" >/dev/null 2>&1; do
    kill -0 "$relay_pid" 2>/dev/null || die "the relay exited before it was ready (its log: $5)"
    sleep 0.2
  done
}
stop_bench_relay() { kill "$relay_pid"; wait "$relay_pid" 2>/dev/null || true; relay_pid=""; }

# warm_up_broker RELAY_BIN LOADGEN_BIN SECONDS RECORDERS SUBSCRIBERS: real-time load the fresh benchmark broker
# takes before anything is measured on it, into a topic of its own, deleted afterwards; its report goes to
# $out/warmup.json and is not part of any result. A fresh broker's JVM is slower in its first minute of load
# (interpreted, then compiling its hot paths, its heap growing): on 2026-12-03 the first two 60 s runs on a fresh
# broker measured ack p99 214 and 185 ms, the next two 77 and 89 ms, the same relay in all four (BENCHMARKS.md).
# Without it the first step measures the broker's start, which a deployed relay never sees. SECONDS=0: none.
warm_up_broker() {
  [[ "$3" == 0 ]] && return 0
  local topic
  topic="warmup-$(date +%s)"
  say "warming the fresh broker up: $3 s of $4 real-time recorders + $5 subscribers (not measured)"
  start_bench_relay "$1" "$topic" 6 zstd "$out/relay-warmup.log"
  "$2" --relay "$listen" --kafka "$bootstrap" --topic "$topic" --relay-pid "$relay_pid" --json --recorders "$4" \
    --subscribers "$5" --ramp-s 5 --frame-ms 200 --duration-s "$3" >"$out/warmup.json"
  stop_bench_relay
  java -cp "$cp_jars" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --delete --topic "$topic" \
    >/dev/null 2>&1 || true
}
