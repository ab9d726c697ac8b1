#!/usr/bin/env bash
# Stops a broker started by start.sh: SIGTERM (a controlled shutdown), then SIGKILL if it is
# still running after 20 s.   stop.sh --data-dir DIR [--timeout SECONDS]
set -euo pipefail

data_dir=""
timeout_s=20
while (($#)); do
  case "$1" in
    --data-dir) data_dir="${2:?--data-dir needs a value}"; shift 2 ;;
    --timeout) timeout_s="${2:?--timeout needs a value}"; shift 2 ;;
    -h | --help) sed -n '2,3p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    *) echo "stop.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ -n "$data_dir" ]] || { echo "stop.sh: --data-dir DIR is required" >&2; exit 2; }

pid_file="$data_dir/kafka.pid"
if [[ ! -f "$pid_file" ]]; then
  echo "stop.sh: no broker pid file in $data_dir; nothing to stop" >&2
  exit 0
fi
pid="$(cat "$pid_file")"

pid_alive() {
  # A zombie (exited, not yet reaped) counts as gone.
  local stat=""
  [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null || return 1
  [[ -d /proc/self ]] || return 0 # no /proc here: trust kill -0
  read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
  stat="${stat##*) }" # the fields after "pid (comm) ", so the state comes first
  [[ "${stat%% *}" != "Z" && "${stat%% *}" != "X" ]]
}

if pid_alive "$pid"; then
  kill -CONT "$pid" 2>/dev/null || true # a paused broker cannot shut down
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout_s))
  while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  if pid_alive "$pid"; then
    echo "stop.sh: broker $pid still running after ${timeout_s}s, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while pid_alive "$pid"; do sleep 0.1; done
  fi
fi
rm -f "$pid_file"
