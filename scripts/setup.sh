#!/usr/bin/env bash
# Idempotent set-up for building infermine: fetches libtorch 2.11.0 (the version tch 0.24
# binds) from PyPI's torch wheel into a project-local folder, plus the two CUDA runtime
# libraries libtorch_cpu.so links against; then installs the web portal's npm packages and
# builds it into web-portal/dist, which the coordinator serves. Safe to run again: it does
# nothing when the right versions are already in place and the portal is up to date.
#
#   scripts/setup.sh            # installs into ./.libtorch (override: INFERMINE_LIBTORCH_DIR)
#   scripts/setup.sh --cuda     # also the CUDA libraries libtorch_cuda.so needs (about 1.9 GB),
#                               # for agents on NVIDIA GPUs; the driver comes from the system
#   scripts/setup.sh --no-portal  # skip the web portal (an agent-only build needs no npm)
#
# Building afterwards needs no variables: .cargo/config.toml points LIBTORCH at
# ./.libtorch/torch and the agent embeds an rpath to its lib/ folder.
set -euo pipefail

cuda=0
portal=1
for arg in "$@"; do
  case $arg in
    --cuda) cuda=1 ;;
    --no-portal) portal=0 ;;
    *) echo "setup: unknown argument '$arg' (known: --cuda, --no-portal)" >&2; exit 2 ;;
  esac
done

TORCH_VERSION=2.11.0
CUDA_RUNTIME_VERSION=13.0.96
CUPTI_VERSION=13.0.85

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${INFERMINE_LIBTORCH_DIR:-$root/.libtorch}
stamp="$dest/torch/.infermine-libtorch-version"
want="torch=$TORCH_VERSION cudart=$CUDA_RUNTIME_VERSION cupti=$CUPTI_VERSION"

install_libtorch() {
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup: libtorch $TORCH_VERSION already in $dest/torch"
    return 0
  fi

  # scripts/test.sh and scripts/dev.sh both start here; on a fresh clone run at once, the second
  # waits for the first instead of unpacking over it.
  mkdir -p "$dest"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$dest/.setup.lock"
    flock 9
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
      echo "setup: libtorch $TORCH_VERSION already in $dest/torch"
      return 0
    fi
  fi

  for tool in python3 unzip; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      if [[ $tool == unzip ]] && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
        apt-get update -qq && apt-get install -y -qq unzip >/dev/null
      else
        echo "setup: '$tool' is required; install it (e.g. 'apt-get install $tool') and run again" >&2
        exit 1
      fi
    fi
  done

  wheels="$dest/wheels"
  mkdir -p "$wheels"
  echo "setup: downloading torch==$TORCH_VERSION (about 530 MB, once) and the CUDA runtime wheels into $wheels"
  python3 -m pip download --no-deps --only-binary=:all: --progress-bar on \
    -d "$wheels" \
    "torch==$TORCH_VERSION" \
    "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" \
    "nvidia-cuda-cupti==$CUPTI_VERSION"

  torch_whls=("$wheels"/torch-"$TORCH_VERSION"-*.whl)
  torch_whl=${torch_whls[0]}
  [[ -f $torch_whl ]] || { echo "setup: pip did not leave a torch $TORCH_VERSION wheel in $wheels" >&2; exit 1; }
  tmp="$dest/.unpack"
  rm -rf "$tmp" "$dest/torch"
  mkdir -p "$tmp"
  echo "setup: unpacking libtorch headers and libraries"
  unzip -q "$torch_whl" 'torch/include/*' 'torch/lib/*' 'torch/share/*' -d "$tmp"
  for whl in "$wheels"/nvidia_cuda_runtime-*.whl "$wheels"/nvidia_cuda_cupti-*.whl; do
    unzip -q -o "$whl" -d "$tmp/nvidia-$(basename "$whl" .whl)"
  done
  # libtorch_cpu.so needs libcudart.so.13 and libcupti.so.13 even on CPU-only machines.
  find "$tmp"/nvidia-* \( -name 'libcudart.so.13*' -o -name 'libcupti.so.13*' \) -exec cp -P {} "$tmp/torch/lib/" \;
  for lib in libcudart.so.13 libcupti.so.13; do
    [[ -e "$tmp/torch/lib/$lib" ]] || { echo "setup: $lib missing from the CUDA wheels" >&2; exit 1; }
  done
  mv "$tmp/torch" "$dest/torch"
  rm -rf "$tmp" "$wheels"
  echo "$want" >"$stamp"
  echo "setup: libtorch $TORCH_VERSION ready in $dest/torch"
}

# The CUDA libraries torch 2.11.0's wheel requires (its Requires-Dist), pinned to the same
# versions; their .so files go beside libtorch's, where the agent's rpath finds them.
CUDA_WHEELS=(
  "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.2"
  "nvidia-cudnn-cu13==9.19.0.56"
  "nvidia-cusparselt-cu13==0.8.0"
  "nvidia-nccl-cu13==2.28.9"
  "nvidia-nvshmem-cu13==3.4.5"
)

install_cuda_libs() {
  local cuda_stamp="$dest/torch/.infermine-cuda-libs" cuda_want="${CUDA_WHEELS[*]}"
  if [[ -f "$cuda_stamp" && "$(cat "$cuda_stamp")" == "$cuda_want" ]]; then
    echo "setup: CUDA libraries already in $dest/torch/lib"
    return 0
  fi
  local wheels="$dest/cuda-wheels" tmp="$dest/.unpack-cuda"
  rm -rf "$wheels" "$tmp"
  mkdir -p "$wheels" "$tmp"
  echo "setup: downloading the CUDA libraries libtorch_cuda.so needs (about 1.9 GB, once)"
  python3 -m pip download --only-binary=:all: --progress-bar on -d "$wheels" "${CUDA_WHEELS[@]}"
  for whl in "$wheels"/nvidia_*.whl; do
    unzip -q -o "$whl" -d "$tmp"
  done
  find "$tmp" -name '*.so*' -exec cp -P {} "$dest/torch/lib/" \;
  rm -rf "$wheels" "$tmp"
  local missing
  missing=$(LD_LIBRARY_PATH="$dest/torch/lib" ldd "$dest/torch/lib/libtorch_cuda.so" | grep 'not found' || true)
  if [[ -n $missing ]]; then
    echo "setup: libtorch_cuda.so still misses libraries:" >&2
    echo "$missing" >&2
    exit 1
  fi
  echo "$cuda_want" >"$cuda_stamp"
  echo "setup: CUDA libraries ready in $dest/torch/lib (the NVIDIA driver itself comes from the system)"
}

# The portal: `npm ci` when its lock file changed, `npm run build` when its sources did.
build_portal() {
  local portal="$root/web-portal"
  [[ -f $portal/package.json ]] || return 0
  if ! command -v npm >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
      echo "setup: installing Node.js and npm (Debian packages) for the web portal"
      apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
    else
      echo "setup: the web portal needs Node.js 18+ and npm; install them (e.g. 'apt-get install nodejs npm') and run again" >&2
      exit 1
    fi
  fi
  local lock_sum installed_sum="" sources_sum built_sum=""
  lock_sum=$(sha256sum "$portal/package-lock.json" | cut -d' ' -f1)
  [[ -f $portal/node_modules/.infermine-lock ]] && installed_sum=$(cat "$portal/node_modules/.infermine-lock")
  if [[ $lock_sum != "$installed_sum" ]]; then
    echo "setup: installing the web portal's packages (npm ci)"
    (cd "$portal" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_sum" >"$portal/node_modules/.infermine-lock"
  fi
  sources_sum=$(cd "$portal" && find index.html src public package-lock.json vite.config.* tsconfig*.json \
    -type f 2>/dev/null | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
  [[ -f $portal/node_modules/.infermine-built ]] && built_sum=$(cat "$portal/node_modules/.infermine-built")
  if [[ $sources_sum != "$built_sum" || ! -f $portal/dist/index.html ]]; then
    echo "setup: building the web portal (npm run build)"
    (cd "$portal" && npm run --silent build)
    echo "$sources_sum" >"$portal/node_modules/.infermine-built"
  fi
  echo "setup: web portal built in $portal/dist"
}

install_libtorch
if [[ $cuda == 1 ]]; then
  install_cuda_libs
fi
if [[ $portal == 1 ]]; then
  build_portal
fi
