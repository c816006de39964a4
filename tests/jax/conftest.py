"""Session set-up of the JAX suites: float64 on (the references need it), a per-run error log, and
the device parameter ("cpu" always; "cuda" where JAX and the core both see a GPU, skipped otherwise).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
# Arrays not placed explicitly live on the CPU (the references and the CPU cases); "cuda" cases put
# their inputs on the GPU and the computation follows them.
jax.config.update("jax_default_device", jax.devices("cpu")[0])

import pytest  # noqa: E402

from . import utils  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _error_log():
    """Every comparison goes to test_outputs/<timestamp>/jax_errors.jsonl under the working directory."""
    stamp = os.environ.get("MLSTM_TEST_RUN") or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path.cwd() / "test_outputs" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    utils.LOG_PATH = out_dir / "jax_errors.jsonl"
    yield
    utils.LOG_PATH = None


def device_params():
    """pytest params for the devices a core kernel can run on; cuda skips cleanly without a GPU."""
    return [
        pytest.param("cpu", id="cpu"),
        pytest.param(
            "cuda",
            id="cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(utils.gpu_device() is None, reason="no CUDA device for JAX and the core")],
        ),
    ]
