#!/usr/bin/env bash
# The step kernel under forced slab counts (MLSTM_STEP_SLABS, see choose_step_config in
# cpp/src/cuda/recurrent.cu) in one GPU run: builds the core (cmake, no Python package), links it into
# a shared library for benchmarks/gpu/recurrent_bench.py, and times the step for each count given.
#   bash scripts/step_slabs.sh "0 2 8" [batches]     (0: the library's own choice); logs under $OUT
#   MLSTM_CUDA_FLAGS="-DMLSTM_STEP_LOADS=8 -DMLSTM_STEP_MIN_BLOCKS=3" MLSTM_BUILD_DIR=/tmp/v bash ...  a variant
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(pwd)/gpu_out}
mkdir -p "$OUT"
BUILD=${MLSTM_BUILD_DIR:-/tmp/mlstm-core}
slabs=${1-0 2 4 8}  # an empty list: build only
batches=${2:-1,16,32,128}
cmake -S . -B "$BUILD" -G Ninja -DMLSTM_CUDA=ON -DMLSTM_CUDA_ARCHS="${MLSTM_CUDA_ARCHS:-90a-real}" \
  ${MLSTM_CUDA_FLAGS:+-DCMAKE_CUDA_FLAGS="$MLSTM_CUDA_FLAGS"} -DMLSTM_BUILD_TESTS=OFF -DMLSTM_BUILD_JAX_FFI=OFF > "$OUT/core-build.log" 2>&1 &&
  cmake --build "$BUILD" -j "$(nproc)" --target mlstm_core >> "$OUT/core-build.log" 2>&1 || { tail -n 30 "$OUT/core-build.log"; exit 1; }
cudart=$(sed -n 's/^CUDA_cudart_static_LIBRARY:FILEPATH=//p' "$BUILD/CMakeCache.txt")
g++ -shared -o "$BUILD/libmlstm.so" -Wl,--whole-archive "$BUILD/cpp/libmlstm_core.a" -Wl,--no-whole-archive \
  "$cudart" -ldl -lpthread -lrt || exit 1
for d in $slabs; do
  echo "== slabs $d"
  MLSTM_STEP_SLABS=$d timeout 200 python3 benchmarks/gpu/recurrent_bench.py --lib "$BUILD/libmlstm.so" \
      --batches "$batches" --step-only --commit "${MLSTM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}" > "$OUT/step-slabs$d.log" 2>&1
  echo "rc=$?"
  grep -E '^\||copy band' "$OUT/step-slabs$d.log"
done
