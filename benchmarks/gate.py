"""Correctness gate: before any of our kernels is timed, its outputs (and gradients, where the
suite times a backward) at a small shape are compared with the float64 reference of
`mlstm_kernels.torch.reference`. A kernel that fails is reported with its errors and not timed.

The reference runs on the CPU in float64 from the same rounded inputs the kernel sees, so the
error measures the kernel, not the input rounding. Error = ‖out − ref‖ / ‖ref‖ per tensor;
tolerances are SPEC §6's targets for the input dtype.
"""

from __future__ import annotations

from typing import Callable

import torch

from .configs import Point
from .workloads import mlstm_inputs, step_inputs

# (outputs and last states, gradients) relative-error limits per input dtype (SPEC §6).
TOLERANCES = {
    torch.bfloat16: (1e-2, 2e-2),
    torch.float16: (1e-2, 2e-2),
    torch.float32: (1e-4, 1e-4),
}

# Small, but with DHQK != DHHV, B and NH not powers of two, several chunks of every chunk size up
# to 128 and a partial last chunk for 256; head dims are multiples of 16 (the GPU rule). The
# float64 recurrent reference is a Python loop over S whose backward dominates the gate's cost, so
# it is computed once per run and shared by every kernel gated against it.
GATE_POINT = Point("gate", B=2, NH=3, S=320, DHQK=32, DHHV=64, x=0)
GATE_POINT_QUICK = Point("gate", B=2, NH=3, S=64, DHQK=32, DHHV=64, x=0)

_reference_cache: dict[tuple, tuple] = {}


def _cached(key: tuple, compute: Callable[[], tuple]) -> tuple:
    if key not in _reference_cache:
        _reference_cache[key] = compute()
    return _reference_cache[key]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.shape != ref.shape:
        out = out.reshape(ref.shape)
    diff = out - ref
    rel = (diff.norm() / ref.norm().clamp_min(1e-300)).item()
    return rel, diff.abs().max().item()


def _check(checks: list, name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    rel, max_abs = _rel(out, ref)
    ok = rel <= tol  # NaN fails
    checks.append({"name": name, "rel": rel, "max_abs": max_abs, "tol": tol, "ok": ok})


def _reference():
    from mlstm_kernels.torch.reference import mlstm_parallel_reference, mlstm_recurrent_reference

    return mlstm_recurrent_reference, mlstm_parallel_reference


def _verdict(checks: list, modes: tuple[str, ...], errors: dict[str, str]) -> dict:
    """Per timed mode: ok when that mode's checks ran and passed. The forward decides "fw"; the
    forward and the gradients decide "fwbw" (a kernel without a backward is still timed forward)."""
    verdict = {"ok": True, "checks": checks, "modes": {}}
    for mode in modes:
        relevant = [c for c in checks if mode == "fwbw" or not c["name"].startswith("d")]
        problems = [errors[m] for m in ("fw", "fwbw") if m in errors and (m == "fw" or mode == "fwbw")]
        problems += [f"{c['name']} rel {c['rel']:.2e} > {c['tol']:.0e}" for c in relevant if not c["ok"]]
        verdict["modes"][mode] = {"ok": not problems, "reason": "; ".join(problems)}
        verdict["ok"] &= not problems
    verdict["reason"] = "; ".join(f"{m}: {v['reason']}" for m, v in verdict["modes"].items() if not v["ok"])
    return verdict


def run_gate(fn: Callable, registry: str, name: str, suite_kind: str, modes: tuple[str, ...],
             dtype: torch.dtype, device: str, kwargs: dict, p: Point = GATE_POINT) -> dict:
    """Gate one kernel for each mode the suite times. `registry` is "training", "step" or
    "sequence"; `suite_kind` says how the suite calls it (a training kernel in the sequence suite is
    called with states). Returns {"ok", "modes": {mode: {"ok", "reason"}}, "checks", "reason"}."""
    try:
        recurrent_ref, parallel_ref = _reference()
    except Exception as exc:
        return _verdict([], modes, {"fw": f"no fp64 reference to gate against ({type(exc).__name__}: {exc})"})
    out_tol, grad_tol = TOLERANCES[dtype]
    checks: list = []
    errors: dict[str, str] = {}

    def raised(exc: Exception) -> str:
        return f"raised {type(exc).__name__}: {str(exc).strip()[:300]}"

    def to_ref(t: dict) -> dict:
        # The reference sees exactly the rounded inputs the kernel sees, in float64 on the CPU.
        return {k: v.detach().double().cpu() for k, v in t.items()}

    if registry == "step":
        try:
            t = step_inputs(p, dtype, device, seed=777, dtype_state=torch.float32)
            h, (c, n, m) = fn(t["q"], t["k"], t["v"], t["i"], t["f"], t["c"], t["n"], t["m"], **kwargs)

            def step_reference():
                d = to_ref(t)
                h_ref, states = recurrent_ref(d["q"][:, :, None], d["k"][:, :, None], d["v"][:, :, None],
                                              d["i"], d["f"], c_initial=d["c"], n_initial=d["n"], m_initial=d["m"])
                return (h_ref[:, :, 0], *states)

            refs = _cached(("step", p, dtype, device), step_reference)
            for label, out, ref in zip(("h", "c_new", "n_new", "m_new"), (h, c, n, m), refs):
                _check(checks, label, out, ref, out_tol)
        except Exception as exc:
            errors["fw"] = raised(exc)
    elif registry == "sequence" or suite_kind == "sequence":
        try:
            t = mlstm_inputs(p, dtype, device, seed=777, grad=False)
            s = step_inputs(p, dtype, device, seed=778, dtype_state=torch.float32)
            h, (c, n, m) = fn(t["q"], t["k"], t["v"], t["i"], t["f"], c_initial=s["c"], n_initial=s["n"],
                              m_initial=s["m"], return_last_states=True, **kwargs)

            def sequence_reference():
                d = to_ref({**t, "c": s["c"], "n": s["n"], "m": s["m"]})
                h_ref, states = recurrent_ref(d["q"], d["k"], d["v"], d["i"], d["f"],
                                              c_initial=d["c"], n_initial=d["n"], m_initial=d["m"])
                return (h_ref, *states)

            refs = _cached(("sequence", p, dtype, device), sequence_reference)
            for label, out, ref in zip(("h", "c_last", "n_last", "m_last"), (h, c, n, m), refs):
                _check(checks, label, out, ref, out_tol)
        except Exception as exc:
            errors["fw"] = raised(exc)
    else:
        grad = "fwbw" in modes
        names = ("q", "k", "v", "i", "f")
        # The parallel form has no state and starts its stabiliser at -inf: its own reference.
        form = "parallel" if name.startswith("parallel--") else "recurrent"
        try:
            t = mlstm_inputs(p, dtype, device, seed=777, grad=grad)
            h = fn(*(t[n] for n in names), **kwargs)  # (B, NH, S, DHHV)

            def training_reference():
                d = to_ref(t)
                x = [d[n].requires_grad_(grad) for n in names]
                h_ref = parallel_ref(*x) if form == "parallel" else recurrent_ref(*x)[0]
                grads_ref = torch.autograd.grad(h_ref, x, d["dh"]) if grad else ()
                return (h_ref.detach(), *grads_ref)

            h_ref, *grads_ref = _cached(("training", form, grad, p, dtype, device), training_reference)
            _check(checks, "h", h, h_ref, out_tol)
        except Exception as exc:
            errors["fw"] = raised(exc)
        if grad and "fw" not in errors:
            try:
                grads = torch.autograd.grad(h, [t[n] for n in names], t["dh"])
                for n, g, g_ref in zip(names, grads, grads_ref):
                    _check(checks, "d" + n, g, g_ref, grad_tol)
            except Exception as exc:
                errors["fwbw"] = raised(exc)
    return _verdict(checks, modes, errors)
