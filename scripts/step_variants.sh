#!/usr/bin/env bash
# Times the recurrent step's build-time variants in one GPU run (see "Variants" in
# cpp/src/cuda/recurrent.cu): each variant is built, its CUDA recurrent test run, then
# benchmarks/gpu/recurrent_bench.py; logs under $OUT/<variant>/.
#   bash scripts/step_variants.sh [name=FLAGS ...]   default: base, 2 blocks per SM, programmatic launch
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(pwd)/gpu_out}
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=("base=" "bps2=-DMLSTM_STEP_BLOCKS_PER_SM=2" "pdl=-DMLSTM_STEP_PROGRAMMATIC_LAUNCH=1")
for v in "${variants[@]}"; do
  name=${v%%=*} flags=${v#*=}
  echo "######## variant $name ($flags)"
  OUT=$OUT/$name MLSTM_CTEST_REGEX=cuda_recurrent MLSTM_CUDA_FLAGS="$flags" MLSTM_BUILD_DIR=/tmp/mlstm-build-$name \
    bash scripts/gpu_session.sh build ctest rbench | grep -E "^\||sequence B=|copy bandwidth|checks|rc="
done
