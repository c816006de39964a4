"""The JAX backend module: config validation, the three modes, state passing through inference, and
its two shapes (a flax.linen Module when flax is installed, a plain callable otherwise)."""

from __future__ import annotations

import secrets

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlstm_kernels.jax import backend_module as bm
from mlstm_kernels.jax.reference import mlstm_recurrent_reference

from . import utils

EPS = utils.f32(1e-6)


def _x(B=2, NH=2, S=45, DHQK=6, DHHV=5, with_initial=False):
    seed = secrets.randbits(31)
    return seed, utils.cast_inputs(utils.make_inputs(B, NH, S, DHQK, DHHV, seed=seed, f_bias=1.0, with_initial=with_initial), "float64")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(chunkwise_kernel="parallel--tiled", return_last_states=True), "not supported with parallel"),
        (dict(mode="train_with_padding", return_last_states=True), "train_with_padding"),
        (dict(mode="decode"), "mode must be one of"),
        (dict(inference_state_dtype="float64"), "inference_state_dtype"),
        (dict(chunkwise_kernel="chunkwise--nope"), "Available"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bm.mLSTMBackendConfig(**kwargs)


def test_module_kind():
    try:
        import flax.linen as linen
    except ImportError:
        linen = None
    backend = bm.mLSTMBackend(bm.mLSTMBackendConfig())
    if linen is None:
        assert not hasattr(backend, "init") and callable(backend)
    else:
        assert isinstance(backend, linen.Module)


def _call(backend, *args, **kwargs):
    """A plain backend is called directly; a linen one through apply with no parameters."""
    if hasattr(backend, "apply"):
        return backend.apply({}, *args, **kwargs)
    return backend(*args, **kwargs)


@pytest.mark.parametrize("kernel", ["chunkwise--limit_chunk", "chunkwise--xl_chunk", "chunkwise--native_custbw"])
def test_train_modes(kernel):
    """train == the kernel against the reference; train_with_padding gives the same h; gradients flow."""
    seed, x = _x(with_initial=True)
    backend = bm.mLSTMBackend(bm.mLSTMBackendConfig(chunkwise_kernel=kernel, chunk_size=16, eps=EPS, return_last_states=True))
    h, (c, n, m) = jax.jit(lambda x: _call(backend, **x))(x)
    h_ref, (c_ref, n_ref, m_ref) = mlstm_recurrent_reference(**x, eps=EPS)
    info = utils.shape_info(*x["v"].shape[:3], x["q"].shape[3], x["v"].shape[3], seed=seed)
    for what, got, ref in (("h", h, h_ref), ("c", c, c_ref), ("n", n, n_ref), ("m", m, m_ref)):
        utils.compare(f"backend train {what}", got, ref, target=kernel, baseline="reference_fp64", shape_info=info,
                      dtype="float64", tol_rel=1e-10)
    padded = bm.mLSTMBackend(bm.mLSTMBackendConfig(chunkwise_kernel=kernel, chunk_size=16, eps=EPS, mode="train_with_padding",
                                                   return_last_states=False))
    h_pad = jax.jit(lambda x: _call(padded, **x))({k: v for k, v in x.items() if k not in utils.STATE_KEYS})
    h_plain, _ = mlstm_recurrent_reference(**{k: v for k, v in x.items() if k not in utils.STATE_KEYS}, eps=EPS)
    utils.compare("backend train_with_padding h", h_pad, h_plain, target=kernel, baseline="reference_fp64", shape_info=info,
                  dtype="float64", tol_rel=1e-10)
    g = jax.jit(jax.grad(lambda q: jnp.sum(_call(backend, q, *[x[k] for k in ("k", "v", "i", "f")])[0])))(x["q"])
    assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize(
    "kernel,sequence,step",
    [
        ("chunkwise--limit_chunk", "fused_sequence", "fused"),
        ("chunkwise--native_autograd", "native_sequence__native", "native"),
        ("chunkwise--xl_chunk", "native_sequence__fused", "fused"),
        ("parallel--tiled", "fused_sequence", "fused"),
    ],
)
def test_inference_prefill_then_decode(kernel, sequence, step):
    """Prefill (chunks + tail) then single steps through the backend == the reference on the whole sequence."""
    seed, x = _x(S=45)
    config = bm.mLSTMBackendConfig(chunkwise_kernel=kernel, sequence_kernel=sequence, step_kernel=step, mode="inference",
                                   chunk_size=16, eps=EPS, return_last_states=False)
    backend = bm.mLSTMBackend(config)
    prefill = 37  # two chunks of 16 and a tail of 5
    h_parts = []
    run = jax.jit(lambda *a: _call(backend, *a))
    h, states = run(*(x[k][:, :, :prefill] for k in ("q", "k", "v", "i", "f")))
    h_parts.append(h)
    for t in range(prefill, 45):
        h, states = run(*(x[k][:, :, t : t + 1] for k in ("q", "k", "v", "i", "f")), *states)
        h_parts.append(h)
    assert all(s.dtype == jnp.float32 for s in states)
    h_ref, last_ref = mlstm_recurrent_reference(**x, eps=EPS)
    info = utils.shape_info(*x["v"].shape[:3], x["q"].shape[3], x["v"].shape[3], seed=seed)
    # The states are carried in float32 (inference_state_dtype): float32 rounding, not float64.
    utils.compare("backend inference h", jnp.concatenate(h_parts, axis=2), h_ref, target=f"{kernel}+{sequence}+{step}",
                  baseline="reference_fp64", shape_info=info, dtype="float64", tol_rel=1e-5)
    for what, got, ref in zip("cnm", states, last_ref):
        utils.compare(f"backend inference {what}", got, ref, target=f"{kernel}+{sequence}+{step}", baseline="reference_fp64",
                      shape_info=info, dtype="float64", tol_rel=1e-5)


@pytest.mark.parametrize("S", [1, 16, 20, 32], ids=lambda S: f"S={S}")
def test_inference_state_dtype(S):
    """Inference hands out states in inference_state_dtype whichever kernel ran last: the step (S=1),
    the chunkwise kernel alone (S=16, 32 with chunk_size 16; its states are float32) or the tail."""
    seed = secrets.randbits(31)
    x = utils.cast_inputs(utils.make_inputs(1, 2, S, 16, 16, seed=seed, f_bias=2.0), "float32")
    backend = bm.mLSTMBackend(bm.mLSTMBackendConfig(
        chunkwise_kernel="chunkwise--limit_chunk", sequence_kernel="fused_sequence", step_kernel="fused",
        mode="inference", chunk_size=16, eps=EPS, inference_state_dtype="bfloat16"))
    h, states = jax.jit(lambda x: _call(backend, **x))(x)
    assert all(s.dtype == jnp.bfloat16 for s in states)
    h1, states1 = _call(backend, *(x[k][:, :, :1] for k in ("q", "k", "v", "i", "f")), *states)
    assert h1.shape == (1, 2, 1, 16) and all(s.dtype == jnp.bfloat16 for s in states1)
    h_ref, last_ref = mlstm_recurrent_reference(**utils.as_float64(x), eps=EPS)
    info = utils.shape_info(1, 2, S, 16, 16, seed=seed)
    utils.compare("backend inference (bf16 states) h", h, h_ref, target="chunkwise--limit_chunk", baseline="reference_fp64",
                  shape_info=info, dtype="bfloat16", tol_rel=utils.derived_tolerance(0.0, "bfloat16"))
    # Each bfloat16 step of the tail rounds the state (m first, c and n rescaled to it): error ~ sqrt(roundings).
    tol = min(utils.derived_tolerance(0.0, "bfloat16") * np.sqrt(max(1, S % 16)), 2e-2)
    for what, got, ref in zip("cnm", states, last_ref):
        utils.compare(f"backend inference (bf16 states) {what}", got, ref, target="chunkwise--limit_chunk",
                      baseline="reference_fp64", shape_info=info, dtype="bfloat16", tol_rel=tol)


def test_inference_low_precision_states_keep_the_true_state():
    """Converting the chunkwise kernel's float32 states to bfloat16 rounds m first and rescales c, n to
    it: the true state exp(m)·c, exp(m)·n then carries one bfloat16 rounding of c, n, whereas casting
    the three separately would add the rounding of m (|m| ≈ 10..25 here: up to ~5 %)."""
    x = utils.cast_inputs(utils.make_inputs(2, 4, 32, 16, 16, seed=secrets.randbits(31), i_scale=8.0, f_bias=2.0), "float32")
    config = dict(chunkwise_kernel="chunkwise--limit_chunk", sequence_kernel="fused_sequence", step_kernel="fused",
                  mode="inference", chunk_size=16, eps=EPS)
    _, low = _call(bm.mLSTMBackend(bm.mLSTMBackendConfig(**config, inference_state_dtype="bfloat16")), **x)
    _, full = _call(bm.mLSTMBackend(bm.mLSTMBackendConfig(**config, inference_state_dtype="float32")), **x)
    assert float(jnp.max(jnp.abs(full[2]))) > 8  # the rounding of m matters

    def true_state(a, m):  # a: c (B, NH, DHQK, DHHV) or n (B, NH, DHQK); m (B, NH, 1)
        w = np.exp(np.asarray(m, np.float64))
        return np.asarray(a, np.float64) * (w[..., None] if a.ndim == 4 else w)

    for what, index in (("c", 0), ("n", 1)):
        lo, hi = true_state(low[index], low[2]), true_state(full[index], full[2])
        err = max(utils.rel_error(lo[b, h], hi[b, h]) for b in range(lo.shape[0]) for h in range(lo.shape[1]))
        assert err <= 2.0**-8, f"true state {what}: relative error {err:.2e} (worst head) > one bfloat16 rounding"
