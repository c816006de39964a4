"""torch == jax on the same inputs, for every kernel both layers have (skipped without torch).

Core kernels: both layers hand the same bytes to the same C ABI function on the CPU, so outputs and
gradients must be bitwise equal. Native kernels are two implementations of one function: they may
differ by rounding only, i.e. by the rounding-noise floor of the dtype (1e-11 in float64, 1e-5 in
float32) on well-conditioned inputs.
"""

from __future__ import annotations

import secrets

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mlstm_kernels.jax as mj  # noqa: E402
import mlstm_kernels.torch as mt  # noqa: E402
from mlstm_kernels import _spec  # noqa: E402

from . import utils  # noqa: E402

EPS = utils.f32(1e-6)
B, NH, S, DHQK, DHHV = 2, 3, 37, 5, 7
CORE = {"chunkwise--limit_chunk", "chunkwise--xl_chunk", "parallel--tiled", "native_sequence__fused", "fused_sequence", "fused"}
TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _tol(name, dtype):
    return 0.0 if name in CORE else utils.FLOOR_REL[dtype]


def _inputs(stateful):
    seed = secrets.randbits(31)
    x = utils.make_inputs(B, NH, S, DHQK, DHHV, seed=seed, f_bias=1.0, i_scale=2.0, with_initial=stateful)
    return seed, x, utils.cotangents(B, NH, S, DHQK, DHHV, seed=seed)


def _state_dtype(dtype):
    return np.float64 if dtype == "float64" else np.float32


def _torch_run(fn, x, ct, dtype, grad, with_last, **kw):
    sd = _state_dtype(dtype)
    t = {k: torch.tensor(v.astype(sd if k in utils.STATE_KEYS else np.dtype(dtype)), requires_grad=grad) for k, v in x.items()}
    out = fn(**t, **kw)
    h, last = (out[0], out[1]) if with_last else (out, None)
    outs = {"h": h} if last is None else {"h": h, "c": last[0], "n": last[1], "m": last[2]}
    grads = {}
    if grad:
        loss = sum((o * torch.tensor(ct[key], dtype=o.dtype)).sum() for key, o in outs.items())
        loss.backward()
        grads = {k: v.grad for k, v in t.items()}
    return {k: v.detach().numpy() for k, v in outs.items()}, {k: v.numpy() for k, v in grads.items() if v is not None}


def _jax_run(fn, x, ct, dtype, grad, with_last, **kw):
    xj = utils.cast_inputs(x, dtype)
    names = list(xj)

    def f(*arrays):
        out = fn(**dict(zip(names, arrays)), **kw)
        h, last = (out[0], out[1]) if with_last else (out, None)
        return {"h": h} if last is None else {"h": h, "c": last[0], "n": last[1], "m": last[2]}

    @jax.jit
    def run(arrays):
        if not grad:
            return f(*arrays), ()
        outs, vjp = jax.vjp(f, *arrays)
        return outs, vjp({k: jnp.asarray(ct[k], o.dtype) for k, o in outs.items()})

    outs, grads = run(list(xj.values()))
    return {k: np.asarray(v) for k, v in outs.items()}, {n: np.asarray(g) for n, g in zip(names, grads)}


def _compare(name, dtype, seed, torch_res, jax_res):
    info = utils.shape_info(B, NH, S, DHQK, DHHV, seed=seed)
    for part in (0, 1):
        for key, t_val in torch_res[part].items():
            label = key if part == 0 else "d" + key.split("_")[0]
            utils.compare(f"{name} {label}", jax_res[part][key], t_val, target=f"jax {name}", baseline=f"torch {name}",
                          shape_info=info, dtype=dtype, tol_rel=_tol(name, dtype))


# Core kernels in both dtypes (bitwise); the native ones in float64 (compiling them dominates).
TRAINING_GRID = [(n, d) for n in _spec.TRAINING_KERNELS for d in ("float64", "float32") if n in CORE or d == "float64"]


@pytest.mark.parametrize("name,dtype", TRAINING_GRID)
def test_training_kernels(name, dtype):
    stateful = name.startswith("chunkwise")
    seed, x, ct = _inputs(stateful)
    kw = dict(return_last_states=stateful, eps=EPS, chunk_size=16)
    torch_res = _torch_run(mt.get_mlstm_kernel(name), x, ct, dtype, True, stateful, **kw)
    jax_res = _jax_run(mj.get_mlstm_kernel(name), x, ct, dtype, True, stateful, **kw)
    _compare(name, dtype, seed, torch_res, jax_res)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", _spec.SEQUENCE_KERNELS)
def test_sequence_kernels(name, dtype):
    seed, x, ct = _inputs(True)
    differentiable = name == "native_sequence__native"
    sd = _state_dtype(dtype)
    torch_res = _torch_run(mt.get_mlstm_sequence_kernel(name), x, ct, dtype, differentiable, True,
                           return_last_states=True, eps=EPS, dtype_state=getattr(torch, np.dtype(sd).name))
    jax_res = _jax_run(mj.get_mlstm_sequence_kernel(name), x, ct, dtype, differentiable, True,
                       return_last_states=True, eps=EPS, dtype_state=sd)
    _compare(name, dtype, seed, torch_res, jax_res)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", _spec.STEP_KERNELS)
def test_step_kernels(name, dtype):
    seed, x, ct = _inputs(True)
    x = {k: (v if k in utils.STATE_KEYS else v[:, :, 0] if k in "qkv" else v[:, :, :1]) for k, v in x.items()}
    x = {"q": x["q"], "k": x["k"], "v": x["v"], "i": x["i"], "f": x["f"], "c": x["c_initial"], "n": x["n_initial"], "m": x["m_initial"]}
    sd = _state_dtype(dtype)

    results = []
    for fn, sd_arg, run in ((mt.get_mlstm_step_kernel(name), getattr(torch, np.dtype(sd).name), _torch_run),
                            (mj.get_mlstm_step_kernel(name), sd, _jax_run)):
        # The step's states are named c, n, m; reuse the runners by mapping them to the *_initial keys.
        wrapped = lambda c_initial, n_initial, m_initial, fn=fn, sd_arg=sd_arg, **kw: fn(  # noqa: E731
            c=c_initial, n=n_initial, m=m_initial, eps=EPS, dtype_state=sd_arg, **kw)
        xs = {k: v for k, v in x.items() if k not in "cnm"}
        xs.update(c_initial=x["c"], n_initial=x["n"], m_initial=x["m"])
        results.append(run(wrapped, xs, {}, dtype, False, True))
    _compare(name, dtype, seed, *results)


@pytest.mark.parametrize("S_run", [1, 16, 37], ids=lambda S: f"S={S}")
@pytest.mark.parametrize("chunkwise", ["chunkwise--limit_chunk", "parallel--tiled"])
def test_backend_inference(chunkwise, S_run):
    """Both backends split an inference call the same way (_spec.inference_segments; a parallel kernel
    leaves the whole sequence to the sequence kernel) and return states in inference_state_dtype."""
    seed, x, _ = _inputs(True)
    x = {k: (v[:, :, :S_run] if k not in utils.STATE_KEYS else v) for k, v in x.items()}
    from mlstm_kernels.jax import backend_module as jax_bm
    from mlstm_kernels.torch import backend_module as torch_bm

    cfg = dict(chunkwise_kernel=chunkwise, sequence_kernel="fused_sequence", step_kernel="fused", mode="inference",
               chunk_size=16, eps=EPS, inference_state_dtype="bfloat16")
    t_h, t_states = torch_bm.mLSTMBackend(torch_bm.mLSTMBackendConfig(**cfg))(
        **{k: torch.tensor(v, dtype=torch.float32) for k, v in x.items()})
    j_backend = jax_bm.mLSTMBackend(jax_bm.mLSTMBackendConfig(**cfg))
    xj = utils.cast_inputs(x, "float32")
    j_h, j_states = j_backend.apply({}, **xj) if hasattr(j_backend, "apply") else j_backend(**xj)
    assert t_h.dtype == torch.float32 and j_h.dtype == jnp.float32
    assert all(t.dtype == torch.bfloat16 for t in t_states) and all(j.dtype == jnp.bfloat16 for j in j_states)
    info = utils.shape_info(B, NH, S_run, DHQK, DHHV, seed=seed)
    # The same core kernels on the same bytes; the rescaling of the chunkwise states to bfloat16 uses
    # each framework's exp, which may differ in the last float32 bit (then one bfloat16 rounding).
    for what, t_val, j_val in zip(("h", "c", "n", "m"), (t_h, *t_states), (j_h, *j_states)):
        utils.compare(f"backend inference {what}", j_val, t_val.float().numpy(), target=f"jax backend {chunkwise}",
                      baseline=f"torch backend {chunkwise}", shape_info=info, dtype="bfloat16",
                      tol_rel=0.0 if what == "h" else 2.0**-8)
