#!/usr/bin/env bash
# Starts a single-node Apache Kafka broker (KRaft, combined broker+controller) from the jars
# that fetch.sh resolves from Maven Central, and waits until it answers metadata requests.
#
#   start.sh [--port PORT] [--controller-port PORT] [--sasl-port PORT] [--data-dir DIR]
#            [--heap 512m] [--scram] [--timeout SECONDS] [--owner-pid PID]
#
# The last line of stdout is `KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT` (preceded, with --scram,
# by `KAFKA_SASL_BOOTSTRAP_SERVERS=127.0.0.1:SASLPORT`). Everything else goes to stderr.
#
# A data dir that is already formatted is reused as is (no re-format): its ports, SCRAM mode
# and cluster id are remembered in <data-dir>/start.env, so `start.sh --data-dir DIR` restarts
# the same broker on the same ports with its data. The broker's pid is in <data-dir>/kafka.pid,
# its log (WARN and above) in <data-dir>/logs/server.log; stop it with stop.sh --data-dir DIR.
#
# --owner-pid PID: a small watchdog stops the broker once process PID is gone (test runners
# pass their own pid so that a killed test run never leaves a broker behind).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
  echo "start.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

port=""
controller_port=""
sasl_port=""
data_dir=""
heap="512m"
scram=""
timeout_s=90
owner_pid=""

while (($#)); do
  case "$1" in
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --controller-port) controller_port="${2:?--controller-port needs a value}"; shift 2 ;;
    --sasl-port) sasl_port="${2:?--sasl-port needs a value}"; shift 2 ;;
    --data-dir) data_dir="${2:?--data-dir needs a value}"; shift 2 ;;
    --heap) heap="${2:?--heap needs a value}"; shift 2 ;;
    --scram) scram=1; shift ;;
    --timeout) timeout_s="${2:?--timeout needs a value}"; shift 2 ;;
    --owner-pid) owner_pid="${2:?--owner-pid needs a value}"; shift 2 ;;
    -h | --help) usage ;;
    *) echo "start.sh: unknown argument: $1" >&2; usage ;;
  esac
done

command -v java >/dev/null 2>&1 || die "java not found on PATH (Java 17+ is needed)"

# Heap: at most 512m, the broker is for tests.
heap_mb() {
  local h="${1,,}"
  case "$h" in
    *g) echo $((${h%g} * 1024)) ;;
    *m) echo "${h%m}" ;;
    *) die "--heap must look like 256m or 1g, not $1" ;;
  esac
}
(($(heap_mb "$heap") <= 512)) || die "--heap must be at most 512m (got $heap)"

libs="$("$here/fetch.sh" | tail -n1)"
[[ -d "$libs" ]] || die "fetch.sh did not produce a libs dir"
version="$(basename "$(dirname "$libs")")"

if [[ -z "$data_dir" ]]; then
  data_dir="$(mktemp -d "${TMPDIR:-/tmp}/agentstream-kafka.XXXXXX")"
fi
mkdir -p "$data_dir"
data_dir="$(cd "$data_dir" && pwd)"
log_dirs="$data_dir/kraft-logs"
logs="$data_dir/logs"
pid_file="$data_dir/kafka.pid"
env_file="$data_dir/start.env"
mkdir -p "$logs"

pid_alive() {
  # A zombie (exited, not yet reaped) counts as gone.
  local stat=""
  [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null || return 1
  [[ -d /proc/self ]] || return 0 # no /proc here: trust kill -0
  read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
  stat="${stat##*) }" # the fields after "pid (comm) ", so the state comes first
  [[ "${stat%% *}" != "Z" && "${stat%% *}" != "X" ]]
}

if [[ -f "$pid_file" ]] && pid_alive "$(cat "$pid_file")"; then
  die "a broker is already running from $data_dir (pid $(cat "$pid_file")); stop.sh --data-dir $data_dir"
fi

# Settings remembered from an earlier start of this data dir fill in what was not given.
formatted=""
if [[ -f "$log_dirs/meta.properties" && -f "$env_file" ]]; then
  formatted=1
  saved_port="" saved_controller_port="" saved_sasl_port="" saved_scram="" cluster_id=""
  # shellcheck disable=SC1090
  source "$env_file"
  port="${port:-$saved_port}"
  controller_port="${controller_port:-$saved_controller_port}"
  sasl_port="${sasl_port:-$saved_sasl_port}"
  scram="${scram:-$saved_scram}"
  if [[ "$controller_port" != "$saved_controller_port" ]]; then
    die "$data_dir was formatted with controller port $saved_controller_port, not $controller_port"
  fi
  if [[ -n "$scram" && -z "$saved_scram" ]]; then
    die "$data_dir was formatted without --scram; use a fresh data dir"
  fi
fi

# Free ports, picked together so they differ from each other.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
read -r p1 p2 p3 < <(free_ports 3)
port="${port:-$p1}"
controller_port="${controller_port:-$p2}"
if [[ -n "$scram" ]]; then
  sasl_port="${sasl_port:-$p3}"
else
  sasl_port=""
fi

listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port"
advertised="PLAINTEXT://127.0.0.1:$port"
protocol_map="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
if [[ -n "$scram" ]]; then
  listeners="$listeners,SASL_PLAINTEXT://127.0.0.1:$sasl_port"
  advertised="$advertised,SASL_PLAINTEXT://127.0.0.1:$sasl_port"
  protocol_map="$protocol_map,SASL_PLAINTEXT:SASL_PLAINTEXT"
fi

config="$data_dir/server.properties"
cat >"$config" <<EOF
# Written by infra/kafka/start.sh: a single-node KRaft broker for tests. Not for production.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
listeners=$listeners
advertised.listeners=$advertised
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocol_map
log.dirs=$log_dirs

# Kafka's stock topic defaults, kept on purpose: a topic a client makes the broker create by
# accident (a Metadata request naming a missing topic) shows up with one partition
# (agentstream creates its topics through the admin API only, ADR 20).
auto.create.topics.enable=true
num.partitions=1
# One node: every internal topic has one replica.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Lets tests use short consumer session timeouts (the default minimum is 6 s).
group.min.session.timeout.ms=1000

# Small and quick: modest segments, few threads, a small cleaner buffer.
log.segment.bytes=16777216
log.retention.check.interval.ms=60000
num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
# After a kill -9 the restarted controller still counts the dead incarnation as alive until
# its session expires; a short session lets a restarted broker register again quickly.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=4000
EOF

if [[ -n "$scram" ]]; then
  cat >>"$config" <<EOF

# --scram: SASL_PLAINTEXT/SCRAM-SHA-512 on $sasl_port with ACLs. The PLAINTEXT and CONTROLLER
# listeners authenticate as User:ANONYMOUS, a super user, so tests and the broker itself keep
# working through them.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
EOF
fi

jvm_tool_opts=(-Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto -Djava.awt.headless=true)

if [[ -z "$formatted" ]]; then
  # A Kafka cluster id is 16 random bytes, base64url without padding; one that starts with
  # "-" would read as an option to the format tool.
  cluster_id="-"
  while [[ "$cluster_id" == -* ]]; do
    cluster_id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  format_args=(format --standalone --cluster-id "$cluster_id" --config "$config")
  if [[ -n "$scram" ]]; then
    format_args+=(
      --add-scram 'SCRAM-SHA-512=[name=admin,password=admin-secret]'
      --add-scram 'SCRAM-SHA-512=[name=alice,password=alice-secret]'
      --add-scram 'SCRAM-SHA-512=[name=bob,password=bob-secret]'
    )
  fi
  if ! java "${jvm_tool_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool "${format_args[@]}" \
    >"$logs/format.log" 2>&1; then
    cat "$logs/format.log" >&2
    die "formatting $log_dirs failed"
  fi
  cat >"$env_file" <<EOF
saved_port=$port
saved_controller_port=$controller_port
saved_sasl_port=$sasl_port
saved_scram=$scram
cluster_id=$cluster_id
EOF
else
  # Same data dir, maybe a new PLAINTEXT or SASL port: remember them for the next restart.
  sed -i -e "s/^saved_port=.*/saved_port=$port/" -e "s/^saved_sasl_port=.*/saved_sasl_port=$sasl_port/" \
    "$env_file"
fi

# Only what this start writes to server.log counts when waiting for readiness.
log_file="$logs/server.log"
log_offset=0
[[ -f "$log_file" ]] && log_offset="$(stat -c %s "$log_file")"

jvm_opts=(
  "-Xmx$heap" "-Xms$heap"
  -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
  -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15
  -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$here/log4j2.properties"
  "-Dkafka.logs.dir=$logs"
)
java "${jvm_opts[@]}" -cp "$libs/*" kafka.Kafka "$config" >>"$logs/kafka.out" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pid_file"

if [[ -n "$owner_pid" ]]; then
  # Watchdog: stop the broker once the owner is gone; ends by itself when the broker does.
  (
    trap '' INT HUP
    while pid_alive "$owner_pid" && pid_alive "$pid"; do sleep 1; done
    if pid_alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do pid_alive "$pid" || exit 0; sleep 0.5; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  ) </dev/null >/dev/null 2>&1 &
  disown
fi

fail_start() {
  {
    echo "start.sh: $*"
    echo "---- last lines of $log_file"
    tail -n 40 "$log_file" 2>/dev/null || true
    echo "---- last lines of $logs/kafka.out"
    tail -n 20 "$logs/kafka.out" 2>/dev/null || true
  } >&2
  if pid_alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
  exit 1
}

new_log_has() {
  [[ -f "$log_file" ]] || return 1
  local size
  size="$(stat -c %s "$log_file")"
  if ((size < log_offset)); then log_offset=0; fi # rolled over
  tail -c +"$((log_offset + 1))" "$log_file" | grep -q "$1"
}

# Ready = the server logged its start, and a real client gets metadata and api versions back.
deadline=$((SECONDS + timeout_s))
while :; do
  pid_alive "$pid" || fail_start "the broker exited during startup"
  if new_log_has 'Kafka Server started' &&
    timeout 30 java "${jvm_tool_opts[@]}" -cp "$libs/*" \
      org.apache.kafka.tools.BrokerApiVersionsCommand \
      --bootstrap-server "127.0.0.1:$port" >"$logs/ready-check.log" 2>&1; then
    break
  fi
  ((SECONDS < deadline)) || fail_start "the broker was not ready within ${timeout_s}s"
  sleep 0.2
done

echo "Apache Kafka $version (KRaft) pid $pid, data dir $data_dir" >&2
if [[ -n "$scram" ]]; then
  echo "KAFKA_SASL_BOOTSTRAP_SERVERS=127.0.0.1:$sasl_port"
fi
echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$port"
