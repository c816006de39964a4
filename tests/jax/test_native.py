"""The jax.numpy kernels (native references) against the float64 references.

In float64 these are exact up to rounding, so the tolerance is 1e-10 (any algebra mistake, e.g. a
wrong gate-gradient path, shows up at 1e-6 or more); in float32 the SPEC target 1e-4 applies, on
inputs without huge |i| (ill-conditioned in float32; the subtractive parallel form is not meant
for those). The hand-written
backwards (custbw) are checked the same way as the autodiff ones.
"""

from __future__ import annotations

import secrets

import jax
import jax.numpy as jnp
import pytest

import mlstm_kernels.jax as mj
from mlstm_kernels.jax.reference import mlstm_parallel_reference, mlstm_recurrent_reference

from . import utils
from .utils import CASES, KernelCall

EPS = utils.f32(1e-6)  # the value the core kernel tests use, so compiled references are shared
L = 16
CHUNKWISE = ["chunkwise--native_autograd", "chunkwise--native_custbw"]
PARALLEL = [
    "parallel--native_autograd",
    "parallel--native_custbw",
    "parallel--native_stablef_autograd",
    "parallel--native_stablef_custbw",
]
TOL = {"float64": 1e-10, "float32": 1e-4}


def _inputs(case: utils.Case, dtype, with_initial=None):
    seed = secrets.randbits(31)
    with_initial = case.with_initial if with_initial is None else with_initial
    x64 = utils.make_inputs(*case.dims(), seed=seed, f_bias=case.f_bias, i_scale=case.i_scale, with_initial=with_initial)
    return seed, utils.cast_inputs(x64, dtype), utils.cotangents(*case.dims(), seed=seed)


def _compare_all(name, out, grads, ref_out, ref_grads, info, dtype):
    for key in out:
        utils.compare(f"{name} {key}", out[key], ref_out[key], target=name, baseline="reference_fp64",
                      shape_info=info, dtype=dtype, tol_rel=TOL[dtype])
    for key in grads:
        utils.compare(f"{name} d{key.split('_')[0]}", grads[key], ref_grads[key], target=name,
                      baseline="reference_fp64", shape_info=info, dtype=dtype, tol_rel=TOL[dtype])


# float64 on every case; float32 (where rounding, not algebra, is tested) on one.
CHUNKWISE_GRID = [(c, "float64") for c in CASES[:4]] + [(CASES[2], "float32")]
PARALLEL_GRID = [(c, "float64") for c in CASES[1:4]] + [(CASES[1], "float32")]


@pytest.mark.parametrize("case,dtype", CHUNKWISE_GRID, ids=lambda p: p.id if isinstance(p, utils.Case) else p)
@pytest.mark.parametrize("name", CHUNKWISE)
def test_chunkwise_native(name, case, dtype):
    """Outputs, last states and every gradient, with a loss on the last states (L does not divide S)."""
    seed, x, ct = _inputs(case, dtype)
    call = KernelCall.of("training", name, return_last_states=True, chunk_size=L, eps=EPS)
    out, grads = utils.run_with_grads(call, x, ct, with_last=True)
    ref_out, ref_grads = utils.run_with_grads(utils.reference_call("recurrent", EPS, True), utils.as_float64(x), ct, with_last=True)
    _compare_all(name, out, grads, ref_out, ref_grads, utils.shape_info(*case.dims(), L=L, case=case.id, seed=seed), dtype)


@pytest.mark.parametrize("case,dtype", PARALLEL_GRID, ids=lambda p: p.id if isinstance(p, utils.Case) else p)
@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_native(name, case, dtype):
    """Outputs and every gradient of the parallel kernels against the float64 parallel reference.

    (At S = 1 dq and dk come from the eps path alone, a cancellation that the float64 reference
    resolves only to ~1e-10; the core kernel tests cover S = 1 with derived tolerances.)
    """
    seed, x, ct = _inputs(case, dtype, with_initial=False)
    out, grads = utils.run_with_grads(KernelCall.of("training", name, eps=EPS), x, ct, with_last=False)
    ref_out, ref_grads = utils.run_with_grads(utils.reference_call("parallel", EPS, False), utils.as_float64(x), ct, with_last=False)
    _compare_all(name, out, grads, ref_out, ref_grads, utils.shape_info(*case.dims(), case=case.id, seed=seed), dtype)


def test_parallel_reference_is_the_recurrence_from_minus_infinity():
    """The two references agree: the parallel form is the recurrence started from m_0 = -inf."""
    B, NH, S, DHQK, DHHV = 2, 2, 33, 5, 6
    seed, x, ct = _inputs(utils.Case("x", B, NH, S, DHQK, DHHV, i_scale=4.0), "float64")
    zeros = (jnp.zeros((B, NH, DHQK, DHHV)), jnp.zeros((B, NH, DHQK)), jnp.full((B, NH, 1), -jnp.inf))
    args = [x[n] for n in ("q", "k", "v", "i", "f")]
    w = jnp.asarray(ct["h"])

    @jax.jit
    def both(args, w):
        h_par, vjp_par = jax.vjp(lambda *a: mlstm_parallel_reference(*a, eps=EPS), *args)
        h_rec, vjp_rec = jax.vjp(lambda *a: mlstm_recurrent_reference(*a, *zeros, eps=EPS)[0], *args)
        return h_par, h_rec, vjp_par(w), vjp_rec(w)

    h_par, h_rec, g_pars, g_recs = both(args, w)
    info = utils.shape_info(B, NH, S, DHQK, DHHV, seed=seed)
    utils.compare("parallel reference h", h_par, h_rec, target="parallel_reference", baseline="recurrent_reference(m0=-inf)",
                  shape_info=info, dtype="float64", tol_rel=1e-12)
    for name, g_par, g_rec in zip("qkvif", g_pars, g_recs):
        utils.compare(f"parallel reference d{name}", g_par, g_rec, target="parallel_reference",
                      baseline="recurrent_reference(m0=-inf)", shape_info=info, dtype="float64", tol_rel=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sequence_and_step_native(dtype):
    """The lax.scan sequence (with its gradients) and the single step, with and without initial states."""
    case = CASES[2]
    seed, x, ct = _inputs(case, dtype)
    B, NH, S, DHQK, DHHV = case.dims()
    info = utils.shape_info(B, NH, S, DHQK, DHHV, case=case.id, seed=seed)
    sd = jnp.float64 if dtype == "float64" else jnp.float32
    call = KernelCall.of("sequence", "native_sequence__native", return_last_states=True, eps=EPS, dtype_state=sd)
    out, grads = utils.run_with_grads(call, x, ct, with_last=True)
    ref_out, ref_grads = utils.run_with_grads(utils.reference_call("recurrent", EPS, True), utils.as_float64(x), ct, with_last=True)
    _compare_all("native_sequence__native", out, grads, ref_out, ref_grads, info, dtype)

    no_states = {k: v for k, v in x.items() if k not in utils.STATE_KEYS}
    h = mj.get_mlstm_sequence_kernel("native_sequence__native")(**no_states, eps=EPS, dtype_state=sd)
    h_ref, _ = mlstm_recurrent_reference(**utils.as_float64(no_states), eps=EPS)
    utils.compare("native_sequence__native h (zero states)", h, h_ref, target="native_sequence__native",
                  baseline="reference_fp64", shape_info=info, dtype=dtype, tol_rel=TOL[dtype])

    step = mj.get_mlstm_step_kernel("native")
    h1, (c1, n1, m1) = step(x["q"][:, :, 0], x["k"][:, :, 0], x["v"][:, :, 0], x["i"][:, :, 0], x["f"][:, :, 0],
                            x["c_initial"], x["n_initial"], x["m_initial"][..., 0], eps=EPS, dtype_state=sd)
    r = utils.as_float64({k: v[:, :, :1] if k not in utils.STATE_KEYS else v for k, v in x.items()})
    h_r, (c_r, n_r, m_r) = mlstm_recurrent_reference(**r, eps=EPS)
    info = utils.shape_info(B, NH, 1, DHQK, DHHV, seed=seed)
    for what, got, ref in (("h", h1, h_r[:, :, 0]), ("c", c1, c_r), ("n", n1, n_r), ("m", m1, m_r)):
        utils.compare(f"native step {what}", got, ref, target="native", baseline="reference_fp64", shape_info=info,
                      dtype=dtype, tol_rel=TOL[dtype])
