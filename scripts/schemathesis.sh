#!/usr/bin/env bash
# Property-based API testing: schemathesis generates requests from the OpenAPI document the
# coordinator serves (GET /openapi.json) and fails on any 5xx answer (`not_a_server_error`) and
# on any answer whose body breaks its documented schema (`response_schema_conformance`).
#
#   scripts/schemathesis.sh                   # what CI runs: 150 s of testing, 100 examples per
#                                             # operation and phase, repeated while time is left
#   SCHEMATHESIS_MAX_TIME=1800 SCHEMATHESIS_MAX_EXAMPLES=500 scripts/schemathesis.sh  # longer
#   SCHEMATHESIS_MAX_TIME=0 scripts/schemathesis.sh   # no time box: each phase once, however
#                                             # long SCHEMATHESIS_MAX_EXAMPLES takes
#   SCHEMATHESIS_CHECKS=all scripts/schemathesis.sh   # every check: also reports where requests
#                                             # the document allows are refused, and the like
#   SCHEMATHESIS_SEED=123 scripts/schemathesis.sh     # the same generated data (seed printed)
#   SCHEMATHESIS_KEEP=1 scripts/schemathesis.sh       # keep the server log and the reports
#
# What it does: builds the server (debug, as the tests do), installs schemathesis once into the
# venv .dev/schemathesis (pinned; recreated when the pins change), starts `infermine-server
# serve` on a free loopback port with a throw-away data dir (SQLite, embedded object store, rate
# limits off so answers are not just 429s), and tests every operation with the credential its
# route takes, all minted for real: a consumer API key (`api-key create`) for /v1/chat,
# /v1/images and /v1/jobs, an admin token (`admin-token`) for /api/v1/admin/…, and a wallet
# session from the sign-in flow (POST /api/v1/auth/nonce, a personal_sign signature by a
# throw-away key, POST /api/v1/auth/verify) for /api/v1/miner-tokens, whose wallet also gets a
# rig from `miner-token`. Public routes get no credential. Generated model ids, wallets, rigs
# and job ids are drawn part of the time from real ones, so requests reach the code behind the
# "no such …" answers.
#
# 5xx policy: none is allowed, with one exception. No agent is connected, so a valid chat
# completion or image generation waits for its model's deadline and then gets the 503
# `no_agent_available` its operation documents; that answer is deliberate (the API says "try
# again later") and accepted on those two operations only. Any other 5xx anywhere (a 500, a
# 502/504 with no agent to fail or time out, a 503 elsewhere) fails the run, and so does a
# panic (schemathesis sees the connection close unanswered). To keep that wait short the server
# gets a copy of the built-in model registry with 1 s deadlines (and a short lease grace and
# long-poll limit); nothing else about the models changes.
#
# At the end it prints `schemathesis: operations=N test_cases=N server_errors=N` and exits
# non-zero on any server error, or when schemathesis fails otherwise. Each failure comes with a
# curl command that reproduces it; the server's log is shown too.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# Constant, so it never invalidates cargo's fingerprints (as in scripts/test.sh).
export LD_LIBRARY_PATH="$root/.libtorch/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

SCHEMATHESIS_VERSION=4.32.5
ETH_ACCOUNT_VERSION=0.14.0
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-100}
max_time=${SCHEMATHESIS_MAX_TIME:-150}
checks=${SCHEMATHESIS_CHECKS:-not_a_server_error,response_schema_conformance}
# One worker: hypothesis parses source code with `ast` while building strategies, and CPython
# 3.11's `ast` is not thread-safe (python/cpython#106905): with several workers a run now and
# then died of "SystemError: AST constructor recursion depth mismatch". Generation is
# CPU-bound Python anyway, so more workers gain little here.
workers=${SCHEMATHESIS_WORKERS:-1}
# A hard stop for schemathesis itself, in case it overruns its own time box.
if [[ $max_time == 0 ]]; then
  time_box=()
  time_limit=${SCHEMATHESIS_TIME_LIMIT_S:-$((300 + max_examples * 6))}
else
  time_box=(--max-time "$max_time")
  time_limit=${SCHEMATHESIS_TIME_LIMIT_S:-$((max_time + 120))}
fi

started=$SECONDS
section() { printf '\n==> %s\n' "$*" >&2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/infermine-schemathesis.XXXXXX")
server_pid=""
finish() {
  local rc=$?
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ $rc != 0 && -f $tmp/server.log ]]; then
    section "server log (last 40 lines)"
    tail -n 40 "$tmp/server.log" >&2 || true
  fi
  if [[ -n ${SCHEMATHESIS_KEEP:-} ]]; then
    echo "kept the server's data, log and the reports in $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  if [[ $rc != 0 ]]; then
    section "schemathesis FAILED (exit $rc) after $((SECONDS - started)) s"
  fi
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section "libtorch (scripts/setup.sh --no-portal)"
# The portal's pages are not in the OpenAPI document, so it need not be built.
scripts/setup.sh --no-portal

section "build the server (cargo build -p infermine-server)"
cargo build -p infermine-server
server=$root/target/debug/infermine-server

section "schemathesis $SCHEMATHESIS_VERSION (venv .dev/schemathesis)"
venv=$root/.dev/schemathesis
want="schemathesis==$SCHEMATHESIS_VERSION eth-account==$ETH_ACCOUNT_VERSION"
if [[ ! -x $venv/bin/schemathesis || $(cat "$venv/.infermine-pins" 2>/dev/null) != "$want" ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # $want is the list of requirements
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want
  echo "$want" >"$venv/.infermine-pins"
fi
"$venv/bin/schemathesis" --version >&2

section "start the coordinator"
# The built-in registry with every model's deadline cut to 1 s (see the header).
models=$tmp/models.toml
sed -E 's/^target_latency_ms = .*/target_latency_ms = 500/; s/^deadline_ms = .*/deadline_ms = 1_000/' \
  server/models.toml >"$models"
grep -q '^deadline_ms = 1_000$' "$models" || { echo "could not shorten the model deadlines" >&2; exit 1; }
export INFERMINE_DATA_DIR=$tmp/data INFERMINE_MODELS_FILE=$models INFERMINE_LOG_FORMAT=json \
  INFERMINE_RATE_LIMITS_ENABLED=false
unset INFERMINE_CONFIG INFERMINE_DATABASE_URL INFERMINE_LISTEN INFERMINE_PUBLIC_URL \
  INFERMINE_STORAGE_ENDPOINT INFERMINE_JWT_SECRET INFERMINE_JWT_SECRET_FILE

# The credentials, minted for real: a throw-away wallet key for the sign-in flow, and from the
# server's own commands a consumer API key, an admin token and a miner token for that wallet
# (so it has a rig to list and revoke).
read -r wallet_key wallet < <("$venv/bin/python" -c \
  'from eth_account import Account; a = Account.create(); print(a.key.hex(), a.address)')
SM_API_KEY=$("$server" api-key create --name schemathesis)
SM_ADMIN_TOKEN=$("$server" admin-token --name schemathesis --ttl-hours 1)
"$server" miner-token --wallet "$wallet" --name schemathesis >/dev/null
export SM_API_KEY SM_ADMIN_TOKEN

# Port 0: the kernel picks a free port, which the server logs as `listen` once ready.
"$server" serve --listen 127.0.0.1:0 --lease-grace-ms 200 --max-wait-s 2 --drain-timeout-s 2 \
  >"$tmp/server.log" 2>&1 &
server_pid=$!
base=""
for _ in $(seq 1 300); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the coordinator exited while starting" >&2
    exit 1
  fi
  addr=$(grep -m1 'coordinator ready' "$tmp/server.log" | grep -o '"listen":"[^"]*"' | cut -d'"' -f4 || true)
  if [[ -n $addr ]]; then
    base=http://$addr
    break
  fi
  sleep 0.1
done
[[ -n $base ]] || { echo "the coordinator did not become ready within 30 s" >&2; exit 1; }
echo "coordinator at $base" >&2

# The wallet's session through the sign-in flow (nonce, personal_sign, verify), one queued job,
# and the schemathesis configuration: which credential each route takes (the `bearer` scheme's
# description in the document), the one deliberate 503 (see the header), and dictionaries of
# real identifiers (models, wallets, rigs, the job) that generated values are drawn from part
# of the time, so requests get past "no such model/wallet" to the code behind. Credentials stay
# in the environment (`${…}` is schemathesis's own substitution), not on disk.
config=$tmp/schemathesis.toml
SM_SESSION_TOKEN=$("$venv/bin/python" - "$base" "$wallet_key" "$config" <<'EOF'
import json
import os
import sys
import urllib.request

from eth_account import Account
from eth_account.messages import encode_defunct

base, key, config = sys.argv[1:]
account = Account.from_key(key)


def call(path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


nonce = call("/api/v1/auth/nonce", {"address": account.address})
signature = account.sign_message(encode_defunct(text=nonce["message"])).signature.hex()
if not signature.startswith("0x"):
    signature = "0x" + signature
session = call(
    "/api/v1/auth/verify",
    {"address": account.address, "signature": signature, "nonce": nonce["nonce"]},
)
job = call("/v1/jobs", {"model": "synthetic-echo", "params": {}}, os.environ["SM_API_KEY"])
models = [model["id"] for model in call("/v1/models")["data"]]
wallet = account.address.lower()
wallets = [wallet, account.address, "0x5aeda56215b167893e80b4fe645ba6d5bab767de"]
miners = [f"{wallet}-schemathesis-gpu0", f"{wallet}-schemathesis-gpu1"]

dictionaries = {"models": models, "wallets": wallets, "miners": miners, "jobs": [job["id"]]}
bindings = {
    "body.model": ("models", 0.8),
    "path.address": ("wallets", 0.7),
    "query.address": ("wallets", 0.5),
    "body.address": ("wallets", 0.7),
    "path.miner_id": ("miners", 0.6),
    "body.miner_id": ("miners", 0.6),
}
with open(config, "w") as out:
    out.write("""\
[[operations]]
include-path-regex = "^/v1/(jobs|chat/completions|images/generations)"
headers = { Authorization = "Bearer ${SM_API_KEY}" }

[[operations]]
include-path-regex = "^/v1/(chat/completions|images/generations)$"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

[[operations]]
include-path-regex = "^/api/v1/admin/"
headers = { Authorization = "Bearer ${SM_ADMIN_TOKEN}" }

[[operations]]
include-path-regex = "^/api/v1/miner-tokens"
headers = { Authorization = "Bearer ${SM_SESSION_TOKEN}" }

""")
    # `{id}` names a model, a job, a case or a token depending on the route.
    for paths, name in (("^/v1/models/", "models"), ("^/(v1|api/v1/admin)/jobs/", "jobs")):
        out.write(f'[[operations]]\ninclude-path-regex = "{paths}"\n')
        out.write(f'parameters = {{ "path.id" = {{ dictionary = "{name}", probability = 0.7 }} }}\n\n')
    for name, values in dictionaries.items():
        out.write(f"[dictionaries.{name}]\nvalues = {json.dumps(values)}\n\n")
    out.write("[parameters]\n")
    for key, (name, probability) in bindings.items():
        out.write(f'"{key}" = {{ dictionary = "{name}", probability = {probability} }}\n')
print(session["token"])
EOF
)
export SM_SESSION_TOKEN

section "schemathesis run $base/openapi.json (checks: $checks, max examples: $max_examples, max time: ${max_time} s)"
seed=${SCHEMATHESIS_SEED:-$((RANDOM * 32768 + RANDOM))}
echo "seed $seed (SCHEMATHESIS_SEED=$seed reproduces this run)" >&2
run_started=$SECONDS
set +e
# From the temporary dir: schemathesis keeps a cache in ./.schemathesis.
(cd "$tmp" && timeout "$time_limit" "$venv/bin/schemathesis" --config-file "$config" --no-color run \
  "$base/openapi.json" \
  --checks "$checks" \
  --max-examples "$max_examples" "${time_box[@]}" \
  --seed "$seed" \
  --workers "$workers" \
  --request-timeout 20 \
  --generation-database none \
  --report junit,ndjson --report-dir "$tmp/report")
rc=$?
set -e
run_seconds=$((SECONDS - run_started))

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "the coordinator died during the run" >&2
  if [[ $rc == 0 ]]; then rc=1; fi
fi

# The figures, from the NDJSON event stream: operations tested, test cases sent, and the 5xx
# answers `not_a_server_error` refused (the accepted 503s are counted apart).
read -r operations test_cases server_errors accepted_503 < <("$venv/bin/python" - "$tmp"/report/*.ndjson <<'EOF'
import json
import re
import sys

operations, cases, server_errors, accepted = set(), 0, 0, 0
for path in sys.argv[1:]:
    with open(path) as events:
        for line in events:
            event = json.loads(line).get("ScenarioFinished")
            if not event or event["status"] == "skip":
                continue
            recorder = event.get("recorder") or {}
            if re.match(r"^[A-Z]+ /", recorder.get("label", "")):
                operations.add(recorder["label"])
            cases += len(recorder.get("cases") or {})
            for case_id, interaction in (recorder.get("interactions") or {}).items():
                status = (interaction.get("response") or {}).get("status_code") or 0
                if status < 500:
                    continue
                refused = any(
                    check["name"] == "not_a_server_error" and check["status"] == "failure"
                    for check in (recorder.get("checks") or {}).get(case_id, [])
                )
                if refused:
                    server_errors += 1
                else:
                    accepted += 1
print(len(operations), cases, server_errors, accepted)
EOF
)
echo "schemathesis ran for $run_seconds s (exit $rc); 503 no_agent_available answers accepted: $accepted_503" >&2
echo "schemathesis: operations=$operations test_cases=$test_cases server_errors=$server_errors"
if [[ $server_errors != 0 ]]; then
  echo "schemathesis: the server answered 5xx; each failure above comes with a curl command" >&2
  exit 1
fi
if [[ $rc == 124 ]]; then
  echo "schemathesis ran past its limit of $time_limit s (SCHEMATHESIS_TIME_LIMIT_S)" >&2
  exit 1
elif [[ $rc != 0 ]]; then
  echo "schemathesis failed (exit $rc) without a 5xx: see its output above" >&2
  exit "$rc"
fi
