#!/usr/bin/env bash
# bash run.sh <worktree>   — builds and runs the sequence cases of test_cuda_recurrent under host emulation
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
wt=${1:-/work/wt-seq-fma}
cd "$here"
python3 prepare.py "$wt"
cuda_root=/usr/local/cuda
emu="$wt/tools/emulation"
flags=(-std=c++17 -O2 -w -DMLSTM_VERSION_STRING='"emulated"' -DMLSTM_WITH_CUDA -include "$emu/emu.h" -include "$here/emu_rec.h"
       -I"$here/src/cpp/include" -I"$here/src/cpp/src" -I"$here/src/tests/cpp" -I"$cuda_root/include" -I"$emu")
mkdir -p obj
sources=("$here/src/cpp/src/cuda/recurrent.cu" "$here/src/cpp/src/api.cpp" "$here/src/cpp/src/common/error.cpp"
         "$here"/src/cpp/src/cpu/*.cpp "$here/stubs_rec.cpp" "$here/emu.cpp" "$here/src/tests/cpp/test_cuda_recurrent.cpp")
pids=()
for f in "${sources[@]}"; do
  o="obj/$(basename "$f").o"
  if [ "$f" -nt "$o" ] || [ ! -f "$o" ] || [[ "$f" == */recurrent.cu ]] || [[ "$f" == */test_cuda_recurrent.cpp ]]; then
    g++ "${flags[@]}" -x c++ -c "$f" -o "$o" & pids+=($!)
  fi
done
for p in "${pids[@]}"; do wait $p; done
g++ $(ls obj/*.o | grep -v shapes) -o test_seq_emulated -L"$cuda_root/lib64" -lcudart_static -ldl -lrt -lpthread
g++ "${flags[@]}" -c shapes.cpp -o obj_shapes.o && g++ $(ls obj/*.o | grep -v test_cuda_recurrent) obj_shapes.o -o shapes -L"$cuda_root/lib64" -lcudart_static -ldl -lrt -lpthread
[ -n "${BUILD_ONLY:-}" ] && exit 0
export MLSTM_TEST_SMALL=${MLSTM_TEST_SMALL-1}
./test_seq_emulated
