"""Shared helpers of the JAX suites: error measures, one comparison routine that prints and logs every
check, random inputs, devices and tolerances derived from precision.

Tolerances (SPEC §6) follow the torch suites' rule. A kernel is compared with a float64 reference
computed from the same (rounded) inputs. Its relative error may be at most FACTOR times the error
of the plain jax.numpy implementation of the same computation in the same dtype, never below a
floor set by the rounding noise of the dtype, with the floor capped at the project targets
(float32 1e-4; bfloat16/float16 1e-2 on outputs and last states, 2e-2 on gradients). A float64
kernel has no float64 plain error to measure: the plain float32 error scaled by the ratio of unit
roundoffs (2^-29) estimates how ill-conditioned the quantity is.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Set by conftest.py at session start: test_outputs/<timestamp>/jax_errors.jsonl.
LOG_PATH: Path | None = None

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
# (outputs and last states, gradients). float64 has no SPEC target; 1e-10 is far below any modelling
# error (dropping the eps path of the stabiliser gradient alone changes gate gradients by ~1e-6)
# and far above float64 rounding.
TARGET_REL = {"float64": (1e-10, 1e-10), "float32": (1e-4, 1e-4), "float16": (1e-2, 2e-2), "bfloat16": (1e-2, 2e-2)}
# Rounding noise of the dtype on the test shapes: exp() turns absolute roundoff of logD into
# relative error amplified by |logD| (|i| up to ~30 in the large-|i| cases) and S-term sums add
# more, so float64 gets ~1e5 units of roundoff and float32 ~170; 16-bit types 4.
FLOOR_REL = {"float64": 1e-11, "float32": 1e-5, "float16": 4 * 2.0**-11, "bfloat16": 4 * 2.0**-8}
FACTOR = 4.0


def dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def derived_tolerance(plain_error: float, dtype, *, grad: bool = False, plain_dtype=None, conditioning: float = 1.0) -> float:
    """Relative tolerance of a kernel in `dtype` from the relative error of the plain implementation.

    `conditioning` (≥ 1) scales the rounding floor of quantities formed by sums that cancel (the
    gate gradients; see test_core_kernels._cancellation_conditioning).
    """
    name = dtype_name(dtype)
    if plain_dtype is not None and dtype_name(plain_dtype) != name:
        plain_error = plain_error * UNIT_ROUNDOFF[name] / UNIT_ROUNDOFF[dtype_name(plain_dtype)]
    target = TARGET_REL[name][1 if grad else 0]
    if not math.isfinite(plain_error):
        return target
    return max(FACTOR * plain_error, min(FLOOR_REL[name], target) * conditioning)


def rel_error(out, ref) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (‖out − ref‖ when ref is zero); NaN if out has a NaN."""
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    diff = float(np.linalg.norm((out64 - ref64).ravel()))
    ref_norm = float(np.linalg.norm(ref64.ravel()))
    return diff / ref_norm if ref_norm > 0 else diff


def max_abs_error(out, ref) -> float:
    diff = np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64))
    if diff.size == 0:
        return 0.0
    return math.nan if np.isnan(diff).any() else float(diff.max())


def _format_shape(shape_info: Mapping[str, Any] | str) -> str:
    if isinstance(shape_info, str):
        return shape_info
    order = ["S", "B", "NH", "DHQK", "DHHV"]
    keys = [k for k in order if k in shape_info] + [k for k in shape_info if k not in order]
    return ", ".join(f"{k}={shape_info[k]}" for k in keys)


def compare(name, out, ref, *, target, baseline, shape_info, dtype, tol_rel, tol_abs=None):
    """Compare `out` with `ref`: print one line, log one JSON row, then assert.

    Fails on a shape mismatch, any NaN or Inf in `out`, rel_error > tol_rel, or max_abs > tol_abs.
    """
    assert tuple(out.shape) == tuple(ref.shape), f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    rel = rel_error(out, ref)
    mabs = max_abs_error(out, ref)
    finite = bool(np.isfinite(np.asarray(out, np.float64)).all())
    passed = finite and rel <= tol_rel and (tol_abs is None or mabs <= tol_abs)
    line = (
        f"Test {name} target={target} vs. baseline={baseline} with {_format_shape(shape_info)}, "
        f"DTYPE={dtype_name(dtype) if not isinstance(dtype, str) else dtype} : "
        f"rel_err={rel:.3e} (tol {tol_rel:.1e}), max_abs={mabs:.3e}"
        + (f" (tol {tol_abs:.1e})" if tol_abs is not None else "")
        + ("" if passed else "  FAILED")
    )
    print(line)
    if LOG_PATH is not None:
        row = {
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
            "name": name, "target": target, "baseline": baseline,
            "shape": shape_info if not isinstance(shape_info, str) else shape_info,
            "dtype": str(dtype), "rel_err": rel, "max_abs": mabs, "tol_rel": tol_rel, "tol_abs": tol_abs,
            "finite": finite, "passed": passed,
        }
        with open(LOG_PATH, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
    assert finite, f"{line}\n{name}: output contains NaN or Inf"
    assert rel <= tol_rel, f"{line}\n{name}: relative error {rel:.3e} > {tol_rel:.1e}"
    if tol_abs is not None:
        assert mabs <= tol_abs, f"{line}\n{name}: max abs error {mabs:.3e} > {tol_abs:.1e}"
    return rel, mabs


# ---- cases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One problem: shape, gate distribution and whether initial states are given."""

    id: str
    B: int
    NH: int
    S: int
    DHQK: int
    DHHV: int
    with_initial: bool = False
    f_bias: float = 0.0
    i_scale: float = 1.0

    def dims(self, device: str = "cpu"):
        # CUDA head dims must be multiples of 16; the CPU takes any size.
        if device == "cpu":
            return self.B, self.NH, self.S, self.DHQK, self.DHHV
        up = lambda d: 16 * -(-d // 16)  # noqa: E731
        return self.B, self.NH, self.S, up(self.DHQK), up(self.DHHV)


# Shared by the suites so that the compiled references are shared too.
CASES = [
    Case("S1", 1, 1, 1, 4, 4, with_initial=True),
    Case("odd", 2, 3, 7, 5, 9),
    Case("fbias", 1, 2, 63, 16, 8, with_initial=True, f_bias=3.0),
    Case("large_i", 3, 1, 100, 8, 12, with_initial=True, i_scale=10.0),
    Case("long", 1, 1, 989, 4, 6, with_initial=True, f_bias=2.0),
]


# ---- devices -----------------------------------------------------------------------------------


def gpu_device():
    """The first GPU JAX sees when the core was built with CUDA and sees a GPU too, else None."""
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        return None
    from mlstm_kernels import _jax_ffi

    return gpus[0] if gpus and _jax_ffi.cuda_device_count() > 0 and "CUDA" in _jax_ffi.registrations() else None


def device_for(name: str):
    return jax.devices("cpu")[0] if name == "cpu" else gpu_device()


# ---- inputs ------------------------------------------------------------------------------------

STATE_KEYS = ("c_initial", "n_initial", "m_initial")


def make_inputs(B, NH, S, DHQK, DHHV, *, seed, f_bias=0.0, i_scale=1.0, with_initial=False) -> dict:
    """Random float64 numpy inputs (standard normal; i scaled by `i_scale`, f shifted by `f_bias`)."""
    rng = np.random.default_rng(seed)
    x = {
        "q": rng.standard_normal((B, NH, S, DHQK)),
        "k": rng.standard_normal((B, NH, S, DHQK)),
        "v": rng.standard_normal((B, NH, S, DHHV)),
        "i": rng.standard_normal((B, NH, S)) * i_scale,
        "f": rng.standard_normal((B, NH, S)) + f_bias,
    }
    if with_initial:
        x["c_initial"] = rng.standard_normal((B, NH, DHQK, DHHV))
        x["n_initial"] = rng.standard_normal((B, NH, DHQK))
        x["m_initial"] = rng.standard_normal((B, NH, 1))
    return x


def cast_inputs(x: dict, dtype, device=None) -> dict:
    """q, k, v, i, f in `dtype`; states in float32 (float64 for float64 inputs); on `device`."""
    state_dtype = jnp.float64 if dtype_name(dtype) == "float64" else jnp.float32
    out = {}
    for key, value in x.items():
        arr = jnp.asarray(value, state_dtype if key in STATE_KEYS else dtype)
        out[key] = jax.device_put(arr, device) if device is not None else arr
    return out


def as_float64(x: dict) -> dict:
    """The (possibly rounded) inputs as float64 CPU arrays: the reference sees exactly what the kernel saw."""
    cpu = jax.devices("cpu")[0]
    return {key: jax.device_put(jnp.asarray(np.asarray(value, np.float64)), cpu) for key, value in x.items()}


def cotangents(B, NH, S, DHQK, DHHV, *, seed) -> dict:
    """Random weights of the loss Σ h∘w_h + Σ c∘w_c + Σ n∘w_n + Σ m∘w_m (float64 numpy)."""
    rng = np.random.default_rng(seed + 7919)
    return {
        "h": rng.standard_normal((B, NH, S, DHHV)),
        "c": rng.standard_normal((B, NH, DHQK, DHHV)),
        "n": rng.standard_normal((B, NH, DHQK)),
        "m": rng.standard_normal((B, NH, 1)),
    }


def shape_info(B, NH, S, DHQK, DHHV, **extra) -> dict:
    return dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, **extra)


def f32(x: float) -> float:
    """`x` rounded to float32: the core receives eps as a float, so the reference must use the same value."""
    return float(np.float32(x))


# ---- running a kernel with its gradients ---------------------------------------------------------

GRAD_NAMES = ("q", "k", "v", "i", "f", "c_initial", "n_initial", "m_initial")


@dataclass(frozen=True)
class KernelCall:
    """A kernel with fixed keyword arguments, called as (q, k, v, i, f, c, n, m) (states may be None).

    Hashable by value, so the compiled program of a call and shapes is reused across tests (XLA
    compilation, not execution, dominates the run time of these small problems).
    registry: "training", "sequence", "step" or "reference" (name "recurrent" or "parallel").
    """

    registry: str
    name: str
    kwargs: tuple = ()

    @staticmethod
    def of(registry: str, name: str, **kwargs) -> "KernelCall":
        return KernelCall(registry, name, tuple(sorted(kwargs.items())))

    def __call__(self, q, k, v, i, f, c, n, m):
        import mlstm_kernels.jax as mj
        from mlstm_kernels.jax.reference import mlstm_parallel_reference, mlstm_recurrent_reference

        kw = dict(self.kwargs)
        if self.registry == "reference":
            with_last = kw.pop("return_last_states", False)
            if self.name == "parallel":
                return mlstm_parallel_reference(q, k, v, i, f, **kw)
            h, last = mlstm_recurrent_reference(q, k, v, i, f, c, n, m, **kw)
            return (h, last) if with_last else h
        fn = {"training": mj.get_mlstm_kernel, "sequence": mj.get_mlstm_sequence_kernel}[self.registry](self.name)
        return fn(q, k, v, i, f, c, n, m, **kw)


@functools.partial(jax.jit, static_argnames=("call", "names", "with_last", "grad"))
def _outputs_and_grads(arrays, cts, *, call, names, with_last, grad):
    def fn(*arrays):
        kw = dict(zip(names, arrays))
        return call(*(kw.get(n) for n in GRAD_NAMES))

    if not grad:
        return fn(*arrays), ()
    out, vjp = jax.vjp(fn, *arrays)
    return out, vjp(jax.tree.map(lambda c, o: c.astype(o.dtype), cts, out))


def run_with_grads(call: KernelCall, x: dict, ct: dict, *, with_last: bool, grad: bool = True):
    """Outputs and gradients of the loss Σ h∘w_h (+ Σ c∘w_c + Σ n∘w_n + Σ m∘w_m with last states).

    The states of `x` that are absent are passed as None. Returns ({"h"[, "c", "n", "m"]},
    {input name: gradient}).
    """
    names = tuple(n for n in GRAD_NAMES if n in x)
    if with_last:
        cts = (jnp.asarray(ct["h"]), (jnp.asarray(ct["c"]), jnp.asarray(ct["n"]), jnp.asarray(ct["m"]))) if grad else ()
    else:
        cts = jnp.asarray(ct["h"]) if grad else ()
    out, grads = _outputs_and_grads([x[n] for n in names], cts, call=call, names=names, with_last=with_last, grad=grad)
    outs = {"h": out[0], "c": out[1][0], "n": out[1][1], "m": out[1][2]} if with_last else {"h": out}
    return outs, dict(zip(names, grads))


def reference_call(form: str, eps: float, with_last: bool) -> KernelCall:
    """The float64 reference of a form ("parallel" or "recurrent")."""
    if form == "parallel":
        return KernelCall.of("reference", "parallel", eps=eps)
    return KernelCall.of("reference", "recurrent", eps=eps, return_last_states=with_last)
