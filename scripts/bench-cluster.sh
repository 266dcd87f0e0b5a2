#!/usr/bin/env bash
# `make bench`'s failover step (BENCH_ONLY=cluster alone): the release relay on a fresh three-node KRaft cluster
# (replication 3, min.insync.replicas 2; scripts/kafka.sh cluster) with BENCH_CLUSTER_RECORDERS (300) real-time
# recorders (200 ms frames) for BENCH_CLUSTER_S (90 s) per event, one fresh topic and relay per event. 20 s in:
#
#   kill9     the leader of partition 0 `kill -9`, started again 15 s later
#   cut       that leader frozen (SIGSTOP) and its ports dropped (iptables) for 25 s: it vanishes without a reset
#   sigterm   that leader stopped cleanly (a controlled shutdown moves its partitions), started again 15 s later
#   rolling   every node in turn: SIGTERM, start, wait until nothing is under-replicated
#   two_down  two of three nodes `kill -9` for 20 s (fewer in-sync replicas than required), started again
#   single    the same recorders on a single broker (what a laptop runs): a rolling restart of it, i.e. stop, start
#
# Per event: frames lost (must be 0), duplicate records in Kafka (read back with kcat), the longest ack and the
# worst 10 s window's p99, when /readyz was ready again after the event began, and the relay's peak RSS. The raw
# reports go to target/bench/cluster-*.json; a table to stdout. Needs root (iptables), like the cluster tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

recorders="${BENCH_CLUSTER_RECORDERS:-300}"
seconds="${BENCH_CLUSTER_S:-90}" # a rolling restart took ~45 s after the 20 s mark here: all of it under load
events="${BENCH_CLUSTER_EVENTS:-kill9 cut sigterm rolling two_down single}"
export KAFKA_CLUSTER_PORT="${BENCH_CLUSTER_PORT:-29192}"
export KAFKA_CLUSTER_DIR="${TMPDIR:-/tmp}/soundline-bench-cluster-$KAFKA_CLUSTER_PORT"
single_port="${BENCH_CLUSTER_SINGLE_PORT:-29292}"
out="target/bench"
mkdir -p "$out"
listen="127.0.0.1:${BENCH_CLUSTER_RELAY_PORT:-28090}"
need kcat "the failover step reads the topics back with kcat (scripts/setup.sh installs it)"
need iptables "the failover step cuts a node off with iptables (scripts/setup.sh installs it)"

cargo build --release --locked -p soundline-relay -p soundline-loadgen
bin="$(target_dir)/release"
ulimit -n 65536 2>/dev/null || true

rules=()
relay_pid=""
cleanup() {
  local r
  for r in "${rules[@]}"; do iptables -D $r 2>/dev/null || true; done
  [[ -n "$relay_pid" ]] && kill "$relay_pid" 2>/dev/null || true
  for n in 1 2 3; do
    [[ -f "$KAFKA_CLUSTER_DIR/node$n/kafka.pid" ]] && kill -CONT "$(cat "$KAFKA_CLUSTER_DIR/node$n/kafka.pid")" 2>/dev/null || true
  done
  bash scripts/kafka.sh cluster stop >/dev/null 2>&1 || true
  KAFKA_PORT=$single_port KAFKA_STATE_DIR="${TMPDIR:-/tmp}/soundline-bench-single-$single_port" \
    bash scripts/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

bash scripts/kafka.sh cluster stop >/dev/null 2>&1 || true
rm -rf "$KAFKA_CLUSTER_DIR"
bash scripts/kafka.sh cluster start
eval "$(bash scripts/kafka.sh cluster env)"
cluster="$SOUNDLINE_TEST_CLUSTER"
port_of() { echo $((KAFKA_CLUSTER_PORT + 2 * ($1 - 1))); }
pid_of() { cat "$KAFKA_CLUSTER_DIR/node$1/kafka.pid"; }
leader_of() { # leader_of TOPIC PARTITION
  kcat -L -b "$cluster" -t "$1" -m 5 | sed -n "s/^ *partition $2, leader \([0-9]*\),.*/\1/p" | head -n 1
}
in_sync() { # all partitions of TOPIC with three in-sync replicas
  local want
  want="$(kcat -L -b "$cluster" -t "$1" -m 5 | grep -c '^ *partition ')"
  [[ "$(kcat -L -b "$cluster" -t "$1" -m 5 | grep -cE 'isrs: [0-9]+,[0-9]+,[0-9]+$')" == "$want" ]]
}

run_event() { # run_event NAME BOOTSTRAP: one fresh topic and relay, the recorders, the event 20 s in
  local name="$1" brokers="$2" topic="cluster-$1-$(date +%s)"
  SOUNDLINE_KAFKA_BROKERS="$brokers" SOUNDLINE_TOPIC="$topic" SOUNDLINE_PARTITIONS=6 SOUNDLINE_LISTEN="$listen" \
    SOUNDLINE_MAX_CONNECTIONS=20000 SOUNDLINE_MAX_CONNECTIONS_PER_CLIENT=20000 SOUNDLINE_MAX_MESSAGES_PER_S=1000000 \
    SOUNDLINE_MAX_BYTES_PER_S=10000000000 "$bin/soundline-relay" serve >"$out/cluster-relay-$name.log" 2>&1 &
  relay_pid=$!
  until curl -fsS "http://$listen/readyz" >/dev/null 2>&1; do
    kill -0 "$relay_pid" 2>/dev/null || die "the relay exited before it was ready (its log: $out/cluster-relay-$name.log)"
    sleep 0.2
  done
  # /readyz every 250 ms: "seconds-since-start status" at every change.
  (
    local last="" start=$SECONDS t0
    t0="$(date +%s.%N)"
    while kill -0 "$relay_pid" 2>/dev/null && ((SECONDS - start < seconds + 60)); do
      local code
      code="$(curl -s -o /dev/null -w '%{http_code}' "http://$listen/readyz" || true)"
      if [[ "$code" != "$last" ]]; then
        echo "$(python3 -c "import time; print(round(time.time() - $t0, 2))") $code"
        last="$code"
      fi
      sleep 0.25
    done
  ) >"$out/cluster-readyz-$name.txt" &
  local watcher=$!
  say "failover step: $name ($recorders real-time recorders, ${seconds} s)"
  "$bin/soundline-loadgen" --relay "$listen" --kafka "${brokers%%,*}" --topic "$topic" --relay-pid "$relay_pid" --json \
    --recorders "$recorders" --ramp-s 5 --frame-ms 200 --duration-s "$seconds" >"$out/cluster-$name.json" &
  local load=$!
  sleep 20
  local event_at
  event_at="$(python3 -c 'import time; print(time.time())')"
  echo "$event_at" >"$out/cluster-event-$name.txt"
  case "$name" in
    kill9)
      local n; n="$(leader_of "$topic" 0)"
      bash scripts/kafka.sh cluster node "$n" kill; sleep 15; bash scripts/kafka.sh cluster node "$n" start ;;
    sigterm)
      local n; n="$(leader_of "$topic" 0)"
      bash scripts/kafka.sh cluster node "$n" stop; sleep 15; bash scripts/kafka.sh cluster node "$n" start ;;
    cut)
      local n p r; n="$(leader_of "$topic" 0)"
      for p in "$(port_of "$n")" $(($(port_of "$n") + 1)); do
        for r in "INPUT -i lo -p tcp --dport $p -j DROP" "INPUT -i lo -p tcp --sport $p -j DROP"; do
          iptables -I $r; rules+=("$r")
        done
      done
      kill -STOP "$(pid_of "$n")"; sleep 25
      for r in "${rules[@]}"; do iptables -D $r; done
      rules=()
      kill -CONT "$(pid_of "$n")" ;;
    rolling)
      local n
      for n in 1 2 3; do
        bash scripts/kafka.sh cluster node "$n" stop; sleep 3; bash scripts/kafka.sh cluster node "$n" start
        until in_sync "$topic"; do sleep 0.5; done
      done ;;
    two_down)
      bash scripts/kafka.sh cluster node 2 kill; bash scripts/kafka.sh cluster node 3 kill; sleep 20
      bash scripts/kafka.sh cluster node 2 start &
      local starting=$!
      bash scripts/kafka.sh cluster node 3 start
      wait "$starting" ;;
    single)
      KAFKA_PORT=$single_port KAFKA_STATE_DIR="${TMPDIR:-/tmp}/soundline-bench-single-$single_port" \
        bash -c 'bash scripts/kafka.sh stop && bash scripts/kafka.sh start' ;;
  esac
  wait "$load" || true
  kill "$relay_pid" 2>/dev/null; wait "$relay_pid" 2>/dev/null || true
  relay_pid=""
  wait "$watcher" 2>/dev/null || true
  # Duplicates: records beyond the first of each (key, segmentId, seq).
  kcat -C -b "$brokers" -t "$topic" -e -q -f '%k %h\n' 2>/dev/null | sort | uniq -c | awk '$1 > 1 { d += $1 - 1 } END { print d + 0 }' \
    >"$out/cluster-dups-$name.txt"
}

for e in $events; do
  if [[ "$e" == single ]]; then
    KAFKA_PORT=$single_port KAFKA_STATE_DIR="${TMPDIR:-/tmp}/soundline-bench-single-$single_port" bash -c \
      'rm -rf "$KAFKA_STATE_DIR"; bash scripts/kafka.sh start'
    run_event single "127.0.0.1:$single_port"
  else
    run_event "$e" "$cluster"
  fi
done

python3 - "$out" $events <<'PY'
import json, sys
out, events = sys.argv[1], sys.argv[2:]
print(f"{'event':10} {'lost':>5} {'dups':>6} {'longest ack ms':>15} {'worst 10 s p99':>15} {'ready again s':>14} {'peak RSS MB':>12}")
for e in events:
    r = json.load(open(f"{out}/cluster-{e}.json"))
    dups = open(f"{out}/cluster-dups-{e}.txt").read().strip()
    worst = max((w["p99"] for w in r["ack_ms_by_10s"]), default=float("nan"))
    # /readyz: when it was 200 for good after the event (seconds after the event began).
    lines = [l.split() for l in open(f"{out}/cluster-readyz-{e}.txt") if l.strip()]
    event_at = 20.0
    ready = "-"
    downs = [float(t) for t, c in lines if c != "200" and float(t) >= event_at - 1]
    if downs:
        ups = [float(t) for t, c in lines if c == "200" and float(t) > max(downs)]
        ready = f"{ups[0] - event_at:.1f}" if ups else "never"
    rss = r.get("relay", {}).get("peak_rss_mb", float("nan"))
    print(f"{e:10} {r['lost']:>5} {dups:>6} {r['ack_ms']['max']:>15.0f} {worst:>15.0f} {ready:>14} {rss:>12.0f}")
PY
