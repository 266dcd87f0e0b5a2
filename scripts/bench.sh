#!/usr/bin/env bash
# `make bench`: the relay against its baselines, side by side, on one fresh broker, in one run.
#
#   1. real time: BENCH_RECORDERS recorders (200 ms frames) + BENCH_SUBSCRIBERS feed subscribers for BENCH_SECONDS:
#      ack and fan-out latency, loss, relay CPU and memory, with the relay's default compression (zstd); then the
#      same recorders without subscribers, and against the floor (soundline-floor: the relay's protocol and stack,
#      envelopes built and dropped, no Kafka), so that the relay's CPU per frame splits into the floor, Kafka and
#      the feed, side by side;
#   2. max rate, 1 s frames (~43 KB envelopes) and 100 ms frames (~4.6 KB), equal work side by side: the relay and
#      Kafka's own producer benchmark (ProducerPerformance, the same Kafka's jars; at the bench's settings and tuned
#      for throughput) each send the same N records of the same size, one after the other, in BENCH_ROUNDS (3)
#      rounds; the relay's first run lasts BENCH_MAX_S (10 s short, 30 s full) and fixes N;
#   3. the old uploader: kafka-python with flush() after every message (bench/old_uploader.py), 1 s frames, for
#      BENCH_MAX_S;
#   4. fan-out reads: on a 12-partition topic with BENCH_FANOUT_RECORDERS (500) real-time recorders, one subscriber
#      watching one car: the bytes the relay read from Kafka for it, and its fetches after the subscriber left.
#   5. compression: BENCH_COMPRESSION_RECORDERS (200) real-time recorders of noise-like audio for BENCH_COMPRESSION_S
#      (30 s) once per codec (none, lz4, snappy, zstd, gzip): the bytes of the topic's log segments on the broker's disk
#      per hour of audio, and the relay's CPU.
#   6. failover: the relay on a three-node cluster while a node is killed, cut off, stopped, rolled, two are down,
#      and the same recorders through a single broker's restart (scripts/bench-cluster.sh, BENCH_CLUSTER_*).
# Before step 1 the fresh broker takes BENCH_WARMUP_S (30 s short, 90 s full; 0: none) of step 1's load, not measured
# (warm_up_broker in common.sh). Prints a table and leaves the raw JSON in target/bench/. The full version:
# BENCH_FULL=1 make bench.
# One step alone: BENCH_ONLY=realtime (with BENCH_PERF=1: a perf profile of the relay; BENCH_CODEC: its
# compression, zstd by default), BENCH_ONLY=compression or BENCH_ONLY=cluster.
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

# The failover step alone needs none of the single broker's set-up.
[[ "${BENCH_ONLY:-}" == cluster ]] && exec bash scripts/bench-cluster.sh

stop_bench_on_exit

say "building release binaries"
cargo build --release --locked -p soundline-relay -p soundline-loadgen
bin="$(target_dir)/release"

bash scripts/kafka.sh stop >/dev/null 2>&1 || true
rm -rf "$KAFKA_STATE_DIR"
KAFKA_HEAP=1g bash scripts/kafka.sh start
ulimit -n 65536 2>/dev/null || true
# The fresh broker's first minute of load is its JVM warming up, not what the relay costs (common.sh).
warm_up_broker "$bin/soundline-relay" "$bin/soundline-loadgen" "${BENCH_WARMUP_S:-$([[ $full == 1 ]] && echo 90 || echo 30)}" \
  "$recorders" "$subscribers"

run_id="$(date +%s)"
start_relay() { start_bench_relay "$bin/soundline-relay" "$1" "${2:-6}" "${codec:-none}" "$out/relay-$1.log"; } # TOPIC [PARTITIONS]
stop_relay() { stop_bench_relay; }
topic_cmd() { java -cp "$cp_jars" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" "$@" >/dev/null 2>&1; }

loadgen() { # loadgen NAME TOPIC ARGS...
  local name="$1" topic="$2"
  shift 2
  say "loadgen: $name"
  "$bin/soundline-loadgen" --relay "$listen" --kafka "$bootstrap" --topic "$topic" --relay-pid "$relay_pid" --json "$@" \
    | tee "$out/$name.json"
}

# BENCH_ONLY=realtime or compression: that step alone.
only="${BENCH_ONLY:-}"
if [[ -z "$only" || $only == realtime ]]; then
# 1. Real time, many recorders and subscribers. BENCH_PERF=1: a perf profile of the relay (15 s from 20 s in);
#    BENCH_CODEC: the relay's compression for this step: zstd, what a relay ships with (none: as this step ran
#    until 2026-12-03, for comparisons with the results of earlier runs).
codec="${BENCH_CODEC:-zstd}" start_relay "rt-$run_id"
profiler=""
rm -f "$out/perf-realtime.txt" # a run without BENCH_PERF=1 must not print an earlier run's profile
if [[ "${BENCH_PERF:-0}" == 1 ]]; then
  (sleep 20 && perf record -F 299 -g -p "$relay_pid" -o "$out/perf-realtime.data" -- sleep 15 >/dev/null 2>&1 &&
    perf report -i "$out/perf-realtime.data" --no-children --percent-limit 0.7 --stdio 2>/dev/null |
    grep -E '^ +[0-9]' >"$out/perf-realtime.txt") &
  profiler=$!
fi
loadgen realtime "rt-$run_id" --recorders "$recorders" --subscribers "$subscribers" --duration-s "$seconds" \
  --ramp-s 5 --frame-ms 200
[[ -n "$profiler" ]] && wait "$profiler"
# The relay's latency histograms: its own share of the ack latency, and Kafka's (soundline_produce_request_seconds).
curl -fsS "http://$listen/metrics" >"$out/realtime-metrics.txt"
stop_relay
# 1b. The same recorders without subscribers (what the feed costs is the difference), then 1c. against the floor.
codec="${BENCH_CODEC:-zstd}" start_relay "rt-nosub-$run_id"
loadgen realtime-nosub "rt-nosub-$run_id" --recorders "$recorders" --duration-s "$seconds" --ramp-s 5 --frame-ms 200
stop_relay
topic_cmd --delete --topic "rt-nosub-$run_id"
floor="127.0.0.1:${BENCH_FLOOR_PORT:-28081}"
# The floor stands in for the relay: $relay_pid, so that stop_relay and the exit trap stop it.
"$bin/soundline-floor" --listen "$floor" >"$out/floor.log" 2>&1 &
relay_pid=$!
until curl -fsS "http://$floor/readyz" >/dev/null 2>&1; do
  kill -0 "$relay_pid" 2>/dev/null || die "soundline-floor exited before it was ready (its log: $out/floor.log)"
  sleep 0.2
done
say "loadgen: floor"
"$bin/soundline-loadgen" --relay "$floor" --relay-pid "$relay_pid" --no-kafka --json --recorders "$recorders" \
  --duration-s "$seconds" --ramp-s 5 --frame-ms 200 | tee "$out/floor.json"
stop_relay
fi

if [[ -z "$only" ]]; then

# 2. Max rate, equal work, side by side. Per frame size, round 1 lets the relay run for max_s seconds (as many
#    frames as acks allow) and so fixes the work: N records of the envelope's size. Then, in each of the rounds,
#    one after the other on this broker, each into a fresh 6-partition topic deleted afterwards: the relay with
#    exactly N records (rounds 2..), Kafka's ProducerPerformance with N records at the bench's settings, and
#    again tuned for throughput. The ratios' median and spread over the rounds show machine drift.
rounds="${BENCH_ROUNDS:-3}"
max_s="${BENCH_MAX_S:-$([[ $full == 1 ]] && echo 30 || echo 10)}"
perf_plain=(acks=all linger.ms=5 max.request.size=2000000)
perf_tuned=("${perf_plain[@]}" batch.size=1048576 buffer.memory=268435456)
perf() { # perf NAME RECORD_BYTES RECORDS PROPS...
  local name="$1" bytes="$2" records="$3" topic="perf-$1-$run_id"
  shift 3
  topic_cmd --create --topic "$topic" --partitions 6 --replication-factor 1
  say "ProducerPerformance: $name ($records records of $bytes bytes; $*)"
  java -cp "$cp_jars" -Dlog4j2.configurationFile="$REPO_ROOT/scripts/kafka/log4j2.properties" \
    -Dsoundline.kafka.log="$out/perf.log" org.apache.kafka.tools.ProducerPerformance --topic "$topic" \
    --num-records "$records" --record-size "$bytes" --throughput -1 --producer-props bootstrap.servers="$bootstrap" "$@" \
    | tail -n 1 | tee "$out/perf-$name.txt"
  topic_cmd --delete --topic "$topic"
}
max_rate() { # max_rate LABEL FRAME_MS RECORDERS WINDOW
  local label="$1" frame_ms="$2" recorders="$3" window="$4" n="" bytes="" r
  for r in $(seq 1 "$rounds"); do
    local topic="max$label-$r-$run_id"
    start_relay "$topic"
    if [[ -z "$n" ]]; then
      loadgen "max-$label-$r" "$topic" --recorders "$recorders" --frame-ms "$frame_ms" --max-rate --window "$window" \
        --ramp-s 0 --for-s "$max_s"
      # The work for every run of this size: whole frames per recorder.
      n=$(python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(j['frames_acked'] // $recorders * $recorders)" "$out/max-$label-$r.json")
      bytes=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['record_bytes'])" "$out/max-$label-$r.json")
    else
      loadgen "max-$label-$r" "$topic" --recorders "$recorders" --frame-ms "$frame_ms" --max-rate --window "$window" \
        --ramp-s 0 --frames $((n / recorders))
    fi
    stop_relay
    topic_cmd --delete --topic "$topic"
    perf "$label-$r-plain" "$bytes" "$n" "${perf_plain[@]}"
    perf "$label-$r-tuned" "$bytes" "$n" "${perf_tuned[@]}"
  done
}
max_rate 1s 1000 8 16
max_rate 100ms 100 16 64

# 3. The old uploader, flush after every message, long enough to be steady.
topic_old="old-$run_id"
topic_cmd --create --topic "$topic_old" --partitions 6 --replication-factor 1
say "old uploader (kafka-python, flush per message, ${max_s} s)"
"$py" bench/old_uploader.py --bootstrap "$bootstrap" --topic "$topic_old" --for-s "$max_s" --frame-ms 1000 | tee "$out/old.json"

# 4. Fan-out reads: what one technician watching one car costs the relay in Kafka reads. A 12-partition topic,
#    BENCH_FANOUT_RECORDERS real-time recorders, one subscriber filtered to one car: the bytes the relay's feed
#    readers fetched against the bytes produced; then the subscriber leaves, and the relay's fetches must stop.
fanout_recorders="${BENCH_FANOUT_RECORDERS:-500}"
fanout_topic="fanout-$run_id"
SOUNDLINE_FEED_READER_IDLE_S=5 start_relay "$fanout_topic" 12
#    Then the page's Listen on that busy topic: recorder 0's recording fetched by a bounded read of its offsets
#    (--playback); the relay's history counters say what it read from Kafka for it.
# One minute, so that the recording played back is a minute long (BENCH_FANOUT_S).
loadgen fanout "$fanout_topic" --recorders "$fanout_recorders" --subscribers 1 --duration-s "${BENCH_FANOUT_S:-60}" --ramp-s 2 --frame-ms 200 --playback
metric() { curl -fsS "http://$listen/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
history_records="$(metric soundline_feed_history_records_total)"
history_bytes="$(metric soundline_feed_history_bytes_total)"
fetched="$(metric soundline_feed_fetched_bytes_total)"
sleep 8 # the subscriber left when the load generator ended: 5 s idle, then the reader stops
readers_after="$(metric soundline_feed_partition_readers)"
fetches_a="$(metric soundline_feed_fetches_total)"
sleep 5
fetches_b="$(metric soundline_feed_fetches_total)"
stop_relay
topic_cmd --delete --topic "$fanout_topic"
python3 - "$out" "$fetched" "$readers_after" "$fetches_a" "$fetches_b" "$history_records" "$history_bytes" <<'PY' | tee "$out/fanout-reads.json"
import json, sys
out, fetched, readers_after, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
history_records, history_bytes = int(sys.argv[6]), int(sys.argv[7])
run = json.load(open(f"{out}/fanout.json"))
produced = run["frames_in_kafka"] * run["record_bytes"]
watched = run["acked_per_partition"][str(run["partition_of_recorder_0"])] * run["record_bytes"]
print(json.dumps({"recorders": run["recorders"], "seconds": run["seconds"], "records": run["frames_in_kafka"],
                  "produced_bytes": produced, "watched_partition_bytes": watched, "fetched_bytes": fetched,
                  "fetched_share": fetched / produced, "watched_partition_share": watched / produced,
                  "readers_after_leaving": readers_after, "fetches_in_5s_after_leaving": b - a,
                  "deliveries": run["fanout_ms"]["seen"], "lost": run["lost"],
                  "playback": dict(run["playback"], relay_read_records=history_records, relay_read_bytes=history_bytes)}))
PY

fi

if [[ -z "$only" || $only == compression ]]; then
# 5. Compression: the same load once per codec, each into its own topic; what the broker stores of it (the
#    partitions' .log segment files: record batches as written, without the sparse preallocated index files).
comp_recorders="${BENCH_COMPRESSION_RECORDERS:-200}"
comp_s="${BENCH_COMPRESSION_S:-30}"
for codec in none lz4 snappy zstd gzip; do
  topic="comp-$codec-$run_id"
  start_relay "$topic"
  loadgen "compression-$codec" "$topic" --recorders "$comp_recorders" --duration-s "$comp_s" --ramp-s 2 \
    --frame-ms 200 --signal noise
  stop_relay
  disk="$(find "$KAFKA_STATE_DIR/data" -path "*/$topic-*" -name '*.log' -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
  echo "{\"codec\": \"$codec\", \"log_bytes\": $disk}" >"$out/compression-$codec-disk.json"
  topic_cmd --delete --topic "$topic"
done
unset codec
fi

python3 - "$out" "${rounds:-3}" "${BENCH_ONLY:-}" "${BENCH_CODEC:-zstd}" <<'PY'
import json, re, statistics, sys
out, rounds, only, rt_codec = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
j = lambda n: json.load(open(f"{out}/{n}.json"))
def compression():
    print("compression (noise-like audio, 200 ms frames): codec | records | log bytes on disk | per hour of audio | vs none | relay CPU per 1000 frames/s")
    base = None
    for codec in ("none", "lz4", "snappy", "zstd", "gzip"):
        run, disk = j(f"compression-{codec}"), j(f"compression-{codec}-disk")["log_bytes"]
        per_hour = disk / (run["frames_in_kafka"] * 0.2 / 3600)
        base = base or per_hour
        cpu = run["relay"]["cpu_share"] / (run["frames_acked"] / run["seconds"]) * 1000 if run["relay"] else float("nan")
        print(f"  {codec} | {run['frames_in_kafka']} | {disk} | {per_hour / 1e6:.1f} MB | {per_hour / base:.3f} | {cpu:.4f} cores")
def realtime():
    rt = j("realtime")
    print(f"real time ({rt_codec}): {rt['recorders']} recorders / {rt['subscribers']} subscribers, {rt['seconds']:.1f} s: "
          f"sent {rt['frames_sent']} acked {rt['frames_acked']} in Kafka {rt['frames_in_kafka']} lost {rt['lost']}")
    print("  ack ms p50 / p95 / p99 / max: {p50:.1f} / {p95:.1f} / {p99:.1f} / {max:.1f}".format(**rt["ack_ms"]))
    print("  fan-out ms p50 / p99: {:.0f} / {:.0f} ({} deliveries)".format(rt["fanout_ms"]["p50"], rt["fanout_ms"]["p99"], rt["fanout_ms"]["seen"]))
    if rt["relay"]:
        per_1000 = rt["relay"]["cpu_share"] / (rt["frames_acked"] / rt["seconds"]) * 1000
        r = rt["relay"]
        print("  relay CPU {:.2f} cores ({:.3f} per 1000 frames/s; {:.0%} of it in the kernel), {:.2f} context switches per frame, peak RSS {:.1f} MB".format(
            r["cpu_share"], per_1000, r["system_share"] / r["cpu_share"], r["context_switches_per_frame"], r["peak_rss_mb"]))
    if rt.get("load_generator"):
        print("  load generator CPU {:.2f} cores (it shares the machine with the relay and the broker)".format(rt["load_generator"]["cpu_share"]))
    # Side by side: the floor (soundline-floor), the relay without subscribers, the relay with them.
    per = lambda run: run["relay"]["cpu_share"] / (run["frames_acked"] / run["seconds"]) * 1000
    try:
        floor, nosub = j("floor"), j("realtime-nosub")
        f, n, a = per(floor), per(nosub), per(rt)
        print(f"  CPU per 1000 frames/s, side by side: the floor (soundline-floor: read, decode, envelope, ack; no Kafka) {f:.4f}; "
              f"the relay without subscribers {n:.4f} (Kafka: +{n - f:.4f}); with them {a:.4f} (the feed: +{a - n:.4f}); "
              f"the relay is {a / f:.2f}x the floor (lost: floor {floor['lost']}, without subscribers {nosub['lost']})")
    except (OSError, KeyError, TypeError, ZeroDivisionError):
        pass
    # Quantiles of the relay's latency histograms, interpolated within their buckets (10 ms wide from 10 to 60 ms).
    def quantile(name, q):
        buckets = [(float(le), int(n)) for le, n in re.findall(name + r'_bucket\{le="([^"]+)"\} (\d+)', scraped)]
        total = buckets[-1][1] if buckets else 0
        lo, below = 0.0, 0
        for le, n in buckets:
            if n >= q * total and total:
                return 1000 * (le if le == float("inf") else lo + (le - lo) * (q * total - below) / max(n - below, 1))
            lo, below = le, n
        return float("nan")
    try:
        scraped = open(f"{out}/realtime-metrics.txt").read()
        p = lambda name: " / ".join(f"{quantile(name, q):.0f}" for q in (0.5, 0.99))
        print(f"  the ack latency inside the relay (its histograms, p50 / p99 ms): frame taken up -> ack written "
              f"{p('soundline_ack_seconds')}, of it record enqueued -> Kafka's ack {p('soundline_produce_latency_seconds')}, "
              f"of that the produce request (rskafka + the broker) {p('soundline_produce_request_seconds')}")
    except OSError:
        pass
    ack_windows = " ".join(f"{w['p99']:.0f}" for w in rt.get("ack_ms_by_10s", []))
    if ack_windows:
        print(f"  ack p99 per 10 s of the run (ms): {ack_windows}")
    try:
        print("  profile (perf, the relay's own costs):\n" + "".join(open(f"{out}/perf-realtime.txt").readlines()[:25]))
    except OSError:
        pass
if only == "compression":
    compression()
    sys.exit(0)
if only == "realtime":
    realtime()
    sys.exit(0)
def perf(n):
    line = open(f"{out}/perf-{n}.txt").read()
    records = int(re.search(r"(\d+) records sent", line).group(1))
    rps = float(re.search(r"([\d.]+) records/sec", line).group(1))
    return records, rps, records / rps
old = j("old")
print("relay: 6 partitions, linger 5 ms, batches up to 1 000 000 bytes, no compression, acks=all (rskafka), 256 MiB budget")
print("ProducerPerformance plain: acks=all linger.ms=5 max.request.size=2000000 (batch.size 16384, the default)")
print("ProducerPerformance tuned: the same + batch.size=1048576 buffer.memory=268435456")
print()
realtime()
print()
for label in ("1s", "100ms"):
    relay = [j(f"max-{label}-{r}") for r in range(1, rounds + 1)]
    plain = [perf(f"{label}-{r}-plain") for r in range(1, rounds + 1)]
    tuned = [perf(f"{label}-{r}-tuned") for r in range(1, rounds + 1)]
    print(f"max rate, {label} frames ({relay[0]['record_bytes']}-byte envelopes, {relay[0]['recorders']} recorders):")
    print("  round | relay records, s, records/s, lost | plain records, s, records/s | tuned records, s, records/s | relay/plain | relay/tuned")
    for r in range(rounds):
        m, p, t = relay[r], plain[r], tuned[r]
        print(f"  {r + 1} | {m['frames_acked']}, {m['seconds']:.1f} s, {m['frames_per_s']:.0f}/s, lost {m['lost']} | "
              f"{p[0]}, {p[2]:.1f} s, {p[1]:.0f}/s | {t[0]}, {t[2]:.1f} s, {t[1]:.0f}/s | "
              f"{m['frames_per_s'] / p[1]:.2f}x | {m['frames_per_s'] / t[1]:.2f}x")
    for name, base in (("plain", plain), ("tuned", tuned)):
        ratios = [m["frames_per_s"] / b[1] for m, b in zip(relay, base)]
        print(f"  relay / ProducerPerformance {name}: median {statistics.median(ratios):.2f}x, "
              f"spread {min(ratios):.2f}x to {max(ratios):.2f}x over {rounds} rounds")
    print()
m1 = statistics.median(x["frames_per_s"] for x in (j(f"max-1s-{r}") for r in range(1, rounds + 1)))
print(f"old uploader (flush per message), 1 s frames: {old['frames']} frames in {old['seconds']:.1f} s = {old['frames_per_s']:.1f}/s; "
      f"relay (median of the 1 s rounds) / old uploader: {m1 / old['frames_per_s']:.1f}x")
f = json.load(open(f"{out}/fanout-reads.json"))
print(f"fan-out reads, 12 partitions, {f['recorders']} real-time recorders for {f['seconds']:.1f} s, one subscriber on one car: "
      f"fetched {f['fetched_bytes']} of {f['produced_bytes']} bytes produced ({f['fetched_share']:.3f}; the car's partition "
      f"holds {f['watched_partition_share']:.3f} of the topic, 1/12 = 0.083), "
      f"{f['deliveries']} records delivered; after it left: {f['readers_after_leaving']} readers, "
      f"{f['fetches_in_5s_after_leaving']} fetches in 5 s")
p = f["playback"]
print(f"playback of one recording there ({p['recording_frames']} frames, {p['recording_frames'] * 0.2:.0f} s): a bounded read of "
      f"offsets {p['first']}..{p['last']} ({p['span_records']} records of its partition); the relay read {p['relay_read_records']} records, "
      f"{p['relay_read_bytes'] / 1e6:.1f} MB from Kafka and sent {p['frames']} frames, {p['bytes'] / 1e6:.2f} MB, in {p['seconds']:.2f} s")
print()
compression()
PY

# 6. Failover: the relay on a three-node cluster through the failures an operator meets (scripts/bench-cluster.sh).
if [[ -z "$only" ]]; then
  bash scripts/kafka.sh stop >/dev/null 2>&1 || true # the single bench broker is done: its cores go to the cluster
  bash scripts/bench-cluster.sh
fi
