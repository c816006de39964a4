#!/usr/bin/env bash
# One GPU run: build in place for the local card, run the CUDA tests, the main job, the sanitizers
# and the benchmarks, and write every log under $OUT (default: ./gpu_out).
#
#   bash scripts/gpu_session.sh [stage ...]     stages: build ctest pytest check sanitize kbench bench
#   (no stage = all, in that order; also: rbench — recurrent kernels; pbench — parallel kernel and its peers; times, profile — ncu of the chunkwise kernels). Each stage
#   has its own time limit so one hang cannot eat the run.
#   A first call after kernel changes: MLSTM_CTEST_REGEX=cuda bash scripts/gpu_session.sh build ctest kbench times
# A copied tree may carry no .git or a stale one: pass the commit as MLSTM_COMMIT, e.g.
#   MLSTM_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu_session.sh   (run from the caller's side)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(pwd)/gpu_out}
mkdir -p "$OUT"
BUILD_DIR=${MLSTM_BUILD_DIR:-/tmp/mlstm-build}
ARCHS=${MLSTM_CUDA_ARCHS:-90a-real}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX and torch share the card in one pytest process
CTEST_REGEX=${MLSTM_CTEST_REGEX:-}           # e.g. cuda: only the CUDA suites
SAN_REGEX=${MLSTM_SANITIZE_REGEX:-.}         # which test_cuda_* executables the sanitizers run
SAN_TOOLS=${MLSTM_SANITIZE_TOOLS:-memcheck racecheck initcheck}
SAN_LIMIT=${MLSTM_SANITIZE_LIMIT:-240}      # seconds per sanitizer run
PYTEST_MARK=${MLSTM_PYTEST_MARK:-}           # e.g. gpu: only the CUDA parametrisations
PYTEST_LIMIT=${MLSTM_PYTEST_LIMIT:-400}
COMMIT=${MLSTM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build ctest pytest check sanitize kbench bench)
summary=()

run_stage() {  # name, limit (s), command...
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  echo "==== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  tail -n 25 "$OUT/$name.log"
  summary+=("$(printf '%-10s rc=%-3s %4ss' "$name" "$rc" "$dt")")
  return $rc
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: ${COMMIT}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -n 2
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  python3 -c "import jax; print('jax', jax.__version__)" 2>/dev/null
  python3 -c "import triton; print('triton', triton.__version__)" 2>/dev/null
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

for stage in "${stages[@]}"; do
  case $stage in
    build)
      run_stage build 420 python3 -m pip install --no-build-isolation --no-deps -v \
        -Cbuild-dir="$BUILD_DIR" -Ccmake.define.MLSTM_BUILD_TESTS=ON \
        -Ccmake.define.MLSTM_CUDA=ON -Ccmake.define.MLSTM_CUDA_ARCHS="$ARCHS" \
        ${MLSTM_CUDA_FLAGS:+-Ccmake.define.CMAKE_CUDA_FLAGS="$MLSTM_CUDA_FLAGS"} . || break ;;
    ctest)
      run_stage ctest 300 ctest --test-dir "$BUILD_DIR" --output-on-failure ${CTEST_REGEX:+-R "$CTEST_REGEX"} ;;
    pytest)
      run_stage pytest "$PYTEST_LIMIT" bash -c "cd /tmp && python3 -m pytest -q -rs -p no:cacheprovider --maxfail=20 ${PYTEST_MARK:+-m $PYTEST_MARK} $(pwd)/tests/torch $(pwd)/tests/jax $(pwd)/tests/reliability" ;;
    check)
      run_stage check 240 python3 -m mlstm_kernels check ;;
    sanitize)
      for t in "$BUILD_DIR"/tests/cpp/test_cuda_*; do
        [ -x "$t" ] || continue
        [[ $(basename "$t") =~ $SAN_REGEX ]] || continue
        for tool in $SAN_TOOLS; do
          MLSTM_TEST_SMALL=1 run_stage "san-$(basename "$t")-$tool" "$SAN_LIMIT" \
            compute-sanitizer --tool "$tool" --error-exitcode 9 "$t"
        done
      done ;;
    times)  # every chunkwise kernel's duration and instruction count in one forward + backward (ncu)
      run_stage prof-times 120 ncu --metrics gpu__time_duration.sum,smsp__inst_executed.sum --launch-skip 6 \
        --launch-count 7 "$BUILD_DIR/tests/cpp/test_cuda_chunkwise" --profile ;;
    profile)  # where the chunkwise time goes: every kernel's duration, then full reports of the walks
      t=$BUILD_DIR/tests/cpp/test_cuda_chunkwise
      run_stage prof-times 120 ncu --metrics gpu__time_duration.sum --launch-skip 6 --launch-count 7 "$t" --profile
      run_stage prof-fwd 200 ncu --set full --import-source yes -k regex:walk --launch-count 1 -f -o "$OUT/walk_fwd" "$t" --profile
      ncu --import "$OUT/walk_fwd.ncu-rep" --page details > "$OUT/walk_fwd_details.txt" 2>&1
      ncu --import "$OUT/walk_fwd.ncu-rep" --page source --print-source sass --csv > "$OUT/walk_fwd_sass.csv" 2>&1
      gzip -f "$OUT/walk_fwd_sass.csv" ;;
    pbench)  # the parallel kernel's C++ benchmark, then its peers (SDPA flash, plain torch) in the same run
      [ -x "$BUILD_DIR/tests/cpp/test_cuda_parallel" ] && run_stage bench-parallel 240 "$BUILD_DIR/tests/cpp/test_cuda_parallel" --bench
      run_stage pbench-peers 240 bash -c "cd benchmarks/gpu && python3 parallel_bench.py" ;;
    rbench)  # recurrent step (every B) and sequence kernels through the C ABI
      run_stage rbench 300 python3 benchmarks/gpu/recurrent_bench.py --out "$OUT" --commit "$COMMIT" ;;
    kbench)  # the core's own timings (C++, no framework in the way)
      for t in chunkwise parallel; do
        [ -x "$BUILD_DIR/tests/cpp/test_cuda_$t" ] && run_stage "bench-$t" 240 "$BUILD_DIR/tests/cpp/test_cuda_$t" --bench
      done ;;
    bench)
      # Upstream's Triton kernels as a peer, when their wheel was carried in .whl/ (same import name:
      # installed into its own directory, run in a subprocess by the benchmark).
      up=()
      for w in .whl/mlstm_kernels-*.whl; do
        [ -f "$w" ] && python3 -m pip install -q --no-deps --no-index --target /tmp/upstream "$w" && up=(--upstream-path /tmp/upstream)
      done
      # FLA's kernels (fla-core; its only need, einops, is on the image) when their wheel was carried.
      for w in .whl/fla_core-*.whl; do
        [ -f "$w" ] && python3 -m pip install -q --no-deps --no-index --target /tmp/fla "$w" &&
          export PYTHONPATH=/tmp/fla${PYTHONPATH:+:$PYTHONPATH}
      done
      for suite in "consttoken --config A" "consttoken --config B" "step --config A"; do
        # shellcheck disable=SC2086
        run_stage "bench-${suite// /-}" 400 python3 -m benchmarks.run --suite $suite --out "$OUT" --commit "$COMMIT" "${up[@]}"
      done ;;
    *) echo "unknown stage $stage" ;;
  esac
done

echo "==== summary"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
# Few files come back from a lent machine: with MLSTM_BUNDLE=1 everything goes into one archive.
if [ "${MLSTM_BUNDLE:-0}" = 1 ]; then
  tar czf /tmp/gpu_out.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/gpu_out.tgz "$OUT/"
fi
