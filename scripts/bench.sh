#!/usr/bin/env bash
# `make bench`: the relay against its baselines, side by side, on one fresh broker, in one run.
#
#   1. real time: BENCH_RECORDERS recorders (200 ms frames) + BENCH_SUBSCRIBERS feed subscribers for BENCH_SECONDS:
#      ack and fan-out latency, loss, relay CPU and memory;
#   2. max rate, 1 s frames (~43 KB envelopes) and 100 ms frames (~4.6 KB): frames/s and MB/s acked;
#   3. Kafka's own producer benchmark (ProducerPerformance, the same Kafka's jars) at the same record sizes;
#   4. the old uploader: kafka-python with flush() after every message (bench/old_uploader.py), 1 s frames.
# Prints a table and leaves the raw JSON in target/bench/. The full version: BENCH_FULL=1 make bench.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

full="${BENCH_FULL:-0}"
recorders="${BENCH_RECORDERS:-$([[ $full == 1 ]] && echo 2000 || echo 300)}"
subscribers="${BENCH_SUBSCRIBERS:-$([[ $full == 1 ]] && echo 200 || echo 30)}"
seconds="${BENCH_SECONDS:-$([[ $full == 1 ]] && echo 60 || echo 15)}"
export KAFKA_PORT="${BENCH_KAFKA_PORT:-29092}"
export KAFKA_STATE_DIR="${TMPDIR:-/tmp}/soundline-bench-kafka-$KAFKA_PORT"
out="target/bench"
mkdir -p "$out"
bootstrap="127.0.0.1:$KAFKA_PORT"
listen="127.0.0.1:${BENCH_RELAY_PORT:-28080}"
cp_jars="$(bash scripts/kafka.sh classpath)"
py="$SOUNDLINE_CACHE/benchtools/bin/python"

relay_pid=""
cleanup() {
  [[ -n "$relay_pid" ]] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null
  bash scripts/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "building release binaries"
cargo build --release --locked -p soundline-relay -p soundline-loadgen
bin="$(target_dir)/release"

bash scripts/kafka.sh stop >/dev/null 2>&1 || true
rm -rf "$KAFKA_STATE_DIR"
KAFKA_HEAP=1g bash scripts/kafka.sh start

run_id="$(date +%s)"
start_relay() { # start_relay TOPIC
  SOUNDLINE_KAFKA_BROKERS="$bootstrap" SOUNDLINE_TOPIC="$1" SOUNDLINE_PARTITIONS=6 SOUNDLINE_LISTEN="$listen" \
    SOUNDLINE_MAX_CONNECTIONS=20000 SOUNDLINE_MAX_CONNECTIONS_PER_CLIENT=20000 \
    SOUNDLINE_MAX_MESSAGES_PER_S=1000000 SOUNDLINE_MAX_BYTES_PER_S=10000000000 "$bin/soundline-relay" serve >"$out/relay-$1.log" 2>&1 &
  relay_pid=$!
  for _ in $(seq 1 100); do "$bin/soundline-relay" healthcheck --addr "$listen" 2>/dev/null && break; sleep 0.1; done
  until curl -fsS "http://$listen/readyz" >/dev/null 2>&1; do sleep 0.2; done
}
stop_relay() { kill "$relay_pid"; wait "$relay_pid" 2>/dev/null || true; relay_pid=""; }

loadgen() { # loadgen NAME TOPIC ARGS...
  local name="$1" topic="$2"
  shift 2
  say "loadgen: $name"
  "$bin/soundline-loadgen" --relay "$listen" --kafka "$bootstrap" --topic "$topic" --relay-pid "$relay_pid" --json "$@" \
    | tee "$out/$name.json"
}

# 1. Real time, many recorders and subscribers.
start_relay "rt-$run_id"
ulimit -n 65536 2>/dev/null || true
loadgen realtime "rt-$run_id" --recorders "$recorders" --subscribers "$subscribers" --duration-s "$seconds" \
  --ramp-s 5 --frame-ms 200
stop_relay

# 2. Max rate, 1 s and 100 ms frames.
start_relay "max1s-$run_id"
loadgen max-1s "max1s-$run_id" --recorders 8 --duration-s "$seconds" --frame-ms 1000 --max-rate --window 16 --ramp-s 0
stop_relay
start_relay "max100-$run_id"
loadgen max-100ms "max100-$run_id" --recorders 16 --duration-s "$seconds" --frame-ms 100 --max-rate --window 64 --ramp-s 0
stop_relay

# 3. Kafka's own producer at the same record sizes (acks=all, linger 5 ms, as the relay).
perf() { # perf NAME RECORD_BYTES RECORDS
  local topic="perf-$1-$run_id"
  java -cp "$cp_jars" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --create --topic "$topic" \
    --partitions 6 --replication-factor 1 >/dev/null 2>&1
  say "ProducerPerformance: $1 ($2-byte records)"
  java -cp "$cp_jars" -Dlog4j2.configurationFile="$REPO_ROOT/scripts/kafka/log4j2.properties" \
    -Dsoundline.kafka.log="$out/perf.log" org.apache.kafka.tools.ProducerPerformance --topic "$topic" \
    --num-records "$3" --record-size "$2" --throughput -1 \
    --producer-props bootstrap.servers="$bootstrap" acks=all linger.ms=5 max.request.size=2000000 \
    | tail -n 1 | tee "$out/perf-$1.txt"
}
perf 1s 43000 "$([[ $full == 1 ]] && echo 40000 || echo 4000)"
perf 100ms 4600 "$([[ $full == 1 ]] && echo 300000 || echo 30000)"

# 4. The old uploader, flush after every message.
topic_old="old-$run_id"
java -cp "$cp_jars" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --create --topic "$topic_old" \
  --partitions 6 --replication-factor 1 >/dev/null 2>&1
say "old uploader (kafka-python, flush per message)"
"$py" bench/old_uploader.py --bootstrap "$bootstrap" --topic "$topic_old" --frames 300 --frame-ms 1000 | tee "$out/old.json"

python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
j = lambda n: json.load(open(f"{out}/{n}.json"))
def perf(n):
    line = open(f"{out}/perf-{n}.txt").read()
    rps = float(re.search(r"([\d.]+) records/sec", line).group(1))
    mbs = float(re.search(r"\(([\d.]+) MB/sec\)", line).group(1))
    return rps, mbs
rt, m1, m100, old = j("realtime"), j("max-1s"), j("max-100ms"), j("old")
p1, p100 = perf("1s"), perf("100ms")
rows = [
    ("real time: recorders / subscribers", f"{rt['recorders']} / {rt['subscribers']}"),
    ("  frames sent / acked / in Kafka / lost", f"{rt['frames_sent']} / {rt['frames_acked']} / {rt['frames_in_kafka']} / {rt['lost']}"),
    ("  ack latency p50 / p95 / p99 / max ms", "{p50:.1f} / {p95:.1f} / {p99:.1f} / {max:.1f}".format(**rt["ack_ms"])),
    ("  fan-out latency p50 / p99 ms", "{:.0f} / {:.0f} ({} deliveries)".format(rt["fanout_ms"]["p50"], rt["fanout_ms"]["p99"], rt["fanout_ms"]["seen"])),
    ("  relay CPU share / peak RSS MB", "{:.2f} / {:.1f}".format(rt["relay"]["cpu_share"], rt["relay"]["peak_rss_mb"]) if rt["relay"] else "n/a"),
    ("max rate 1 s frames: frames/s (PCM MB/s)", f"{m1['frames_per_s']:.0f} ({m1['pcm_mb_per_s']:.1f}), lost {m1['lost']}"),
    ("  Kafka ProducerPerformance 43 KB records/s (MB/s)", f"{p1[0]:.0f} ({p1[1]:.1f})"),
    ("  relay / Kafka's producer", f"{m1['frames_per_s'] / p1[0]:.2f}x"),
    ("max rate 100 ms frames: frames/s (PCM MB/s)", f"{m100['frames_per_s']:.0f} ({m100['pcm_mb_per_s']:.1f}), lost {m100['lost']}"),
    ("  Kafka ProducerPerformance 4.6 KB records/s (MB/s)", f"{p100[0]:.0f} ({p100[1]:.1f})"),
    ("  relay / Kafka's producer", f"{m100['frames_per_s'] / p100[0]:.2f}x"),
    ("old uploader (flush per message) 1 s frames/s", f"{old['frames_per_s']:.1f}"),
    ("  relay / old uploader", f"{m1['frames_per_s'] / old['frames_per_s']:.1f}x"),
]
w = max(len(r[0]) for r in rows)
for k, v in rows:
    print(f"{k.ljust(w)}  {v}")
PY
