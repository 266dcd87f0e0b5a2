#!/usr/bin/env bash
# A real, single-node Apache Kafka (KRaft) for development and tests, run from jars on Maven Central.
#
#   scripts/kafka.sh fetch                  copy the broker and tools jars into the cache (idempotent)
#   scripts/kafka.sh start [--sasl]         format a log dir (once) and start a broker; wait until it answers
#   scripts/kafka.sh stop                   stop the broker this script started (by its pid file)
#   scripts/kafka.sh status                 say whether it runs and where
#   scripts/kafka.sh env                    print the addresses as shell assignments (for tests)
#   scripts/kafka.sh classpath              print the jars' classpath (for Kafka's own tools)
#   scripts/kafka.sh cluster start|stop|status|env
#                                           a three-node KRaft cluster (every node broker and controller),
#                                           topics replicated 3 times with min.insync.replicas=2
#   scripts/kafka.sh cluster node N start|stop|kill
#                                           one node of it: start again, SIGTERM (controlled shutdown), kill -9
#
# Settings (environment):
#   KAFKA_PORT         PLAINTEXT listener port (default 9092); the controller uses KAFKA_PORT+1; with --sasl,
#                      SASL_PLAINTEXT is on KAFKA_PORT+2, SSL on KAFKA_PORT+3 and SASL_SSL on KAFKA_PORT+4
#   KAFKA_STATE_DIR    log dir, config, pid and server.log (default /tmp/soundline-kafka-$KAFKA_PORT)
#   KAFKA_VERSION      Kafka version to fetch (default: the one in scripts/kafka/pom.xml)
#   KAFKA_HEAP         JVM heap (default 768m; 512m per cluster node)
#   KAFKA_CLUSTER_PORT the cluster's first port (default 9192): node N listens on KAFKA_CLUSTER_PORT+2(N-1), its
#                      controller on the port after; state in /tmp/soundline-kafka-cluster-$KAFKA_CLUSTER_PORT/nodeN
#
# --sasl adds SASL_PLAINTEXT, SSL and SASL_SSL listeners. SASL offers PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, all
# for user "soundline" with password "soundline-secret" (test credentials, loopback only). TLS uses a throwaway CA
# made with openssl in the state dir (ca.pem, printed by `env`), for a certificate valid for 127.0.0.1/localhost.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_STATE_DIR="${KAFKA_STATE_DIR:-/tmp/soundline-kafka-$KAFKA_PORT}"
KAFKA_HEAP="${KAFKA_HEAP:-768m}"
POM="$REPO_ROOT/scripts/kafka/pom.xml"
KAFKA_VERSION="${KAFKA_VERSION:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")}"
JARS="$SOUNDLINE_CACHE/kafka-$KAFKA_VERSION/libs"
SASL_USER=soundline
SASL_PASSWORD=soundline-secret
PID_FILE="$KAFKA_STATE_DIR/kafka.pid"
# One node of a cluster (set by `cluster`); a single broker is node 1 of a quorum of one.
KAFKA_NODE_ID="${KAFKA_NODE_ID:-1}"
KAFKA_VOTERS="${KAFKA_VOTERS:-1@127.0.0.1:$((KAFKA_PORT + 1))}"
KAFKA_REPLICAS="${KAFKA_REPLICAS:-1}"
KAFKA_MIN_ISR="${KAFKA_MIN_ISR:-1}"
CLUSTER_NODES=3
KAFKA_CLUSTER_PORT="${KAFKA_CLUSTER_PORT:-9192}"
CLUSTER_DIR="${KAFKA_CLUSTER_DIR:-/tmp/soundline-kafka-cluster-$KAFKA_CLUSTER_PORT}"

java_ok() {
  need java "Java 17 or newer runs the Kafka broker: install a JDK (apt-get install -y openjdk-17-jre-headless)"
}

cmd_fetch() {
  if [[ -f "$JARS/.complete" ]]; then return 0; fi
  java_ok
  need mvn "Maven fetches the Kafka jars from Maven Central: install it (apt-get install -y maven)"
  say "fetching Apache Kafka $KAFKA_VERSION jars into $JARS"
  rm -rf "$JARS" && mkdir -p "$JARS"
  local log="$SOUNDLINE_CACHE/kafka-$KAFKA_VERSION/mvn.log"
  if ! mvn -B -q -f "$POM" dependency:copy-dependencies -Dkafka.version="$KAFKA_VERSION" \
      -DoutputDirectory="$JARS" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "Maven could not fetch Kafka $KAFKA_VERSION (log: $log)"
  fi
  ls "$JARS"/kafka_2.13-*.jar >/dev/null 2>&1 || die "Maven ran but no kafka_2.13 jar is in $JARS"
  touch "$JARS/.complete"
}

running() {
  [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_config() {
  local sasl="$1" cfg="$KAFKA_STATE_DIR/server.properties"
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$((KAFKA_PORT + 1))"
  local advertised="PLAINTEXT://127.0.0.1:$KAFKA_PORT"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ "$sasl" == 1 ]]; then
    local secure="SASL_PLAINTEXT://127.0.0.1:$((KAFKA_PORT + 2)),SSL://127.0.0.1:$((KAFKA_PORT + 3)),SASL_SSL://127.0.0.1:$((KAFKA_PORT + 4))"
    listeners+=",$secure"
    advertised+=",$secure"
    protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL"
  fi
  cat >"$cfg" <<PROPS
# Written by scripts/kafka.sh: a KRaft broker+controller on loopback (node $KAFKA_NODE_ID of voters $KAFKA_VOTERS).
process.roles=broker,controller
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$KAFKA_VOTERS
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
log.dirs=$KAFKA_STATE_DIR/data
# Topics are created on purpose (the relay does it, or a test), never by a typo in a client.
auto.create.topics.enable=false
num.partitions=1
# Replicated as a production cluster is (one node: 1). With min.insync.replicas=2 of 3, acks=all (the relay's
# only mode) survives one node lost without losing an acked record, and refuses writes when two are lost.
default.replication.factor=$KAFKA_REPLICAS
min.insync.replicas=$KAFKA_MIN_ISR
offsets.topic.replication.factor=$KAFKA_REPLICAS
transaction.state.log.replication.factor=$KAFKA_REPLICAS
transaction.state.log.min.isr=$KAFKA_MIN_ISR
share.coordinator.state.topic.replication.factor=$KAFKA_REPLICAS
share.coordinator.state.topic.min.isr=$KAFKA_MIN_ISR
group.initial.rebalance.delay.ms=0
# Keep every record: some tests produce straight to Kafka with fixed record timestamps from 2025, which the
# default 7-day retention would delete at its next check, mid-test. (The relay stamps records with its own clock.)
log.retention.ms=-1
# ...but bound the disk: at most ~1 GiB per partition, in 256 MiB segments (a 30-minute soak writes ~38 GB).
log.retention.bytes=1073741824
log.segment.bytes=268435456
PROPS
  if [[ "$sasl" == 1 ]]; then
    echo "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512" >>"$cfg"
    local l
    for l in sasl_plaintext sasl_ssl; do
      cat >>"$cfg" <<PROPS
listener.name.$l.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";
listener.name.$l.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.$l.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
    done
    cat >>"$cfg" <<PROPS
ssl.keystore.type=PEM
ssl.keystore.location=$KAFKA_STATE_DIR/tls/keystore.pem
ssl.client.auth=none
PROPS
  fi
  echo "$cfg"
}

make_certs() { # a throwaway CA and a broker certificate for 127.0.0.1 / localhost, once per state dir
  local d="$KAFKA_STATE_DIR/tls"
  [[ -f "$d/keystore.pem" ]] && return 0
  need openssl "the TLS listeners need openssl to make test certificates (apt-get install -y openssl)"
  mkdir -p "$d"
  {
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/ca.key" -out "$d/ca.pem" -days 3650 \
      -subj "/CN=Soundline test CA"
    openssl req -newkey rsa:2048 -nodes -keyout "$d/broker.key" -out "$d/broker.csr" -subj "/CN=localhost"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/san.ext"
    openssl x509 -req -in "$d/broker.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
      -out "$d/broker.pem" -days 3650 -extfile "$d/san.ext"
  } >"$d/openssl.log" 2>&1 || die "making test certificates failed (log: $d/openssl.log)"
  cat "$d/broker.key" "$d/broker.pem" >"$d/keystore.pem"
}

kafka_java() { # kafka_java MAINCLASS ARGS...: run a Kafka class with the cached jars
  java -Dlog4j2.configurationFile="$REPO_ROOT/scripts/kafka/log4j2.properties" \
    -Dsoundline.kafka.log="$KAFKA_STATE_DIR/server.log" -cp "$JARS/*" "$@"
}

cmd_start() {
  local sasl=0 wait=1
  for arg in "$@"; do
    case "$arg" in
      --sasl) sasl=1 ;;
      --no-wait) wait=0 ;; # a cluster node: it starts only once a quorum of its voters runs
      *) die "kafka.sh start: unknown option $arg (expected --sasl)" ;;
    esac
  done
  java_ok
  cmd_fetch
  if running; then
    if [[ "$(cat "$KAFKA_STATE_DIR/mode" 2>/dev/null)" == "$sasl" ]]; then
      say "Kafka already running on 127.0.0.1:$KAFKA_PORT (pid $(cat "$PID_FILE"))"
      return 0
    fi
    say "Kafka on $KAFKA_PORT runs in another mode; restarting it"
    cmd_stop
  fi
  if port_open "$KAFKA_PORT"; then
    die "port $KAFKA_PORT is taken by a process this script did not start; set KAFKA_PORT to a free port"
  fi
  mkdir -p "$KAFKA_STATE_DIR"
  # A log dir formatted for another mode (no SCRAM users) is formatted anew.
  if [[ "$(cat "$KAFKA_STATE_DIR/mode" 2>/dev/null)" != "$sasl" ]]; then rm -rf "$KAFKA_STATE_DIR/data"; fi
  if [[ "$sasl" == 1 ]]; then make_certs; fi
  local cfg
  cfg="$(write_config "$sasl")"
  echo "$sasl" >"$KAFKA_STATE_DIR/mode"
  if [[ ! -f "$KAFKA_STATE_DIR/data/meta.properties" ]]; then
    local scram=()
    if [[ "$sasl" == 1 ]]; then
      scram=(--add-scram "SCRAM-SHA-256=[name=$SASL_USER,password=$SASL_PASSWORD]"
        --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]")
    fi
    local cluster_id="${KAFKA_CLUSTER_ID:-}"
    [[ -n "$cluster_id" ]] || cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    if ! kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$cfg" "${scram[@]}" \
        >"$KAFKA_STATE_DIR/format.log" 2>&1; then
      tail -n 5 "$KAFKA_STATE_DIR/format.log" >&2
      die "formatting the Kafka log dir $KAFKA_STATE_DIR/data failed (log: $KAFKA_STATE_DIR/format.log)"
    fi
  fi
  say "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT$([[ $sasl == 1 ]] && echo " (SASL on $((KAFKA_PORT + 2)))")"
  # A restart must not find the last run's "started" line.
  [[ -f "$KAFKA_STATE_DIR/server.log" ]] && mv -f "$KAFKA_STATE_DIR/server.log" "$KAFKA_STATE_DIR/server.log.1"
  # setsid: the broker outlives this script, and a Ctrl+C in the terminal that started it does not reach it.
  setsid java -Xms256m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$REPO_ROOT/scripts/kafka/log4j2.properties" \
    -Dsoundline.kafka.log="$KAFKA_STATE_DIR/server.log" \
    -cp "$JARS/*" kafka.Kafka "$cfg" >"$KAFKA_STATE_DIR/stdout.log" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  [[ "$wait" == 1 ]] || return 0
  wait_started
}

wait_started() { # until this node says it started and its port answers (90 s)
  local deadline=$((SECONDS + 90))
  until grep -q 'Kafka Server started' "$KAFKA_STATE_DIR/server.log" 2>/dev/null && port_open "$KAFKA_PORT"; do
    if ! running; then
      tail -n 20 "$KAFKA_STATE_DIR/server.log" "$KAFKA_STATE_DIR/stdout.log" >&2 2>/dev/null || true
      die "Kafka exited during start-up (logs in $KAFKA_STATE_DIR)"
    fi
    if ((SECONDS > deadline)); then
      cmd_stop
      die "Kafka did not answer on 127.0.0.1:$KAFKA_PORT within 90 s (logs in $KAFKA_STATE_DIR)"
    fi
    sleep 0.5
  done
  say "Kafka is up on 127.0.0.1:$KAFKA_PORT (pid $(cat "$PID_FILE"), logs in $KAFKA_STATE_DIR)"
}

cmd_stop() {
  if ! running; then
    rm -f "$PID_FILE"
    return 0
  fi
  local pid
  pid="$(cat "$PID_FILE")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "Kafka (pid $pid) did not stop within 30 s; killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  say "Kafka on $KAFKA_PORT stopped"
}

cmd_status() {
  if running; then
    echo "Kafka running on 127.0.0.1:$KAFKA_PORT (pid $(cat "$PID_FILE"), state $KAFKA_STATE_DIR)"
  else
    echo "Kafka not running (port $KAFKA_PORT)"
    return 1
  fi
}

cmd_env() {
  echo "SOUNDLINE_TEST_KAFKA=127.0.0.1:$KAFKA_PORT"
  if [[ "$(cat "$KAFKA_STATE_DIR/mode" 2>/dev/null)" == 1 ]]; then
    echo "SOUNDLINE_TEST_KAFKA_SASL=127.0.0.1:$((KAFKA_PORT + 2))"
    echo "SOUNDLINE_TEST_KAFKA_SSL=127.0.0.1:$((KAFKA_PORT + 3))"
    echo "SOUNDLINE_TEST_KAFKA_SASL_SSL=127.0.0.1:$((KAFKA_PORT + 4))"
    echo "SOUNDLINE_TEST_KAFKA_CA=$KAFKA_STATE_DIR/tls/ca.pem"
    echo "SOUNDLINE_TEST_KAFKA_USER=$SASL_USER"
    echo "SOUNDLINE_TEST_KAFKA_PASSWORD=$SASL_PASSWORD"
  fi
}

# --- the three-node cluster: each node is this script again, with its own ports, state dir and node id ---

node_env() { # node_env N: the environment of node N
  local port=$((KAFKA_CLUSTER_PORT + 2 * ($1 - 1))) voters="" i
  for i in $(seq 1 $CLUSTER_NODES); do
    voters+="${voters:+,}$i@127.0.0.1:$((KAFKA_CLUSTER_PORT + 2 * (i - 1) + 1))"
  done
  printf '%s\n' "KAFKA_PORT=$port" "KAFKA_STATE_DIR=$CLUSTER_DIR/node$1" "KAFKA_NODE_ID=$1" "KAFKA_VOTERS=$voters" \
    "KAFKA_REPLICAS=3" "KAFKA_MIN_ISR=2" "KAFKA_HEAP=${KAFKA_CLUSTER_HEAP:-512m}" "KAFKA_CLUSTER_ID=$(cluster_id)"
}

cluster_id() { # one id for every node, made once per cluster dir
  mkdir -p "$CLUSTER_DIR"
  if [[ ! -s "$CLUSTER_DIR/cluster.id" ]]; then
    kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 >"$CLUSTER_DIR/cluster.id"
  fi
  cat "$CLUSTER_DIR/cluster.id"
}

on_node() { # on_node N CMD...: this script's CMD as node N
  local n="$1"
  shift
  [[ "$n" =~ ^[1-3]$ ]] || die "kafka.sh cluster node: expected a node number 1-3, got ${n:-nothing}"
  env $(node_env "$n") bash "${BASH_SOURCE[0]}" "$@"
}

cmd_cluster() {
  case "${1:-}" in
    start)
      java_ok
      cmd_fetch
      local n
      for n in $(seq 1 $CLUSTER_NODES); do on_node "$n" start --no-wait; done
      for n in $(seq 1 $CLUSTER_NODES); do on_node "$n" node-wait; done
      say "Kafka cluster up: $(cluster_brokers) (replication 3, min.insync.replicas 2)"
      ;;
    stop) for n in $(seq 1 $CLUSTER_NODES); do on_node "$n" stop; done ;;
    status) for n in $(seq 1 $CLUSTER_NODES); do on_node "$n" status || true; done ;;
    env) echo "SOUNDLINE_TEST_CLUSTER=$(cluster_brokers)"; echo "SOUNDLINE_TEST_CLUSTER_DIR=$CLUSTER_DIR" ;;
    node)
      case "${3:-}" in
        start) on_node "$2" start ;;
        stop) on_node "$2" stop ;;
        kill) on_node "$2" kill9 ;;
        *) die "usage: scripts/kafka.sh cluster node N start|stop|kill" ;;
      esac
      ;;
    *) die "usage: scripts/kafka.sh cluster start|stop|status|env|node N start|stop|kill" ;;
  esac
}

cluster_brokers() {
  local out="" n
  for n in $(seq 1 $CLUSTER_NODES); do out+="${out:+,}127.0.0.1:$((KAFKA_CLUSTER_PORT + 2 * (n - 1)))"; done
  echo "$out"
}

cmd_kill9() {
  running || return 0
  kill -9 "$(cat "$PID_FILE")" 2>/dev/null || true
  rm -f "$PID_FILE"
  say "Kafka node $KAFKA_NODE_ID on $KAFKA_PORT killed (-9)"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  cluster) shift; cmd_cluster "$@" ;;
  node-wait) wait_started ;;
  kill9) cmd_kill9 ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  classpath) cmd_fetch; echo "$JARS/*" ;;
  *) die "usage: scripts/kafka.sh fetch|start [--sasl]|stop|status|env|classpath|cluster ..." ;;
esac
