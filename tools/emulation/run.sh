#!/usr/bin/env bash
# Runs the chunkwise CUDA kernels on the CPU: test_cuda_chunkwise built against a host emulation of
# the few CUDA features the kernels use (emu.h: thread blocks as fibers in a random order between
# barriers, warp shuffles, ldmatrix, mma.sync m16n8k16, cp.async with deferred completion). It
# checks indexing, fragment layouts, pipelining and barriers, not timing.
#
#   bash tools/emulation/run.sh [build-dir]       small case set (MLSTM_TEST_SMALL=1)
#   MLSTM_TEST_SMALL= MLSTM_TEST_CASE=26 bash tools/emulation/run.sh   one case of the full set
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/tools/emulation"
out=${1:-${TMPDIR:-/tmp}/mlstm-emulation}
# The CUDA toolkit (headers and libcudart_static): $CUDA_HOME, else where nvcc says its tree is.
cuda_root=${CUDA_HOME:-}
if [ -z "$cuda_root" ]; then
  top=$(nvcc --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ _TOP_=//p' | head -n 1)
  for c in "${top%/bin}" "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda; do
    [ -f "$c/include/cuda_runtime.h" ] && cuda_root=$c && break
  done
fi
[ -n "$cuda_root" ] || { echo "no CUDA toolkit found (set CUDA_HOME)" >&2; exit 1; }
mkdir -p "$out/obj"
flags=(-std=c++17 -O2 -w -DMLSTM_VERSION_STRING='"emulated"' -DMLSTM_WITH_CUDA -include "$here/emu.h"
       -I"$repo/cpp/include" -I"$repo/cpp/src" -I"$repo/tests/cpp" -I"$cuda_root/include" -I"$here")
sources=("$repo"/cpp/src/cuda/chunkwise*.cu "$repo/cpp/src/api.cpp" "$repo/cpp/src/common/error.cpp"
         "$repo"/cpp/src/cpu/*.cpp "$here/stubs.cpp" "$here/emu.cpp" "$repo/tests/cpp/test_cuda_chunkwise.cpp")
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
g++ "$out"/obj/*.o -o "$out/test_cuda_chunkwise_emulated" -L"$cuda_root/lib64" -lcudart_static -ldl -lrt -lpthread
echo "emulation build: $(( $(date +%s) - start )) s"
export MLSTM_TEST_SMALL=${MLSTM_TEST_SMALL-1}
"$out/test_cuda_chunkwise_emulated"
