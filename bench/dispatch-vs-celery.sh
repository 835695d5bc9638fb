#!/usr/bin/env bash
# Dispatch round trip, infermine against Celery, on the same machine.
#
# Both sides do the same thing, closed loop, the same number of jobs with the same number in
# flight: submit a job, a worker returns N bytes (base64 plus SHA-256; 64 by default), the
# result is persisted, the client holds it. Round trips are timed from the submit to holding
# the result, and p99 is the ceil(0.99 n)-th smallest on both sides.
#
# - infermine: `loadgen` (tests/src/bin/loadgen.rs) starts `infermine-server serve` with its
#   defaults (SQLite in WAL mode with synchronous=NORMAL; job objects in the embedded S3 server),
#   connects BENCH_AGENTS synthetic agents over real WebSockets, submits over HTTP
#   (POST /v1/jobs) and long-polls each result (GET /v1/jobs/{id}?wait=).
# - Celery (bench/celery_dispatch.py): a private redis-server as broker and result backend
#   (results persisted there), one worker started here, a Python client that calls
#   apply_async() and AsyncResult.get() from BENCH_CONCURRENCY threads.
#
# Celery's configuration, the best of those tried on a 2-vCPU machine (bench/RESULTS.md):
#   worker: --pool=threads --concurrency=4 (CELERY_POOL, CELERY_WORKER_CONCURRENCY),
#   --without-gossip --without-mingle --without-heartbeat, prefetch multiplier 64
#   (CELERY_PREFETCH), rate limits off, acks on receipt, json serializer,
#   task_ignore_result=False, one result write per job (task_track_started off). Client: one
#   process of BENCH_CONCURRENCY threads (CELERY_CLIENT_PROCS spreads them over processes).
#   Tried: threads 2/4/16, solo, prefork 2, gevent 16/64, prefetch 8/16/64/256, 2 client
#   processes. threads and solo cost the least CPU per job (about 3.6-4.9 ms all told: client,
#   worker, Redis); prefork 2 costs 5.2-6.1 ms (the pipe to its children), gevent 7.7-8.6 ms.
# Redis persistence: BENCH_REDIS_PERSIST=aof (default) is `--appendonly yes --appendfsync no
#   --save ''`: every write goes to the append-only file through the OS, fsync left to the
#   kernel. That is about what SQLite's WAL with synchronous=NORMAL gives infermine (no fsync
#   per commit; SQLite still fsyncs at checkpoints, so Redis gets the more lenient end).
#   BENCH_REDIS_PERSIST=none is `--save '' --appendonly no` (memory only).
#
# Usage (from anywhere; the script builds what it needs, so the first run takes a while):
#   bench/dispatch-vs-celery.sh              # default: 2 alternating rounds a side of 6,000 jobs,
#                                            # 64 in flight (about 2 min after the builds)
#   BENCH_JOBS=2000 BENCH_ROUNDS=1 bench/dispatch-vs-celery.sh     # quick (CI, < 1 min)
#   BENCH_JOBS=50000 BENCH_ROUNDS=5 bench/dispatch-vs-celery.sh    # long version: 5 alternating
#                                            # rounds a side, medians (about 30 min)
# Variables: BENCH_JOBS (6000), BENCH_CONCURRENCY (64), BENCH_AGENTS (64 synthetic agents, one
# slot each), BENCH_OUTPUT_BYTES (64), BENCH_ROUNDS (2), BENCH_REDIS_PERSIST (aof | none),
# CELERY_POOL (threads | prefork | solo | gevent; gevent is installed only when chosen),
# CELERY_WORKER_CONCURRENCY (4), CELERY_PREFETCH (64), CELERY_CLIENT_PROCS (1),
# BENCH_SKIP_BUILD=1 (use the release binaries already in target/),
# BENCH_PROFILE=debug (a smoke run on the debug binaries `scripts/test.sh` built, as CI does: it
# checks that both sides run and lose nothing; its figures are not a comparison).
#
# Output: both tools' own figures, then one line per round and, last, the ratio:
#   dispatch-vs-celery: infermine_jobs_per_s=<n> infermine_p99_ms=<x> celery_jobs_per_s=<n>
#     celery_p99_ms=<x> throughput_ratio=<x> p99_ratio=<x>      (on one line)
# throughput_ratio = infermine / celery; p99_ratio = celery p99 / infermine p99 (> 1: infermine's
# tail is better). With BENCH_ROUNDS > 1 each figure is the median over the rounds. Progress goes
# to stderr. Exits non-zero when a side fails jobs; the target (10x) is reported, not enforced.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# As scripts/test.sh: constant, so cargo's fingerprints never change.
export LD_LIBRARY_PATH="$root/.libtorch/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

CELERY_VERSION=5.7.0
REDIS_PY_VERSION=8.1.0
GEVENT_VERSION=26.9.0

jobs=${BENCH_JOBS:-6000}
concurrency=${BENCH_CONCURRENCY:-64}
agents=${BENCH_AGENTS:-64}
output_bytes=${BENCH_OUTPUT_BYTES:-64}
rounds=${BENCH_ROUNDS:-2}
persist=${BENCH_REDIS_PERSIST:-aof}
pool=${CELERY_POOL:-threads}
worker_concurrency=${CELERY_WORKER_CONCURRENCY:-4}
prefetch=${CELERY_PREFETCH:-64}
client_procs=${CELERY_CLIENT_PROCS:-1}

for var in jobs concurrency agents output_bytes rounds worker_concurrency prefetch client_procs; do
  if ! [[ ${!var} =~ ^[0-9]+$ ]] || ((${!var} < 1)); then
    echo "dispatch-vs-celery: $var must be a positive integer (got '${!var}')" >&2
    exit 2
  fi
done
case $persist in
  aof) redis_persist=(--save '' --appendonly yes --appendfsync no) ;;
  none) redis_persist=(--save '' --appendonly no) ;;
  *) echo "dispatch-vs-celery: BENCH_REDIS_PERSIST must be aof or none (got '$persist')" >&2; exit 2 ;;
esac
case $pool in
  threads | prefork | solo | gevent) ;;
  *) echo "dispatch-vs-celery: CELERY_POOL must be threads, prefork, solo or gevent (got '$pool')" >&2; exit 2 ;;
esac

started=$SECONDS
log() { printf 'dispatch-vs-celery: [%3d s] %s\n' $((SECONDS - started)) "$*" >&2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dispatch-vs-celery.XXXXXX")
redis_pid=""
worker_pid=""
job_pid=""

# Stops a process group (the Celery worker: main process and pool children) or a process,
# politely first.
stop() {
  local target=$1 what=$2
  kill -TERM -- "$target" 2>/dev/null || return 0
  for _ in $(seq 50); do
    kill -0 -- "$target" 2>/dev/null || return 0
    sleep 0.1
  done
  log "$what did not stop in 5 s; killing it"
  kill -KILL -- "$target" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $job_pid ]]; then
    # The whole group: loadgen's server is its child, and a killed loadgen would leave it.
    stop "-$job_pid" "the running command"
  fi
  if [[ -n $worker_pid ]]; then
    stop "-$worker_pid" "the Celery worker"
  fi
  if [[ -n $redis_pid ]]; then
    stop "$redis_pid" "redis-server"
  fi
  rm -rf "$tmp"
  if [[ $rc != 0 ]]; then
    log "FAILED (exit $rc)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# `run_group OUT ERR COMMAND...`: runs COMMAND in a process group of its own, its stdout and
# stderr into the files OUT and ERR (`- -`: the script's own stderr), and waits for it. Bash runs the INT/TERM traps only once a
# foreground command ends, so a long command runs like this instead: the trap then fires at once
# and cleanup stops the whole group (with whatever it started). The redirections are here, not
# on the call, so that the trap's own messages still reach the script's stderr.
run_group() {
  local rc=0 out=$1 err=$2
  shift 2
  if [[ $out == - ]]; then
    setsid "$@" >&2 &
  else
    setsid "$@" >"$out" 2>"$err" &
  fi
  job_pid=$!
  wait "$job_pid" || rc=$?
  # What the command left in its group (loadgen's server, killed but maybe not yet reaped).
  stop "-$job_pid" "$1"
  job_pid=""
  return "$rc"
}

# CPU seconds (user + system) of every process in a process group.
group_cpu() {
  local pgid=$1 total=0 pid stat rest
  for pid in $(pgrep -g "$pgid" || true); do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    rest=${stat##*) }
    # shellcheck disable=SC2086 # split the fields on purpose
    set -- $rest
    total=$((total + ${12} + ${13}))
  done
  awk -v t="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# CPU seconds of one process.
proc_cpu() {
  local stat rest
  stat=$(cat "/proc/$1/stat")
  rest=${stat##*) }
  # shellcheck disable=SC2086 # split the fields on purpose
  set -- $rest
  awk -v t=$((${12} + ${13})) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# `key=value` from a summary line.
field() { sed -n "s/.*[ :]$1=\([0-9.]*\).*/\1/p" <<<"$2" | tail -n1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# --- builds ------------------------------------------------------------------------------------

profile=${BENCH_PROFILE:-release}
case $profile in
  release)
    if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
      log "set-up (scripts/setup.sh: libtorch, web portal the server embeds)"
      scripts/setup.sh >&2
      log "building infermine-server and loadgen (cargo build --release; minutes on a cold target/)"
      cargo build --release -p infermine-server --bin infermine-server -p infermine-tests --bin loadgen >&2
    fi
    ;;
  debug) log "BENCH_PROFILE=debug: a smoke run on debug binaries; its figures are not a comparison" ;;
  *) echo "dispatch-vs-celery: BENCH_PROFILE must be release or debug, not '$profile'" >&2; exit 1 ;;
esac
for bin in infermine-server loadgen; do
  [[ -x target/$profile/$bin ]] || { echo "dispatch-vs-celery: target/$profile/$bin is missing (run without BENCH_SKIP_BUILD, or cargo build --workspace --bins for debug)" >&2; exit 1; }
done

# --- Celery's environment ----------------------------------------------------------------------

if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    log "installing redis-server (apt-get)"
    apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
  else
    echo "dispatch-vs-celery: redis-server is not on PATH; install it (Debian: 'apt-get install redis-server') and run again" >&2
    exit 1
  fi
fi

venv="$root/.dev/celery-bench"
py="$venv/bin/python"
want="celery==$CELERY_VERSION redis==$REDIS_PY_VERSION"
[[ $pool == gevent ]] && want+=" gevent==$GEVENT_VERSION"
if [[ ! -x $py ]]; then
  log "creating the Python venv $venv"
  python3 -m venv "$venv" >&2
fi
if [[ "$(cat "$venv/.bench-packages" 2>/dev/null)" != *"$want"* ]]; then
  log "installing $want into $venv"
  pkgs=("celery[redis]==$CELERY_VERSION" "redis==$REDIS_PY_VERSION")
  [[ $pool == gevent ]] && pkgs+=("gevent==$GEVENT_VERSION")
  "$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${pkgs[@]}" >&2
  echo "$want" >"$venv/.bench-packages"
fi

versions_line="celery $("$py" -c 'import celery; print(celery.__version__)'), redis-py $("$py" -c 'import redis; print(redis.__version__)'), $(redis-server --version | awk '{ print $1, $3 }' | tr -d 'v=')"
log "Celery side: $versions_line"

# --- the two sides -----------------------------------------------------------------------------

run_infermine() {
  local round=$1 out cpu_before cpu_after line rc=0
  log "infermine, round $round: loadgen --agents $agents --jobs $jobs --concurrency $concurrency"
  # The CPU time of this shell's waited-for children (cutime + cstime): around the run, that is
  # loadgen's own (client and agents; its server is killed, not waited for, and reports itself).
  cpu_before=$(awk '{ print $16 + $17 }' "/proc/$$/stat")
  run_group "$tmp/loadgen.out" "$tmp/loadgen.err" timeout 1800 "target/$profile/loadgen" \
    --agents "$agents" --jobs "$jobs" --concurrency "$concurrency" \
    --output-bytes "$output_bytes" --summary-line || rc=$?
  if [[ $rc != 0 ]]; then
    cat "$tmp/loadgen.out" "$tmp/loadgen.err" >&2
    echo "dispatch-vs-celery: loadgen failed (exit $rc)" >&2
    return 1
  fi
  cpu_after=$(awk '{ print $16 + $17 }' "/proc/$$/stat")
  grep -v '^loadgen-summary:' "$tmp/loadgen.out"
  out=$(grep '^loadgen-summary:' "$tmp/loadgen.out")
  line="infermine round $round: jobs_per_s=$(field jobs_per_s "$out") p50_ms=$(field p50_ms "$out") p99_ms=$(field p99_ms "$out") server_cpu_us_per_job=$(field server_cpu_us_per_job "$out")"
  line+=" loadgen_cpu_us_per_job=$(awk -v a="$cpu_before" -v b="$cpu_after" -v n="$(field completed "$out")" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", (b - a) / hz * 1e6 / (n > 0 ? n : 1) }')"
  echo "$line"
  infermine_rate+=("$(field jobs_per_s "$out")")
  infermine_p99+=("$(field p99_ms "$out")")
}

start_celery() {
  local port
  port=$(free_port)
  mkdir -p "$tmp/redis"
  log "starting redis-server on 127.0.0.1:$port (persistence: $persist)"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp/redis" --daemonize no \
    --logfile "$tmp/redis.log" "${redis_persist[@]}" &
  redis_pid=$!
  export CELERY_BENCH_REDIS="redis://127.0.0.1:$port/0" CELERY_BENCH_PREFETCH=$prefetch
  for _ in $(seq 100); do
    "$py" -c 'import os, redis; redis.Redis.from_url(os.environ["CELERY_BENCH_REDIS"]).ping()' 2>/dev/null && break
    kill -0 "$redis_pid" 2>/dev/null || { cat "$tmp/redis.log" >&2; echo "dispatch-vs-celery: redis-server exited" >&2; return 1; }
    sleep 0.1
  done
  log "starting the Celery worker (--pool=$pool --concurrency=$worker_concurrency, prefetch multiplier $prefetch)"
  # Its own process group (setsid), so the pool's children stop with it.
  PYTHONPATH="$root/bench" setsid "$venv/bin/celery" -A celery_dispatch worker --pool="$pool" \
    --concurrency="$worker_concurrency" --loglevel=warning --without-gossip --without-mingle \
    --without-heartbeat --hostname="bench-$$@%h" >"$tmp/worker.log" 2>&1 &
  worker_pid=$!
  if ! PYTHONPATH="$root/bench" run_group - - \
    "$py" "$root/bench/celery_dispatch.py" ping --timeout 60; then
    cat "$tmp/worker.log" >&2
    return 1
  fi
}

run_celery() {
  local round=$1 out worker_before redis_before worker_after redis_after n line
  log "Celery, round $round: $jobs jobs, $concurrency in flight"
  worker_before=$(group_cpu "$worker_pid")
  redis_before=$(proc_cpu "$redis_pid")
  if ! PYTHONPATH="$root/bench" run_group "$tmp/celery.out" "$tmp/celery.err" timeout 1800 \
    "$py" "$root/bench/celery_dispatch.py" client --jobs "$jobs" --concurrency "$concurrency" \
    --output-bytes "$output_bytes" --procs "$client_procs"; then
    cat "$tmp/celery.out" "$tmp/celery.err" >&2
    tail -n 20 "$tmp/worker.log" >&2
    echo "dispatch-vs-celery: the Celery client failed" >&2
    return 1
  fi
  if ! kill -0 "$redis_pid" 2>/dev/null; then
    echo "dispatch-vs-celery: redis-server died during the run (log: $(tail -n 5 "$tmp/redis.log"))" >&2
    return 1
  fi
  worker_after=$(group_cpu "$worker_pid")
  redis_after=$(proc_cpu "$redis_pid")
  grep -v '^celery-summary:' "$tmp/celery.out"
  out=$(grep '^celery-summary:' "$tmp/celery.out")
  n=$(field completed "$out")
  line="celery round $round: jobs_per_s=$(field jobs_per_s "$out") p50_ms=$(field p50_ms "$out") p99_ms=$(field p99_ms "$out")"
  line+=$(awk -v w0="$worker_before" -v w1="$worker_after" -v r0="$redis_before" -v r1="$redis_after" \
    -v c="$(field client_cpu_s "$out")" -v n="$n" 'BEGIN {
      n = n > 0 ? n : 1
      printf " worker_cpu_us_per_job=%.0f redis_cpu_us_per_job=%.0f client_cpu_us_per_job=%.0f", (w1 - w0) * 1e6 / n, (r1 - r0) * 1e6 / n, c * 1e6 / n
    }')
  echo "$line"
  celery_rate+=("$(field jobs_per_s "$out")")
  celery_p99+=("$(field p99_ms "$out")")
}

stop_celery() {
  stop "-$worker_pid" "the Celery worker"
  worker_pid=""
  stop "$redis_pid" "redis-server"
  redis_pid=""
  rm -rf "$tmp/redis"
}

infermine_rate=()
infermine_p99=()
celery_rate=()
celery_p99=()
log "$jobs jobs, $concurrency in flight, $output_bytes output bytes, $rounds round(s) a side; $(nproc) CPUs"
echo "dispatch-vs-celery: jobs=$jobs concurrency=$concurrency output_bytes=$output_bytes rounds=$rounds agents=$agents celery_pool=$pool celery_worker_concurrency=$worker_concurrency celery_prefetch=$prefetch celery_client_procs=$client_procs redis_persist=$persist ($versions_line)"
for round in $(seq "$rounds"); do
  # Only one side's processes exist at a time: Redis and the worker start after loadgen ends
  # (a fresh Redis each round, so no round reads another's results).
  run_infermine "$round"
  start_celery
  run_celery "$round"
  stop_celery
done

summary=$(awk -v ir="$(median "${infermine_rate[@]}")" -v ip="$(median "${infermine_p99[@]}")" \
  -v cr="$(median "${celery_rate[@]}")" -v cp="$(median "${celery_p99[@]}")" 'BEGIN {
    printf "infermine_jobs_per_s=%.0f infermine_p99_ms=%.2f celery_jobs_per_s=%.0f celery_p99_ms=%.2f throughput_ratio=%.2f p99_ratio=%.2f",
      ir, ip, cr, cp, (cr > 0 ? ir / cr : 0), (ip > 0 ? cp / ip : 0)
  }')
log "done in $((SECONDS - started)) s"
echo "dispatch-vs-celery: $summary"
