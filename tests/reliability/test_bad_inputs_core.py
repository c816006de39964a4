"""Bad requests straight to the C ABI (through the nanobind ``_core`` module), run in a child
interpreter: each returns a Python exception naming the argument and the limit, never a crash or a
hang. The table is in ``_abi_cases.py``; tests/cpp/test_abi_errors.cpp covers the same ABI from C
(NULL args, reserved fields, per-thread messages)."""

from __future__ import annotations

import json

import pytest

from . import _abi_cases
from .conftest import run_isolated

CASE_IDS = list(_abi_cases.CASES)


def _gpu_present() -> bool:
    from mlstm_kernels import _core

    return _core.cuda_device_count() > 0


@pytest.fixture(scope="module")
def outcomes() -> dict:
    """Runs every case in a child interpreter; after a crash a fresh child resumes with the next case.
    Maps each id to its JSON row, or to {"outcome": "crash", ...} for the case that killed a child."""
    skip = {c for c in CASE_IDS if c.endswith("-cuda-device")} if _gpu_present() else set()
    pending = [c for c in CASE_IDS if c not in skip]
    results: dict[str, dict] = {}
    while pending:
        code = f"from tests.reliability._abi_cases import run_cases; run_cases({pending!r})"
        try:
            proc = run_isolated(code, timeout=300)
            stdout, rc, stderr = proc.stdout, proc.returncode, proc.stderr
        except Exception as e:  # TimeoutExpired: the case in flight hung
            stdout = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            rc, stderr = "timeout", str(e)
        started = None
        for line in stdout.splitlines():
            row = json.loads(line)
            if row["outcome"] == "start":
                started = row["id"]
            else:
                results[row["id"]] = row
                started = None
        if started is None and rc != 0:
            raise RuntimeError(f"the case runner failed outside any case (rc={rc}):\n{stderr[-2000:]}")
        if started is not None:
            results[started] = {"id": started, "outcome": "crash", "message": f"rc={rc}; stderr: {stderr[-2000:]}"}
        pending = [c for c in pending if c not in results]
    return results


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_abi_rejects_bad_request(outcomes, case_id):
    if case_id not in outcomes:
        pytest.skip("a GPU is present: this case would hand CPU pointers to a real CUDA device")
    row = outcomes[case_id]
    _, types, needles = _abi_cases.CASES[case_id]
    assert row["outcome"] != "crash", f"{case_id}: the interpreter died ({row['message']})"
    if not types:
        assert row["outcome"] == "ok", f"{case_id}: {row}"
        return
    assert row["outcome"] == "error", f"{case_id}: the bad request was accepted"
    assert row["type"] in types, f"{case_id}: {row['type']}: {row['message']}"
    if case_id.endswith("-cuda-device"):
        assert any(n in row["message"] for n in needles), f"{case_id}: {row['message']!r}"
    else:
        for needle in needles:
            assert needle in row["message"], f"{case_id}: message {row['message']!r} lacks {needle!r}"
