#!/usr/bin/env bash
# Packaging test: build the wheel and the sdist the way a release would, and check that what ships
# works on its own.
#
#   1. `pip wheel . --no-build-isolation --no-deps` into a scratch directory;
#   2. the wheel holds the package and mlstm_kernels/_core*.so, and the .so does not load the CUDA
#      runtime or driver dynamically (libcudart is linked statically and the driver is reached
#      through the runtime, so the wheel imports on machines without CUDA), and every library it
#      needs resolves;
#   3. it installs into a fresh venv (--system-site-packages, so the local CPU torch is reused and
#      nothing is downloaded), imports from outside the repository, prints capabilities() and, when
#      torch is importable, runs `python -m mlstm_kernels check` (with --quick where offered);
#   4. `auditwheel show` reports the platform tag (when auditwheel is installed);
#   5. the sdist holds every tracked file the build needs and builds a CPU-only wheel by itself.
#
# Usage:
#   bash tests/packaging/test_wheel.sh [extra pip config args ...]
#   bash tests/packaging/test_wheel.sh -Ccmake.define.MLSTM_CUDA_ARCHS=90a-real   # one arch (CI)
#   bash tests/packaging/test_wheel.sh -Ccmake.define.MLSTM_CUDA=OFF             # CPU-only wheel
# Extra args may also come from MLSTM_WHEEL_ARGS (space-separated). PYTHON picks the interpreter.
# Nothing is written into the source tree; exits non-zero on the first failure.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-python3}
read -r -a env_args <<< "${MLSTM_WHEEL_ARGS:-}"
build_args=("${env_args[@]}" "$@")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() { echo; echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
t0=$(date +%s)

# A build dir inside the scratch directory keeps the source tree clean and the build honest.
cd "$repo"
step "building the wheel (${build_args[*]:-default options})"
"$PY" -m pip wheel . --no-build-isolation --no-deps -w "$tmp/dist" \
  -Cbuild-dir="$tmp/build" "${build_args[@]}" > "$tmp/wheel.log" 2>&1 \
  || { tail -n 60 "$tmp/wheel.log"; fail "pip wheel failed"; }
wheels=("$tmp"/dist/mlstm_kernels-*.whl)
[[ ${#wheels[@]} -eq 1 && -f ${wheels[0]} ]] || fail "expected exactly one wheel in $tmp/dist"
wheel=${wheels[0]}
echo "   $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) in $(( $(date +%s) - t0 )) s"

step "inspecting the wheel"
mkdir "$tmp/unpacked"
"$PY" - "$wheel" "$tmp/unpacked" "$repo/python/mlstm_kernels/_version.py" <<'EOF'
import re, sys, zipfile

wheel, dest, version_file = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
version = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", open(version_file).read()).group(1)
required = ["mlstm_kernels/__init__.py", "mlstm_kernels/_spec.py", "mlstm_kernels/_version.py",
            f"mlstm_kernels-{version}.dist-info/METADATA"]
missing = [n for n in required if n not in names]
cores = [n for n in names if re.fullmatch(r"mlstm_kernels/_core[^/]*\.so", n)]
stray = [n for n in names if not n.startswith(("mlstm_kernels/", f"mlstm_kernels-{version}.dist-info/"))]
for n in sorted(names):
    print("   ", n)
if missing or len(cores) != 1 or stray:
    sys.exit(f"FAIL: missing {missing}, core modules {cores}, files outside the package {stray}")
zipfile.ZipFile(wheel).extractall(dest)
EOF

for so in "$tmp"/unpacked/mlstm_kernels/*.so; do
  name=$(basename "$so")
  needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  echo "   $name needs: $(echo $needed)"
  if grep -Eq '^(libcudart|libcuda)\.so' <<< "$needed"; then
    fail "$name links the CUDA runtime or driver dynamically"
  fi
  if readelf -d "$so" | grep -Eq '(RPATH|RUNPATH).*'"$tmp"; then
    fail "$name carries an rpath into the build directory"
  fi
  if ldd "$so" | grep -q 'not found'; then
    ldd "$so"
    fail "$name needs a library that is not found"
  fi
done

step "installing into a fresh venv"
"$PY" -m venv --system-site-packages "$tmp/venv"
vpy="$tmp/venv/bin/python"
# --ignore-installed: an mlstm_kernels in the system site-packages would otherwise count as installed.
"$vpy" -m pip install -q --no-deps --no-index --ignore-installed "$wheel"

# Import from a directory outside the repository, so the source folder cannot shadow the wheel; the
# venv's own site-packages comes before any mlstm_kernels installed system-wide.
cd "$tmp"
nvcc_present=0
if command -v nvcc > /dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then nvcc_present=1; fi
cuda_off=0
if [[ " ${build_args[*]} " == *"MLSTM_CUDA=OFF"* ]]; then cuda_off=1; fi
"$vpy" - "$tmp/venv" "$nvcc_present" "$cuda_off" <<'EOF'
import json, os, sys

venv, nvcc_present, cuda_off = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
import mlstm_kernels

where = os.path.realpath(mlstm_kernels.__file__)
print("   imported", mlstm_kernels.__version__, "from", where)
if not where.startswith(os.path.realpath(venv)):
    sys.exit("FAIL: mlstm_kernels was not imported from the venv")
caps = mlstm_kernels.capabilities()
print(json.dumps(caps, indent=2))
# MLSTM_CUDA=AUTO must not fall back to a CPU-only build silently where nvcc exists.
if nvcc_present and not cuda_off and not caps["cuda_compiled"]:
    sys.exit("FAIL: nvcc is present but the wheel has no CUDA backend")
if cuda_off and caps["cuda_compiled"]:
    sys.exit("FAIL: MLSTM_CUDA=OFF but the wheel has a CUDA backend")
EOF

if [[ -f "$tmp/unpacked/mlstm_kernels/__main__.py" ]]; then
  if "$vpy" -c "import torch" 2> /dev/null; then
    check=(check)
    if "$vpy" -m mlstm_kernels check --help 2>&1 | grep -q -- '--quick'; then check=(check --quick); fi
    step "python -m mlstm_kernels ${check[*]}"
    "$vpy" -m mlstm_kernels "${check[@]}" || fail "python -m mlstm_kernels ${check[*]} failed"
  else
    echo "   torch is not importable: skipping python -m mlstm_kernels check"
  fi
else
  echo "   NOTE: the wheel has no mlstm_kernels/__main__.py yet: no check command to run"
fi

step "auditwheel"
if "$PY" -m auditwheel --version > /dev/null 2>&1; then
  "$PY" -m auditwheel show "$wheel" | tee "$tmp/auditwheel.txt" || fail "auditwheel show failed"
  tag=$(grep -oE 'manylinux_[0-9]+_[0-9]+_[a-z0-9_]+' "$tmp/auditwheel.txt" | head -n 1 || true)
  echo "   platform tag: ${tag:-none found}"
else
  echo "   auditwheel is not installed (pip install auditwheel): skipped"
fi

step "sdist"
cd "$repo"
"$PY" - "$tmp/sdist" <<'EOF' > "$tmp/sdist.log" 2>&1 || { cat "$tmp/sdist.log"; fail "building the sdist failed"; }
import sys
from scikit_build_core.build import build_sdist

print(build_sdist(sys.argv[1]))
EOF
sdists=("$tmp"/sdist/*.tar.gz)
[[ -f ${sdists[0]} ]] || fail "no sdist produced"
sdist=${sdists[0]}
echo "   $(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB)"
"$PY" - "$sdist" "$repo" <<'EOF'
import subprocess, sys, tarfile

sdist, repo = sys.argv[1:]
with tarfile.open(sdist) as tar:
    top = tar.getnames()[0].split("/")[0]
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
# Everything tracked that the build or the tests read must ship: the core, the bindings, the
# package, the test sources and the build files.
tracked = subprocess.run(
    ["git", "-C", repo, "ls-files", "--", "cpp", "python", "tests", "CMakeLists.txt", "pyproject.toml", "README.md"],
    check=True, capture_output=True, text=True,
).stdout.split()
missing = sorted(set(tracked) - names)
junk = sorted(n for n in names if n.endswith((".so", ".o", ".whl")) or n.startswith("build/"))
print(f"   {len(names)} files; {len(tracked)} tracked build/test files, {len(missing)} missing")
if missing or junk:
    sys.exit(f"FAIL: sdist misses {missing}; holds build products {junk}")
EOF

# The sdist must build on its own (CPU-only keeps this part quick).
mkdir "$tmp/sdist-src"
tar -xzf "$sdist" -C "$tmp/sdist-src"
srcdir=("$tmp"/sdist-src/*)
"$PY" -m pip wheel "${srcdir[0]}" --no-build-isolation --no-deps -w "$tmp/sdist-dist" \
  -Cbuild-dir="$tmp/sdist-build" -Ccmake.define.MLSTM_CUDA=OFF > "$tmp/sdist-wheel.log" 2>&1 \
  || { tail -n 60 "$tmp/sdist-wheel.log"; fail "the sdist does not build a wheel"; }
echo "   the sdist builds $(basename "$tmp"/sdist-dist/*.whl)"

echo
echo "PASS: wheel and sdist checks ($(( $(date +%s) - t0 )) s)"
