#!/usr/bin/env bash
# Build-time variants of the step kernel (see "Variants" in cpp/src/cuda/recurrent.cu), compiled on
# the development machine and timed on a GPU machine without a build there.
#
#   bash scripts/step_lib_variants.sh build DIR OUTDIR name=FLAGS ...
#       here: DIR is a configured cmake build dir (-DMLSTM_CUDA=ON, one arch) with mlstm_core built.
#       OUTDIR gets the core without recurrent.cu (core_rest.a), recurrent.cu compiled once per variant
#       with FLAGS appended (recurrent-<name>.o) and the object of test_cuda_recurrent when built.
#   bash scripts/step_lib_variants.sh run OUTDIR [batches]
#       there: links each variant into a shared library, runs test_cuda_recurrent against the first
#       variant named (when its object is there; MLSTM_TEST_SMALL etc. pass through), then times every
#       variant with benchmarks/gpu/recurrent_bench.py --step-only; logs under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-} dir=${2:-}
shift 2 || true

cudart() {
  local lib
  for lib in "${CUDA_HOME:-/usr/local/cuda}/lib64/libcudart_static.a" /usr/local/cuda/lib/libcudart_static.a; do
    [ -f "$lib" ] && { echo "$lib"; return; }
  done
  echo "libcudart_static.a not found" >&2
  return 1
}

if [ "$mode" = build ]; then
  out=${1:?OUTDIR}
  shift
  core=$dir/cpp/libmlstm_core.a
  [ -f "$core" ] || { echo "no $core: build the mlstm_core target of $dir first"; exit 1; }
  mkdir -p "$out"
  out=$(realpath "$out")
  cp "$core" "$out/core_rest.a"
  ar d "$out/core_rest.a" recurrent.cu.o
  test_obj=$dir/tests/cpp/CMakeFiles/test_cuda_recurrent.dir/test_cuda_recurrent.cpp.o
  [ -f "$test_obj" ] && cp "$test_obj" "$out/"
  # The compile command of recurrent.cu as cmake runs it (from DIR), with the variant's flags appended.
  cmd=$(ninja -C "$dir" -t commands cpp/libmlstm_core.a | grep -- "-c .*src/cuda/recurrent.cu " | head -n 1 || true)
  : > "$out/variants.txt"
  for v in "$@"; do
    name=${v%%=*} flags=${v#*=}
    vcmd=$(echo "$cmd" | sed -E "s# -MD -MT [^ ]+ -MF [^ ]+##; s# -o [^ ]+\$# -o $out/recurrent-$name.o#")
    (cd "$dir" && eval "$vcmd $flags" 2>&1 | grep -v "^ptxas info\|^ptxas warning.*chunkwise" || true)
    echo "$name $flags" >> "$out/variants.txt"
    echo "built $out/recurrent-$name.o ($flags)"
  done
elif [ "$mode" = run ]; then
  OUT=${OUT:-$(pwd)/gpu_out}
  mkdir -p "$OUT"
  batches=${1:-1,2,4,8,16,32,64,128,256}
  rt=$(cudart)
  work=/tmp/step-variants
  mkdir -p "$work"
  first=""
  while read -r name flags; do
    [ -z "$first" ] && first=$name
    g++ -shared -o "$work/$name.so" -Wl,--whole-archive "$dir/recurrent-$name.o" "$dir/core_rest.a" \
      -Wl,--no-whole-archive "$rt" -ldl -lpthread -lrt
  done < "$dir/variants.txt"
  if [ -f "$dir/test_cuda_recurrent.cpp.o" ]; then
    g++ -O3 -o "$work/test_cuda_recurrent" "$dir/test_cuda_recurrent.cpp.o" "$dir/recurrent-$first.o" \
      "$dir/core_rest.a" "$rt" -ldl -lpthread -lrt
    echo "== test_cuda_recurrent ($first)"
    timeout 600 "$work/test_cuda_recurrent" > "$OUT/test-$first.log" 2>&1 && echo "rc=0" || echo "rc=$?"
    tail -n 3 "$OUT/test-$first.log"
  fi
  while read -r name flags; do
    echo "== variant $name ($flags)"
    timeout 300 python3 benchmarks/gpu/recurrent_bench.py --lib "$work/$name.so" --batches "$batches" --step-only \
      --commit "${MLSTM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}+$name" > "$OUT/step-$name.log" 2>&1 &&
      echo "rc=0" || echo "rc=$?"
    grep -E '^\||copy band' "$OUT/step-$name.log" || tail -n 20 "$OUT/step-$name.log"
  done < "$dir/variants.txt"
else
  echo "usage: $0 build DIR OUTDIR name=FLAGS ... | run OUTDIR [batches]"
  exit 2
fi
