"""NaN and Inf in the inputs of the core kernels: no crash, and the correct result.

The contract (all core kernels, forward; torch and JAX): a non-finite input element makes exactly
the outputs that depend on it non-finite, and nothing else. "Depends on" is read off the float64
recurrent reference (elementwise state updates, so its non-finite pattern is the true dependency
set): a NaN in q_t reaches h_t only; in k_t or a gate, h_t' for t' >= t of that (b, h); in v_t[j],
column j of those h_t'. Every other output equals the reference of the clean inputs (within the
float64 tolerance), and the last states follow the same rule — except that m_last, a stabiliser
formed by a max, may stay finite where a NaN gate met the max (IEEE fmax keeps the other operand);
c_last and n_last of that (b, h) are then non-finite, so the state as a unit still is.

Limits that are the mathematically correct result (finite, checked against the reference, forward
and gradients): f = +inf (keep everything), f = -inf (forget everything), i = -inf (ignore the
input). The parallel form's stabiliser starts at -inf, so a row t whose every key has i = -inf is
0/0 in the stabilised form: NaN there, exactly as the float64 parallel reference (documented, the
chunkwise and recurrent forms give the limit 0).

The native (plain torch) kernels are outside this contract: their masked matmuls spread NaN to
positions that do not depend on it, and f = -inf gives NaN in chunkwise--native_*.
"""

from __future__ import annotations

import math

import pytest
import torch

import mlstm_kernels.torch as mt
from mlstm_kernels.torch import _ops
from mlstm_kernels.torch.reference import mlstm_parallel_reference, mlstm_recurrent_reference

from ..torch.utils import compare, derived_tolerance, poison_

B, NH, S, DHQK, DHHV = 2, 2, 40, 8, 6
EPS = 2.0**-20
T0 = 20  # the poisoned time step (inside the second chunk of 16)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    allocate = _ops._output
    monkeypatch.setattr(_ops, "_output", lambda like, shape, dtype=None: poison_(allocate(like, shape, dtype)))


def clean_inputs(with_initial=True, seed=11):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x = dict(q=r(B, NH, S, DHQK), k=r(B, NH, S, DHQK), v=r(B, NH, S, DHHV), i=r(B, NH, S), f=r(B, NH, S) + 2)
    if with_initial:
        x.update(c_initial=r(B, NH, DHQK, DHHV), n_initial=r(B, NH, DHQK), m_initial=r(B, NH, 1))
    return x


POISON = {  # name -> (tensor, index)
    "q": ("q", (0, 1, T0, 3)),
    "k": ("k", (0, 1, T0, 3)),
    "v": ("v", (1, 0, T0, 2)),
    "i": ("i", (0, 1, T0)),
    "f": ("f", (1, 1, T0)),
    "c_initial": ("c_initial", (0, 0, 2, 1)),
    "m_initial": ("m_initial", (1, 0, 0)),
}

CORE = {
    "chunkwise--limit_chunk": lambda x: mt.get_mlstm_kernel("chunkwise--limit_chunk")(**x, eps=EPS, chunk_size=16, return_last_states=True),
    "chunkwise--xl_chunk": lambda x: mt.get_mlstm_kernel("chunkwise--xl_chunk")(**x, eps=EPS, chunk_size=16, return_last_states=True),
    "fused_sequence": lambda x: mt.get_mlstm_sequence_kernel("fused_sequence")(**x, eps=EPS, return_last_states=True, dtype_state=torch.float64),
    "native_sequence__fused": lambda x: mt.get_mlstm_sequence_kernel("native_sequence__fused")(**x, eps=EPS, return_last_states=True, dtype_state=torch.float64),
    "parallel--tiled": lambda x: mt.get_mlstm_kernel("parallel--tiled")(**{k: v for k, v in x.items() if not k.endswith("_initial")}, eps=EPS),
}


def as_dict(out):
    if isinstance(out, tuple):
        h, (c, n, m) = out
        return {"h": h, "c_last": c, "n_last": n, "m_last": m}
    return {"h": out}


def recurrent(x):
    return as_dict(mlstm_recurrent_reference(**x, eps=EPS))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", list(POISON))
@pytest.mark.parametrize("kernel", list(CORE))
def test_nonfinite_input_reaches_exactly_its_dependents(kernel, where, value):
    parallel = kernel.startswith("parallel")
    if parallel and where.endswith("_initial"):
        pytest.skip("the parallel form has no initial state")
    clean = clean_inputs(with_initial=not parallel)
    bad = {k: v.clone() for k, v in clean.items()}
    key, index = POISON[where]
    bad[key][index] = value
    out = as_dict(CORE[kernel](bad))
    dependents = {k: ~torch.isfinite(v) for k, v in recurrent(bad if not parallel else {**bad}).items()}
    if parallel:
        # The parallel form's own reference for values; the dependency set is the recurrent one.
        ref_clean = {"h": mlstm_parallel_reference(**clean, eps=EPS)}
        ref_bad = {"h": mlstm_parallel_reference(**bad, eps=EPS)}
    else:
        ref_clean, ref_bad = recurrent(clean), recurrent(bad)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, poison=f"{where}{index}={value}")
    for name, o in out.items():
        nonfinite = ~torch.isfinite(o)
        mask = dependents[name]
        if name == "m_last":
            # m is a stabiliser: a max that meets a NaN may keep its other operand (IEEE fmax). The
            # state (C, n, m) is one unit, and it stays non-finite through C and n.
            unit_nonfinite = (~torch.isfinite(out["c_last"])).flatten(2).any(-1)[..., None]  # (B, NH, 1)
            assert not (nonfinite & ~mask).any(), f"{kernel} m_last: spurious non-finite entries"
            assert not (mask & ~nonfinite & ~unit_nonfinite).any(), f"{kernel} m_last: a NaN state became finite"
            mask = mask & nonfinite
        assert torch.equal(nonfinite, mask), (
            f"{kernel} {name} with {where}{index}={value}: {int(nonfinite.sum())} non-finite outputs, "
            f"{int(mask.sum())} outputs depend on the poisoned element "
            f"({int((nonfinite & ~mask).sum())} spurious, {int((mask & ~nonfinite).sum())} laundered)"
        )
        # Finite outputs equal the reference of the poisoned inputs where it is finite (f = ±inf,
        # i = -inf are meaningful limits), and of the clean inputs where they do not depend on it.
        ref = torch.where(torch.isfinite(ref_bad[name]), ref_bad[name], ref_clean[name])
        keep = ~mask
        if parallel:
            keep &= torch.isfinite(ref_bad[name]) | ~dependents[name]
        compare(f"{kernel} {name} (finite part)", o[keep], ref[keep], target=kernel, baseline="reference_fp64",
                shape_info=info, dtype=torch.float64, tol_rel=derived_tolerance(0.0, torch.float64))


LIMITS = [("f", math.inf), ("f", -math.inf), ("i", -math.inf)]


@pytest.mark.parametrize("where, value", LIMITS, ids=["f=+inf", "f=-inf", "i=-inf"])
@pytest.mark.parametrize("kernel", ["chunkwise--limit_chunk", "chunkwise--xl_chunk"])
def test_infinite_gate_limits_have_exact_gradients(kernel, where, value):
    """f = ±inf and i = -inf are the limits 'keep', 'forget', 'ignore': outputs and every gradient are
    finite and equal autograd of the float64 reference (gate gradients there are 0 or follow the
    limit)."""
    x = clean_inputs()
    x[where][:, :, T0] = value
    weights = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
               for k, v in recurrent(x).items()}

    def grads(fn):
        leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        out = as_dict(fn(leaves))
        loss = sum((out[k] * weights[k]).sum() for k in out)
        return {**{k: v.detach() for k, v in out.items()},
                **{"d" + k: g for k, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values())))}}

    ref = grads(lambda leaves: mlstm_recurrent_reference(**leaves, eps=EPS))
    res = grads(CORE[kernel])
    for key in res:
        if key == "d" + where:
            # The gradient at the infinite entry itself: the reference's autograd gives 0 or NaN
            # (inf - inf inside logsigmoid' / exp), the limit is 0; compare the other entries.
            finite = torch.ones_like(res[key], dtype=torch.bool)
            finite[:, :, T0] = False
            assert torch.isfinite(res[key]).all(), f"{kernel} {key}: non-finite gradient"
            a, b = res[key][finite], ref[key][finite]
        else:
            a, b = res[key], ref[key]
        compare(f"{kernel} {key} ({where}={value})", a, b, target=kernel, baseline="reference_fp64",
                shape_info=dict(S=S, B=B, NH=NH, limit=f"{where}={value}"), dtype=torch.float64,
                tol_rel=derived_tolerance(0.0, torch.float64, grad=key.startswith("d")))


def test_parallel_all_keys_ignored_is_nan_like_its_reference():
    """Documented edge: parallel form, i_0 = -inf, so row 0 has no key (m_0 = -inf): NaN exactly there,
    as the float64 parallel reference; the other rows are finite and correct."""
    x = clean_inputs(with_initial=False)
    x["i"][:, :, 0] = -math.inf
    h = CORE["parallel--tiled"](x)
    ref = mlstm_parallel_reference(**x, eps=EPS)
    assert torch.equal(~torch.isfinite(h), ~torch.isfinite(ref))
    assert not torch.isfinite(h[:, :, 0]).any() and torch.isfinite(h[:, :, 1:]).all()
    compare("parallel--tiled h (rows 1..)", h[:, :, 1:], ref[:, :, 1:], target="parallel--tiled",
            baseline="parallel_reference_fp64", shape_info=dict(S=S, B=B, NH=NH), dtype=torch.float64,
            tol_rel=derived_tolerance(0.0, torch.float64))
