"""Bad input through every JAX entry point (the three registries), eagerly and under ``jax.jit``:
a ValueError naming the argument and the limit at trace time, or the correct result.

Complements tests/jax/test_registry_and_errors.py (chunk sizes of the core kernels, states given to
the parallel form, two-of-three states, c_initial shape, k dtype, v shape, integer i, negative eps).

| case                         | who   | expected                                                    |
|------------------------------|-------|-------------------------------------------------------------|
| k with NH + 1                | all   | "k must have shape"                                         |
| q rank 5                     | all   | "q must have shape"                                         |
| f with B + 1                 | all   | "f must have shape"                                         |
| n_initial DHQK + 1           | state | "n_initial must have shape"                                 |
| complex64 q / int32 f / bool v | all | "<name> has dtype" + "floating-point"                       |
| int32 c_initial              | state | "c_initial has dtype"                                       |
| B, NH, S, DHQK, DHHV = 0     | all   | "<dim> must be >= 1" (S: not for steps)                     |
| chunk_size 12, 0, None       | core chunkwise | "chunk_size"                                       |
| DHQK = 2^20 + 1              | core  | "DHQK must be a multiple of 1 and at most 1048576"          |
| eps NaN, inf                 | core  | "eps must be finite and >= 0"                               |
| dtype_state int32, bool, complex64, "int8", None | recurrent | "dtype_state must be a floating dtype, one of ..." |
| backend: q rank 3, i rank 2, v with S + 1, m alone (inference, train_with_padding) | | "<mode>: <name> must have shape ..." with the caller's S |
| negative-stride numpy views  | all   | correct result: JAX copies the view into an array           |
| float16 gates, float32 q     | all   | correct result: gates are cast to float32                   |
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", True)

import mlstm_kernels.jax as mj  # noqa: E402
from mlstm_kernels.jax.backend_module import mLSTMBackend, mLSTMBackendConfig  # noqa: E402
from mlstm_kernels.jax.reference import mlstm_parallel_reference, mlstm_recurrent_reference  # noqa: E402

B, NH, S, DHQK, DHHV = 2, 3, 20, 8, 12
EPS = 2.0**-20

ENTRY_POINTS = (
    [("training", n) for n in mj.get_available_mlstm_kernels()]
    + [("sequence", n) for n in mj.get_available_mlstm_sequence_kernels()]
    + [("step", n) for n in mj.get_available_mlstm_step_kernels()]
)
CORE = {"chunkwise--limit_chunk", "chunkwise--xl_chunk", "parallel--tiled", "fused_sequence", "native_sequence__fused", "fused"}


def stateful(kind, name):
    return kind != "training" or name.startswith("chunkwise--")


def make_inputs(kind, name, *, dtype=np.float64, seed=0, **dims):
    d = dict(B=B, NH=NH, S=S, DHQK=DHQK, DHHV=DHHV)
    d.update(dims)
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    b, nh, s, dqk, dhv = d["B"], d["NH"], d["S"], d["DHQK"], d["DHHV"]
    if kind == "step":
        x = dict(q=r(b, nh, dqk), k=r(b, nh, dqk), v=r(b, nh, dhv), i=r(b, nh, 1), f=r(b, nh, 1) + 1)
        keys = ("c", "n", "m")
    else:
        x = dict(q=r(b, nh, s, dqk), k=r(b, nh, s, dqk), v=r(b, nh, s, dhv), i=r(b, nh, s), f=r(b, nh, s) + 1)
        keys = ("c_initial", "n_initial", "m_initial")
    if stateful(kind, name):
        sdt = np.float64 if dtype == np.float64 else np.float32
        x[keys[0]], x[keys[1]], x[keys[2]] = r(b, nh, dqk, dhv).astype(sdt), r(b, nh, dqk).astype(sdt), r(b, nh, 1).astype(sdt)
    return x


def call(kind, name, x, **kwargs):
    x = {k: jnp.asarray(v) for k, v in x.items()}
    sdt = jnp.float64 if x["q"].dtype == jnp.float64 else jnp.float32
    if kind == "training":
        kw = {"eps": EPS, "chunk_size": 16, **({"return_last_states": True} if stateful(kind, name) else {}), **kwargs}
        out = mj.get_mlstm_kernel(name)(**x, **kw)
    elif kind == "sequence":
        out = mj.get_mlstm_sequence_kernel(name)(**x, **{"eps": EPS, "return_last_states": True, "dtype_state": sdt, **kwargs})
    else:
        out = mj.get_mlstm_step_kernel(name)(**x, **{"eps": EPS, "dtype_state": sdt, **kwargs})
    return out


def _shape_plus(key, axis):
    def mutate(kind, name, x):
        shape = list(x[key].shape)
        shape[axis] += 1
        return {**x, key: np.zeros(shape, x[key].dtype)}, {}
    return mutate


def _astype(key, dtype):
    return lambda kind, name, x: ({**x, key: x[key].astype(dtype)}, {})


def _zero(dim):
    return lambda kind, name, x: (make_inputs(kind, name, **{dim: 0}), {})


def _kw(**kw):
    return lambda kind, name, x: (x, kw)


def _huge_head(kind, name, x):
    return make_inputs(kind, name, dtype=np.float32, B=1, NH=1, S=2, DHQK=(1 << 20) + 1, DHHV=1), {}


def _state_key(kind):
    return "c" if kind == "step" else "c_initial"


ALL = lambda kind, name: True  # noqa: E731
STATE = lambda kind, name: kind != "step" and stateful(kind, name)  # noqa: E731
CORE_ONLY = lambda kind, name: name in CORE  # noqa: E731
CORE_CHUNKWISE = lambda kind, name: name in ("chunkwise--limit_chunk", "chunkwise--xl_chunk")  # noqa: E731

BAD = [
    ("k-NH+1", ALL, _shape_plus("k", 1), ("k must have shape",)),
    ("f-B+1", ALL, _shape_plus("f", 0), ("f must have shape",)),
    ("q-rank5", ALL, lambda kind, name, x: ({**x, "q": x["q"][None]}, {}), ("q must have shape",)),
    ("n_initial-DHQK+1", STATE, _shape_plus("n_initial", 2), ("n_initial must have shape",)),
    ("q-complex64", ALL, _astype("q", np.complex64), ("q has dtype complex64", "floating-point")),
    ("f-int32", ALL, _astype("f", np.int32), ("f has dtype int32", "floating-point")),
    ("v-bool", ALL, _astype("v", np.bool_), ("v has dtype bool", "floating-point")),
    ("c_initial-int32", STATE, _astype("c_initial", np.int32), ("c_initial has dtype int32",)),
    *[(f"{dim}=0", ALL if dim != "S" else (lambda kind, name: kind != "step"), _zero(dim), (f"{dim} must be >= 1",))
      for dim in ("B", "NH", "S", "DHQK", "DHHV")],
    *[(f"chunk_size={v!r}", CORE_CHUNKWISE, _kw(chunk_size=v), ("chunk_size",)) for v in (12, 0, None)],
    ("DHQK=2^20+1", CORE_ONLY, _huge_head, ("DHQK must be a multiple of 1 and at most 1048576",)),
    *[(f"eps={v}", CORE_ONLY, _kw(eps=v), ("eps must be finite and >= 0",)) for v in (math.nan, math.inf)],
]


def _params():
    return [pytest.param(case, kind, name, id=f"{case[0]}-{name}")
            for case in BAD for kind, name in ENTRY_POINTS if case[1](kind, name)]


@pytest.mark.parametrize("case, kind, name", _params())
def test_bad_input_raises_a_clear_error(case, kind, name):
    _, _, mutate, needles = case
    x, kwargs = mutate(kind, name, make_inputs(kind, name))
    for how in ("eager", "jit"):
        with pytest.raises(ValueError) as info:
            if how == "eager":
                call(kind, name, x, **kwargs)
            else:
                jax.jit(lambda arrays: call(kind, name, arrays, **kwargs))({k: jnp.asarray(v) for k, v in x.items()})
        for needle in needles:
            assert needle in str(info.value), f"{case[0]} on {name} ({how}): {str(info.value)!r} lacks {needle!r}"


def _reference(kind, name, x):
    x64 = {k: np.asarray(v, np.float64) for k, v in x.items()}
    if kind == "step":
        c, n, m = x64.pop("c"), x64.pop("n"), x64.pop("m")
        x64 = {k: (v[:, :, None] if k in "qkv" else v) for k, v in x64.items()}
        x64.update(c_initial=c, n_initial=n, m_initial=m)
    if kind == "training" and name.startswith("parallel--"):
        return [mlstm_parallel_reference(**x64, eps=EPS)]
    h, states = mlstm_recurrent_reference(**x64, eps=EPS)
    return [h[:, :, 0] if kind == "step" else h, *states]


def _flat(out):
    return [np.asarray(a, np.float64) for a in jax.tree.leaves(out)]


@pytest.mark.parametrize("kind, name", ENTRY_POINTS, ids=[n for _, n in ENTRY_POINTS])
@pytest.mark.parametrize("case", ["negative-stride-views", "float16-gates"])
def test_unusual_input_gives_the_correct_result(case, kind, name):
    if case == "negative-stride-views":
        x = make_inputs(kind, name)
        # The same values as views with negative strides (reversed twice): numpy keeps the strides,
        # JAX copies the view into a new array.
        y = {k: np.flip(np.flip(v, 0).copy(), 0) for k, v in x.items()}
        assert all(v.strides[0] < 0 for v in y.values())
        tol = 1e-10
    else:
        x = make_inputs(kind, name, dtype=np.float32)
        y = {k: (v.astype(np.float16) if k in ("i", "f") else v) for k, v in x.items()}
        x = {k: (v.astype(np.float16).astype(np.float32) if k in ("i", "f") else v) for k, v in x.items()}
        tol = 1e-4
    out = _flat(call(kind, name, y))
    expected = _flat(call(kind, name, x))
    for a, b in zip(out, expected):
        np.testing.assert_array_equal(a, b)
    for a, ref in zip(out, _reference(kind, name, x)):
        ref = np.asarray(ref, np.float64).reshape(a.shape)
        rel = np.linalg.norm(a - ref) / np.linalg.norm(ref)
        assert rel <= tol, f"{case} on {name}: relative error {rel:.2e} > {tol:.0e}"


@pytest.mark.parametrize("name", ["chunkwise--limit_chunk", "chunkwise--xl_chunk", "parallel--tiled"])
def test_nan_input_reaches_exactly_its_dependents(name):
    """A NaN in k at (b=0, h=1, t=7) makes h non-finite exactly at t >= 7 of that head (jit)."""
    kind = "training"
    x = make_inputs(kind, name)
    x["k"][0, 1, 7, 2] = np.nan
    out = _flat(jax.jit(lambda arrays: call(kind, name, arrays))({k: jnp.asarray(v) for k, v in x.items()}))
    h = out[0]
    expected = np.zeros(h.shape, bool)
    expected[0, 1, 7:] = True
    np.testing.assert_array_equal(~np.isfinite(h), expected)
    clean = make_inputs(kind, name)
    ref = _reference(kind, name, clean)[0]
    np.testing.assert_allclose(h[~expected], np.asarray(ref)[~expected], rtol=1e-9, atol=1e-12)


RECURRENT_ENTRY_POINTS = [(k, n) for k, n in ENTRY_POINTS if k != "training"]


@pytest.mark.parametrize("dtype_state", [jnp.int32, jnp.bool_, jnp.complex64, "int8", None],
                         ids=["int32", "bool", "complex64", "str-int8", "None"])
@pytest.mark.parametrize("kind, name", RECURRENT_ENTRY_POINTS, ids=[n for _, n in RECURRENT_ENTRY_POINTS])
def test_bad_dtype_state_is_rejected(kind, name, dtype_state):
    """dtype_state is checked before anything runs, eagerly and under jit (it is static)."""
    x = {k: jnp.asarray(v) for k, v in make_inputs(kind, name, dtype=np.float32).items()}
    for how in ("eager", "jit"):
        with pytest.raises(ValueError) as info:
            if how == "eager":
                call(kind, name, x, dtype_state=dtype_state)
            else:
                jax.jit(lambda arrays: call(kind, name, arrays, dtype_state=dtype_state))(x)
        message = str(info.value)
        assert f"{name}: dtype_state must be a floating dtype, one of float32, float16, bfloat16 (float64 on CPU)" in message
        assert repr(dtype_state) in message


@pytest.mark.parametrize("kind, name", RECURRENT_ENTRY_POINTS, ids=[n for _, n in RECURRENT_ENTRY_POINTS])
def test_dtype_state_by_name(kind, name):
    """JAX reads dtype names as dtypes: "bfloat16" works like jnp.bfloat16."""
    x = make_inputs(kind, name, dtype=np.float32)
    by_name = call(kind, name, x, dtype_state="bfloat16")
    assert all(s.dtype == jnp.bfloat16 for s in by_name[1])
    for a, b in zip(_flat(by_name), _flat(call(kind, name, x, dtype_state=jnp.bfloat16))):
        np.testing.assert_array_equal(a, b)


# The backend module: inference and train_with_padding cut or pad the sequence, so they validate the
# caller's shapes first (S = 20 here; train_with_padding pads it to 32).
def _rank3_q(x):
    return {**x, "q": x["q"][:, :, 0]}


def _rank2_i(x):
    return {**x, "i": x["i"][..., 0]}


def _v_longer(x):
    return {**x, "v": np.concatenate([x["v"], x["v"][:, :, :1]], axis=2)}


def _m_alone(x):
    return {**x, "m_initial": np.zeros((B, NH, 1))}


BACKEND_CASES = [
    (_rank3_q, "q must have shape (B, NH, S, DHQK), got (2, 3, 8)"),
    (_rank2_i, "i must have shape (2, 3, 20), got (2, 3)"),
    (_v_longer, "v must have shape (2, 3, 20, 12) (from q and v), got (2, 3, 21, 12)"),
    (_m_alone, "c_initial, n_initial and m_initial must be given together (got only m_initial)"),
]


@pytest.mark.parametrize("mode", ["inference", "train_with_padding"])
@pytest.mark.parametrize("mutate, message", BACKEND_CASES, ids=["q-rank3", "i-rank2", "v-S+1", "m-alone"])
@pytest.mark.parametrize("kernels", [("chunkwise--limit_chunk", "fused_sequence", "fused"),
                                     ("chunkwise--native_custbw", "native_sequence__native", "native")],
                         ids=["core", "native"])
def test_backend_module_bad_input(kernels, mutate, message, mode):
    chunkwise, sequence, step = kernels
    backend = mLSTMBackend(mLSTMBackendConfig(chunkwise_kernel=chunkwise, sequence_kernel=sequence, step_kernel=step,
                                              mode=mode, chunk_size=16))
    x = {k: v for k, v in make_inputs("training", "parallel--tiled").items()}  # q, k, v, i, f without states
    x = {k: jnp.asarray(v) for k, v in mutate(x).items()}
    for how in ("eager", "jit"):
        with pytest.raises(ValueError) as info:
            if how == "eager":
                backend.apply({}, **x) if hasattr(backend, "apply") else backend(**x)
            else:
                jax.jit(lambda a: backend.apply({}, **a) if hasattr(backend, "apply") else backend(**a))(x)
        assert f"{mode}: {message}" in str(info.value), f"{mode} ({how}): {str(info.value)!r}"


@pytest.mark.parametrize("mode", ["inference", "train_with_padding"])
def test_backend_module_non_array(mode):
    backend = mLSTMBackend(mLSTMBackendConfig(mode=mode, chunk_size=16))
    x = {k: jnp.asarray(v) for k, v in make_inputs("training", "parallel--tiled").items()}
    x["i"] = np.asarray(x["i"]).tolist()
    with pytest.raises(TypeError, match=f"{mode}: i must be an array, got list"):
        backend.apply({}, **x) if hasattr(backend, "apply") else backend(**x)


def test_backend_module_empty_sequence():
    backend = mLSTMBackend(mLSTMBackendConfig(mode="inference", chunk_size=16))
    x = {k: jnp.asarray(v) for k, v in make_inputs("training", "parallel--tiled", S=0).items()}
    with pytest.raises(ValueError, match=r"inference: the sequence is empty \(S=0\); need S >= 1"):
        backend.apply({}, **x) if hasattr(backend, "apply") else backend(**x)
