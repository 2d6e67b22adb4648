#!/usr/bin/env bash
# jaxlm on Kubernetes (GKE) as a JobSet: one pod per TPU VM host (several slices: multi-slice),
# or one pod per GPU node. Builds the manifest, applies it, waits, and gathers every pod's log.
#
#   launch/k8s.sh --image IMAGE [options] [--] ARGS...
#
# ARGS are a jaxlm command line without the program name, e.g.
#
#   launch/k8s.sh --image us-docker.pkg.dev/my-proj/jaxlm/jaxlm:latest --slices 2 -- \
#       train configs/pretrain/gpt2_124m.yaml train.run_dir=gs://my-bucket/runs/gpt2 mesh.dcn_data=2
#
# TPU (default): every pod requests the host's TPU chips; GKE tells each pod its slice's workers
# (TPU_WORKER_HOSTNAMES, and MEGASCALE_* across slices) and JAX detects them, so jaxlm needs no
# addresses. GPU (--gpu): pods get JAXLM_COORDINATOR_ADDRESS (pod 0 through the JobSet's headless
# service), JAXLM_NUM_PROCESSES and JAXLM_PROCESS_ID (the pod's completion index).
# failurePolicy.maxRestarts: when a pod fails, the JobSet recreates all pods and jaxlm resumes
# from the last checkpoint in train.run_dir (use a gs:// bucket: pods share no disk).
#
# Options:
#   --image IMAGE       container image with jaxlm installed (required)
#   --name NAME         JobSet name (default jaxlm)          --namespace NS (default default)
#   --tpu-type TYPE     node label gke-tpu-accelerator (default tpu-v5-lite-podslice)
#   --topology TOPO     node label gke-tpu-topology (default 4x4)
#   --hosts N           TPU VMs per slice / GPU nodes (default 4)   --chips N  chips per host (4)
#   --slices N          TPU slices (default 1)               --max-restarts N  (default 3)
#   --gpu TYPE          GPU nodes instead (gke-accelerator, e.g. nvidia-h100-80gb); --chips = GPUs
#   --logs DIR          where pod logs are gathered (default logs/k8s-NAME-<time>)
#   --timeout DURATION  how long to wait for the JobSet to finish (default 24h)
#   --dry-run           print the manifest (stdout) and every command (stderr, "+ ...") only
#
# The same run with xpk instead: see launch/README.md.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | grep -v '^# shellcheck' | sed '$d; s/^# \{0,1\}//'; }
die() { echo "k8s.sh: $*" >&2; exit 2; }

image=""
name=jaxlm
namespace=default
tpu_type=tpu-v5-lite-podslice
topology=4x4
hosts=4
chips=4
slices=1
max_restarts=3
gpu=""
logs=""
timeout=24h
dry=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    --image) image=${2:?--image needs a value}; shift 2 ;;
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --namespace) namespace=${2:?--namespace needs a value}; shift 2 ;;
    --tpu-type) tpu_type=${2:?--tpu-type needs a value}; shift 2 ;;
    --topology) topology=${2:?--topology needs a value}; shift 2 ;;
    --hosts) hosts=${2:?--hosts needs a value}; shift 2 ;;
    --chips) chips=${2:?--chips needs a value}; shift 2 ;;
    --slices) slices=${2:?--slices needs a value}; shift 2 ;;
    --max-restarts) max_restarts=${2:?--max-restarts needs a value}; shift 2 ;;
    --gpu) gpu=${2:?--gpu needs a value}; shift 2 ;;
    --logs) logs=${2:?--logs needs a value}; shift 2 ;;
    --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
    --dry-run) dry=true; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[[ -n "$image" ]] || die "give the container image: --image IMAGE"
[[ $# -gt 0 ]] || die "give the jaxlm command line, e.g.: -- train configs/pretrain/tiny.yaml"
for v in "$hosts" "$chips" "$slices" "$max_restarts"; do
  [[ "$v" =~ ^[0-9]+$ ]] || die "--hosts, --chips, --slices and --max-restarts take integers (got '$v')"
done
if [[ -n "$gpu" && "$slices" -ne 1 ]]; then die "--slices is for TPUs; GPU runs use --hosts"; fi
[[ "$name" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name must be a DNS label (a-z, 0-9, -)"
logs=${logs:-logs/k8s-$name-$(date +%Y%m%d-%H%M%S)}

yaml_str() {  # a YAML (JSON) double-quoted string
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
args_yaml=""
for word in "$@"; do args_yaml+="${args_yaml:+, }$(yaml_str "$word")"; done

manifest() {
  local job=slice node_selector resources env=""
  if [[ -n "$gpu" ]]; then
    job=workers
    node_selector="cloud.google.com/gke-accelerator: $(yaml_str "$gpu")"
    resources="nvidia.com/gpu: $chips"
    env="
              - name: JAXLM_COORDINATOR_ADDRESS
                value: \"$name-$job-0-0.$name:6789\"
              - name: JAXLM_NUM_PROCESSES
                value: \"$hosts\"
              - name: JAXLM_PROCESS_ID
                valueFrom:
                  fieldRef:
                    fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']"
  else
    node_selector="cloud.google.com/gke-tpu-accelerator: $(yaml_str "$tpu_type")
              cloud.google.com/gke-tpu-topology: $(yaml_str "$topology")"
    resources="google.com/tpu: $chips"
  fi
  cat << EOF
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: $name
  namespace: $namespace
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: $max_restarts
  replicatedJobs:
  - name: $job
    replicas: $slices
    template:
      spec:
        parallelism: $hosts
        completions: $hosts
        backoffLimit: 0
        template:
          spec:
            restartPolicy: Never
            hostNetwork: true
            dnsPolicy: ClusterFirstWithHostNet
            nodeSelector:
              $node_selector
            containers:
            - name: jaxlm
              image: $(yaml_str "$image")
              command: ["jaxlm"]
              args: [$args_yaml]
              ports:
              - containerPort: 8471
              - containerPort: 8080
              - containerPort: 6789
              env:
              - name: PYTHONUNBUFFERED
                value: "1"$env
              resources:
                limits:
                  $resources
EOF
}

show() {  # "+ cmd" on stderr, so that a dry run's stdout is the manifest alone
  local word out="+"
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=" $word"; else out+=" '${word//\'/\'\\\'\'}'"; fi
  done
  echo "$out" >&2
}
run() { show "$@"; if ! $dry; then "$@"; fi; }
to_seconds() {  # 90, 90s, 45m, 24h -> seconds
  local n=${1%[smh]}
  case "$1" in
    *h) echo $((n * 3600)) ;;
    *m) echo $((n * 60)) ;;
    *) echo "$n" ;;
  esac
}

kc=(kubectl --namespace "$namespace")
selector=jobset.sigs.k8s.io/jobset-name=$name
if $dry; then
  manifest
  show "${kc[@]}" apply -f "<the manifest above>"
else
  manifest | run "${kc[@]}" apply -f -
fi

# Wait until the JobSet has completed or failed (after its restarts), polling its conditions.
poll=("${kc[@]}" get "jobset/$name" -o 'jsonpath={.status.conditions[?(@.status=="True")].type}')
show "${poll[@]}"
echo "#   ...every 30s until the JobSet is Completed or Failed (at most $timeout)" >&2
status=0
if ! $dry; then
  deadline=$((SECONDS + $(to_seconds "$timeout")))
  while :; do
    state=$("${poll[@]}" 2> /dev/null || true)
    if [[ "$state" == *Completed* ]]; then break; fi
    if [[ "$state" == *Failed* ]]; then status=1; break; fi
    if [[ $SECONDS -ge $deadline ]]; then status=124; break; fi
    sleep 30
  done
fi

# Gather every pod's log, whatever happened.
show "${kc[@]}" get pods -l "$selector" -o name
echo "#   ...then for each POD: ${kc[*]} logs POD > $logs/POD.log" >&2
if ! $dry; then
  mkdir -p "$logs"
  for pod in $("${kc[@]}" get pods -l "$selector" -o name); do
    "${kc[@]}" logs "$pod" > "$logs/${pod#pod/}.log" 2>&1 || true
  done
  if [[ $status -ne 0 ]]; then
    echo "k8s.sh: jobset/$name did not complete (status $status); pod logs in $logs/; see:" \
      "kubectl --namespace $namespace describe jobset $name" >&2
  else
    echo "k8s.sh: jobset/$name completed; pod logs in $logs/" >&2
  fi
fi
exit "$status"
