#!/usr/bin/env bash
# A throw-away PostgreSQL for tests: a fresh cluster in a temporary folder, on a free loopback
# port, with fsync off and trust authentication. Nothing outside that folder is touched.
#
#   url=$(scripts/pg-test.sh)          # start; prints postgres://postgres@127.0.0.1:PORT/postgres
#   scripts/pg-test.sh stop [DIR]      # stop it and delete its folder (default: the last started)
#
# The URL is the only thing on stdout; progress goes to stderr. INFERMINE_PG_TEST_DIR picks the
# (empty or missing) folder to use instead of a new one under ${TMPDIR:-/tmp}, so a caller knows
# what to pass to `stop` (such a folder is not remembered as the last one). The server binaries
# come from /usr/lib/postgresql/*/bin or PATH; when there are none, root installs them with apt.
# initdb refuses to run as root, so as root the cluster belongs to the `postgres` OS user.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
last_file="$root/.dev/pg-test.last"

log() { echo "pg-test: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# Debian's layout: /usr/lib/postgresql/VERSION/bin, newest version last.
newest_debian_bin() {
  printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1
}

# Prints the folder holding initdb, pg_ctl and pg_isready, installing PostgreSQL if root can.
find_bin() {
  local dir
  dir=$(newest_debian_bin)
  if [[ -x $dir/initdb ]]; then
    echo "$dir"
    return
  fi
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return
  fi
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing PostgreSQL with apt (once)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql-15 >&2 || apt-get install -y -qq postgresql >&2
    dir=$(newest_debian_bin)
    [[ -x $dir/initdb ]] && { echo "$dir"; return; }
  fi
  die "no PostgreSQL server binaries (initdb) found; install them (as root: apt-get install postgresql-15), or point the tests at a server with INFERMINE_TEST_POSTGRES_URL, or skip PostgreSQL with INFERMINE_TEST_NO_POSTGRES=1"
}

# Runs a command as the owner of the cluster: the postgres OS user when we are root.
as_owner() {
  if [[ $(id -u) != 0 ]]; then
    "$@"
  elif command -v runuser >/dev/null 2>&1; then
    runuser -u postgres -- "$@"
  else
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  fi
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

start() {
  local bin dir port attempt started=0 t0=$SECONDS
  bin=$(find_bin)
  if [[ $(id -u) == 0 ]] && ! id postgres >/dev/null 2>&1; then
    log "creating the 'postgres' OS user (initdb refuses to run as root)"
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  if [[ -n ${INFERMINE_PG_TEST_DIR:-} ]]; then
    dir=$INFERMINE_PG_TEST_DIR
    mkdir -p "$dir"
    [[ -z $(ls -A "$dir") ]] || die "$dir is not empty; give INFERMINE_PG_TEST_DIR a new folder"
  else
    dir=$(mktemp -d "${TMPDIR:-/tmp}/infermine-pg.XXXXXX")
  fi
  dir=$(cd "$dir" && pwd)
  # shellcheck disable=SC2064 # the folder is fixed now; `dir` is local to this function
  trap "abandon $(printf %q "$dir")" EXIT
  [[ $dir != *[[:space:]]* ]] || die "$dir contains a space; set TMPDIR or INFERMINE_PG_TEST_DIR to a path without one"
  if [[ $(id -u) == 0 ]]; then
    chown postgres: "$dir"
    as_owner test -w "$dir" || die "the postgres user cannot write to $dir; set TMPDIR to a folder it can reach (e.g. /tmp)"
  fi
  cd "$dir"

  local initdb_args=(-D "$dir/data" --auth=trust -U postgres -E UTF8 --no-locale --no-sync)
  if "$bin/initdb" --help | grep -q -- --no-instructions; then
    initdb_args+=(--no-instructions)
  fi
  as_owner "$bin/initdb" "${initdb_args[@]}" >"$dir/initdb.log" 2>&1 ||
    die "initdb failed (log above)"

  # A port picked as free can be taken before the server binds it, so try a few.
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    if as_owner "$bin/pg_ctl" start -w -t 30 -D "$dir/data" -l "$dir/postgres.log" \
      -o "-F -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c listen_addresses=127.0.0.1 -p $port -k $dir" \
      >/dev/null; then
      started=1
      break
    fi
    log "could not start on port $port (attempt $attempt)"
  done
  [[ $started == 1 ]] || die "PostgreSQL did not start (log above)"
  for _ in $(seq 50); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres && break
    sleep 0.1
  done
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres || die "PostgreSQL is not ready (log above)"

  echo "$port" >"$dir/port"
  echo "$bin" >"$dir/bin"
  # A caller that chose the folder stops it by name; only remember folders we picked.
  if [[ -z ${INFERMINE_PG_TEST_DIR:-} ]]; then
    { mkdir -p "$(dirname "$last_file")" && echo "$dir" >"$last_file"; } 2>/dev/null ||
      log "cannot record $dir in $last_file; pass the folder to 'stop'"
  fi
  trap - EXIT
  log "PostgreSQL $("$bin/pg_ctl" --version | awk '{print $3}') ready on 127.0.0.1:$port in $((SECONDS - t0)) s; stop it with: scripts/pg-test.sh stop $dir"
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

# On a failed start: shows the logs, then removes the half-made cluster.
abandon() {
  local dir=$1 f
  for f in "$dir/initdb.log" "$dir/postgres.log"; do
    [[ -s $f ]] && { log "--- last lines of $f"; tail -n 20 "$f" >&2; }
  done
  stop "$dir" 2>/dev/null || true
}

stop() {
  local dir=${1:-}
  if [[ -z $dir ]]; then
    [[ -f $last_file ]] || die "nothing to stop: no folder given and none recorded in $last_file"
    dir=$(cat "$last_file")
  fi
  [[ -d $dir ]] || {
    log "$dir is already gone"
    return 0
  }
  [[ -f $dir/port || -d $dir/data || -z $(ls -A "$dir") ]] || die "$dir does not look like a pg-test.sh folder; not touching it"
  if [[ -f $dir/data/postmaster.pid ]]; then
    local bin
    bin=$(cat "$dir/bin" 2>/dev/null || find_bin)
    if ! (cd "$dir" && as_owner "$bin/pg_ctl" stop -D "$dir/data" -m immediate -w >/dev/null 2>&1); then
      local pid
      pid=$(head -n1 "$dir/data/postmaster.pid" 2>/dev/null || true)
      if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        log "pg_ctl stop failed; killing postmaster $pid"
        kill -KILL "$pid" 2>/dev/null || true
      fi
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
  -h | --help | help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$1'; use: scripts/pg-test.sh [start] | stop [DIR]" ;;
esac
