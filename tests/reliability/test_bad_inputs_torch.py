"""Bad input through every torch entry point: each case gives either the correct result or a clear
exception naming the argument and the limit — never a crash, a hang or an unwritten output.

Complements tests/torch/test_errors.py (wrong ranks and shapes of q/k/v/i/f and of the states,
integer dtypes, meta-device mixing, non-tensors, q/k/v dtype mismatch, chunk sizes, states given to
a parallel kernel) with the cases below, run over every kernel of the three registries and the
backend module. Entry points (column "who"): T = every training kernel, C = core chunkwise
(limit_chunk, xl_chunk), K = every core kernel (C + parallel--tiled + fused_sequence +
native_sequence__fused + step fused), N = native chunkwise, Q = every sequence kernel, P = every
step kernel, A = all of T + Q + P.

Error cases (ValueError, message names the argument and what is allowed):

| case                   | who | message must contain                                        |
|------------------------|-----|-------------------------------------------------------------|
| k with NH + 1 heads    | A   | "k must have shape"                                         |
| v with DHHV ≠ c's      | T,Q | "c_initial must have shape"                                 |
| n_initial DHQK + 1     | T,Q | "n_initial must have shape"                                 |
| f with B + 1           | A   | "f must have shape"                                         |
| q rank 5               | A   | "q must have shape"                                         |
| k float64, q float32   | A   | "q, k and v must share one dtype"                           |
| complex64 q / i / c    | A   | "<name> has dtype torch.complex64" + "floating-point"       |
| bool f, int8 k         | A   | "<name> has dtype"                                          |
| int64 c_initial        | T,Q | "c_initial has dtype"                                       |
| B, NH, S, DHQK, DHHV=0 | A   | "<dim> must be >= 1"                                        |
| chunk_size None, "64", 1.5, np.int64 | C | "chunk_size must be an int"                     |
| chunk_size -16, 12, 8192 | C | "chunk_size" + "power of two in [16, <max>]"               |
| DHQK, DHHV = 2^20 + 1  | K   | "<dim> must be a multiple of 1 and at most 1048576"         |
| eps NaN, inf, -1       | K   | "eps must be finite and >= 0"                               |
| autocast int dtype     | T   | "autocast_kernel_dtype must be a floating torch dtype"      |
| dtype_state int32, bool, complex64, "int8", "float", None | Q,P | "dtype_state must be a floating dtype, one of ..." |
| CUDA q, CPU k / c (gpu)| A   | "k is on cpu but q is on cuda" / "c_initial is on cpu"      |

Correct-result cases (the result is compared with the float64 reference and, for core kernels,
bitwise with the same kernel on the equivalent canonical inputs, because the torch layer documents
these conversions):

| case                                   | who | result, and why                                         |
|----------------------------------------|-----|---------------------------------------------------------|
| q, k, v transposed from (B, S, NH, D)  | A   | = contiguous: leading strides go to the core unchanged  |
| q expanded over B (stride 0)           | A   | = contiguous: strides ≥ 0 are valid, reads only         |
| q, v, i sliced at a storage offset     | A   | = contiguous: a view of a larger buffer                 |
| i, f with unit S-stride ≠ 1 (strided)  | A   | = contiguous: an inner stride is copied first           |
| c_initial transposed (inner stride ≠ 1)| C,Q | = contiguous: copied first                              |
| i, f float16 / bfloat16 with float32 q | A   | = gates cast to float32 (gates are computed in float32) |
| states float64 / bfloat16 to training  | T   | = states cast to float32 (training states are float32)  |
| native chunk_size 12 (not a power of 2)| N   | = reference: native kernels take any chunk_size >= 1    |
| S = 1, DHQK ≠ DHHV, B·NH odd           | A   | = reference                                             |

Negative strides cannot be expressed by a torch tensor; they are tested at the ABI
(test_bad_inputs_core.py). NaN/Inf inputs are in test_nonfinite_inputs.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch

import mlstm_kernels.torch as mt
from mlstm_kernels.torch import _ops
from mlstm_kernels.torch.backend_module import mLSTMBackend, mLSTMBackendConfig
from mlstm_kernels.torch.reference import mlstm_parallel_reference, mlstm_recurrent_reference

from ..torch.utils import compare, derived_tolerance, poison_, rel_error
from .conftest import CUDA_AVAILABLE

B, NH, S, DHQK, DHHV = 2, 3, 20, 8, 12
EPS = 2.0**-20  # exact in float32: the ABI carries eps as a float

CORE_TRAINING = ("chunkwise--limit_chunk", "chunkwise--xl_chunk", "parallel--tiled")
CORE_SEQUENCE = ("fused_sequence", "native_sequence__fused")
ENTRY_POINTS = (
    [("training", n) for n in mt.get_available_mlstm_kernels()]
    + [("sequence", n) for n in mt.get_available_mlstm_sequence_kernels()]
    + [("step", n) for n in mt.get_available_mlstm_step_kernels()]
)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every tensor the core writes starts as NaN, so an unwritten element fails the comparison."""
    allocate = _ops._output
    monkeypatch.setattr(_ops, "_output", lambda like, shape, dtype=None: poison_(allocate(like, shape, dtype)))


# ---------------------------------------------------------------------------------------------
# Inputs and calls per entry-point kind.


def state_keys(kind: str) -> tuple[str, str, str]:
    return ("c", "n", "m") if kind == "step" else ("c_initial", "n_initial", "m_initial")


def make_inputs(kind: str, *, dtype=torch.float64, states: bool | None = None, device="cpu", seed=0, **dims) -> dict:
    """Canonical (contiguous) keyword inputs of an entry point of `kind`; states always for a step,
    for training/sequence when `states` (default: only for chunkwise and sequence kinds)."""
    d = dict(B=B, NH=NH, S=S, DHQK=DHQK, DHHV=DHHV)
    d.update(dims)
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    b, nh, s, dqk, dhv = d["B"], d["NH"], d["S"], d["DHQK"], d["DHHV"]
    if kind == "step":
        x = dict(q=randn(b, nh, dqk), k=randn(b, nh, dqk), v=randn(b, nh, dhv), i=randn(b, nh, 1), f=randn(b, nh, 1) + 1)
        states = True
    else:
        x = dict(q=randn(b, nh, s, dqk), k=randn(b, nh, s, dqk), v=randn(b, nh, s, dhv), i=randn(b, nh, s),
                 f=randn(b, nh, s) + 1)
    if states:
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        c, n, m = state_keys(kind)
        x[c] = randn(b, nh, dqk, dhv).to(sdt)
        x[n] = randn(b, nh, dqk).to(sdt)
        x[m] = randn(b, nh, 1).to(sdt)
    return x


def stateful(kind: str, name: str) -> bool:
    return kind != "training" or name.startswith("chunkwise--")


def call(kind: str, name: str, x: dict, **kwargs):
    """Run an entry point; returns a dict of outputs (h and, where the kernel has them, the states)."""
    sdt = torch.float64 if x["q"].dtype == torch.float64 else torch.float32
    if kind == "training":
        kw = dict(eps=EPS, chunk_size=16)
        if stateful(kind, name):
            kw["return_last_states"] = True
        kw.update(kwargs)
        out = mt.get_mlstm_kernel(name)(**x, **kw)
    elif kind == "sequence":
        out = mt.get_mlstm_sequence_kernel(name)(**x, **{"eps": EPS, "return_last_states": True, "dtype_state": sdt, **kwargs})
    else:
        out = mt.get_mlstm_step_kernel(name)(**x, **{"eps": EPS, "dtype_state": sdt, **kwargs})
    if isinstance(out, tuple):
        h, (c, n, m) = out
        return {"h": h, "c_last": c, "n_last": n, "m_last": m}
    return {"h": out}


def reference(kind: str, name: str, x: dict) -> dict:
    """The float64 reference of the same inputs (parallel form for parallel kernels)."""
    x64 = {k: v.detach().to("cpu", torch.float64) for k, v in x.items()}
    if kind == "step":
        c, n, m = x64.pop("c"), x64.pop("n"), x64.pop("m")
        x64 = {k: (v[:, :, None] if k in "qkv" else v.reshape(v.shape[0], v.shape[1], 1)) for k, v in x64.items()}
        x64.update(c_initial=c, n_initial=n, m_initial=m)
    if kind == "training" and name.startswith("parallel--"):
        return {"h": mlstm_parallel_reference(**x64, eps=EPS)}
    if "m_initial" in x64 and x64["m_initial"].dim() == 2:
        x64["m_initial"] = x64["m_initial"][..., None]
    h, (c, n, m) = mlstm_recurrent_reference(**x64, eps=EPS)
    if kind == "step":
        h = h[:, :, 0]
    return {"h": h, "c_last": c, "n_last": n, "m_last": m}


def assert_matches_reference(kind: str, name: str, x: dict, out: dict, case: str) -> None:
    ref = reference(kind, name, x)
    dtype = out["h"].dtype
    for key, value in out.items():
        # Float64 runs: the float64 floor; float32 runs: the float32 reference's error, scaled.
        plain = 0.0
        if dtype != torch.float64:
            x32 = {k: v.detach().to("cpu", torch.float32) for k, v in x.items()}
            plain = rel_error(reference(kind, name, x32)[key], ref[key])
        tol = derived_tolerance(plain, dtype, plain_dtype=torch.float32)
        compare(f"{name} {key} [{case}]", value, ref[key], target=name, baseline="reference_fp64",
                shape_info=dict(case=case), dtype=dtype, tol_rel=tol)


def assert_bitwise(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), what
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, f"{what}: {key}"
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs from the canonical call"


# ---------------------------------------------------------------------------------------------
# The error table.


@dataclass
class Bad:
    """`mutate(kind, name, x) -> (x, kwargs)` makes the bad call; `messages` must all be in the error."""

    id: str
    who: Callable[[str, str], bool]
    mutate: Callable
    messages: tuple[str, ...]
    error: type = ValueError
    marks: tuple = field(default_factory=tuple)


def who_all(kind, name):
    return True


def who_stateful(kind, name):
    return kind in ("training", "sequence") and stateful(kind, name)


def who_core_chunkwise(kind, name):
    return kind == "training" and name in CORE_TRAINING[:2]


def who_core(kind, name):
    return name in CORE_TRAINING or name in CORE_SEQUENCE or (kind == "step" and name == "fused")


def who_training(kind, name):
    return kind == "training"


def _replace(key, make):
    def mutate(kind, name, x):
        x = dict(x)
        x[key] = make(kind, x)
        return x, {}

    return mutate


def _with_states(mutate):
    """For training/sequence kinds: add states first, then apply `mutate`."""

    def wrapped(kind, name, x):
        if "c_initial" not in x and kind != "step":
            x = make_inputs(kind, states=True)
        return mutate(kind, name, x)

    return wrapped


def _zero_dim(dim):
    def mutate(kind, name, x):
        return make_inputs(kind, states=stateful(kind, name), **{dim: 0}), {}

    return mutate


def _kwargs(**kw):
    return lambda kind, name, x: (x, kw)


def _huge_head(dim):
    big = (1 << 20) + 1

    def mutate(kind, name, x):
        # DHHV = 1 (or DHQK = 1) keeps the tensors at a few MB.
        dims = dict(B=1, NH=1, S=2, DHQK=big if dim == "DHQK" else 1, DHHV=big if dim == "DHHV" else 1)
        return make_inputs(kind, dtype=torch.float32, states=False, **dims), {}

    return mutate


def _complex(key):
    return _replace(key, lambda kind, x: x[key].to(torch.complex64))


def _other_shape(key, index, delta=1):
    def make(kind, x):
        shape = list(x[key].shape)
        shape[index] += delta
        return torch.zeros(shape, dtype=x[key].dtype)

    return _replace(key, make)


BAD = [
    Bad("k-NH+1", who_all, _other_shape("k", 1), ("k must have shape",)),
    Bad("f-B+1", who_all, _other_shape("f", 0), ("f must have shape",)),
    Bad("q-rank5", who_all, _replace("q", lambda kind, x: x["q"][None]), ("q must have shape",)),
    Bad("c_initial-DHHV+1", who_stateful, _with_states(_other_shape("c_initial", 3)), ("c_initial must have shape",)),
    Bad("n_initial-DHQK+1", who_stateful, _with_states(_other_shape("n_initial", 2)), ("n_initial must have shape",)),
    Bad("k-float64-q-float32", who_all,
        lambda kind, name, x: ({**{k: v.float() for k, v in x.items()}, "k": x["k"].double()}, {}),
        ("q, k and v must share one dtype",)),
    Bad("q-complex64", who_all, _complex("q"), ("q has dtype torch.complex64", "floating-point")),
    Bad("i-complex64", who_all, _complex("i"), ("i has dtype torch.complex64", "floating-point")),
    Bad("c-complex64", lambda kind, name: kind == "step" or who_stateful(kind, name),
        lambda kind, name, x: _complex(state_keys(kind)[0])(kind, name, x if kind == "step" else make_inputs(kind, states=True)),
        ("has dtype torch.complex64",)),
    Bad("f-bool", who_all, _replace("f", lambda kind, x: x["f"] > 0), ("f has dtype torch.bool",)),
    Bad("k-int8", who_all, _replace("k", lambda kind, x: x["k"].to(torch.int8)), ("k has dtype torch.int8",)),
    Bad("c_initial-int64", who_stateful, _with_states(_replace("c_initial", lambda kind, x: x["c_initial"].long())),
        ("c_initial has dtype torch.int64",)),
    *[Bad(f"{dim}=0", who_all if dim != "S" else lambda kind, name: kind != "step", _zero_dim(dim), (f"{dim} must be >= 1",))
      for dim in ("B", "NH", "S", "DHQK", "DHHV")],
    *[Bad(f"chunk_size={value!r}", who_core_chunkwise, _kwargs(chunk_size=value), ("chunk_size must be an int",))
      for value in (None, "64", 1.5, np.int64(64))],
    *[Bad(f"chunk_size={value}", who_core_chunkwise, _kwargs(chunk_size=value), ("chunk_size", "power of two in [16, "))
      for value in (-16, 12, 8192)],
    *[Bad(f"{dim}=2^20+1", who_core, _huge_head(dim), (f"{dim} must be a multiple of 1 and at most 1048576",))
      for dim in ("DHQK", "DHHV")],
    *[Bad(f"eps={value}", who_core, _kwargs(eps=value), ("eps must be finite and >= 0",))
      for value in (math.nan, math.inf, -1.0)],
]


def _bad_params():
    params = []
    for case in BAD:
        for kind, name in ENTRY_POINTS:
            if case.who(kind, name):
                params.append(pytest.param(case, kind, name, id=f"{case.id}-{name}", marks=case.marks))
    return params


@pytest.mark.parametrize("case, kind, name", _bad_params())
def test_bad_input_raises_a_clear_error(case, kind, name):
    x, kwargs = case.mutate(kind, name, make_inputs(kind, states=stateful(kind, name)))
    with pytest.raises(case.error) as info:
        call(kind, name, x, **kwargs)
    message = str(info.value)
    for needle in case.messages:
        assert needle in message, f"{case.id} on {name}: message {message!r} lacks {needle!r}"


@pytest.mark.parametrize("name", [n for n in mt.get_available_mlstm_kernels()])
def test_autocast_kernel_dtype_must_be_floating(name):
    x = make_inputs("training", dtype=torch.float32, states=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match="autocast_kernel_dtype must be a floating torch dtype"):
            mt.get_mlstm_kernel(name)(**x, autocast_kernel_dtype=torch.int32)


# ---------------------------------------------------------------------------------------------
# The correct-result table: a layout or dtype the torch layer converts, compared bitwise with the
# canonical call and with the float64 reference.


def _transposed(t):
    """The same values as a (B, S, NH, D) buffer viewed as (B, NH, S, D)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _offset(t, pad=5):
    """A view at a storage offset inside a larger buffer (extra elements along the last-but-one axis)."""
    if t.dim() < 2:
        return t
    shape = list(t.shape)
    shape[-2] += 2 * pad if t.dim() >= 3 else 0
    big = torch.full(shape, math.nan, dtype=t.dtype)
    if t.dim() >= 3:
        big[..., pad:pad + t.shape[-2], :] = t
        return big[..., pad:pad + t.shape[-2], :]
    return t


def _inner_strided(t):
    wide = torch.full((*t.shape[:-1], 3 * t.shape[-1]), math.nan, dtype=t.dtype)
    wide[..., ::3] = t
    return wide[..., ::3]


@dataclass
class Good:
    """`transform(kind, name, x) -> (x_unusual, x_canonical, kwargs)`: the unusual call must equal the
    canonical one bitwise and the reference within tolerance."""

    id: str
    who: Callable[[str, str], bool]
    transform: Callable
    dtype: torch.dtype = torch.float64


def _views(fn, keys):
    def transform(kind, name, x):
        y = dict(x)
        for key in keys:
            if key in y:
                y[key] = fn(y[key])
        return y, x, {}

    return transform


def _expanded_q(kind, name, x):
    y = dict(x)
    y["q"] = x["q"][:1].expand(x["q"].shape)
    canonical = dict(x)
    canonical["q"] = y["q"].contiguous()
    assert y["q"].stride(0) == 0
    return y, canonical, {}


def _gates_as(dtype):
    def transform(kind, name, x):
        y = {k: (v.to(dtype) if k in ("i", "f") else v) for k, v in x.items()}
        canonical = {k: (v.float() if k in ("i", "f") else v) for k, v in y.items()}
        return y, canonical, {}

    return transform


def _states_as(dtype):
    def transform(kind, name, x):
        keys = state_keys(kind)
        y = {k: (v.to(dtype) if k in keys else v) for k, v in x.items()}
        canonical = {k: (v.float() if k in keys else v) for k, v in y.items()}
        return y, canonical, {}

    return transform


def _native_chunk(kind, name, x):
    return x, x, {"chunk_size": 12}


def _odd_shape(kind, name, x):
    y = make_inputs(kind, states=stateful(kind, name), B=3, NH=1, S=1, DHQK=5, DHHV=7)
    return y, y, {}


def who_chunkwise_or_sequence(kind, name):
    return (kind == "training" and name in CORE_TRAINING[:2]) or kind == "sequence"


def who_stateful_training(kind, name):
    return kind == "training" and name.startswith("chunkwise--")


def who_native_chunkwise(kind, name):
    return kind == "training" and name.startswith("chunkwise--native")


GOOD = [
    Good("qkv-transposed", who_all, _views(_transposed, ("q", "k", "v"))),
    Good("q-expanded-over-B", who_all, _expanded_q),
    Good("qvi-storage-offset", who_all, _views(_offset, ("q", "v", "i"))),
    Good("if-inner-strided", who_all, _views(_inner_strided, ("i", "f"))),
    Good("c-transposed-inner-stride", who_chunkwise_or_sequence,
         _views(lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2), ("c_initial",))),
    Good("gates-float16", who_all, _gates_as(torch.float16), torch.float32),
    Good("gates-bfloat16", who_all, _gates_as(torch.bfloat16), torch.float32),
    Good("states-float64", who_stateful_training, _states_as(torch.float64), torch.float32),
    Good("states-bfloat16", who_stateful_training, _states_as(torch.bfloat16), torch.float32),
    Good("native-chunk_size-12", who_native_chunkwise, _native_chunk),
    Good("S1-odd-dims", who_all, _odd_shape),
]


def _good_params():
    return [
        pytest.param(case, kind, name, id=f"{case.id}-{name}")
        for case in GOOD
        for kind, name in ENTRY_POINTS
        if case.who(kind, name)
    ]


@pytest.mark.parametrize("case, kind, name", _good_params())
def test_unusual_input_gives_the_correct_result(case, kind, name):
    x = make_inputs(kind, dtype=case.dtype, states=stateful(kind, name))
    unusual, canonical, kwargs = case.transform(kind, name, x)
    out = call(kind, name, unusual, **kwargs)
    if who_core(kind, name):
        # The core reads strided views directly: the very same arithmetic. (Native kernels are plain
        # torch, whose matmuls may pick another summation order for a strided operand.)
        assert_bitwise(out, call(kind, name, canonical, **kwargs), f"{case.id} on {name}")
    assert_matches_reference(kind, name, canonical, out, case.id)


@pytest.mark.parametrize("name", CORE_TRAINING[:2] + ("parallel--tiled",))
def test_unusual_layouts_give_the_canonical_gradients(name):
    """Gradients through transposed q/k/v views equal those of contiguous inputs bitwise."""
    x = make_inputs("training", states=name.startswith("chunkwise"))
    def grads(inputs):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
        views = {k: (_transposed(v) if k in "qkv" else v) for k, v in leaves.items()}
        out = call("training", name, views)
        loss = sum((o.double() * (idx + 1)).sum() for idx, o in enumerate(out.values()))
        return torch.autograd.grad(loss, list(leaves.values()))
    plain = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    out = call("training", name, plain)
    loss = sum((o.double() * (idx + 1)).sum() for idx, o in enumerate(out.values()))
    expected = torch.autograd.grad(loss, list(plain.values()))
    for a, b in zip(grads(x), expected):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# The backend module: the same validation reaches the caller in every mode.

BACKEND_CASES = [
    pytest.param("k-NH+1", "train", _other_shape("k", 1), "k must have shape", id="k-NH+1-train"),
    pytest.param("k-NH+1", "inference", _other_shape("k", 1), "k must have shape", id="k-NH+1-inference"),
    pytest.param("v-int", "train", _replace("v", lambda kind, x: x["v"].long()), "v has dtype torch.int64", id="v-int-train"),
    pytest.param("v-int", "inference", _replace("v", lambda kind, x: x["v"].long()), "v has dtype torch.int64", id="v-int-inference"),
    pytest.param("v-int", "train_with_padding", _replace("v", lambda kind, x: x["v"].long()), "v has dtype torch.int64", id="v-int-train_with_padding"),
    pytest.param("S=0", "train", _zero_dim("S"), "S must be >= 1", id="S=0-train"),
    pytest.param("S=0", "inference", _zero_dim("S"), "the sequence is empty (S=0); need S >= 1", id="S=0-inference"),
    pytest.param("S=0", "train_with_padding", _zero_dim("S"), "S must be >= 1", id="S=0-train_with_padding"),
    pytest.param("q-complex", "inference", _complex("q"), "q has dtype torch.complex64", id="q-complex-inference"),
    pytest.param("q-rank3", "train", _replace("q", lambda kind, x: x["q"][:, :, 0]), "q must have shape", id="q-rank3-train"),
    # Inference and train_with_padding cut or pad the sequence: they validate the caller's shapes first.
    pytest.param("q-rank3", "inference", _replace("q", lambda kind, x: x["q"][:, :, 0]),
                 "inference: q must have shape (B, NH, S, DHQK), got (2, 3, 8)", id="q-rank3-inference"),
    pytest.param("q-rank3", "train_with_padding", _replace("q", lambda kind, x: x["q"][:, :, 0]),
                 "train_with_padding: q must have shape (B, NH, S, DHQK), got (2, 3, 8)", id="q-rank3-train_with_padding"),
    pytest.param("i-rank2", "inference", _replace("i", lambda kind, x: x["i"][..., 0]),
                 "inference: i must have shape (2, 3, 40), got (2, 3)", id="i-rank2-inference"),
    pytest.param("i-rank2", "train_with_padding", _replace("i", lambda kind, x: x["i"][..., 0]),
                 "train_with_padding: i must have shape (2, 3, 40), got (2, 3)", id="i-rank2-train_with_padding"),
    # The caller's S = 40, not the padded 48, and v's own shape.
    pytest.param("v-S+1", "train_with_padding", _replace("v", lambda kind, x: torch.cat([x["v"], x["v"][:, :, :1]], 2)),
                 "train_with_padding: v must have shape (2, 3, 40, 12) (from q and v), got (2, 3, 41, 12)",
                 id="v-S+1-train_with_padding"),
    pytest.param("v-S+1", "inference", _replace("v", lambda kind, x: torch.cat([x["v"], x["v"][:, :, :1]], 2)),
                 "inference: v must have shape (2, 3, 40, 12) (from q and v), got (2, 3, 41, 12)", id="v-S+1-inference"),
    pytest.param("m-alone", "inference", lambda kind, name, x: ({**x, "m_initial": torch.zeros(2, 3, 1)}, {}),
                 "inference: c_initial, n_initial and m_initial must be given together (got only m_initial)",
                 id="m-alone-inference"),
]


@pytest.mark.parametrize("case, mode, mutate, message", BACKEND_CASES)
@pytest.mark.parametrize("kernels", [("chunkwise--limit_chunk", "fused_sequence", "fused"),
                                     ("chunkwise--native_custbw", "native_sequence__native", "native")],
                         ids=["core", "native"])
def test_backend_module_bad_input(kernels, case, mode, mutate, message):
    chunkwise, sequence, step = kernels
    backend = mLSTMBackend(mLSTMBackendConfig(chunkwise_kernel=chunkwise, sequence_kernel=sequence, step_kernel=step,
                                              mode=mode, chunk_size=16))
    x, _ = mutate("training", chunkwise, make_inputs("training", states=False, S=40))
    with pytest.raises(ValueError) as info:
        backend(**x)
    assert message in str(info.value)


@pytest.mark.parametrize("mode", ["inference", "train_with_padding"])
def test_backend_module_non_tensor(mode):
    backend = mLSTMBackend(mLSTMBackendConfig(chunkwise_kernel="chunkwise--limit_chunk", mode=mode, chunk_size=16))
    x = make_inputs("training", states=False, S=40)
    with pytest.raises(TypeError, match=f"{mode}: i must be an array, got list"):
        backend(**{**x, "i": x["i"].tolist()})


@pytest.mark.parametrize("mode", ["train", "inference"])
def test_backend_module_bad_chunk_size(mode):
    backend = mLSTMBackend(mLSTMBackendConfig(chunkwise_kernel="chunkwise--limit_chunk", sequence_kernel="fused_sequence",
                                              step_kernel="fused", mode=mode, chunk_size=48))
    with pytest.raises(ValueError, match=r"chunk_size: limit_chunk needs a power of two in \[16, 128\], got 48"):
        backend(**make_inputs("training", states=False, S=100))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        mLSTMBackendConfig(chunk_size=0)


# ---------------------------------------------------------------------------------------------
# dtype_state of the recurrent kernels: a floating dtype, checked before anything runs.

RECURRENT_ENTRY_POINTS = [(k, n) for k, n in ENTRY_POINTS if k != "training"]


@pytest.mark.parametrize("dtype_state", [torch.int32, torch.bool, torch.complex64, "int8", "float", None],
                         ids=["int32", "bool", "complex64", "str-int8", "str-float", "None"])
@pytest.mark.parametrize("kind, name", RECURRENT_ENTRY_POINTS, ids=[n for _, n in RECURRENT_ENTRY_POINTS])
def test_bad_dtype_state_is_rejected(kind, name, dtype_state):
    for states in (True, False) if kind == "sequence" else (True,):
        x = make_inputs(kind, dtype=torch.float32, states=states)
        with pytest.raises(ValueError) as info:
            call(kind, name, x, dtype_state=dtype_state)
        message = str(info.value)
        assert f"{name}: dtype_state must be a floating dtype, one of float32, float16, bfloat16 (float64 on CPU)" in message
        assert repr(dtype_state) in message


@pytest.mark.parametrize("kind, name", RECURRENT_ENTRY_POINTS, ids=[n for _, n in RECURRENT_ENTRY_POINTS])
def test_dtype_state_by_name(kind, name):
    """The names the backend config uses ("bfloat16") are read as torch dtypes, as in JAX."""
    x = make_inputs(kind, dtype=torch.float32, states=True)
    by_name, by_dtype = call(kind, name, x, dtype_state="bfloat16"), call(kind, name, x, dtype_state=torch.bfloat16)
    assert_bitwise(by_name, by_dtype, f"{name} dtype_state='bfloat16'")
    assert by_name["c_last"].dtype == torch.bfloat16



# ---------------------------------------------------------------------------------------------
# Mixed devices (CPU and CUDA).


@pytest.mark.gpu
@pytest.mark.parametrize("kind, name", ENTRY_POINTS, ids=[n for _, n in ENTRY_POINTS])
def test_cpu_and_cuda_tensors_are_rejected(kind, name):
    x = {k: v.cuda() for k, v in make_inputs(kind, dtype=torch.float32, states=stateful(kind, name)).items()}
    x["k"] = x["k"].cpu()
    with pytest.raises(ValueError, match="k is on cpu but q is on cuda"):
        call(kind, name, x)
    if kind == "training" and not stateful(kind, name):
        return  # the parallel form takes no state
    x = {k: v.cuda() for k, v in make_inputs(kind, dtype=torch.float32, states=True).items()}
    c = state_keys(kind)[0]
    x[c] = x[c].cpu()
    with pytest.raises(ValueError, match=f"{c} is on cpu but q is on cuda"):
        call(kind, name, x)


@pytest.mark.gpu
@pytest.mark.parametrize("name", CORE_TRAINING)
@pytest.mark.parametrize("dims, message", [
    (dict(DHQK=24, DHHV=32), "DHQK must be a multiple of 16"),
    (dict(DHQK=32, DHHV=1040), "DHHV must be a multiple of 16 and at most"),
    (dict(DHQK=2048, DHHV=32), "DHQK must be a multiple of 16 and at most"),
], ids=["DHQK=24", "DHHV=1040", "DHQK=2048"])
def test_cuda_head_dim_limits(name, dims, message):
    x = {k: v.cuda() for k, v in make_inputs("training", dtype=torch.bfloat16, states=False, S=32, **dims).items()}
    with pytest.raises(ValueError, match=message):
        call("training", name, x)


@pytest.mark.gpu
def test_cuda_parallel_head_dim_limit():
    x = {k: v.cuda() for k, v in make_inputs("training", dtype=torch.bfloat16, states=False, S=32, DHQK=528, DHHV=32).items()}
    with pytest.raises(ValueError, match="DHQK must be a multiple of 16 and at most 512"):
        call("training", "parallel--tiled", x)


@pytest.mark.gpu
def test_cuda_float64_is_rejected():
    x = {k: v.cuda() for k, v in make_inputs("training", dtype=torch.float64, states=True, S=32, DHQK=16, DHHV=16).items()}
    with pytest.raises(ValueError, match="float64 is supported on CPU only"):
        call("training", "chunkwise--limit_chunk", x)

