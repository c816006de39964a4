"""The core kernels through the torch layer, against the float64 references.

Every core kernel — chunkwise limit_chunk and xl_chunk, parallel tiled, the fused step, the fused
sequence and the loop of fused steps — in every dtype (float32, float16, bfloat16; float64 on CPU)
is compared with ``mlstm_recurrent_reference`` (``mlstm_parallel_reference`` for the parallel form)
run in float64 on the same rounded inputs: the output h, the last states and, for the training
kernels, the gradients of a random linear loss on h and the last states w.r.t. every input (q, k, v,
i, f and the initial states). Tolerances come from precision (``check_all``): the error of the
reference run in float32 scaled to the kernel's dtype (``utils.derived_tolerance``), the error of
the plain-torch kernel with the same algorithm in the same dtype, and the rounding that the
exact-gradient formulas amplify where they cancel (gate identities; the stored h in the score
gradient), each bounded from the float64 reference.

Every output the core writes is allocated NaN-filled (the ``poisoned_outputs`` fixture), so an
element the kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import mlstm_kernels.torch as mt
from mlstm_kernels.torch import _ops
from mlstm_kernels.torch.reference import mlstm_parallel_reference, mlstm_recurrent_reference

from .utils import DEFAULT_FACTOR, UNIT_ROUNDOFF, Inputs, compare, derived_tolerance, make_inputs, poison_, rel_error

CORE_CHUNKWISE = ("chunkwise--limit_chunk", "chunkwise--xl_chunk")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
LOW_PRECISION = (torch.bfloat16, torch.float16)
STATE_NAMES = ("c_initial", "n_initial", "m_initial")


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every tensor the core writes starts as NaN."""
    allocate = _ops._output

    def poisoned(like, shape, dtype=None):
        return poison_(allocate(like, shape, dtype))

    monkeypatch.setattr(_ops, "_output", poisoned)


def core_devices(dtype):
    """CPU, and CUDA (marked gpu) when present; float64 is a CPU-only dtype."""
    devices = ["cpu"]
    if torch.cuda.is_available() and dtype != torch.float64:
        devices.append(pytest.param("cuda", marks=pytest.mark.gpu))
    return devices


def dtype_device_params(dtypes=DTYPES):
    return [
        pytest.param(dtype, device, id=f"{str(dtype).replace('torch.', '')}-{getattr(device, 'values', [device])[0]}")
        for dtype in dtypes
        for device in core_devices(dtype)
    ]


# ---------------------------------------------------------------------------------------------
# Running a kernel with a loss on all its outputs, and checking every output and gradient.

# The ABI carries eps as a float32. 2**-20 (≈ 9.5e-7, next to the 1e-6 default) is exact in float32,
# so kernels and the float64 references compute with the same eps; with 1e-6 they would differ by
# its rounding (2.5e-9 relative), visible in gradients that eps alone sets (S = 1, saturated h).
EPS = 2.0**-20


class Results(dict):
    """Outputs and gradients of one run, with what the run started from: the float64 inputs
    (`.inputs`), the incoming gradient of every output (`.incoming`, zero for outputs the loss
    does not use) and eps (`.eps`)."""

    inputs: dict[str, torch.Tensor]
    incoming: dict[str, torch.Tensor]
    eps: float


def loss_weights(outputs: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random float64 weights W for the loss Σ W·out, the same for a kernel and its reference."""
    gen = torch.Generator().manual_seed(seed + 1)
    return {name: torch.randn(out.shape, generator=gen, dtype=torch.float64) for name, out in sorted(outputs.items())}


def outputs_of(result) -> dict[str, torch.Tensor]:
    if isinstance(result, tuple):
        h, (c_last, n_last, m_last) = result
        return {"h": h, "c_last": c_last, "n_last": n_last, "m_last": m_last}
    return {"h": result}


def run(fn, inputs: Inputs, *, grads: bool = True, loss_on=None, **kwargs) -> Results:
    """Outputs of fn(**inputs, **kwargs) and, with `grads`, the gradients "d<input>" of a random
    linear loss on the outputs named in `loss_on` (default: all of them)."""
    leaves = inputs.detached(requires_grad=grads)
    outputs = outputs_of(fn(**leaves, **kwargs))
    res = Results({n: o.detach() for n, o in outputs.items()})
    res.inputs = {k: x.detach().to("cpu", torch.float64) for k, x in leaves.items()}
    res.eps = kwargs.get("eps", EPS)
    weights = loss_weights(outputs, inputs.seed)
    names = list(outputs) if loss_on is None else list(loss_on)
    res.incoming = {n: w if n in names else torch.zeros_like(w) for n, w in weights.items()}
    if grads:
        gs = torch.autograd.grad(
            [outputs[n] for n in names],
            list(leaves.values()),
            [weights[n].to(device=outputs[n].device, dtype=outputs[n].dtype) for n in names],
            allow_unused=True,  # c_last does not depend on q, for instance
        )
        res.update({"d" + key: torch.zeros_like(x) if g is None else g for (key, x), g in zip(leaves.items(), gs)})
    return res


def reference(reference_fn, inputs: Inputs, *, grads: bool = True, loss_on=None, **kwargs):
    """(float64 reference, the same reference run in float32 on the same rounded inputs)."""
    ref = run(reference_fn, inputs.to(torch.float64, "cpu"), grads=grads, loss_on=loss_on, **kwargs)
    plain = run(reference_fn, inputs.to(torch.float32, "cpu"), grads=grads, loss_on=loss_on, **kwargs)
    return ref, plain


def _norm(x: torch.Tensor) -> float:
    return torch.linalg.vector_norm(x).item()


def cancellation_conditioning(ref: Results) -> dict[str, float]:
    """How much rounding the exact-gradient identities can amplify, per gate/stabiliser gradient.

    The core forms di, df and dm_initial from the other gradients (docs/dev-notes.md, "Exact
    gradients"): di_s = k_s·dk_s, df̃_r = Σ_{t≥r} (q_t·dq_t − k_t·dk_t) + ⟨dC_last, C_last⟩ +
    ⟨dn_last, n_last⟩ (times sigmoid(−f_r) for df), dm_initial = ⟨dC_0, C_0⟩ + ⟨dn_0, n_0⟩, plus the
    last-state stabiliser terms routed by the reverse scan. A sum of terms of both signs carries an
    absolute error of the roundoff (and the relative error of dq, dk) times the sum of the terms'
    magnitudes; when they cancel to a small gradient (a gate that barely matters, e.g. S = 1 with a
    dominant input gate) the relative error grows by ‖Σ|terms|‖ / ‖gradient‖, returned here (at
    least 1). Computed from the float64 reference.
    """
    if "dq" not in ref:
        return {}
    x, w = ref.inputs, ref.incoming
    qdq = (x["q"] * ref["dq"]).abs().sum(-1)  # (B, NH, S)
    kdk = (x["k"] * ref["dk"]).abs().sum(-1)  # (B, NH, S)
    last = torch.zeros_like(qdq[..., 0])  # (B, NH)
    if "c_last" in ref:
        last = (
            (w["c_last"] * ref["c_last"]).abs().sum((-2, -1))
            + (w["n_last"] * ref["n_last"]).abs().sum(-1)
            + w["m_last"].abs()[..., 0]
        )
    terms = {
        "df": ((qdq + kdk).flip(-1).cumsum(-1).flip(-1) + last[..., None]) * torch.sigmoid(-x["f"]),
        "di": kdk + last[..., None],
    }
    if "dc_initial" in ref:
        terms["dm_initial"] = (
            (ref["dc_initial"] * x["c_initial"]).abs().sum((-2, -1))
            + (ref["dn_initial"] * x["n_initial"]).abs().sum(-1)
            + last
        )
    return {key: max(1.0, _norm(t) / max(_norm(ref[key]), 1e-300)) for key, t in terms.items()}


def h_rounding_floor(ref: Results, parallel: bool, dtype: torch.dtype) -> dict[str, float]:
    """Relative error of dq and dk that follows from the core reading back the h it stored, and
    from forming the products dh'_t·v_s in the kernel's precision.

    The score gradient is dS_{t,s} = dh'_t·v_s + σ_t with σ_t = −[|den_t| ≥ exp(−m_t)]·sign(den_t)·
    (dh_t·h_t)/d_t, and h is stored in the kernel's dtype. When h saturates (|den_t| ≫ eps, always
    at S = 1 in the parallel form) the two terms cancel to a gradient of order eps, and the
    rounding of h (u per element) enters dq_t = (C_t dh'_t + σ_t n_t)/√DHQK and
    dk_s = Σ_t D'_{t,s} (dh'_t·v_s + σ_t) q̂_t as u·Σ_j|dh_tj h_tj|/d_t times |n_t| and |q̂_t|.
    Computed in float64 from the reference's inputs (D' = exp(logD − m) with the combined
    stabiliser m, n_t = Σ_s D'_{t,s} k_s plus the initial state's share).
    """
    if "dq" not in ref:
        return {}
    x, dh, h = ref.inputs, ref.incoming["h"], ref["h"]
    q, k, i, f = x["q"], x["k"], x["i"], x["f"]
    B, NH, S, DHQK = q.shape
    DHHV = x["v"].shape[-1]
    q_scaled = q / math.sqrt(DHQK)  # (B, NH, S, DHQK)
    f_log = torch.nn.functional.logsigmoid(f)  # (B, NH, S)
    strictly_lower = torch.ones(S, S, dtype=torch.bool).tril(-1)
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    log_d = f_log[..., :, None].expand(B, NH, S, S).masked_fill(~strictly_lower, 0.0).cumsum(-2) + i[..., None, :]
    log_d = log_d.masked_fill(~causal, -math.inf)  # (B, NH, S, S)
    m = log_d.amax(-1)  # (B, NH, S)
    n_state = 0.0
    if not parallel:
        m_0 = x["m_initial"][..., 0] if "m_initial" in x else torch.zeros(B, NH, dtype=q.dtype)
        log_state = f_log.cumsum(-1) + m_0[..., None]  # (B, NH, S) weight of the initial state
        m = torch.maximum(m, log_state)
        if "n_initial" in x:
            n_state = torch.exp(log_state - m)[..., None] * x["n_initial"][:, :, None, :]
    d_stable = torch.exp(log_d - m[..., None])  # (B, NH, S, S)
    n = d_stable @ k + n_state  # (B, NH, S, DHQK)
    den = (n * q_scaled).sum(-1)  # (B, NH, S)
    d = torch.maximum(den.abs(), torch.exp(-m)) + ref.eps  # (B, NH, S)
    sigma = (den.abs() >= torch.exp(-m)).to(q.dtype) * (dh * h).abs().sum(-1) / d  # (B, NH, S) bound of |σ_t|
    u = UNIT_ROUNDOFF[dtype]
    err_dq = u * sigma[..., None] * n.abs() / math.sqrt(DHQK)  # (B, NH, S, DHQK)
    err_dk = u * (d_stable * sigma[..., None]).transpose(-1, -2) @ q_scaled.abs()  # (B, NH, S, DHQK)
    # The products dh'_t·v_s themselves: a dot product of DHHV terms carries at most γ = DHHV·u times
    # Σ_j |dh_tj v_sj| (the standard forward-error bound), which dominates where dh_t·v_s cancels.
    # Its operands are exact in the input dtype and accumulate in float32 (float64 for float64).
    gamma = DHHV * (UNIT_ROUNDOFF[torch.float64] if dtype == torch.float64 else UNIT_ROUNDOFF[torch.float32])
    dsv = d_stable * ((dh.abs() @ x["v"].abs().transpose(-1, -2)) / d[..., None])  # (B, NH, S, S)
    err_dq = err_dq + gamma * (dsv @ k.abs()) / math.sqrt(DHQK)
    err_dk = err_dk + gamma * dsv.transpose(-1, -2) @ q_scaled.abs()
    return {"dq": _norm(err_dq) / max(_norm(ref["dq"]), 1e-300), "dk": _norm(err_dk) / max(_norm(ref["dk"]), 1e-300)}


def skip_outside_range(ref: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Skip when an exact result does not fit float16 (large |i| can make gradients overflow it)."""
    if dtype != torch.float16:
        return
    for key, x in ref.items():
        if not torch.isfinite(x.to(dtype)).all():
            pytest.skip(f"the exact {key} exceeds the range of float16")


def check_all(
    name, res, ref, plain, *, dtype, shape_info, baseline="recurrent_reference_fp64", twin=None, parallel=False
):
    """Compare every output and gradient of `res` with the float64 reference `ref` (of the
    parallel form when `parallel`, else the recurrent form).

    The tolerance of each entry is the largest of
    * utils.derived_tolerance from the error of `plain`, the reference run in float32 (its
      conditioning, scaled to the kernel's dtype), times the cancellation conditioning of the
      gate gradients (`cancellation_conditioning`);
    * utils.derived_tolerance from the error of `twin`, the plain-torch kernel with the same
      algorithm run in the kernel's own dtype (chunkwise/parallel custbw): the core forms the gate
      gradients by the identities of docs/dev-notes.md (di = k·dk, df̃ = Σ (q·dq − k·dk) + ...) and
      the score gradient from the stored h, which cancel to tiny values when a gate barely matters
      (S = 1 with a dominant input gate); the same computation in plain torch shows how much of
      that is rounding. The twin is held to the reference in test_native.py;
    * DEFAULT_FACTOR times the error of dq, dk due to the stored h (`h_rounding_floor`);
    * twice the error of merely storing the exact result in the kernel's output dtype (float16
      gradients of tiny gates underflow).
    """
    assert set(res) == set(ref), f"{name}: outputs {sorted(res)} != reference {sorted(ref)}"
    conditioning = cancellation_conditioning(ref)
    h_floor = h_rounding_floor(ref, parallel, dtype)
    for key in res:
        grad = key.startswith("d")
        plain_err = rel_error(plain[key], ref[key]) if plain is not None else 0.0
        tol = derived_tolerance(plain_err, dtype, grad=grad, plain_dtype=torch.float32) * conditioning.get(key, 1.0)
        if twin is not None:
            tol = max(tol, derived_tolerance(rel_error(twin[key], ref[key]), dtype, grad=grad))
        tol = max(tol, DEFAULT_FACTOR * h_floor.get(key, 0.0), 2.0 * rel_error(ref[key].to(res[key].dtype), ref[key]))
        info = shape_info if key not in conditioning else {**shape_info, "cond": f"{conditioning[key]:.1e}"}
        compare(
            f"{name} {key}", res[key], ref[key], target=name, baseline=baseline, shape_info=info,
            dtype=dtype, tol_rel=tol,
        )


def reference_with_states(eps=EPS, **kw):
    return mlstm_recurrent_reference(**kw, eps=eps)


def reference_h(eps=EPS, **kw):
    return mlstm_recurrent_reference(**kw, eps=eps)[0]


def reference_parallel(eps=EPS, **kw):
    return mlstm_parallel_reference(**kw, eps=eps)


def kernel(name: str):
    """Training kernel `name` from the registry, called with EPS unless told otherwise."""
    return functools.partial(mt.get_mlstm_kernel(name), eps=EPS)


def sequence_kernel(name: str):
    return functools.partial(mt.get_mlstm_sequence_kernel(name), eps=EPS)


def step_kernel(name: str):
    return functools.partial(mt.get_mlstm_step_kernel(name), eps=EPS)


def shape_id(shape) -> str:
    return "x".join(str(d) for d in shape)


# ---------------------------------------------------------------------------------------------
# Training kernels: chunkwise.

# (B, NH, S, DHQK, DHHV, L): S = 1, S < L, partial last chunks, B and NH not powers of two, DHQK ≠ DHHV.
SHAPES = [
    (1, 1, 1, 16, 16, 16),
    (2, 3, 7, 16, 32, 16),
    (3, 1, 63, 32, 16, 16),
    (1, 3, 130, 16, 48, 32),
    (2, 1, 130, 32, 32, 64),
]
# Long sequences: fewer combinations, they dominate the reference's cost.
LONG_SHAPES = [(1, 2, 500, 16, 32, 64), (1, 1, 989, 32, 16, 128)]
VARIANTS = {
    "plain": dict(),
    "fbias3_initial": dict(f_bias=3.0, with_initial=True),
    "large_i_initial": dict(i_scale=8.0, with_initial=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype, device", dtype_device_params())
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_chunkwise_vs_reference(shape, dtype, device, variant):
    B, NH, S, DHQK, DHHV, L = shape
    inputs = make_inputs(B, NH, S, DHQK, DHHV, dtype, device, **VARIANTS[variant])
    ref, plain = reference(reference_with_states, inputs)
    skip_outside_range(ref, dtype)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, L=L, variant=variant, device=device, seed=inputs.seed)
    twin = run(kernel("chunkwise--native_custbw"), inputs, return_last_states=True, chunk_size=L)
    for name in CORE_CHUNKWISE:
        res = run(kernel(name), inputs, return_last_states=True, chunk_size=L)
        check_all(name, res, ref, plain, dtype=dtype, shape_info=info, twin=twin)


@pytest.mark.parametrize("dtype, device", dtype_device_params([torch.float32, torch.bfloat16]))
@pytest.mark.parametrize("shape", LONG_SHAPES, ids=shape_id)
def test_chunkwise_long_sequences(shape, dtype, device):
    B, NH, S, DHQK, DHHV, L = shape
    inputs = make_inputs(B, NH, S, DHQK, DHHV, dtype, device, f_bias=3.0, i_scale=3.0, with_initial=True)
    ref, plain = reference(reference_with_states, inputs)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, L=L, device=device, seed=inputs.seed)
    twin = run(kernel("chunkwise--native_custbw"), inputs, return_last_states=True, chunk_size=L)
    for name, chunk_size in (("chunkwise--limit_chunk", L), ("chunkwise--xl_chunk", 256)):
        res = run(kernel(name), inputs, return_last_states=True, chunk_size=chunk_size)
        check_all(name, res, ref, plain, dtype=dtype, shape_info={**info, "L": chunk_size}, twin=twin)


@pytest.mark.parametrize(
    "name, chunk_sizes",
    [("chunkwise--limit_chunk", (16, 32, 64, 128)), ("chunkwise--xl_chunk", (16, 64, 256, 512, 4096))],
)
def test_chunk_sizes(name, chunk_sizes):
    """Every supported chunk size gives the reference (S = 300: partial last chunks, S < L too)."""
    B, NH, S, DHQK, DHHV = 1, 2, 300, 8, 12
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", with_initial=True, i_scale=3.0, f_bias=1.0)
    ref = run(reference_with_states, inputs)
    for L in chunk_sizes:
        res = run(kernel(name), inputs, return_last_states=True, chunk_size=L)
        info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, L=L, seed=inputs.seed)
        check_all(name, res, ref, None, dtype=torch.float64, shape_info=info)


@pytest.mark.parametrize("dtype, device", dtype_device_params([torch.float32, torch.float64]))
@pytest.mark.parametrize("name", CORE_CHUNKWISE)
def test_state_passing(name, dtype, device):
    """Three calls, each started from the previous one's last states, == one call over the whole
    sequence == the reference: outputs, last states and every gradient (initial states included)."""
    fn = kernel(name)
    B, NH, S, DHQK, DHHV, L = 2, 3, 150, 16, 32, 32
    cuts = (0, 45, 101, S)
    inputs = make_inputs(B, NH, S, DHQK, DHHV, dtype, device, with_initial=True, f_bias=2.0)

    def pieces(q, k, v, i, f, c_initial, n_initial, m_initial):
        states, hs = (c_initial, n_initial, m_initial), []
        for a, b in zip(cuts[:-1], cuts[1:]):
            h, states = fn(
                q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], i[..., a:b], f[..., a:b], *states,
                return_last_states=True, chunk_size=L,
            )
            hs.append(h)
        return torch.cat(hs, dim=2), states

    ref, plain = reference(reference_with_states, inputs)
    res = run(pieces, inputs)
    info = dict(S="45+56+49", B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, L=L, device=device, seed=inputs.seed)
    check_all(f"{name}(3 calls)", res, ref, plain, dtype=dtype, shape_info=info)
    one_call = run(fn, inputs, return_last_states=True, chunk_size=L)
    for key in res:
        compare(
            f"{name}(3 calls) {key}", res[key], one_call[key], target=f"{name}(3 calls)", baseline=f"{name}(1 call)",
            shape_info=info, dtype=dtype, tol_rel=derived_tolerance(0.0, dtype, grad=key.startswith("d")),
        )


@pytest.mark.parametrize("loss_on", [("h",), ("c_last",), ("n_last", "m_last"), ("m_last",)], ids="+".join)
@pytest.mark.parametrize("name", CORE_CHUNKWISE)
def test_losses_on_some_outputs(name, loss_on):
    """Gradients when the loss uses only some outputs (the others get no gradient at all)."""
    B, NH, S, DHQK, DHHV = 2, 2, 45, 8, 12
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", with_initial=True, i_scale=3.0)
    ref = run(reference_with_states, inputs, loss_on=loss_on)
    res = run(kernel(name), inputs, loss_on=loss_on, return_last_states=True, chunk_size=16)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, loss="+".join(loss_on), seed=inputs.seed)
    check_all(name, res, ref, None, dtype=torch.float64, shape_info=info)


@pytest.mark.parametrize("name", CORE_CHUNKWISE)
def test_without_last_states(name):
    """return_last_states=False returns h alone; gradients w.r.t. the initial states still flow."""
    B, NH, S, DHQK, DHHV = 2, 1, 45, 8, 8
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", with_initial=True)
    res = run(kernel(name), inputs, chunk_size=16)
    assert set(res) == {"h", "dq", "dk", "dv", "di", "df", "dc_initial", "dn_initial", "dm_initial"}
    ref = run(reference_h, inputs)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, seed=inputs.seed)
    check_all(name, res, ref, None, dtype=torch.float64, shape_info=info)


@pytest.mark.parametrize("name", CORE_CHUNKWISE)
def test_only_some_inputs_require_grad(name):
    B, NH, S, DHQK, DHHV = 1, 2, 33, 8, 8
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", with_initial=True)
    leaves = inputs.detached()
    leaves["v"].requires_grad_(True)
    leaves["m_initial"].requires_grad_(True)
    h, (c, n, m) = kernel(name)(**leaves, return_last_states=True, chunk_size=16)
    dv, dm0 = torch.autograd.grad(h.sum() + c.sum(), [leaves["v"], leaves["m_initial"]])
    ref_leaves = inputs.detached()
    ref_leaves["v"].requires_grad_(True)
    ref_leaves["m_initial"].requires_grad_(True)
    h_ref, (c_ref, _, _) = reference_with_states(**ref_leaves)
    dv_ref, dm0_ref = torch.autograd.grad(h_ref.sum() + c_ref.sum(), [ref_leaves["v"], ref_leaves["m_initial"]])
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, seed=inputs.seed)
    tol = derived_tolerance(0.0, torch.float64, grad=True)
    compare(f"{name} dv", dv, dv_ref, target=name, baseline="recurrent_reference_fp64", shape_info=info, dtype=torch.float64, tol_rel=tol)
    compare(f"{name} dm_initial", dm0, dm0_ref, target=name, baseline="recurrent_reference_fp64", shape_info=info, dtype=torch.float64, tol_rel=tol)


@pytest.mark.parametrize("name", CORE_CHUNKWISE)
def test_m_initial_of_shape_B_NH(name):
    """m_initial (B, NH) (upstream's JAX layout) is accepted; its gradient has the same shape."""
    B, NH, S, DHQK, DHHV = 2, 3, 20, 8, 8
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", with_initial=True)
    flat = inputs.detached()
    flat["m_initial"] = flat["m_initial"][..., 0].clone().requires_grad_(True)
    h, _ = kernel(name)(**flat, return_last_states=True, chunk_size=16)
    (dm0,) = torch.autograd.grad(h.sum(), [flat["m_initial"]])
    assert dm0.shape == (B, NH)
    h_ref = run(reference_h, inputs, grads=False)["h"]
    compare(f"{name} h", h, h_ref, target=name, baseline="recurrent_reference_fp64", shape_info=dict(S=S, B=B, NH=NH),
            dtype=torch.float64, tol_rel=derived_tolerance(0.0, torch.float64))


@pytest.mark.parametrize("eps", [0.0, 2.0**-10])
@pytest.mark.parametrize("name", CORE_CHUNKWISE + ("parallel--tiled",))
def test_eps(name, eps):
    B, NH, S, DHQK, DHHV = 1, 2, 40, 8, 8
    parallel = name.startswith("parallel")
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", with_initial=not parallel, i_scale=3.0)
    ref_fn = reference_parallel if parallel else reference_h
    ref = run(ref_fn, inputs, eps=eps)
    res = run(kernel(name), inputs, eps=eps, chunk_size=16)
    check_all(name, res, ref, None, dtype=torch.float64, shape_info=dict(S=S, B=B, NH=NH, eps=eps, seed=inputs.seed),
              parallel=parallel)


@pytest.mark.parametrize("name", CORE_CHUNKWISE + ("parallel--tiled",))
def test_negative_eps_is_rejected_by_the_core(name):
    inputs = make_inputs(1, 1, 4, 8, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match="eps"):
        kernel(name)(**inputs, eps=-1.0, chunk_size=16)


# ---------------------------------------------------------------------------------------------
# Training kernels: parallel.

PARALLEL_SHAPES = [(1, 1, 1, 16, 16), (2, 3, 7, 16, 32), (3, 1, 63, 32, 16), (1, 3, 130, 16, 48), (1, 1, 500, 16, 16)]


@pytest.mark.parametrize("variant", ["plain", "fbias3", "large_i"])
@pytest.mark.parametrize("dtype, device", dtype_device_params())
@pytest.mark.parametrize("shape", PARALLEL_SHAPES, ids=shape_id)
def test_parallel_vs_reference(shape, dtype, device, variant):
    B, NH, S, DHQK, DHHV = shape
    dist = {"plain": {}, "fbias3": dict(f_bias=3.0), "large_i": dict(i_scale=8.0)}[variant]
    inputs = make_inputs(B, NH, S, DHQK, DHHV, dtype, device, **dist)
    ref, plain = reference(reference_parallel, inputs)
    skip_outside_range(ref, dtype)
    res = run(kernel("parallel--tiled"), inputs)
    twin = run(kernel("parallel--native_stablef_custbw"), inputs)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, variant=variant, device=device, seed=inputs.seed)
    check_all("parallel--tiled", res, ref, plain, dtype=dtype, shape_info=info, baseline="parallel_reference_fp64", twin=twin, parallel=True)


# ---------------------------------------------------------------------------------------------
# Inference kernels: sequence and step (forward only).

SEQUENCE_CORE = ("fused_sequence", "native_sequence__fused")


@pytest.mark.parametrize("with_initial", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("dtype, device", dtype_device_params())
@pytest.mark.parametrize("S", [1, 7, 63, 130])
def test_sequence_vs_reference(S, dtype, device, with_initial):
    B, NH, DHQK, DHHV = 3, 2, 16, 32
    inputs = make_inputs(B, NH, S, DHQK, DHHV, dtype, device, f_bias=1.0, i_scale=3.0, with_initial=with_initial)
    ref, plain = reference(reference_with_states, inputs, grads=False)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, device=device, seed=inputs.seed)
    for name in SEQUENCE_CORE:
        with torch.no_grad():
            res = run(sequence_kernel(name), inputs, grads=False, return_last_states=True, dtype_state=state_dtype)
        assert all(res[k].dtype == state_dtype for k in ("c_last", "n_last", "m_last"))
        assert res["h"].dtype == dtype
        check_all(name, res, ref, plain, dtype=dtype, shape_info=info)


@pytest.mark.parametrize("name", SEQUENCE_CORE)
def test_sequence_without_last_states(name):
    inputs = make_inputs(2, 2, 19, 8, 8, torch.float64, "cpu", with_initial=True)
    with torch.no_grad():
        h = sequence_kernel(name)(**inputs, dtype_state=torch.float64)
    assert isinstance(h, torch.Tensor)
    h_ref = run(reference_h, inputs, grads=False)["h"]
    compare(f"{name} h", h, h_ref, target=name, baseline="recurrent_reference_fp64", shape_info=dict(S=19),
            dtype=torch.float64, tol_rel=derived_tolerance(0.0, torch.float64))


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", SEQUENCE_CORE)
def test_sequence_low_precision_states(name, state_dtype):
    """dtype_state=bf16/fp16 keeps the states in that dtype; outputs stay within the 16-bit targets
    of a reference started from the same rounded initial states."""
    B, NH, S, DHQK, DHHV = 2, 2, 24, 16, 16
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float32, "cpu", with_initial=True, f_bias=2.0)
    for key in STATE_NAMES:
        inputs[key] = inputs[key].to(state_dtype)
    with torch.no_grad():
        h, states = sequence_kernel(name)(**inputs, return_last_states=True, dtype_state=state_dtype)
    assert all(s.dtype == state_dtype for s in states)
    ref = run(reference_with_states, inputs.to(torch.float64), grads=False)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, state_dtype=state_dtype, seed=inputs.seed)
    # Each step rounds the state to 16 bits: the error grows like the square root of S.
    tol = derived_tolerance(0.0, state_dtype) * math.sqrt(S)
    for key, out in zip(("h", "c_last", "n_last", "m_last"), (h, *states)):
        compare(f"{name} {key}", out, ref[key], target=f"{name}(dtype_state={state_dtype})",
                baseline="recurrent_reference_fp64", shape_info=info, dtype=state_dtype, tol_rel=min(tol, 2e-2))


def step_as_sequence(step_fn, state_dtype):
    def fn(q, k, v, i, f, c_initial, n_initial, m_initial):
        h, states = step_fn(q[:, :, 0], k[:, :, 0], v[:, :, 0], i, f, c_initial, n_initial, m_initial, dtype_state=state_dtype)
        return h[:, :, None], states

    return fn


@pytest.mark.parametrize("dtype, device", dtype_device_params())
@pytest.mark.parametrize("variant", ["plain", "large_i"])
def test_step_vs_reference(dtype, device, variant):
    B, NH, DHQK, DHHV = 3, 5, 16, 48
    inputs = make_inputs(B, NH, 1, DHQK, DHHV, dtype, device, with_initial=True, i_scale=8.0 if variant == "large_i" else 1.0)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    ref, plain = reference(reference_with_states, inputs, grads=False)
    with torch.no_grad():
        res = run(step_as_sequence(step_kernel("fused"), state_dtype), inputs, grads=False)
    assert res["h"].dtype == dtype and res["c_last"].dtype == state_dtype and res["m_last"].shape == (B, NH, 1)
    info = dict(S=1, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, variant=variant, device=device, seed=inputs.seed)
    check_all("step--fused", res, ref, plain, dtype=dtype, shape_info=info)


def test_step_accepts_gates_of_shape_B_NH():
    B, NH, DHQK, DHHV = 2, 3, 8, 8
    inputs = make_inputs(B, NH, 1, DHQK, DHHV, torch.float64, "cpu", with_initial=True)
    q, k, v = (inputs[n][:, :, 0] for n in "qkv")
    states = [inputs[n] for n in STATE_NAMES]
    fused = step_kernel("fused")
    h3, s3 = fused(q, k, v, inputs["i"], inputs["f"], *states, dtype_state=torch.float64)
    h2, s2 = fused(q, k, v, inputs["i"][..., 0], inputs["f"][..., 0], *states, dtype_state=torch.float64)
    torch.testing.assert_close(h2, h3, rtol=0, atol=0)
    for a, b in zip(s2, s3):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fused", "native"])
@pytest.mark.parametrize("gate_dtype", [torch.bfloat16, torch.float16])
def test_step_takes_16bit_gates_as_their_float32_values(name, gate_dtype, device):
    """The step keeps 16-bit gates (no cast launches per token): the result is bit-identical to the
    same gates widened to float32 first."""
    B, NH, DHQK, DHHV = 2, 3, 16, 32
    inputs = make_inputs(B, NH, 1, DHQK, DHHV, torch.bfloat16, device, with_initial=True)
    q, k, v = (inputs[n][:, :, 0] for n in "qkv")
    states = [inputs[n].float() for n in STATE_NAMES]
    i16, f16 = inputs["i"].to(gate_dtype), inputs["f"].to(gate_dtype)
    fn = step_kernel(name)
    h16, s16 = fn(q, k, v, i16, f16, *states)
    h32, s32 = fn(q, k, v, i16.float(), f16.float(), *states)
    torch.testing.assert_close(h16, h32, rtol=0, atol=0)
    for a, b in zip(s16, s32):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_step_loop_equals_sequence_and_chunkwise():
    """A loop of fused steps == the fused sequence kernel == both chunkwise kernels (float64)."""
    B, NH, S, DHQK, DHHV = 2, 3, 37, 8, 16
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", with_initial=True, f_bias=2.0)
    step = step_kernel("fused")
    c, n, m = (inputs[k] for k in STATE_NAMES)
    hs = []
    for t in range(S):
        h_t, (c, n, m) = step(*(inputs[key][:, :, t] for key in "qkv"), inputs["i"][:, :, t, None],
                              inputs["f"][:, :, t, None], c, n, m, dtype_state=torch.float64)
        hs.append(h_t)
    loop = {"h": torch.stack(hs, dim=2), "c_last": c, "n_last": n, "m_last": m}
    candidates = {
        "fused_sequence": sequence_kernel("fused_sequence")(**inputs, return_last_states=True, dtype_state=torch.float64),
        **{name: kernel(name)(**inputs, return_last_states=True, chunk_size=16) for name in CORE_CHUNKWISE},
    }
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, seed=inputs.seed)
    for name, result in candidates.items():
        for key, out in outputs_of(result).items():
            compare(f"{name} {key}", out, loop[key], target=name, baseline="fused_step_loop", shape_info=info,
                    dtype=torch.float64, tol_rel=derived_tolerance(0.0, torch.float64))


# ---------------------------------------------------------------------------------------------
# Layout, autocast and no-grad behaviour of the torch layer.


def strided_like(t: torch.Tensor, inner_stride: bool) -> torch.Tensor:
    """The same values in a non-contiguous layout: leading dims permuted in memory, and optionally
    every second element in the innermost dimension."""
    if t.dim() < 3:
        return t
    perm = (1, 0) + tuple(range(2, t.dim()))
    base = t.permute(perm).contiguous().permute(perm)  # leading strides swapped, inner stride 1
    if inner_stride:
        wide = torch.zeros(*base.shape[:-1], 2 * base.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = base
        return wide[..., ::2]
    return base


@pytest.mark.parametrize("inner_stride", [False, True], ids=["leading_strides", "inner_stride"])
@pytest.mark.parametrize("name", CORE_CHUNKWISE + ("parallel--tiled",))
def test_non_contiguous_inputs(name, inner_stride):
    """Strided views give exactly the results of contiguous inputs (leading strides are passed to the
    core; an inner stride is made contiguous first)."""
    parallel = name.startswith("parallel")
    inputs = make_inputs(2, 3, 37, 8, 12, torch.float64, "cpu", with_initial=not parallel)
    strided = Inputs({k: strided_like(x, inner_stride) for k, x in inputs.items()})
    strided.seed = inputs.seed
    assert not strided["q"].is_contiguous()
    kw = dict(chunk_size=16) if parallel else dict(chunk_size=16, return_last_states=True)
    fn = kernel(name)
    a, b = run(fn, inputs, **kw), run(fn, strided, **kw)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=f"{name} {key}")


def test_non_contiguous_step_and_sequence():
    inputs = make_inputs(2, 3, 9, 8, 12, torch.float64, "cpu", with_initial=True)
    strided = Inputs({k: strided_like(x, True) for k, x in inputs.items()})
    strided.seed = inputs.seed
    seq = sequence_kernel("fused_sequence")
    a = run(seq, inputs, grads=False, return_last_states=True, dtype_state=torch.float64)
    b = run(seq, strided, grads=False, return_last_states=True, dtype_state=torch.float64)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    step = step_as_sequence(step_kernel("fused"), torch.float64)
    one = Inputs({k: (x[:, :, :1] if k in "qkvif" else x) for k, x in inputs.items()})
    one.seed = inputs.seed
    one_strided = Inputs({k: strided_like(x, True) for k, x in one.items()})
    one_strided.seed = inputs.seed
    a, b = run(step, one, grads=False), run(step, one_strided, grads=False)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


@pytest.mark.parametrize("kernel_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", CORE_CHUNKWISE + ("parallel--tiled", "chunkwise--native_custbw", "parallel--native_stablef_autograd"))
def test_autocast(name, kernel_dtype):
    """Inside an enabled autocast region q, k, v are cast to autocast_kernel_dtype (whatever the
    region's own dtype) and gradients reach the float32 inputs in float32; outside, the kernel runs
    in the inputs' dtype."""
    parallel = name.startswith("parallel")
    fn = kernel(name)
    inputs = make_inputs(2, 2, 40, 16, 16, torch.float32, "cpu", with_initial=not parallel)
    kw = dict(chunk_size=16, autocast_kernel_dtype=kernel_dtype)
    leaves = inputs.detached(requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = fn(**leaves, **kw)
    assert h.dtype == kernel_dtype
    grads = torch.autograd.grad(h.float().sum(), list(leaves.values()))
    assert all(g.dtype == torch.float32 for g in grads)

    cast = inputs.detached(requires_grad=False)
    for key in "qkv":
        cast[key] = cast[key].to(kernel_dtype)
    h_cast = fn(**cast, **kw)
    torch.testing.assert_close(h, h_cast, rtol=0, atol=0)

    h_fp32 = fn(**inputs, **kw)
    assert h_fp32.dtype == torch.float32


def test_no_grad_skips_the_saved_buffer(monkeypatch):
    """Without autograd the forward saves nothing for a backward; results are the same."""
    calls = []
    forward = _ops.chunkwise_fwd

    def spy(*args):
        calls.append(args[-1])
        return forward(*args)

    monkeypatch.setattr(_ops, "chunkwise_fwd", spy)
    inputs = make_inputs(1, 2, 40, 8, 8, torch.float64, "cpu", with_initial=True)
    fn = kernel("chunkwise--limit_chunk")
    with torch.no_grad():
        h_no_grad = fn(**inputs, chunk_size=16)
    h_grad = fn(**inputs.detached(requires_grad=True), chunk_size=16)
    assert calls == [False, True]
    torch.testing.assert_close(h_no_grad, h_grad.detach(), rtol=0, atol=0)
