#!/usr/bin/env bash
# Fuzzes the agent-frame decoder and the job-params parser with libFuzzer (cargo fuzz) for a
# bounded time each, and prints each target's executions and corpus size.
#
#   scripts/fuzz.sh                    # 60 s per target (what CI runs)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh  # longer, locally
#   scripts/fuzz.sh job_params         # one target
#
# A crash leaves its input under fuzz/artifacts/<target>/ and fails the script; reproduce it
# with `cargo fuzz run <target> fuzz/artifacts/<target>/<file>` (in fuzz/, RUSTC_BOOTSTRAP=1).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
if [[ ${#targets[@]} == 0 ]]; then
  targets=(agent_frame job_params)
fi

# cargo fuzz passes unstable rustc flags (sanitizer coverage); the stable toolchain accepts
# them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  echo "fuzz: installing cargo-fuzz $cargo_fuzz_version (once)"
  cargo install --locked cargo-fuzz --version "$cargo_fuzz_version"
fi

cd "$root/fuzz"
for target in "${targets[@]}"; do
  corpus="corpus/$target"
  mkdir -p "$corpus"
  log=$(mktemp)
  echo "fuzz: $target for ${seconds} s"
  # Safe Rust: the bugs to find are panics, not memory errors, so no sanitizer (faster).
  if ! cargo fuzz run --sanitizer none "$target" "$corpus" "seeds/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target FAILED; the input is under fuzz/artifacts/$target/" >&2
    rm -f "$log"
    exit 1
  fi
  runs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  printf 'fuzz: %s runs=%s corpus=%s seconds=%s\n' "$target" "${runs:-?}" \
    "$(find "$corpus" -type f | wc -l)" "$seconds"
  rm -f "$log"
done
