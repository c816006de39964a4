#!/usr/bin/env bash
# Installs what the tests need, builds the package in place (with the ctest executables in the same
# build tree, so the core is compiled once), then runs ctest and pytest.
#
#   bash tests/run_all.sh            # CUDA backend compiled when nvcc is found (default archs)
#   MLSTM_CUDA_ARCHS=90a-real bash tests/run_all.sh   # fewer archs: faster development builds
#   MLSTM_CUDA=OFF bash tests/run_all.sh              # CPU-only build
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
BUILD_DIR=${MLSTM_BUILD_DIR:-build/test}
CUDA=${MLSTM_CUDA:-AUTO}
ARCHS=${MLSTM_CUDA_ARCHS:-80-real;90a-real;90-virtual}

echo "== installing test dependencies"
# A pinned CPU torch (a plain 'torch' requirement would pull a multi-GB CUDA build).
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q "scikit-build-core>=0.10" "nanobind>=2.0" ninja cmake numpy pytest hypothesis jax jaxlib

echo "== building mlstm_kernels (CUDA=$CUDA, archs=$ARCHS) in $BUILD_DIR"
start=$(date +%s)
$PY -m pip install -q --no-build-isolation --no-deps \
  -Cbuild-dir="$BUILD_DIR" \
  -Ccmake.define.MLSTM_BUILD_TESTS=ON \
  -Ccmake.define.MLSTM_CUDA="$CUDA" \
  -Ccmake.define.MLSTM_CUDA_ARCHS="$ARCHS" \
  .
echo "   built in $(( $(date +%s) - start )) s"
$PY -c "import mlstm_kernels as m; print('mlstm_kernels', m.__version__, m.capabilities())"

echo "== ctest"
ctest --test-dir "$BUILD_DIR" --output-on-failure

echo "== pytest"
# Run from a scratch directory so test logs (test_outputs/) never land in the source tree and the
# installed package, not the source folder, is imported.
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
repo=$(pwd)
(cd "$workdir" && $PY -m pytest -q -rs -p no:cacheprovider "$repo/tests" "$@")
