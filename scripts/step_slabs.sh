#!/usr/bin/env bash
# The step kernel under forced slab counts (-DMLSTM_STEP_SLABS, see choose_step_config in
# cpp/src/cuda/recurrent.cu) in one GPU run: for each count the core is built with cmake (no Python
# package, its own build dir, all in parallel), linked into a shared library for
# benchmarks/gpu/recurrent_bench.py, and the step is timed.
#   bash scripts/step_slabs.sh "0 2 8" [batches]     (0: the library's own choice); logs under $OUT
#   MLSTM_CUDA_FLAGS="-DMLSTM_STEP_BLOCKS_PER_SM=2" bash ...   extra flags for every build
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(pwd)/gpu_out}
mkdir -p "$OUT"
slabs=${1:-0 2 4 8}
batches=${2:-1,16,32,128}
build() {  # slab count
  local dir=/tmp/mlstm-core-s$1
  cmake -S . -B "$dir" -G Ninja -DMLSTM_CUDA=ON -DMLSTM_CUDA_ARCHS="${MLSTM_CUDA_ARCHS:-90a-real}" \
    -DCMAKE_CUDA_FLAGS="-DMLSTM_STEP_SLABS=$1 ${MLSTM_CUDA_FLAGS:-}" -DMLSTM_BUILD_TESTS=OFF \
    -DMLSTM_BUILD_JAX_FFI=OFF > "$OUT/core-build-s$1.log" 2>&1 &&
    cmake --build "$dir" -j "$(nproc)" --target mlstm_core >> "$OUT/core-build-s$1.log" 2>&1 || return 1
  local cudart
  cudart=$(sed -n 's/^CUDA_cudart_static_LIBRARY:FILEPATH=//p' "$dir/CMakeCache.txt")
  g++ -shared -o "$dir/libmlstm.so" -Wl,--whole-archive "$dir/cpp/libmlstm_core.a" -Wl,--no-whole-archive \
    "$cudart" -ldl -lpthread -lrt
}
pids=()
for d in $slabs; do build "$d" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
for d in $slabs; do
  echo "== slabs $d"
  [ -f "/tmp/mlstm-core-s$d/libmlstm.so" ] || { tail -n 30 "$OUT/core-build-s$d.log"; continue; }
  timeout 200 python3 benchmarks/gpu/recurrent_bench.py --lib "/tmp/mlstm-core-s$d/libmlstm.so" \
    --batches "$batches" --step-only --commit "${MLSTM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}" \
    > "$OUT/step-slabs$d.log" 2>&1
  echo "rc=$?"
  grep -E '^\||copy band' "$OUT/step-slabs$d.log"
done
