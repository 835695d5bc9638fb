#!/usr/bin/env bash
# A throw-away external S3-compatible server for tests: Garage (or, with
# INFERMINE_S3_TEST_SERVER=s3s-fs, s3s-fs) serving a fresh temporary folder on a free loopback
# port, path-style, with fixed test credentials. Nothing outside that folder is touched.
#
#   url=$(scripts/s3-test.sh)          # start; prints http://127.0.0.1:PORT
#   scripts/s3-test.sh stop [DIR]      # stop it and delete its folder (default: the last started)
#
# The URL is the only thing on stdout; progress goes to stderr. The server accepts access key
# `GK0123456789abcdef01234567` with secret key `0123…cdef` (64 hex digits, below; Garage's key
# format, which s3s-fs accepts too), region us-east-1; it starts with no bucket, so each test
# creates its own.
#
# Garage 2.5.0 runs as a single node (sqlite metadata, `s3_region = "us-east-1"`, the key
# imported with the right to create buckets); it is built once with `cargo install garage
# --version 2.5.0 --locked` into .dev/tools (about 10 minutes on 2 cores).
#
# The storage tests use either when run as
#
#   INFERMINE_TEST_S3_ENDPOINT=$url INFERMINE_TEST_S3_ACCESS_KEY=GK0123456789abcdef01234567 \
#   INFERMINE_TEST_S3_SECRET_KEY=<the 64 hex digits below> cargo test -p infermine-server --lib storage
#
# INFERMINE_S3_TEST_DIR picks the (empty or missing) folder to use instead of a new one under
# ${TMPDIR:-/tmp}, so a caller knows what to pass to `stop` (such a folder is not remembered as
# the last one). Each server is taken from .dev/tools/bin or PATH; when neither has it, it is
# built once into .dev/tools (s3s-fs 0.14.1: about a minute).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
last_file="$root/.dev/s3-test.last"
tools="$root/.dev/tools"
version=0.14.1
access_key=GK0123456789abcdef01234567
secret_key=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
server=${INFERMINE_S3_TEST_SERVER:-garage}
garage_version=2.5.0

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

# Prints the path of the garage binary, building it into .dev/tools when there is none.
find_garage() {
  if [[ -x $tools/bin/garage ]]; then
    echo "$tools/bin/garage"
    return
  fi
  if command -v garage >/dev/null 2>&1; then
    command -v garage
    return
  fi
  command -v cargo >/dev/null 2>&1 || die "no garage binary and no cargo to build it"
  log "building garage $garage_version into $tools (once, about 10 minutes)"
  cargo install garage --version "$garage_version" --locked --root "$tools" >&2 ||
    die "cargo install garage failed (output above)"
  echo "$tools/bin/garage"
}

# Starts Garage in $1 listening for S3 on port $2; one node, our key allowed to create buckets.
start_garage() {
  local dir=$1 port=$2 bin rpc node
  bin=$(find_garage)
  rpc=$(free_port)
  cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"
TOML
  nohup "$bin" -c "$dir/garage.toml" server >"$dir/server.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  for _ in $(seq 100); do
    listening "$port" && break
    sleep 0.1
  done
  local g=("$bin" -c "$dir/garage.toml")
  node=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1) || return 1
  "${g[@]}" layout assign -z dc1 -c 1G "$node" >&2 &&
    "${g[@]}" layout apply --version 1 >&2 &&
    "${g[@]}" key import --yes -n infermine-test "$access_key" "$secret_key" >&2 &&
    "${g[@]}" key allow --create-bucket "$access_key" >&2
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
  [[ $server == garage ]] && { start_with_garage; return; }
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

start_with_garage() {
  local dir port t0=$SECONDS
  dir=$(mktemp -d "${TMPDIR:-/tmp}/infermine-s3.XXXXXX")
  [[ -n ${INFERMINE_S3_TEST_DIR:-} ]] && { dir=$INFERMINE_S3_TEST_DIR; mkdir -p "$dir"; }
  dir=$(cd "$dir" && pwd)
  # shellcheck disable=SC2064
  trap "abandon $(printf %q "$dir")" EXIT
  mkdir -p "$dir/data"
  port=$(free_port)
  start_garage "$dir" "$port" || die "garage did not start (log above)"
  echo "$port" >"$dir/port"
  if [[ -z ${INFERMINE_S3_TEST_DIR:-} ]]; then
    { mkdir -p "$(dirname "$last_file")" && echo "$dir" >"$last_file"; } 2>/dev/null || true
  fi
  trap - EXIT
  log "garage $garage_version ready on 127.0.0.1:$port in $((SECONDS - t0)) s; stop it with: scripts/s3-test.sh stop $dir"
  echo "http://127.0.0.1:$port"
}

# On a failed start: shows the log, then removes the half-made folder.
abandon() {
  local dir=$1
  local f
  for f in "$dir/s3s-fs.log" "$dir/server.log"; do
    [[ -s $f ]] && { log "--- last lines of $f"; tail -n 20 "$f" >&2; }
  done
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
      tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "\(s3s-fs.*$dir/data\|garage.*$dir/garage.toml\)"; then
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
  -h | --help | help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$1'; use: scripts/s3-test.sh [start] | stop [DIR]" ;;
esac
