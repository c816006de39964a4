#!/usr/bin/env bash
# Render recipe/recipe.yaml for every variant in recipe/variants.yaml, offline, with the
# rattler-build Python bindings (py-rattler-build from PyPI; rendering needs no channel access),
# and check what each rendered variant says:
#   * one variant per (python, cuda_compiler_version) pair, each with a distinct build string;
#   * the recipe's version equals python/mlstm_kernels/_version.py;
#   * CPU variants: MLSTM_CUDA=OFF, no CUDA compiler or CUDA packages;
#     CUDA variants: MLSTM_CUDA=ON, nvcc of that version, cuda-version pinned, cudart (static) in host;
#   * host has the build backend (python, pip, scikit-build-core, nanobind, cmake, ninja) and run has
#     python and numpy.
# Exits non-zero when any variant fails to render or to match.
#
#   bash recipe/render.sh            # linux-64
#   bash recipe/render.sh linux-aarch64
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
platform=${1:-linux-64}

if ! "$PY" -c "import rattler_build" 2> /dev/null; then
  echo "installing py-rattler-build"
  "$PY" -m pip install -q py-rattler-build
fi

"$PY" - "$here" "$platform" <<'EOF'
import re
import sys
from pathlib import Path

from rattler_build import Stage0Recipe, VariantConfig
from rattler_build.render import RenderConfig
from rattler_build.tool_config import PlatformConfig

recipe_dir, platform = Path(sys.argv[1]), sys.argv[2]
version_file = recipe_dir.parent / "python" / "mlstm_kernels" / "_version.py"
source_version = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", version_file.read_text()).group(1)

variants = VariantConfig.from_file(recipe_dir / "variants.yaml")
recipe = Stage0Recipe.from_file(recipe_dir / "recipe.yaml")
rendered = recipe.render(variants, RenderConfig(platform=PlatformConfig(target_platform=platform)))

pythons = [str(p) for p in variants["python"]]
cudas = [str(c) for c in variants["cuda_compiler_version"]]
expected = {(p, c) for p in pythons for c in cudas}
errors = []
seen = {}


def names(specs):
    """Package names of rendered requirement strings ("cuda-nvcc_linux-64 12.9.*" -> name)."""
    return [s.split()[0] for s in specs if isinstance(s, str)]


for variant in rendered:
    d = variant.recipe.to_dict()
    key = (str(variant.variant["python"]), str(variant.variant.get("cuda_compiler_version", "None")))
    py, cuda = key
    reqs = d["requirements"]
    build, host, run = (reqs.get(k, []) for k in ("build", "host", "run"))
    script = d["build"]["script"]
    env = script.get("env", {}) if isinstance(script, dict) else {}
    string = d["build"]["string"]
    label = f"python {py}, cuda_compiler_version {cuda}"
    problems = []
    if d["package"]["version"] != source_version:
        problems.append(f"version {d['package']['version']} != _version.py {source_version}")
    for pkg in ("python", "pip", "scikit-build-core", "nanobind", "cmake", "ninja"):
        if pkg not in names(host):
            problems.append(f"host lacks {pkg}")
    for pkg in ("python", "numpy"):
        if pkg not in names(run):
            problems.append(f"run lacks {pkg}")
    cuda_build = [s for s in names(build) if s.startswith("cuda-nvcc")]
    cuda_host = [s for s in names(host) if s.startswith("cuda-")]
    if cuda == "None":
        if env.get("MLSTM_CUDA") != "OFF" or cuda_build or cuda_host or not string.startswith("cpu_"):
            problems.append(f"CPU variant with MLSTM_CUDA={env.get('MLSTM_CUDA')}, build {cuda_build}, host {cuda_host}, string {string}")
    else:
        nvcc = [s for s in build if isinstance(s, str) and s.startswith("cuda-nvcc")]
        if env.get("MLSTM_CUDA") != "ON":
            problems.append(f"MLSTM_CUDA={env.get('MLSTM_CUDA')}")
        if not nvcc or not nvcc[0].endswith(f" {cuda}.*"):
            problems.append(f"CUDA compiler {nvcc}, expected cuda-nvcc {cuda}")
        if f"cuda-version =={cuda}" not in host or "cuda-cudart-dev" not in names(host):
            problems.append(f"host CUDA packages {cuda_host}, expected cuda-version =={cuda} and cuda-cudart-dev")
        if not string.startswith("cuda" + cuda.replace(".", "")):
            problems.append(f"build string {string}")
    if key in seen:
        problems.append(f"rendered twice ({seen[key]} and {string})")
    seen[key] = string
    status = "ok" if not problems else "FAIL: " + "; ".join(problems)
    print(f"{platform}  {label:40s} {string:28s} {status}")
    errors += [f"{label}: {p}" for p in problems]

missing = sorted(expected - set(seen))
if missing:
    errors.append(f"variants that did not render: {missing}")
if len(set(seen.values())) != len(seen):
    errors.append("build strings are not distinct")
if errors:
    print("\n".join(["", "recipe render FAILED:"] + errors), file=sys.stderr)
    sys.exit(1)
print(f"rendered {len(seen)} variants of {d['package']['name']} {source_version} for {platform}")
EOF
