#!/usr/bin/env bash
# Two relay builds side by side: the relay's CPU per 1000 frames/s at real time, runs alternated on one broker.
#
#   bash scripts/bench-ab.sh BEFORE_BIN AFTER_BIN     e.g. a copy of target/release/soundline-relay made before a change
#
# Per round, one run of each (BEFORE first), each into a fresh 6-partition topic deleted afterwards: AB_RECORDERS
# (2000) real-time recorders of 200 ms frames + AB_SUBSCRIBERS (200) one-car subscribers for AB_SECONDS (40) after
# a 5 s ramp; from /proc the relay's CPU, its kernel share, page faults and context switches per frame; from
# /metrics its records per produce request. AB_ROUNDS (3) rounds; AB_CODEC (zstd) is the relays' compression;
# AB_FRAME_MS the frames' length. Before round 1 the fresh broker takes AB_WARMUP_S (60; 0: none) of that load,
# not measured.
# AB_MAX_RATE=1 runs AB_RECORDERS (16) recorders as fast as acks allow instead (AB_WINDOW (64) unacked frames each,
# 100 ms frames, no subscribers): then frames/s is the figure to compare. Prints each run and, at the end, the
# means and AFTER / BEFORE.
# AB_BEFORE_LOADGEN=BIN drives the BEFORE runs with another load generator build (the same relay binary given
# twice then compares the instruments: what the load generator's own CPU on these two cores costs the relay).
# Single runs on this kind of machine drift by a quarter from one hour to the next (BENCHMARKS.md); alternated
# runs drift together, so their ratio is what to read.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

[[ $# -eq 2 && -x "$1" && -x "$2" ]] || die "usage: bash scripts/bench-ab.sh BEFORE_RELAY_BIN AFTER_RELAY_BIN"
before="$(realpath "$1")" after="$(realpath "$2")"
export KAFKA_PORT="${BENCH_KAFKA_PORT:-29092}"
export KAFKA_STATE_DIR="${TMPDIR:-/tmp}/soundline-bench-kafka-$KAFKA_PORT"
bootstrap="127.0.0.1:$KAFKA_PORT"
listen="127.0.0.1:${BENCH_RELAY_PORT:-28080}"
out="target/bench/ab"
mkdir -p "$out"
cp_jars="$(bash scripts/kafka.sh classpath)"

stop_bench_on_exit

say "building the load generator (release)"
cargo build --release --locked -p soundline-loadgen
loadgen="$(target_dir)/release/soundline-loadgen"
bash scripts/kafka.sh stop >/dev/null 2>&1 || true
rm -rf "$KAFKA_STATE_DIR"
KAFKA_HEAP=1g bash scripts/kafka.sh start
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# The fresh broker's first minute of load would fall on round 1's BEFORE alone (common.sh).
if [[ -z "${AB_MAX_RATE:-}" ]]; then
  warm_up_broker "$before" "$loadgen" "${AB_WARMUP_S:-60}" "${AB_RECORDERS:-2000}" "${AB_SUBSCRIBERS:-200}"
fi

run() { # run LABEL BIN
  local label="$1" bin="$2" topic
  topic="ab-$1-$(date +%s)"
  start_bench_relay "$bin" "$topic" 6 "${AB_CODEC:-zstd}" "$out/relay-$label.log"
  if [[ -n "${AB_MAX_RATE:-}" ]]; then
    set -- --recorders "${AB_RECORDERS:-16}" --max-rate --window "${AB_WINDOW:-64}" --frame-ms "${AB_FRAME_MS:-100}" \
      --ramp-s 0 --for-s "${AB_SECONDS:-40}"
  else
    set -- --recorders "${AB_RECORDERS:-2000}" --subscribers "${AB_SUBSCRIBERS:-200}" --ramp-s 5 \
      --frame-ms "${AB_FRAME_MS:-200}" --duration-s "${AB_SECONDS:-40}"
  fi
  local driver="$loadgen"
  [[ $label == before-* && -n "${AB_BEFORE_LOADGEN:-}" ]] && driver="$(realpath "$AB_BEFORE_LOADGEN")"
  "$driver" --relay "$listen" --kafka "$bootstrap" --topic "$topic" --relay-pid "$relay_pid" --json "$@" \
    >"$out/$label.json"
  # Records per produce request: what a batch's fixed costs (a fresh zstd context, the request) are shared by.
  per_batch="$(curl -fsS "http://$listen/metrics" | awk '$1 == "soundline_records_produced_total" { r = $2 }
    $1 == "soundline_produce_batches_total" { b = $2 } END { if (b > 0) printf "%.1f", r / b }')"
  stop_bench_relay
  java -cp "$cp_jars" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --delete --topic "$topic" \
    >/dev/null 2>&1 || true
  python3 - "$out/$label.json" "$label" "$per_batch" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
per_1000 = j["relay"]["cpu_share"] / j["frames_per_s"] * 1000
print(f"{sys.argv[2]}: {per_1000:.4f} cores per 1000 frames/s ({j['frames_per_s']:.0f} frames/s), "
      f"ack p99 {j['ack_ms']['p99']:.1f} ms, fan-out p99 {j['fanout_ms']['p99']} ms, lost {j['lost']}, "
      f"{sys.argv[3] or '?'} records per batch, {j['relay']['minor_faults_per_frame']:.2f} page faults and "
      f"{j['relay']['context_switches_per_frame']:.2f} context switches per frame, "
      f"{j['relay']['system_share'] / j['relay']['cpu_share']:.0%} of the CPU in the kernel"
      + (f", load generator {j['load_generator']['cpu_share']:.2f} cores" if j.get("load_generator") else ""))
PY
}

for r in $(seq 1 "${AB_ROUNDS:-3}"); do
  run "before-$r" "$before"
  run "after-$r" "$after"
done
python3 - "$out" "${AB_ROUNDS:-3}" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
runs = {side: [json.load(open(f"{out}/{side}-{r}.json")) for r in range(1, rounds + 1)] for side in ("before", "after")}
per_1000 = lambda j: j["relay"]["cpu_share"] / j["frames_per_s"] * 1000
b, a = (statistics.mean(per_1000(j) for j in runs[side]) for side in ("before", "after"))
print(f"before {b:.4f}, after {a:.4f} cores per 1000 frames/s (means of {rounds}); after / before {a / b:.3f}")
rb, ra = (statistics.mean(j["frames_per_s"] for j in runs[side]) for side in ("before", "after"))
print(f"before {rb:.0f}, after {ra:.0f} frames/s acked (means); after / before {ra / rb:.3f}")
PY
