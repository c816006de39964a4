"""pytest set-up of the reliability suites (bad input, properties, 64-bit offsets, concurrency, leaks).

* ``gpu`` marker: such tests skip, with a reason, when torch sees no CUDA device.
* ``run_isolated``: runs Python code in a fresh interpreter, so that a crash (segfault, abort) in a
  risky case fails one test instead of killing the pytest process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO_ROOT = HERE.parent.parent


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


CUDA_AVAILABLE = _cuda_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CUDA_AVAILABLE:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords and HERE in Path(item.path).parents:
            item.add_marker(skip_gpu)


def run_isolated(code: str, *, timeout: float = 120.0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (no bytecode written, the repository root importable so the
    code can import ``tests.reliability.*``) from a scratch working directory. A hang fails after
    `timeout` seconds (subprocess.TimeoutExpired)."""
    full_env = dict(os.environ)
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-B", "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=os.environ.get("TMPDIR", "/tmp"),
    )
