#!/usr/bin/env bash
# Chunkwise kernels of several source trees side by side on one card, in one run: each tree's
# test_cuda_chunkwise is built (in parallel, its own build dir), then each runs its benchmark
# (`--bench`: correctness gate at reduced sizes, then timings) and an ncu split of one forward +
# backward per configuration. Logs go to $OUT/<name>-*.log.
#
#   bash scripts/chunkwise_compare.sh main=. other=path/to/tree [...]
#   MLSTM_COMPARE_PROFILE="A B" (default) -- the --profile arguments timed per tree, '/' for spaces;
#   MLSTM_COMPARE_PROFILE_<name> overrides it for one tree (e.g. "A/warps16 A/wide" for a tree whose
#   test takes a walk policy).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(pwd)/gpu_out}
mkdir -p "$OUT"
ARCHS=${MLSTM_CUDA_ARCHS:-90a-real}
JOBS=$(( $(nproc) / $# ))
[ "$JOBS" -lt 1 ] && JOBS=1
PROFILES=${MLSTM_COMPARE_PROFILE:-A B}

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/compare-env.txt"
names=()
for spec in "$@"; do
  name=${spec%%=*} src=${spec#*=}
  names+=("$name")
  (
    t0=$(date +%s)
    cmake -S "$src" -B "/tmp/cmp-$name" -G Ninja -DMLSTM_CUDA=ON -DMLSTM_CUDA_ARCHS="$ARCHS" \
      -DMLSTM_BUILD_TESTS=ON -DMLSTM_BUILD_JAX_FFI=OFF > "$OUT/$name-build.log" 2>&1 &&
      cmake --build "/tmp/cmp-$name" -j "$JOBS" --target test_cuda_chunkwise >> "$OUT/$name-build.log" 2>&1
    echo "build $name rc=$? $(( $(date +%s) - t0 ))s"
  ) &
done
wait

for name in "${names[@]}"; do
  t=/tmp/cmp-$name/tests/cpp/test_cuda_chunkwise
  [ -x "$t" ] || { echo "$name: no test binary"; tail -n 30 "$OUT/$name-build.log"; continue; }
  echo "==== $name bench"
  timeout 400 "$t" --bench > "$OUT/$name-bench.log" 2>&1
  echo "rc=$?"
  grep -E '^\|' "$OUT/$name-bench.log"
  grep -iE 'fail|error' "$OUT/$name-bench.log" | head -n 5
  var=MLSTM_COMPARE_PROFILE_$name
  for prof in ${!var:-$PROFILES}; do
    echo "==== $name ncu --profile ${prof//\// }"
    # shellcheck disable=SC2086
    timeout 150 ncu --metrics gpu__time_duration.sum --launch-skip 6 --launch-count 7 "$t" --profile ${prof//\// } \
      > "$OUT/$name-ncu-${prof//\//-}.log" 2>&1
    grep -E '^  [a-z_].*\(|gpu__time_duration' "$OUT/$name-ncu-${prof//\//-}.log" | paste - - |
      awk '{printf "%-60.60s %s %s\n", $1, $(NF-1), $NF}'
  done
done
