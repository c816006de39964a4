"""pytest set-up for the torch suites.

* Creates ``test_outputs/<timestamp>/`` under the working directory (git-ignored; the package and
  the source tree are never written) and points ``utils.compare`` at ``torch_errors.jsonl`` in it;
  at the end of the session writes ``torch_summary.txt`` there with the largest errors per
  comparison name and dtype.
* ``gpu`` marker: such tests are skipped, with a reason, when torch has no CUDA device.
* ``device`` fixture: "cpu", plus "cuda" (marked ``gpu``) when a CUDA device is available.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from . import utils

CUDA_AVAILABLE = torch.cuda.is_available()
DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.gpu)] if CUDA_AVAILABLE else [])


def _output_dir(config: pytest.Config) -> Path:
    # Never inside the package or the source tree: if pytest runs from within a package folder,
    # fall back to the rootdir.
    base = Path.cwd()
    if any((p / "__init__.py").exists() for p in (base, *base.parents)):
        base = Path(config.rootpath)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (base / "test_outputs").mkdir(exist_ok=True)
    for suffix in range(1000):
        out = base / "test_outputs" / (stamp if suffix == 0 else f"{stamp}-{suffix}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh directory under {base / 'test_outputs'}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped when torch has none)")
    if getattr(config, "workerinput", None) is None and utils.LOG_PATH is None:
        utils.set_log_path(_output_dir(config) / "torch_errors.jsonl")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CUDA_AVAILABLE:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    here = Path(__file__).parent
    for item in items:
        if "gpu" in item.keywords and here in Path(item.path).parents:
            item.add_marker(skip_gpu)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    log = utils.LOG_PATH
    if log is None or not log.exists():
        return
    def rank(row: dict) -> float:
        return math.inf if math.isnan(row["rel_err"]) else row["rel_err"]

    worst: dict[tuple[str, str], dict] = {}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        key = (row["name"], row["dtype"])
        if key not in worst or rank(row) >= rank(worst[key]):
            worst[key] = row
    lines = [f"{'name':<52} {'dtype':<16} {'max rel_err':>11} {'tol':>8} {'max_abs':>10}"]
    for (name, dtype), row in sorted(worst.items()):
        lines.append(f"{name:<52} {dtype:<16} {row['rel_err']:>11.3e} {row['tol_rel']:>8.1e} {row['max_abs']:>10.3e}")
    (log.parent / "torch_summary.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param
