"""Core kernels through XLA FFI against the float64 recurrent (or parallel) reference.

Every output, every last state and every gradient (q, k, v, i, f, the initial states) of the loss
Σ h∘w_h + Σ c∘w_c + Σ n∘w_n + Σ m∘w_m with random weights, on small odd shapes, in float64 (CPU),
float32 and bfloat16, with and without a forget-gate bias, with large |i| and initial states.
Tolerances: see utils.py (derived from the plain jax.numpy implementation's error in the same dtype).
"""

from __future__ import annotations

import os
import secrets

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import mlstm_kernels.jax as mj

from . import utils
from .conftest import device_params
from .utils import CASES, Case, KernelCall

EPS = utils.f32(1e-6)


TRAINING = [("chunkwise--limit_chunk", 16), ("chunkwise--xl_chunk", 32), ("parallel--tiled", 64)]
PLAIN = {"chunkwise": "chunkwise--native_autograd", "parallel": "parallel--native_stablef_autograd"}


def _seed() -> int:
    return int(os.environ.get("MLSTM_TEST_SEED", secrets.randbits(31)))


def _skip_unsupported(device: str, dtype: str):
    if device == "cuda" and dtype == "float64":
        pytest.skip("float64 is CPU only")


def _cancellation_conditioning(x64, ref_out, ref_grads, ct) -> dict[str, float]:
    """How much the exact-gradient identities can amplify rounding in the gate gradients.

    The core forms di, df and dm_initial as sums of terms of both signs (docs/dev-notes.md, "Exact
    gradients"): di_s = k_s·dk_s, df̃_r = Σ_{t≥r}(q_t·dq_t − k_t·dk_t) + ⟨dC_last, C_last⟩ + ⟨dn_last,
    n_last⟩, dm_initial = ⟨dC_0, C_0⟩ + ⟨dn_0, n_0⟩, plus last-state stabiliser terms. Where the terms
    cancel to a small gradient (e.g. S = 1 with a dominant input gate) the relative error grows by
    ‖Σ|terms|‖ / ‖gradient‖ (at least 1), computed here from the float64 reference.
    """
    g = {k_: np.asarray(v_, np.float64) for k_, v_ in ref_grads.items()}
    x = {k_: np.asarray(v_, np.float64) for k_, v_ in x64.items()}
    qdq = np.abs(x["q"] * g["q"]).sum(-1)  # (B, NH, S)
    kdk = np.abs(x["k"] * g["k"]).sum(-1)  # (B, NH, S)
    last = np.zeros(qdq.shape[:-1])  # (B, NH)
    if "c" in ref_out:
        c_last, n_last = (np.asarray(ref_out[k_], np.float64) for k_ in ("c", "n"))
        last = np.abs(ct["c"] * c_last).sum((-2, -1)) + np.abs(ct["n"] * n_last).sum(-1) + np.abs(ct["m"])[..., 0]
    suffix = np.flip(np.cumsum(np.flip(qdq + kdk, -1), -1), -1)
    terms = {"df": (suffix + last[..., None]) / (1.0 + np.exp(x["f"])), "di": kdk + last[..., None]}
    if "c_initial" in g:
        terms["dm"] = np.abs(g["c_initial"] * x["c_initial"]).sum((-2, -1)) + np.abs(g["n_initial"] * x["n_initial"]).sum(-1) + last
    grad_of = {"df": "f", "di": "i", "dm": "m_initial"}
    return {
        key: max(1.0, float(np.linalg.norm(t)) / max(float(np.linalg.norm(g[grad_of[key]])), 1e-300))
        for key, t in terms.items()
    }


def _saturation_floor(x64, ref_out, ct, dtype, parallel: bool) -> dict[str, float]:
    """Relative error of dq and dk that rounding of the saturated normaliser path implies.

    The score gradient is dS_{t,s} = dh'_t·v_s + σ_t with |σ_t| ≤ Σ_j|dh_tj h_tj|/d_t where the
    normaliser |den_t| wins. When h saturates (|den_t| ≫ eps, always at S = 1 in the parallel form)
    the two terms cancel to a gradient of order eps, and a unit roundoff u on them enters
    dq_t = (C_t dh'_t + σ_t n_t)/√DHQK and dk_s = Σ_t D'_{t,s}(dh'_t·v_s + σ_t) q̂_t as
    u·|σ_t|·|n_t| and u·Σ_t D'_{t,s}|σ_t||q̂_t|. Computed in float64 from the reference's inputs.
    """
    x = {k_: np.asarray(v_, np.float64) for k_, v_ in x64.items()}
    q, k, i, f = x["q"], x["k"], x["i"], x["f"]
    B, NH, S, DHQK = q.shape
    q_scaled = q / np.sqrt(DHQK)
    f_log = -np.logaddexp(0.0, -f)  # (B, NH, S)
    lower = np.tril(np.ones((S, S), bool), -1)
    causal = np.tril(np.ones((S, S), bool))
    log_d = np.cumsum(np.where(lower, f_log[..., :, None], 0.0), axis=-2) + i[..., None, :]
    log_d = np.where(causal, log_d, -np.inf)  # (B, NH, S, S)
    m = log_d.max(-1)  # (B, NH, S)
    n_state = 0.0
    if not parallel:
        m_0 = x["m_initial"][..., 0] if "m_initial" in x else np.zeros((B, NH))
        log_state = np.cumsum(f_log, -1) + m_0[..., None]
        m = np.maximum(m, log_state)
        if "n_initial" in x:
            n_state = np.exp(log_state - m)[..., None] * x["n_initial"][:, :, None, :]
    d_stable = np.exp(log_d - m[..., None])  # (B, NH, S, S)
    n = d_stable @ k + n_state  # (B, NH, S, DHQK)
    den = (n * q_scaled).sum(-1)  # (B, NH, S)
    d = np.maximum(np.abs(den), np.exp(-m)) + EPS
    h = np.asarray(ref_out["h"], np.float64)
    sigma = (np.abs(den) >= np.exp(-m)) * np.abs(ct["h"] * h).sum(-1) / d  # (B, NH, S)
    u = utils.UNIT_ROUNDOFF[utils.dtype_name(dtype)]
    err_dq = u * sigma[..., None] * np.abs(n) / np.sqrt(DHQK)
    err_dk = u * np.swapaxes(d_stable * sigma[..., None], -1, -2) @ np.abs(q_scaled)
    # The products dh'_t·v_s themselves: a dot product of DHHV terms carries at most γ = DHHV·u times
    # Σ_j |dh_tj v_sj| (the standard forward-error bound); operands are exact in the input dtype and
    # accumulate in float32 (float64 for float64).
    v = x["v"]
    gamma = v.shape[-1] * utils.UNIT_ROUNDOFF["float64" if utils.dtype_name(dtype) == "float64" else "float32"]
    dsv = d_stable * ((np.abs(ct["h"]) @ np.swapaxes(np.abs(v), -1, -2)) / d[..., None])  # (B, NH, S, S)
    err_dq = err_dq + gamma * (dsv @ np.abs(k)) / np.sqrt(DHQK)
    err_dk = err_dk + gamma * np.swapaxes(dsv, -1, -2) @ np.abs(q_scaled)
    return {"dq": float(np.linalg.norm(err_dq)), "dk": float(np.linalg.norm(err_dk))}


def _training_errors(kernel_name, L, case, dtype, device, with_last):
    """Run kernel, plain implementation and references; compare everything."""
    form = kernel_name.split("--")[0]
    with_initial = case.with_initial and form == "chunkwise"
    with_last = with_last and form == "chunkwise"
    B, NH, S, DHQK, DHHV = case.dims(device)
    seed = _seed()
    x64 = utils.make_inputs(B, NH, S, DHQK, DHHV, seed=seed, f_bias=case.f_bias, i_scale=case.i_scale, with_initial=with_initial)
    ct = utils.cotangents(B, NH, S, DHQK, DHHV, seed=seed)
    info = utils.shape_info(B, NH, S, DHQK, DHHV, L=L, case=case.id, seed=seed, device=device)
    ref_call = utils.reference_call("parallel" if form == "parallel" else "recurrent", EPS, with_last)

    # The plain jax.numpy implementation in the same dtype (float32 for float64) sets the tolerance;
    # its chunk size does not matter for its accuracy, one value keeps its compiled programs shared.
    plain_dtype = "float32" if dtype == "float64" else dtype
    x_plain = utils.cast_inputs(x64, plain_dtype)
    plain_call = KernelCall.of("training", PLAIN[form], return_last_states=with_last, chunk_size=16, eps=EPS)
    plain_out, plain_grads = utils.run_with_grads(plain_call, x_plain, ct, with_last=with_last)
    pref_out, pref_grads = utils.run_with_grads(ref_call, utils.as_float64(x_plain), ct, with_last=with_last)

    x = utils.cast_inputs(x64, dtype, utils.device_for(device))
    call = KernelCall.of("training", kernel_name, return_last_states=with_last, chunk_size=L, eps=EPS)
    out, grads = utils.run_with_grads(call, x, ct, with_last=with_last)
    ref_out, ref_grads = utils.run_with_grads(ref_call, utils.as_float64(x), ct, with_last=with_last)

    conditioning = _cancellation_conditioning(x64, ref_out, ref_grads, ct)
    saturation = _saturation_floor(x64, ref_out, ct, dtype, parallel=form == "parallel")
    for what, got, ref, plain, plain_ref, is_grad in (
        [(k_, out[k_], ref_out[k_], plain_out[k_], pref_out[k_], False) for k_ in out]
        + [("d" + k_.split("_")[0], grads[k_], ref_grads[k_], plain_grads[k_], pref_grads[k_], True) for k_ in grads]
    ):
        tol = utils.derived_tolerance(
            utils.rel_error(plain, plain_ref), dtype, grad=is_grad, plain_dtype=plain_dtype,
            conditioning=conditioning.get(what, 1.0),
        )
        if what in saturation:
            norm_ref = max(float(np.linalg.norm(np.asarray(ref, np.float64))), 1e-300)
            tol = max(tol, utils.FACTOR * saturation[what] / norm_ref)
        utils.compare(f"{kernel_name} {what}", got, ref, target=kernel_name, baseline="reference_fp64",
                      shape_info=info, dtype=dtype, tol_rel=tol)


# Every case in float64 and float32; bfloat16 on the three middle cases (its tolerance is set by
# output rounding, which the shortest and the longest sequence do not change).
GRID = [(c, d) for c in CASES for d in ("float64", "float32")] + [(c, "bfloat16") for c in CASES[1:4]]


def _grid_id(p):
    return p.id if isinstance(p, Case) else p


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case,dtype", GRID, ids=_grid_id)
@pytest.mark.parametrize("kernel_name,L", TRAINING, ids=[k for k, _ in TRAINING])
def test_training_kernel(kernel_name, L, case, dtype, device):
    """Forward, last states and all gradients (losses on h and on the last states)."""
    _skip_unsupported(device, dtype)
    _training_errors(kernel_name, L, case, dtype, device, with_last=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("kernel_name,L", TRAINING[:2], ids=[k for k, _ in TRAINING[:2]])
def test_training_kernel_without_last_states(kernel_name, L, device):
    """Gradients reach the initial states when only h is returned."""
    _training_errors(kernel_name, L, Case("nolast", 2, 1, 45, 6, 10, with_initial=True, f_bias=1.0), "float32", device, with_last=False)


@pytest.mark.parametrize("kernel_name,L", TRAINING, ids=[k for k, _ in TRAINING])
@pytest.mark.parametrize("with_initial", [False, True], ids=["no_states", "states"])
def test_check_grads(kernel_name, L, with_initial):
    """jax.test_util.check_grads (reverse mode against finite differences) in float64 on the CPU."""
    form = kernel_name.split("--")[0]
    if form == "parallel" and with_initial:
        pytest.skip("the parallel form has no state")
    fn = mj.get_mlstm_kernel(kernel_name)
    x = utils.cast_inputs(utils.make_inputs(1, 2, 19, 3, 4, seed=_seed(), f_bias=1.0, with_initial=with_initial), "float64")
    names = [n for n in utils.GRAD_NAMES if n in x]
    with_last = form == "chunkwise"

    def f(*arrays):
        kw = dict(zip(names, arrays))
        return fn(**kw, return_last_states=with_last, chunk_size=L, eps=EPS)

    # The exponential gates give large third derivatives: the central difference's O(step^2) error
    # is ~4e-6 relative at check_grads' default step 1e-4 and ~4e-10 at 1e-6 (float64 rounding
    # of the difference quotient stays below 1e-9 there).
    check_grads(f, [x[n] for n in names], order=1, modes=("rev",), atol=1e-6, rtol=1e-6, eps=1e-6)
    print(f"Test {kernel_name} check_grads (rev, float64, finite differences) with states={with_initial}: passed")


# ---- sequence and step (forward only) ---------------------------------------------------------


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case,dtype", [(c, d) for c in CASES[:4] for d in ("float64", "float32")] + [(CASES[3], "bfloat16")], ids=_grid_id)
@pytest.mark.parametrize("kernel_name", ["native_sequence__fused", "fused_sequence"])
def test_sequence_kernel(kernel_name, case, dtype, device):
    """h and the last states of the sequence kernels, from given or zero initial states."""
    _skip_unsupported(device, dtype)
    B, NH, S, DHQK, DHHV = case.dims(device)
    seed = _seed()
    x64 = utils.make_inputs(B, NH, S, DHQK, DHHV, seed=seed, f_bias=case.f_bias, i_scale=case.i_scale, with_initial=case.with_initial)
    info = utils.shape_info(B, NH, S, DHQK, DHHV, case=case.id, seed=seed, device=device)
    state_dtype = jnp.float64 if dtype == "float64" else jnp.float32
    ref_call = utils.reference_call("recurrent", EPS, True)

    def run(name, x, sd):
        fn = mj.get_mlstm_sequence_kernel(name)
        h, (c, n, m) = fn(**x, return_last_states=True, eps=EPS, dtype_state=sd)
        return {"h": h, "c": c, "n": n, "m": m}

    plain_dtype = "float32" if dtype == "float64" else dtype
    x_plain = utils.cast_inputs(x64, plain_dtype)
    plain = run("native_sequence__native", x_plain, jnp.float32)
    pref, _ = utils.run_with_grads(ref_call, utils.as_float64(x_plain), {}, with_last=True, grad=False)
    x = utils.cast_inputs(x64, dtype, utils.device_for(device))
    out = run(kernel_name, x, state_dtype)
    ref, _ = utils.run_with_grads(ref_call, utils.as_float64(x), {}, with_last=True, grad=False)
    for what in out:
        tol = utils.derived_tolerance(utils.rel_error(plain[what], pref[what]), dtype, plain_dtype=plain_dtype)
        utils.compare(f"{kernel_name} {what}", out[what], ref[what], target=kernel_name, baseline="reference_fp64",
                      shape_info=info, dtype=dtype, tol_rel=tol)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype,state_dtype", [("float64", "float64"), ("float32", "float32"), ("bfloat16", "float32"), ("float32", "bfloat16")])
@pytest.mark.parametrize("B,NH,DHQK,DHHV", [(1, 1, 4, 4), (3, 5, 7, 9), (2, 2, 48, 16)])
def test_step_kernel(B, NH, DHQK, DHHV, dtype, state_dtype, device):
    """One fused step from random states, including bfloat16 states (decoding with low-precision state)."""
    _skip_unsupported(device, dtype)
    _skip_unsupported(device, state_dtype)
    case = Case("step", B, NH, 1, DHQK, DHHV)
    B, NH, _, DHQK, DHHV = case.dims(device)
    seed = _seed()
    x64 = utils.make_inputs(B, NH, 1, DHQK, DHHV, seed=seed, i_scale=3.0, with_initial=True)
    info = utils.shape_info(B, NH, 1, DHQK, DHHV, state_dtype=state_dtype, seed=seed, device=device)

    def step_args(x, sd):
        return (x["q"][:, :, 0], x["k"][:, :, 0], x["v"][:, :, 0], x["i"][:, :, :1], x["f"][:, :, :1],
                x["c_initial"].astype(sd), x["n_initial"].astype(sd), x["m_initial"].astype(sd))

    def run(name, x, sd):
        h, (c, n, m) = mj.get_mlstm_step_kernel(name)(*step_args(x, sd), eps=EPS, dtype_state=sd)
        return {"h": h, "c": c, "n": n, "m": m}

    def reference(x, sd):
        # The reference starts from the states the kernel actually received (rounded to sd).
        r = utils.as_float64({k: (v.astype(sd) if k in utils.STATE_KEYS else v) for k, v in x.items()})
        out, _ = utils.run_with_grads(utils.reference_call("recurrent", EPS, True), r, {}, with_last=True, grad=False)
        out["h"] = out["h"][:, :, 0]
        return out

    plain_dtype = "float32" if dtype == "float64" else dtype
    plain_sd = "float32" if state_dtype == "float64" else state_dtype
    x_plain = utils.cast_inputs(x64, plain_dtype)
    plain, pref = run("native", x_plain, plain_sd), reference(x_plain, plain_sd)
    x = utils.cast_inputs(x64, dtype, utils.device_for(device))
    out, ref = run("fused", x, state_dtype), reference(x, state_dtype)
    for what in out:
        assert out[what].dtype == (x["q"].dtype if what == "h" else jnp.dtype(state_dtype))
        tol = utils.derived_tolerance(utils.rel_error(plain[what], pref[what]), state_dtype if what != "h" else dtype,
                                      plain_dtype=plain_sd if what != "h" else plain_dtype)
        utils.compare(f"fused step {what}", out[what], ref[what], target="fused", baseline="reference_fp64",
                      shape_info=info, dtype=dtype, tol_rel=tol)


def test_sequence_and_step_kernels_refuse_gradients():
    """The core has no backward for them: differentiating raises a ValueError naming an alternative."""
    x = utils.cast_inputs(utils.make_inputs(1, 1, 5, 4, 4, seed=0, with_initial=True), "float32")
    for name in ("fused_sequence", "native_sequence__fused"):
        fn = mj.get_mlstm_sequence_kernel(name)
        with pytest.raises(ValueError, match="forward only"):
            jax.grad(lambda q: jnp.sum(fn(q, x["k"], x["v"], x["i"], x["f"])))(x["q"])
    step = mj.get_mlstm_step_kernel("fused")
    args = (x["q"][:, :, 0], x["k"][:, :, 0], x["v"][:, :, 0], x["i"][:, :, :1], x["f"][:, :, :1],
            x["c_initial"], x["n_initial"], x["m_initial"])
    with pytest.raises(ValueError, match="forward only"):
        jax.grad(lambda q: jnp.sum(step(q, *args[1:])[0]))(args[0])
    # The native kernels of the same registries are differentiable.
    g = jax.grad(lambda q: jnp.sum(mj.get_mlstm_step_kernel("native")(q, *args[1:])[0]))(args[0])
    assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("name", ["fused", "native"])
@pytest.mark.parametrize("gate_dtype", [jnp.bfloat16, jnp.float16])
def test_step_takes_16bit_gates_as_their_float32_values(name, gate_dtype):
    """The step keeps 16-bit gates (no casts per token): the result is bit-identical to the same gates
    widened to float32 first."""
    x = utils.make_inputs(2, 3, 1, 16, 32, seed=_seed(), with_initial=True)
    q, k, v = (x[n][:, :, 0].astype(jnp.bfloat16) for n in "qkv")
    states = [x[n].astype(jnp.float32) for n in ("c_initial", "n_initial", "m_initial")]
    i16, f16 = x["i"][:, :, :1].astype(gate_dtype), x["f"][:, :, :1].astype(gate_dtype)
    fn = mj.get_mlstm_step_kernel(name)
    h16, s16 = fn(q, k, v, i16, f16, *states)
    h32, s32 = fn(q, k, v, i16.astype(jnp.float32), f16.astype(jnp.float32), *states)
    for a, b in zip((h16, *s16), (h32, *s32)):
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))
