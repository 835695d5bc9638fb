#!/usr/bin/env bash
# A throw-away external S3-compatible server for tests: `s3s-fs` serving a fresh temporary
# folder on a free loopback port, path-style, with fixed test credentials. Nothing outside that
# folder is touched.
#
#   url=$(scripts/s3-test.sh)          # start; prints http://127.0.0.1:PORT
#   scripts/s3-test.sh stop [DIR]      # stop it and delete its folder (default: the last started)
#
# The URL is the only thing on stdout; progress goes to stderr. The server accepts access key
# `infermine-test` with secret key `infermine-test-secret` in any region (sign for us-east-1);
# it starts with no bucket, so each test creates its own. The storage tests use it when run as
#
#   INFERMINE_TEST_S3_ENDPOINT=$url INFERMINE_TEST_S3_ACCESS_KEY=infermine-test \
#   INFERMINE_TEST_S3_SECRET_KEY=infermine-test-secret cargo test -p infermine-server --lib storage
#
# INFERMINE_S3_TEST_DIR picks the (empty or missing) folder to use instead of a new one under
# ${TMPDIR:-/tmp}, so a caller knows what to pass to `stop` (such a folder is not remembered as
# the last one). The server is the `s3s-fs` binary from PATH or .dev/tools/bin; when neither has
# it, it is built once with `cargo install s3s-fs --version 0.14.1 --features binary` into
# .dev/tools (a few minutes).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
last_file="$root/.dev/s3-test.last"
tools="$root/.dev/tools"
version=0.14.1
access_key=infermine-test
secret_key=infermine-test-secret

log() { echo "s3-test: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# Prints the path of the s3s-fs binary, building it into .dev/tools when there is none.
find_bin() {
  if [[ -x $tools/bin/s3s-fs ]]; then
    echo "$tools/bin/s3s-fs"
    return
  fi
  if command -v s3s-fs >/dev/null 2>&1; then
    command -v s3s-fs
    return
  fi
  command -v cargo >/dev/null 2>&1 || die "no s3s-fs binary and no cargo to build it; install Rust, or point the tests at a server with INFERMINE_TEST_S3_ENDPOINT"
  log "building s3s-fs $version into $tools (once, a few minutes)"
  # A debug build: it compiles in half the time, and a test server need not be fast.
  cargo install s3s-fs --version "$version" --features binary --locked --debug --root "$tools" >&2 ||
    die "cargo install s3s-fs failed (output above)"
  [[ -x $tools/bin/s3s-fs ]] || die "cargo install finished but $tools/bin/s3s-fs is missing"
  echo "$tools/bin/s3s-fs"
}

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
  else
    local port
    while :; do
      port=$((20000 + RANDOM % 40000))
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
  fi
}

# True once something accepts connections on the port.
listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  local bin dir port pid attempt started=0 t0=$SECONDS
  bin=$(find_bin)
  if [[ -n ${INFERMINE_S3_TEST_DIR:-} ]]; then
    dir=$INFERMINE_S3_TEST_DIR
    mkdir -p "$dir"
    [[ -z $(ls -A "$dir") ]] || die "$dir is not empty; give INFERMINE_S3_TEST_DIR a new folder"
  else
    dir=$(mktemp -d "${TMPDIR:-/tmp}/infermine-s3.XXXXXX")
  fi
  dir=$(cd "$dir" && pwd)
  # shellcheck disable=SC2064 # the folder is fixed now; `dir` is local to this function
  trap "abandon $(printf %q "$dir")" EXIT
  mkdir -p "$dir/data"

  # A port picked as free can be taken before the server binds it, so try a few.
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    nohup "$bin" --host 127.0.0.1 --port "$port" --access-key "$access_key" \
      --secret-key "$secret_key" "$dir/data" >"$dir/s3s-fs.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/pid"
    for _ in $(seq 100); do
      listening "$port" && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null && listening "$port"; then
      started=1
      break
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$dir/pid"
    log "could not start on port $port (attempt $attempt)"
  done
  [[ $started == 1 ]] || die "s3s-fs did not start (log above)"

  echo "$port" >"$dir/port"
  if [[ -z ${INFERMINE_S3_TEST_DIR:-} ]]; then
    { mkdir -p "$(dirname "$last_file")" && echo "$dir" >"$last_file"; } 2>/dev/null ||
      log "cannot record $dir in $last_file; pass the folder to 'stop'"
  fi
  trap - EXIT
  log "s3s-fs $version ready on 127.0.0.1:$port (pid $pid) in $((SECONDS - t0)) s; access key $access_key, secret key $secret_key; stop it with: scripts/s3-test.sh stop $dir"
  echo "http://127.0.0.1:$port"
}

# On a failed start: shows the log, then removes the half-made folder.
abandon() {
  local dir=$1
  [[ -s $dir/s3s-fs.log ]] && { log "--- last lines of $dir/s3s-fs.log"; tail -n 20 "$dir/s3s-fs.log" >&2; }
  stop "$dir" 2>/dev/null || true
}

stop() {
  local dir=${1:-} pid
  if [[ -z $dir ]]; then
    [[ -f $last_file ]] || die "nothing to stop: no folder given and none recorded in $last_file"
    dir=$(cat "$last_file")
  fi
  [[ -d $dir ]] || {
    log "$dir is already gone"
    return 0
  }
  [[ -f $dir/pid || -d $dir/data || -z $(ls -A "$dir") ]] || die "$dir does not look like an s3-test.sh folder; not touching it"
  if [[ -f $dir/pid ]]; then
    pid=$(cat "$dir/pid")
    # Only a process that is still our s3s-fs: the pid may have been reused since.
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
      tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "s3s-fs.*$dir/data"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && { log "s3s-fs $pid did not exit; killing it"; kill -KILL "$pid" 2>/dev/null || true; }
    fi
  fi
  rm -rf "$dir"
  if [[ -f $last_file && $(cat "$last_file") == "$dir" ]]; then
    rm -f "$last_file"
  fi
  log "stopped and removed $dir"
}

case ${1:-start} in
  start) start ;;
  stop) stop "${2:-}" ;;
  -h | --help | help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$1'; use: scripts/s3-test.sh [start] | stop [DIR]" ;;
esac
