#!/usr/bin/env bash
# Runs infermine on this machine: a coordinator with SQLite in .dev/data and one local agent
# serving the demo models (tiny random-weight LLMs and SD 1.5 / SDXL / Flux pipelines of the real
# architectures, written by `infermine-agent models synth` into .dev/models) and synthetic-echo,
# checked end to end with a demo chat completion and a demo image.
#
#   scripts/dev.sh up              # set up, build, start, run a demo job; Ctrl-C stops both
#   scripts/dev.sh up --detach     # the same, but returns and leaves them running
#   scripts/dev.sh down            # stops what `up` started (pid files in .dev/)
#
# Settings: INFERMINE_LISTEN (default 127.0.0.1:8080) is where the coordinator listens;
# INFERMINE_DEV_PROFILE=release builds optimised binaries (default: debug, which builds much
# faster and shares most of its work with scripts/test.sh). The API key and the demo miner's
# token are made once and kept in .dev/; `rm -rf .dev` starts from scratch.
# Logs: .dev/server.log and .dev/agent.log.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev="$root/.dev"
cd "$root"
# Constant, so it never invalidates cargo's fingerprints; the agent carries an rpath anyway.
export LD_LIBRARY_PATH="$root/.libtorch/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The dev coordinator always runs from .dev/data, so settings meant for another one must not leak
# in (they would also invalidate the stored key and token).
unset INFERMINE_CONFIG INFERMINE_DATA_DIR INFERMINE_DATABASE_URL INFERMINE_JWT_SECRET \
  INFERMINE_JWT_SECRET_FILE INFERMINE_AGENT_CONFIG INFERMINE_AGENT_COORDINATOR \
  INFERMINE_AGENT_TOKEN INFERMINE_AGENT_TOKEN_FILE INFERMINE_AGENT_MODELS

demo_wallet=0x5aeda56215b167893e80b4fe645ba6d5bab767de
demo_name=demo
# The agent serves these; the demo job and the printed examples use the first.
demo_models=(tiny-llama tiny-mistral tiny-mixtral tiny-mixtral-gptq tiny-sd15 tiny-sdxl tiny-flux)
model=${demo_models[0]}
listen=${INFERMINE_LISTEN:-127.0.0.1:8080}
profile=${INFERMINE_DEV_PROFILE:-debug}

say() { printf 'dev: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}
section() { printf '\n==> %s\n' "$*" >&2; }

# pid of a process this script started and that still runs, or nothing.
live_pid() {
  local file="$dev/$1.pid" pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "infermine-$1"; then
    echo "$pid"
  fi
}

# Stops one process: SIGTERM, then SIGKILL after its grace period.
stop_one() {
  local name=$1 grace=$2 pid
  pid=$(live_pid "$name")
  if [[ -n $pid ]]; then
    say "stopping the $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((grace * 10))); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "the $name did not stop within ${grace} s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  fi
  rm -f "$dev/$name.pid"
}

# The agent first, so it finishes its jobs while the coordinator can still take the results.
down() {
  stop_one agent 15
  stop_one server 25
}

show_log() {
  say "last lines of $1:"
  tail -n 25 "$1" >&2 || true
}

# Starts a process in the background with its output in .dev/NAME.log and records its pid.
launch() {
  local name=$1
  shift
  [[ -f $dev/$name.log ]] && mv -f "$dev/$name.log" "$dev/$name.log.prev"
  # NO_COLOR: the logs are files, not terminals.
  if [[ $detach == 1 ]]; then
    # Its own session, so closing this terminal does not take it down.
    NO_COLOR=1 setsid "$@" >"$dev/$name.log" 2>&1 </dev/null &
  else
    NO_COLOR=1 "$@" >"$dev/$name.log" 2>&1 </dev/null &
  fi
  echo $! >"$dev/$name.pid"
}

# Prints a secret made by an `infermine-server` subcommand, minting it once into FILE.
secret() {
  local file=$1
  shift
  if [[ ! -s $file ]]; then
    (umask 077 && "$server_bin" "$@" --data-dir "$dev/data" >"$file.tmp" 2>>"$dev/setup.log") || {
      rm -f "$file.tmp"
      show_log "$dev/setup.log"
      die "'infermine-server $1' failed (log above); if .dev/data is damaged, remove .dev and run again"
    }
    mv -f "$file.tmp" "$file"
  fi
  cat "$file"
}

# HTTP from Python's standard library, which setup.sh needs anyway (curl may be missing).
http() {
  python3 - "$@" <<'PY'
import base64, json, os, sys, time, urllib.error, urllib.request

# The coordinator is local: never go through an http_proxy from the environment.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def call(method, url, key=None, body=None, timeout=70):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", "Bearer " + key)
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

def alive(pid):
    try:
        os.kill(int(pid), 0)
        return True
    except OSError:
        return False

cmd, base = sys.argv[1], sys.argv[2]
if cmd == "wait-health":
    pid, deadline = sys.argv[3], time.time() + float(sys.argv[4])
    while time.time() < deadline:
        if not alive(pid):
            sys.exit(3)
        try:
            if call("GET", base + "/healthz", timeout=2)[0] == 200:
                sys.exit(0)
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(2)
elif cmd == "wait-slots":
    agent_pid, deadline = sys.argv[3], time.time() + float(sys.argv[4])
    while time.time() < deadline:
        if not alive(agent_pid):
            sys.exit(3)
        status, text = call("GET", base + "/v1/status", timeout=2)
        if status == 200 and json.loads(text).get("slots", 0) > 0:
            sys.exit(0)
        time.sleep(0.2)
    sys.exit(2)
elif cmd == "demo-job":
    key, model = sys.argv[3], sys.argv[4]
    body = {"model": model, "max_tokens": 24, "seed": 1,
            "messages": [{"role": "user", "content": "Hello! Who are you?"}]}
    print(f"dev: asking {model} for a chat completion", file=sys.stderr)
    status, text = call("POST", base + "/v1/chat/completions", key, body, timeout=130)
    if status != 200:
        print(f"POST /v1/chat/completions answered {status}: {text}", file=sys.stderr)
        sys.exit(4 if status == 401 else 1)
    print(json.dumps(json.loads(text), indent=2, ensure_ascii=False))
elif cmd == "demo-image":
    key, model, out = sys.argv[3], sys.argv[4], sys.argv[5]
    body = {"model": model, "prompt": "a lighthouse at dawn", "size": "128x128",
            "steps": 12, "seed": 1}
    print(f"dev: asking {model} for an image", file=sys.stderr)
    status, text = call("POST", base + "/v1/images/generations", key, body, timeout=130)
    if status != 200:
        print(f"POST /v1/images/generations answered {status}: {text}", file=sys.stderr)
        sys.exit(4 if status == 401 else 1)
    answer = json.loads(text)
    with open(out, "wb") as f:
        f.write(base64.b64decode(answer["data"][0]["b64_json"]))
    print(f"dev: {model} rendered {out} (random weights: the image is noise); "
          f"job {answer['infermine']['job_ids'][0]}", file=sys.stderr)
PY
}

up() {
  local detach=0 arg
  for arg in "$@"; do
    case $arg in
      -d | --detach) detach=1 ;;
      *) die "unknown option '$arg'; use: scripts/dev.sh up [--detach]" ;;
    esac
  done
  local running
  running=$(live_pid server)$(live_pid agent)
  [[ -z $running ]] || die "infermine is already running from .dev (pids in .dev/*.pid); stop it with: scripts/dev.sh down"
  case $profile in
    debug) build=(cargo build -p infermine-server -p infermine-agent) ;;
    release) build=(cargo build --release -p infermine-server -p infermine-agent) ;;
    *) die "INFERMINE_DEV_PROFILE must be debug or release, not '$profile'" ;;
  esac
  command -v python3 >/dev/null || die "python3 is required (apt-get install python3)"

  local host=${listen%:*} port=${listen##*:}
  [[ $port =~ ^[0-9]+$ && -n $host && $host != "$listen" ]] ||
    die "INFERMINE_LISTEN='$listen' is not HOST:PORT (e.g. 127.0.0.1:8080)"
  case $host in
    0.0.0.0) host=127.0.0.1 ;;
    "[::]") host="[::1]" ;;
  esac
  local base="http://$host:$port"
  if (exec 3<>"/dev/tcp/${host//[\[\]]/}/$port") 2>/dev/null; then
    die "something already listens on $listen; set INFERMINE_LISTEN to a free address (e.g. INFERMINE_LISTEN=127.0.0.1:8081 scripts/dev.sh up)"
  fi

  section "libtorch (scripts/setup.sh)"
  scripts/setup.sh >&2

  section "build ($profile): ${build[*]}"
  local t0=$SECONDS
  "${build[@]}"
  say "built in $((SECONDS - t0)) s"
  server_bin="$root/target/$profile/infermine-server"
  agent_bin="$root/target/$profile/infermine-agent"

  section "start"
  mkdir -p "$dev/data"
  # A new database means the stored key and token belong to an old one.
  if [[ ! -e $dev/data/infermine.db ]]; then
    rm -f "$dev/api.key" "$dev/miner.token"
  fi
  : >"$dev/setup.log"
  local key
  key=$(secret "$dev/api.key" api-key create --name "$demo_name")
  secret "$dev/miner.token" miner-token --wallet "$demo_wallet" --name "$demo_name" >/dev/null

  # From here on, a failure or Ctrl-C stops whatever was started.
  trap 'down' EXIT
  trap 'echo >&2; say "interrupted; stopping"; exit 130' INT
  trap 'exit 143' TERM
  launch server "$server_bin" serve --listen "$listen" --data-dir "$dev/data"
  local rc=0
  http wait-health "$base" "$(cat "$dev/server.pid")" 30 || rc=$?
  if [[ $rc != 0 ]]; then
    show_log "$dev/server.log"
    if grep -q "cannot listen" "$dev/server.log"; then
      die "the coordinator cannot listen on $listen; set INFERMINE_LISTEN to a free address (e.g. INFERMINE_LISTEN=127.0.0.1:8081)"
    fi
    die "the coordinator did not answer $base/healthz (log above, in .dev/server.log)"
  fi
  say "coordinator up at $base (pid $(cat "$dev/server.pid"))"

  # Deterministic files: the registry pins their SHA-256, and the agent checks them at start.
  "$agent_bin" models synth --out "$dev/models" $(printf -- '--model %s ' "${demo_models[@]}") \
    2>>"$dev/setup.log" || { show_log "$dev/setup.log"; die "could not write the demo models"; }
  say "demo models (random weights) in .dev/models: ${demo_models[*]}"
  launch agent "$agent_bin" run --coordinator "ws://$host:$port" --token-file "$dev/miner.token" \
    --models-dir "$dev/models" $(printf -- '--model %s ' synthetic-echo "${demo_models[@]}") \
    --name "$demo_name"
  say "agent started (pid $(cat "$dev/agent.pid"))"
  rc=0
  http wait-slots "$base" "$(cat "$dev/agent.pid")" 60 || rc=$?
  if [[ $rc != 0 ]]; then
    show_log "$dev/agent.log"
    die "the agent did not register with the coordinator (log above, in .dev/agent.log)"
  fi

  section "demo job"
  rc=0
  http demo-job "$base" "$key" "$model" || rc=$?
  if [[ $rc != 0 ]]; then
    show_log "$dev/agent.log"
    show_log "$dev/server.log"
    [[ $rc == 4 ]] && die "the stored API key was refused; remove .dev/api.key (or all of .dev) and run again"
    if grep -q "refused the miner token" "$dev/agent.log"; then
      die "the stored miner token was refused; remove .dev/miner.token (or all of .dev) and run again"
    fi
    die "the demo job did not complete (logs above, in .dev/agent.log and .dev/server.log)"
  fi

  rc=0
  http demo-image "$base" "$key" tiny-sd15 "$dev/demo-tiny-sd15.png" || rc=$?
  if [[ $rc != 0 ]]; then
    show_log "$dev/agent.log"
    show_log "$dev/server.log"
    die "the demo image job did not complete (logs above, in .dev/agent.log and .dev/server.log)"
  fi

  banner "$base" "$key"
  if [[ $detach == 1 ]]; then
    trap - EXIT INT TERM
    say "running in the background; stop with: scripts/dev.sh down"
    return
  fi
  say "running in the foreground; press Ctrl-C to stop"
  local server_pid agent_pid
  server_pid=$(cat "$dev/server.pid")
  agent_pid=$(cat "$dev/agent.pid")
  # Returns when either process ends; Ctrl-C interrupts it and the EXIT trap stops both.
  wait -n "$server_pid" "$agent_pid" || true
  kill -0 "$server_pid" 2>/dev/null || { show_log "$dev/server.log"; die "the coordinator exited (log above)"; }
  show_log "$dev/agent.log"
  die "the agent exited (log above)"
}

banner() {
  local base=$1 key=$2
  cat <<EOF

────────────────────────────────────────────────────────────────────────
 infermine is running: coordinator + 1 agent (wallet $demo_wallet), serving
 ${demo_models[*]} (demo models: random weights, gibberish text, noise images) and synthetic-echo

 Portal     $base/wallet/$demo_wallet   (the demo wallet's points and GPU)
 Base URL   $base
 API key    $key   (kept in .dev/api.key)
 Logs       .dev/server.log   .dev/agent.log

 A chat completion (add "stream": true for server-sent events):

   curl -sS $base/v1/chat/completions \\
     -H 'Authorization: Bearer $key' -H 'Content-Type: application/json' \\
     -d '{"model":"$model","messages":[{"role":"user","content":"Hi!"}],"max_tokens":32}'

 An image (tiny-sd15, tiny-sdxl and tiny-flux have random weights: they render noise):

   curl -sS $base/v1/images/generations \\
     -H 'Authorization: Bearer $key' -H 'Content-Type: application/json' \\
     -d '{"model":"tiny-sd15","prompt":"a lighthouse at dawn","size":"128x128","steps":12}'

 Or with the openai package:  OpenAI(base_url="$base/v1", api_key="$key")

────────────────────────────────────────────────────────────────────────
EOF
}

case ${1:-} in
  up)
    shift
    up "$@"
    ;;
  down) down ;;
  *)
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
