#!/usr/bin/env bash
# Runs the chunkwise (default) or the parallel-form (--parallel) CUDA kernels on the CPU: their test
# (test_cuda_chunkwise, test_cuda_parallel) built against a host emulation of the few CUDA features
# the kernels use (emu.h: thread blocks as fibers in a random order between barriers, warp shuffles,
# ldmatrix, mma.sync m16n8k16, cp.async with deferred completion). It checks indexing, fragment
# layouts, pipelining and barriers, not timing.
#
#   bash tools/emulation/run.sh [--parallel] [build-dir]   small case set (MLSTM_TEST_SMALL=1)
#   MLSTM_TEST_SMALL= MLSTM_TEST_CASE=26 bash tools/emulation/run.sh   one case of the full set
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/tools/emulation"
form=chunkwise
if [ "${1:-}" = --parallel ]; then
  form=parallel
  shift
fi
out=${1:-${TMPDIR:-/tmp}/mlstm-emulation-$form}
# The CUDA toolkit (headers and libcudart_static): $CUDA_HOME, else where nvcc says its tree is.
cuda_root=${CUDA_HOME:-}
if [ -z "$cuda_root" ]; then
  top=$(nvcc --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ _TOP_=//p' | head -n 1)
  for c in "${top%/bin}" "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda; do
    [ -f "$c/include/cuda_runtime.h" ] && cuda_root=$c && break
  done
fi
[ -n "$cuda_root" ] || { echo "no CUDA toolkit found (set CUDA_HOME)" >&2; exit 1; }
rm -rf "$out/obj" "$out/src"
mkdir -p "$out/obj"
common=("$repo/cpp/src/api.cpp" "$repo/cpp/src/common/error.cpp" "$repo"/cpp/src/cpu/*.cpp "$here/stubs.cpp"
        "$here/emu.cpp" "$repo/tests/cpp/test_cuda_$form.cpp")
if [ $form = parallel ]; then
  # The parallel-form sources call inline-asm helpers directly: emulation copies of them (made by
  # parallel_sources.py) come first on the include path.
  python3 "$here/parallel_sources.py" "$repo/cpp/src" "$out/src"
  form_flags=(-DMLSTM_EMULATE_PARALLEL -I"$out/src")
  sources=("$out/src/cuda/parallel.cu" "${common[@]}")
else
  form_flags=()
  sources=("$repo"/cpp/src/cuda/chunkwise*.cu "${common[@]}")
fi
flags=(-std=c++17 -O2 -w -DMLSTM_VERSION_STRING='"emulated"' -DMLSTM_WITH_CUDA -include "$here/emu.h"
       ${form_flags[@]+"${form_flags[@]}"} -I"$repo/cpp/include" -I"$repo/cpp/src" -I"$repo/tests/cpp"
       -I"$cuda_root/include" -I"$here")
jobs=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
start=$(date +%s)
status=0 running=0
for f in "${sources[@]}"; do
  g++ "${flags[@]}" -x c++ -c "$f" -o "$out/obj/$(basename "$f").o" &
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n || status=1
    running=$((running - 1))
  fi
done
while ((running > 0)); do
  wait -n || status=1
  running=$((running - 1))
done
((status == 0)) || { echo "emulation build failed" >&2; exit 1; }
g++ "$out"/obj/*.o -o "$out/test_cuda_${form}_emulated" -L"$cuda_root/lib64" -lcudart_static -ldl -lrt -lpthread
echo "emulation build: $(( $(date +%s) - start )) s"
# The tests pick the small set when MLSTM_TEST_SMALL is set at all: set but empty means the full set.
if [ -n "${MLSTM_TEST_SMALL-1}" ]; then
  export MLSTM_TEST_SMALL=${MLSTM_TEST_SMALL-1}
else
  unset MLSTM_TEST_SMALL
fi
"$out/test_cuda_${form}_emulated"
