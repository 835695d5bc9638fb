#!/usr/bin/env bash
# Runs the whole test suite: libtorch set-up, the binaries the end-to-end tests spawn, then
# `cargo test --workspace` against SQLite and a throw-away PostgreSQL.
#
#   scripts/test.sh                         # everything
#   scripts/test.sh -p infermine-server     # extra arguments go to `cargo test` (-p replaces
#                                           # --workspace)
#   scripts/test.sh -- --nocapture
#
# PostgreSQL: with INFERMINE_TEST_POSTGRES_URL set, the tests use that server; otherwise this
# starts one with scripts/pg-test.sh and removes it afterwards. INFERMINE_TEST_NO_POSTGRES=1
# runs without PostgreSQL (its tests are skipped).
#
# External S3: likewise with INFERMINE_TEST_S3_ENDPOINT (plus _ACCESS_KEY and _SECRET_KEY), or
# a throw-away s3s-fs server from scripts/s3-test.sh (built once into .dev/tools);
# INFERMINE_TEST_NO_EXTERNAL_S3=1 skips those runs (the embedded S3 server is always tested).
#
# The OpenAI-compatibility test runs the official `openai` Python client, installed once into
# .dev/pyclient (or the Python that INFERMINE_TEST_PYTHON names, with INFERMINE_TEST_PYTHONPATH).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# Constant, so it never invalidates cargo's fingerprints; the binaries carry an rpath anyway.
export LD_LIBRARY_PATH="$root/.libtorch/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

started=$SECONDS
section() { printf '\n==> %s\n' "$*" >&2; }
finish() {
  local rc=$?
  if [[ -n ${pg_dir:-} ]]; then
    scripts/pg-test.sh stop "$pg_dir" || true
  fi
  if [[ -n ${s3_dir:-} ]]; then
    scripts/s3-test.sh stop "$s3_dir" || true
  fi
  if [[ $rc == 0 ]]; then
    section "tests passed in $((SECONDS - started)) s"
  else
    section "tests FAILED (exit $rc) after $((SECONDS - started)) s"
  fi
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section "libtorch (scripts/setup.sh)"
scripts/setup.sh

section "build binaries (cargo build --workspace --bins)"
cargo build --workspace --bins
# The cheater lab's agent: the test-only cheat modes, in a binary of its own (the cheater_lab
# test builds it too when run alone; building it here shows a compile error as one).
cargo build -p infermine-agent --features cheat-lab --bin infermine-cheat-agent

section "PostgreSQL"
if [[ -n ${INFERMINE_TEST_POSTGRES_URL:-} ]]; then
  echo "using INFERMINE_TEST_POSTGRES_URL from the environment" >&2
elif [[ -n ${INFERMINE_TEST_NO_POSTGRES:-} ]]; then
  echo "INFERMINE_TEST_NO_POSTGRES is set: PostgreSQL tests will be skipped" >&2
else
  pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/infermine-pg.XXXXXX")
  INFERMINE_TEST_POSTGRES_URL=$(INFERMINE_PG_TEST_DIR=$pg_dir scripts/pg-test.sh)
  export INFERMINE_TEST_POSTGRES_URL
  echo "INFERMINE_TEST_POSTGRES_URL=$INFERMINE_TEST_POSTGRES_URL" >&2
fi

section "external S3"
if [[ -n ${INFERMINE_TEST_S3_ENDPOINT:-} ]]; then
  echo "using INFERMINE_TEST_S3_ENDPOINT from the environment" >&2
elif [[ -n ${INFERMINE_TEST_NO_EXTERNAL_S3:-} ]]; then
  echo "INFERMINE_TEST_NO_EXTERNAL_S3 is set: external S3 tests will be skipped" >&2
else
  s3_dir=$(mktemp -d "${TMPDIR:-/tmp}/infermine-s3.XXXXXX")
  INFERMINE_TEST_S3_ENDPOINT=$(INFERMINE_S3_TEST_DIR=$s3_dir scripts/s3-test.sh)
  # The credentials scripts/s3-test.sh starts its server with.
  export INFERMINE_TEST_S3_ENDPOINT INFERMINE_TEST_S3_ACCESS_KEY=GK0123456789abcdef01234567 \
    INFERMINE_TEST_S3_SECRET_KEY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  echo "INFERMINE_TEST_S3_ENDPOINT=$INFERMINE_TEST_S3_ENDPOINT" >&2
fi

section "Chromium (for the portal's browser tests)"
# Debian's package: Playwright drives it (playwright-core, no browser download).
if [[ -z ${CHROMIUM:-} && ! -x /usr/bin/chromium ]]; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "the portal's browser tests need Chromium: install Debian's 'chromium' package or set CHROMIUM" >&2
    exit 1
  fi
fi
"${CHROMIUM:-/usr/bin/chromium}" --version >&2

section "openai Python client (for the OpenAI-compatibility test)"
# The official client, installed once into .dev/pyclient (pip --target: no venv package needed).
OPENAI_CLIENT_VERSION=3.57.0
if [[ -z ${INFERMINE_TEST_PYTHON:-} ]]; then
  pyclient="$root/.dev/pyclient"
  if ! PYTHONPATH=$pyclient python3 -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_CLIENT_VERSION')" 2>/dev/null; then
    rm -rf "$pyclient"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --root-user-action=ignore --target "$pyclient" "openai==$OPENAI_CLIENT_VERSION"
  fi
  export INFERMINE_TEST_PYTHON=python3 INFERMINE_TEST_PYTHONPATH=$pyclient
  echo "openai $OPENAI_CLIENT_VERSION in $pyclient" >&2
fi

# --workspace would override a -p/--package given here, so it is added only without one.
scope=(--workspace)
for arg in "$@"; do
  [[ $arg == -- ]] && break
  [[ $arg == -p || $arg == --package || $arg == -p?* || $arg == --package=* ]] && scope=()
done
section "cargo test${scope[*]:+ ${scope[*]}}${*:+ $*}"
cargo test "${scope[@]}" "$@"
