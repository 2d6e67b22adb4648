#!/usr/bin/env bash
# Rehearse a multi-host run on one machine: N jaxlm processes x M fake CPU devices, talking
# through jax.distributed on 127.0.0.1, exactly as N hosts of a pod or cluster would.
#
#   launch/local.sh [-n PROCESSES] [-d DEVICES] [-p PORT] [-o LOG_DIR] [-g GRACE] [--] ARGS...
#
# ARGS are a jaxlm command line without the program name, the same for every process:
#
#   launch/local.sh -n 2 -d 4 train configs/pretrain/tiny.yaml train.run_dir=runs/local
#
# Process i gets JAXLM_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAXLM_NUM_PROCESSES=N,
# JAXLM_PROCESS_ID=i and XLA_FLAGS=--xla_force_host_platform_device_count=M. Process 0's
# output is shown here; every process's output goes to LOG_DIR/process_i.out (and jaxlm keeps
# its own RUN_DIR/logs/process_i.log). The exit status is 0 if all processes succeed, else that
# of the first to fail. If a process dies, jaxlm stops the others within
# distributed.heartbeat_timeout; GRACE seconds after a first failure (default 600) any process
# still running is killed. Ctrl-C / SIGTERM are passed on to all processes.
#
# Environment: JAXLM = the jaxlm command (default: `jaxlm` if on PATH, else
# `python3 -m jaxlm.cli`), PYTHON = the interpreter used to find a free port (python3).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | grep -v '^# shellcheck' | sed '$d; s/^# \{0,1\}//'; }

nproc_=2
ndev=4
port=""
logdir=""
grace=600
while getopts ":n:d:p:o:g:h" opt; do
  case "$opt" in
    n) nproc_=$OPTARG ;;
    d) ndev=$OPTARG ;;
    p) port=$OPTARG ;;
    o) logdir=$OPTARG ;;
    g) grace=$OPTARG ;;
    h) usage; exit 0 ;;
    :) echo "local.sh: option -$OPTARG needs a value" >&2; exit 2 ;;
    *) echo "local.sh: unknown option -$OPTARG (see -h)" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [[ "${1:-}" == "--" ]]; then shift; fi
if [[ $# -eq 0 ]]; then
  echo "local.sh: give the jaxlm command line, e.g.: local.sh -n 2 -d 4 train configs/pretrain/tiny.yaml" >&2
  exit 2
fi
for v in "$nproc_" "$ndev" "$grace"; do
  if ! [[ "$v" =~ ^[0-9]+$ ]] || [[ "$v" -eq 0 ]]; then
    echo "local.sh: -n, -d and -g take positive integers (got '$v')" >&2
    exit 2
  fi
done

python=${PYTHON:-python3}
if [[ -n "${JAXLM:-}" ]]; then
  read -r -a jaxlm_cmd <<< "$JAXLM"
elif command -v jaxlm > /dev/null 2>&1; then
  jaxlm_cmd=(jaxlm)
else
  jaxlm_cmd=("$python" -m jaxlm.cli)
fi
if [[ -z "$port" ]]; then
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
logdir=${logdir:-logs/local-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$logdir"

echo "local.sh: ${nproc_} processes x ${ndev} CPU devices, coordinator 127.0.0.1:${port}, logs in ${logdir}/" >&2
pids=()
for ((i = 0; i < nproc_; i++)); do
  out="$logdir/process_$i.out"
  (
    export JAXLM_COORDINATOR_ADDRESS="127.0.0.1:$port" JAXLM_NUM_PROCESSES="$nproc_"
    export JAXLM_PROCESS_ID="$i" JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1
    flags=$(printf '%s' "${XLA_FLAGS:-}" | sed 's/--xla_force_host_platform_device_count=[0-9]*//g')
    export XLA_FLAGS="${flags:+$flags }--xla_force_host_platform_device_count=$ndev"
    if [[ $i -eq 0 ]]; then
      "${jaxlm_cmd[@]}" "$@" > >(tee "$out") 2>&1 &
    else
      "${jaxlm_cmd[@]}" "$@" > "$out" 2>&1 &
    fi
    child=$!
    echo "$child" > "$logdir/process_$i.pid"
    trap 'kill -INT "$child" 2> /dev/null' INT
    trap 'kill -TERM "$child" 2> /dev/null' TERM
    while :; do  # this wrapper stays to note when its process ended: who failed first
      code=0
      wait "$child" || code=$?
      ended=$EPOCHREALTIME
      kill -0 "$child" 2> /dev/null || break  # (else a forwarded signal ended the wait)
    done
    echo "${ended/[.,]/}" > "$logdir/process_$i.ended"  # microseconds
    exit "$code"
  ) 2> /dev/null &
  pids+=("$!")
done

stop_all() {  # forward a signal to every process still running (KILL: the jaxlm processes too)
  local sig=$1 pid i
  for pid in "${pids[@]}"; do kill "-$sig" "$pid" 2> /dev/null || true; done
  if [[ $sig == KILL ]]; then
    for ((i = 0; i < nproc_; i++)); do
      kill -KILL "$(cat "$logdir/process_$i.pid" 2> /dev/null)" 2> /dev/null || true
    done
  fi
}
trap 'stop_all INT' INT
trap 'stop_all TERM' TERM

describe() {  # "exited with 0" / "was killed by SIGKILL (exit status 137)"
  local code=$1
  if [[ $code -gt 128 && $code -lt 160 ]]; then
    echo "was killed by SIG$(kill -l $((code - 128)) 2> /dev/null || echo "?") (exit status $code)"
  else
    echo "exited with status $code"
  fi
}

# Watch the processes. bash reports a child killed by a signal with a multi-line "Aborted
# ( export ... )" note on its stderr when it reaps it; the loop's stderr is therefore muted and
# its own messages go to fd 3 (the real stderr): the "was killed by SIG..." lines say it.
exec 3>&2
codes=()
first_failure=""
failed_at=0
running=$nproc_
while [[ $running -gt 0 ]]; do
  running=0
  for ((i = 0; i < nproc_; i++)); do
    [[ -n "${codes[$i]:-}" ]] && continue
    if kill -0 "${pids[$i]}" 2> /dev/null; then
      running=$((running + 1))
      continue
    fi
    code=0
    wait "${pids[$i]}" || code=$?
    codes[i]=$code
    if [[ $code -ne 0 && -z "$first_failure" ]]; then
      first_failure=$i
      failed_at=$SECONDS
      echo "local.sh: process $i $(describe "$code"); see $logdir/process_$i.out" >&3
    fi
  done
  if [[ $running -gt 0 && -n "$first_failure" && $((SECONDS - failed_at)) -ge $grace ]]; then
    echo "local.sh: processes still running ${grace}s after process $first_failure failed; killing them" >&3
    stop_all KILL
  fi
  [[ $running -gt 0 ]] && sleep 0.2
done 2> /dev/null

status=0
for ((i = 0; i < nproc_; i++)); do  # the failure that ended first, by the wrappers' clocks
  if [[ ${codes[$i]} -ne 0 ]]; then
    # (no record: its wrapper was killed with it after the grace period, so it ended last)
    t=$(cat "$logdir/process_$i.ended" 2> /dev/null || echo 9000000000000000000)
    if [[ -z "${first_t:-}" || $t -lt $first_t ]]; then first_failure=$i first_t=$t; fi
  fi
done
for ((i = 0; i < nproc_; i++)); do
  if [[ ${codes[$i]} -ne 0 ]]; then
    echo "local.sh: process $i $(describe "${codes[$i]}")" >&2
  fi
done
if [[ -n "$first_failure" ]]; then
  status=${codes[$first_failure]}
  echo "local.sh: FAILED: process $first_failure failed first (other failures follow from it);" \
    "logs in $logdir/" >&2
fi
exit "$status"
