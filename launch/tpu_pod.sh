#!/usr/bin/env bash
# Run jaxlm on every worker of a Cloud TPU VM slice (one process per host), from your machine.
#
#   launch/tpu_pod.sh --name NAME --zone ZONE [options] [--] ARGS...
#
# ARGS are a jaxlm command line without the program name, e.g.
#
#   launch/tpu_pod.sh --name my-v5e --zone us-west4-a --type v5litepod-16 -- \
#       train configs/pretrain/gpt2_124m.yaml train.run_dir=gs://my-bucket/runs/gpt2
#
# Steps, each printed before it runs (all of them, and nothing else, with --dry-run):
#   1. reuse the TPU VM NAME if it exists, else create it (--type, --version, --spot);
#   2. pack this checkout (tracked and untracked, not ignored files) and copy it to every worker;
#   3. set up every worker: unpack into ~/jaxlm, create ~/jaxlm-venv, pip install -e '.[tpu]';
#   4. start the same `jaxlm ARGS` on all workers at once; JAX finds the other workers through
#      the TPU metadata, so nothing else is needed. Worker 0's output is shown here; each
#      worker's output goes to ~/jaxlm-logs/console-worker<N>.log, and jaxlm's own
#      per-process logs to ~/jaxlm-logs/process_<N>.log;
#   5. gather ~/jaxlm-logs/* of all workers into --logs DIR (also when the run failed).
# The exit status is that of the run (non-zero if any worker failed).
#
# Options:
#   --name NAME        TPU VM name (or $TPU_NAME)             --zone ZONE   (or $ZONE)
#   --project PROJECT  (or $PROJECT_ID; default: gcloud's)    --type TYPE   (default v5litepod-16)
#   --version VERSION  TPU runtime (default v2-alpha-tpuv5-lite)  --spot  create a Spot VM
#   --logs DIR         where gathered logs go (default logs/tpu-NAME-<time>)
#   --no-setup         skip steps 2 and 3 (code and environment already on the workers)
#   --dry-run          print every command instead of running it
#
# Checkpoints: the workers do not share a disk, so give a shared train.run_dir (a gs:// bucket)
# for checkpoints to be complete and for a relaunch to resume.
# shellcheck disable=SC2016  # remote commands are single-quoted on purpose: $ expands on the workers
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | grep -v '^# shellcheck' | sed '$d; s/^# \{0,1\}//'; }
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

name=${TPU_NAME:-}
zone=${ZONE:-}
project=${PROJECT_ID:-}
type=v5litepod-16
version=v2-alpha-tpuv5-lite
spot=false
logs=""
setup=true
dry=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --zone) zone=${2:?--zone needs a value}; shift 2 ;;
    --project) project=${2:?--project needs a value}; shift 2 ;;
    --type) type=${2:?--type needs a value}; shift 2 ;;
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --spot) spot=true; shift ;;
    --logs) logs=${2:?--logs needs a value}; shift 2 ;;
    --no-setup) setup=false; shift ;;
    --dry-run) dry=true; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[[ -n "$name" ]] || die "give the TPU VM name: --name NAME (or set TPU_NAME)"
[[ -n "$zone" ]] || die "give the zone: --zone ZONE (or set ZONE)"
[[ $# -gt 0 ]] || die "give the jaxlm command line, e.g.: -- train configs/pretrain/tiny.yaml"
logs=${logs:-logs/tpu-$name-$(date +%Y%m%d-%H%M%S)}

where=(--zone="$zone")
if [[ -n "$project" ]]; then where+=(--project="$project"); fi
tpu=(gcloud compute tpus tpu-vm)

q() {  # one word, shell-quoted so that it reads well: 'like this' only when needed
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
show() { printf '+'; for word in "$@"; do printf ' %s' "$(q "$word")"; done; printf '\n'; }
run() {  # print the command; run it unless this is a dry run
  show "$@"
  if ! $dry; then "$@"; fi
}

# 1. Create the slice, or reuse it.
create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$type" --version="$version")
if $spot; then create+=(--spot); fi
describe=("${tpu[@]}" describe "$name" "${where[@]}" --format=value\(state\))
if $dry; then
  show "${describe[@]}"
  echo "# only if the describe above fails (no TPU VM of that name yet):"
  show "${create[@]}"
elif state=$("${describe[@]}" 2> /dev/null); then
  show "${describe[@]}"
  echo "tpu_pod.sh: reusing TPU VM $name (state $state)" >&2
else
  run "${create[@]}"
fi

# 2-3. Ship this checkout and set up every worker.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bundle=${TMPDIR:-/tmp}/jaxlm-src-$name.tar.gz
if $setup; then
  if $dry; then
    echo "+ git -C $(q "$root") ls-files -z --cached --others --exclude-standard" \
      "| tar -C $(q "$root") --null -T - -czf $(q "$bundle")"
  else
    echo "+ pack $root into $bundle" >&2
    git -C "$root" ls-files -z --cached --others --exclude-standard \
      | tar -C "$root" --null -T - -czf "$bundle"
  fi
  run "${tpu[@]}" scp "$bundle" "$name:jaxlm-src.tar.gz" --worker=all "${where[@]}"
  remote_setup='set -e; mkdir -p ~/jaxlm ~/jaxlm-logs; tar -xzf ~/jaxlm-src.tar.gz -C ~/jaxlm;'
  remote_setup+=' [ -x ~/jaxlm-venv/bin/pip ] || python3 -m venv ~/jaxlm-venv;'
  remote_setup+=' ~/jaxlm-venv/bin/pip install -q -U pip;'
  remote_setup+=' ~/jaxlm-venv/bin/pip install -q -e "$HOME/jaxlm[tpu]"'
  run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command "$remote_setup"
fi

# 4. The same command on every worker; worker 0 (TPU metadata agent-worker-number) echoes here.
args=""
for word in "$@"; do args+=" $(q "$word")"; done
remote_run='w=$(curl -sf -H Metadata-Flavor:Google'
remote_run+=' http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number'
remote_run+=' || hostname); mkdir -p ~/jaxlm-logs; cd ~/jaxlm; export JAXLM_LOG_DIR=~/jaxlm-logs;'
remote_run+=' out=~/jaxlm-logs/console-worker$w.log;'
remote_run+=" if [ \"\$w\" = 0 ]; then { ~/jaxlm-venv/bin/jaxlm$args 2>&1; echo \$? > \$out.status; } | tee \$out;"
remote_run+=" else ~/jaxlm-venv/bin/jaxlm$args > \$out 2>&1; echo \$? > \$out.status; fi;"
remote_run+=' status=$(cat $out.status); echo "worker $w: jaxlm exited with status $status" >&2;'
remote_run+=' exit $status'
status=0
run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command "$remote_run" || status=$?

# 5. Gather every worker's logs, whatever happened.
if ! $dry; then mkdir -p "$logs"; fi
run "${tpu[@]}" scp "$name:jaxlm-logs/*" "$logs/" --worker=all "${where[@]}" || true
if ! $dry; then
  if [[ $status -ne 0 ]]; then
    echo "tpu_pod.sh: the run failed (status $status); logs of all workers in $logs/" >&2
  else
    echo "tpu_pod.sh: done; logs of all workers in $logs/" >&2
  fi
fi
exit "$status"
