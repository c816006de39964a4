"""Shared test helpers for the torch suites: error measures, one comparison routine that prints and
logs every check, random inputs, NaN poisoning and tolerances derived from precision.

Tolerances (SPEC §6). A kernel is compared with a float64 reference computed from the same (rounded)
inputs. Its relative error may be at most `factor` times the error of a plain torch implementation of
the same computation in the same dtype, never below a floor set by the rounding noise of the dtype
(an exact kernel must not fail because the plain one got lucky). The floor is capped at the project
targets — float32 1e-4; bfloat16/float16 1e-2 on outputs and last states, 2e-2 on gradients — so
the targets hold wherever the plain implementation meets them with margin (see `derived_tolerance`).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Mapping

import torch

# Written by conftest.py at session start: test_outputs/<timestamp>/torch_errors.jsonl.
LOG_PATH: Path | None = None

UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}
# Upper limits of the relative error (SPEC §6): (outputs and last states, gradients). float64 has
# no SPEC target; 1e-10 is below any modelling error (dropping the eps path of the stabiliser
# gradient changes the gate gradients by ~1e-8..1e-6 relative) and far above float64 rounding.
TARGET_REL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 2e-2),
    torch.bfloat16: (1e-2, 2e-2),
}
# The smallest tolerance ever used: rounding noise of the dtype on the test shapes, whatever the
# plain implementation happened to reach. exp() turns the absolute roundoff of logD into relative
# error amplified by |logD| (|i| up to ~30 in the large-|i| tests), S-term sums add more, and a step
# dominated by one key has gradients that cancel to e^{-Δi} of their terms (a lone row then carries
# 1e7 units of roundoff). So float64 gets ~1e6 units of roundoff and float32 ~170; 16-bit types 8
# (for bfloat16 above the targets, which then apply).
FLOOR_REL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 8 * 2.0**-11,
    torch.bfloat16: 8 * 2.0**-8,
}
DEFAULT_FACTOR = 4.0


def set_log_path(path: Path | None) -> None:
    global LOG_PATH
    LOG_PATH = path


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (‖out − ref‖ when ref is zero); NaN if out has a NaN."""
    out64 = out.detach().to(device="cpu", dtype=torch.float64)
    ref64 = ref.detach().to(device="cpu", dtype=torch.float64)
    diff = torch.linalg.vector_norm(out64 - ref64).item()
    ref_norm = torch.linalg.vector_norm(ref64).item()
    return diff / ref_norm if ref_norm > 0 else diff


def max_abs_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out − ref| in float64; NaN if out has a NaN."""
    diff = (out.detach().to("cpu", torch.float64) - ref.detach().to("cpu", torch.float64)).abs()
    if diff.numel() == 0:
        return 0.0
    return math.nan if torch.isnan(diff).any() else diff.max().item()


def derived_tolerance(
    plain_error: float,
    dtype: torch.dtype,
    *,
    grad: bool = False,
    factor: float = DEFAULT_FACTOR,
    plain_dtype: torch.dtype | None = None,
    extra_error: float = 0.0,
) -> float:
    """Relative tolerance for a kernel in `dtype`, from the relative error `plain_error` of a plain
    torch implementation of the same computation (both measured against float64).

    `plain_dtype` is the dtype the plain implementation ran in when it is not `dtype`: a float64
    kernel has no float64 plain error to measure, so the plain error in float32, scaled by the ratio
    of unit roundoffs, estimates how ill-conditioned the quantity is. `extra_error` is a known
    additional relative error of the kernel's algorithm over the plain one (in the kernel's dtype),
    e.g. the subtractive gate matrix of the parallel form.

    The tolerance is factor × plain_error, never below FLOOR_REL[dtype] (capped at the SPEC §6
    target). So whenever factor × plain_error ≤ target the kernel is held within the target. When the
    plain implementation itself comes within `factor` of the target (ill-conditioned inputs, e.g.
    input gates spread to |i| ~ 30 in float32), no other summation order can be asked to meet it and
    factor × plain_error applies; the log then shows tol > target.
    """
    if plain_dtype is not None and plain_dtype != dtype:
        plain_error = plain_error * UNIT_ROUNDOFF[dtype] / UNIT_ROUNDOFF[plain_dtype]
    target = TARGET_REL[dtype][1 if grad else 0]
    if not math.isfinite(plain_error):
        return target
    return max(factor * (plain_error + extra_error), min(FLOOR_REL[dtype], target))


def _format_shape(shape_info: Mapping[str, Any] | str) -> str:
    if isinstance(shape_info, str):
        return shape_info
    order = ["S", "B", "NH", "DHQK", "DHHV"]
    keys = [k for k in order if k in shape_info] + [k for k in shape_info if k not in order]
    return ", ".join(f"{k}={shape_info[k]}" for k in keys)


def compare(
    name: str,
    out: torch.Tensor,
    ref: torch.Tensor,
    *,
    target: str,
    baseline: str,
    shape_info: Mapping[str, Any] | str,
    dtype: torch.dtype | str,
    tol_rel: float,
    tol_abs: float | None = None,
) -> tuple[float, float]:
    """Compare `out` with `ref`: print one line, log one JSON row, then assert.

    `name` says what is compared, e.g. "chunkwise--xl_chunk dq". Fails on a shape mismatch, on any
    NaN or Inf in `out`, when rel_error > tol_rel, or when max_abs_error > tol_abs (if given).
    Returns (rel_err, max_abs).
    """
    assert tuple(out.shape) == tuple(ref.shape), f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    rel = rel_error(out, ref)
    mabs = max_abs_error(out, ref)
    finite = bool(torch.isfinite(out.detach()).all().item())
    passed = finite and rel <= tol_rel and (tol_abs is None or mabs <= tol_abs)

    shape_text = _format_shape(shape_info)
    line = (
        f"Test {name} target={target} vs. baseline={baseline} with {shape_text}, DTYPE={dtype} : "
        f"rel_err={rel:.3e} (tol {tol_rel:.1e}), max_abs={mabs:.3e}"
        + (f" (tol {tol_abs:.1e})" if tol_abs is not None else "")
        + ("" if passed else "  FAILED")
    )
    print(line)
    _log_row(
        {
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
            "name": name,
            "target": target,
            "baseline": baseline,
            "shape": shape_info if not isinstance(shape_info, str) else shape_text,
            "dtype": str(dtype),
            "rel_err": rel,
            "max_abs": mabs,
            "tol_rel": tol_rel,
            "tol_abs": tol_abs,
            "finite": finite,
            "passed": passed,
        }
    )
    assert finite, f"{line}\n{name}: output contains NaN or Inf"
    assert rel <= tol_rel, f"{line}\n{name}: relative error {rel:.3e} > {tol_rel:.1e}"
    if tol_abs is not None:
        assert mabs <= tol_abs, f"{line}\n{name}: max abs error {mabs:.3e} > {tol_abs:.1e}"
    return rel, mabs


def _log_row(row: dict) -> None:
    if LOG_PATH is None:
        return
    with open(LOG_PATH, "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")


class Inputs(dict):
    """Keyword arguments of a kernel (q, k, v, i, f and optionally c/n/m_initial), plus the seed
    they were drawn with (`.seed`) so a failure can be reproduced."""

    seed: int

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Inputs":
        """A copy with every tensor converted (states keep float32/float64 unless dtype is float64)."""
        out = Inputs()
        for key, x in self.items():
            if dtype is not None and key.endswith("_initial"):
                x_dtype = torch.float64 if dtype == torch.float64 else x.dtype
            else:
                x_dtype = dtype if dtype is not None else x.dtype
            out[key] = x.to(device=device if device is not None else x.device, dtype=x_dtype)
        out.seed = self.seed
        return out

    def detached(self, requires_grad: bool = False) -> "Inputs":
        """Fresh leaf copies of the tensors, optionally requiring grad."""
        out = Inputs({k: x.detach().clone().requires_grad_(requires_grad) for k, x in self.items()})
        out.seed = self.seed
        return out


def make_inputs(
    B: int,
    NH: int,
    S: int,
    DHQK: int,
    DHHV: int,
    dtype: torch.dtype,
    device: torch.device | str,
    *,
    f_bias: float = 0.0,
    i_scale: float = 1.0,
    with_initial: bool = False,
    seed: int | None = None,
) -> Inputs:
    """Fresh random inputs (standard normal; i scaled by `i_scale`, f shifted by `f_bias`).

    q, k, v, i, f have `dtype`; the initial states (c, n, m standard normal) are float32, or float64
    for float64 inputs. Drawn in float64 on the CPU, then rounded, so the same seed gives the same
    values on every device.
    """
    if seed is None:
        seed = secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    values = {
        "q": randn(B, NH, S, DHQK),
        "k": randn(B, NH, S, DHQK),
        "v": randn(B, NH, S, DHHV),
        "i": randn(B, NH, S) * i_scale,
        "f": randn(B, NH, S) + f_bias,
    }
    if with_initial:
        values["c_initial"] = randn(B, NH, DHQK, DHHV)
        values["n_initial"] = randn(B, NH, DHQK)
        values["m_initial"] = randn(B, NH, 1)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    out = Inputs()
    for key, x in values.items():
        out[key] = x.to(device=device, dtype=state_dtype if key.endswith("_initial") else dtype)
    out.seed = seed
    return out


def normaliser_margin(inputs: Mapping[str, torch.Tensor], *, parallel: bool = False) -> torch.Tensor:
    """(B, NH, S) float64: how far each step is from the kink of the normaliser max(|n_t·q̂_t|, exp(-m_t)),
    as | |n_t·q̂_t| - exp(-m_t) | / max(|n_t·q̂_t|, exp(-m_t)).

    At the kink the gradient jumps (σ_t switches on or off), so a low-precision kernel whose rounding
    lands on the other side of it has an O(1) error in that step's gradient. Tests of 16-bit gradients
    draw inputs whose margin exceeds a few units of roundoff. `parallel`: the stateless parallel form
    (m_0 = -inf); otherwise the recurrent form with the inputs' initial states (default zero, m_0 = 0).
    """
    q, k, i, f = (inputs[key].detach().to("cpu", torch.float64) for key in "qkif")
    B, NH, S, DHQK = q.shape
    if parallel or inputs.get("n_initial") is None:
        n = q.new_zeros(B, NH, DHQK)
        m = q.new_full((B, NH), -math.inf if parallel else 0.0)
    else:
        n = inputs["n_initial"].detach().to("cpu", torch.float64)
        m = inputs["m_initial"].detach().to("cpu", torch.float64).reshape(B, NH)
    f_log = torch.nn.functional.logsigmoid(f)  # (B, NH, S)
    margins = []
    for t in range(S):
        m_new = torch.maximum(f_log[..., t] + m, i[..., t])  # (B, NH)
        n = torch.exp(f_log[..., t] + m - m_new)[..., None] * n + torch.exp(i[..., t] - m_new)[..., None] * k[:, :, t]
        m = m_new
        den = (n * q[:, :, t]).sum(dim=-1).abs() / math.sqrt(DHQK)  # (B, NH)
        floor = torch.exp(-m)  # (B, NH)
        margins.append((den - floor).abs() / torch.maximum(den, floor))
    return torch.stack(margins, dim=-1)


def poison_(tensor: torch.Tensor) -> torch.Tensor:
    """Fill `tensor` with NaN in place (for outputs a kernel must overwrite) and return it."""
    if tensor.is_floating_point():
        tensor.fill_(math.nan)
    else:
        raise TypeError(f"poison_ needs a floating-point tensor, got {tensor.dtype}")
    return tensor
