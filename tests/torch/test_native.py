"""The plain-torch kernels against the float64 references.

Every native kernel — chunkwise (autograd, hand-written backward), parallel (subtractive and stablef
gate matrix, each with autograd and hand-written backward), recurrent step and sequence — is compared
with ``mlstm_recurrent_reference`` or ``mlstm_parallel_reference`` run in float64 on the same rounded
inputs: the output h, the last states and the gradients w.r.t. every input (q, k, v, i, f and the
initial states) of a random linear loss on h and on the last states. Tolerances come from
``utils.derived_tolerance``: the error of the same reference run in float32 (scaled to the kernel's
unit roundoff for other dtypes), plus the known extra rounding of the kernel's algorithm, times a small
factor, never below the dtype's floor.
"""

from __future__ import annotations

import math

import pytest
import torch

from mlstm_kernels.torch.chunkwise.native import mlstm_chunkwise__native_autograd, mlstm_chunkwise__native_custbw
from mlstm_kernels.torch.parallel.native import mlstm_parallel__native_autograd, mlstm_parallel__native_custbw
from mlstm_kernels.torch.parallel.native_stablef import (
    mlstm_parallel__native_stablef_autograd,
    mlstm_parallel__native_stablef_custbw,
)
from mlstm_kernels.torch.recurrent.native import mlstm_recurrent_sequence__native_fw, mlstm_recurrent_step__native
from mlstm_kernels.torch.reference import mlstm_parallel_reference, mlstm_recurrent_reference

from .utils import (
    DEFAULT_FACTOR,
    UNIT_ROUNDOFF,
    Inputs,
    compare,
    derived_tolerance,
    make_inputs,
    normaliser_margin,
    rel_error,
)

CHUNKWISE_KERNELS = {
    "chunkwise--native_autograd": mlstm_chunkwise__native_autograd,
    "chunkwise--native_custbw": mlstm_chunkwise__native_custbw,
}
PARALLEL_KERNELS = {
    "parallel--native_autograd": mlstm_parallel__native_autograd,
    "parallel--native_custbw": mlstm_parallel__native_custbw,
    "parallel--native_stablef_autograd": mlstm_parallel__native_stablef_autograd,
    "parallel--native_stablef_custbw": mlstm_parallel__native_stablef_custbw,
}

# (B, NH, S, DHQK, DHHV, L): S = 1, S < L, partial last chunks, B and NH not powers of two, DHQK ≠ DHHV.
# At S = 1 with no initial state dq and dk vanish up to eps wherever |n·q̂| wins the normaliser (h is
# then ±v); many (b, h) pairs make it practically certain that some pairs take the exp(-m) branch,
# so the relative error measures more than the rounding noise of a cancellation.
CHUNKWISE_SHAPES = [
    (3, 7, 1, 8, 12, 16),
    (2, 3, 7, 16, 24, 16),
    (3, 1, 63, 8, 12, 16),
    (1, 3, 130, 12, 20, 32),
    (2, 1, 130, 16, 8, 64),
]
PARALLEL_SHAPES = [(B, NH, S, DHQK, DHHV) for B, NH, S, DHQK, DHHV, _ in CHUNKWISE_SHAPES[:4]]

# Input distributions: standard normal; long memory (f biased towards 1) with initial states;
# large |i| (i ~ N(0, 64): stabilisers far from 0, both normaliser branches) with initial states.
VARIANTS = {
    "plain": dict(),
    "fbias3_initial": dict(f_bias=3.0, with_initial=True),
    "large_i_initial": dict(i_scale=8.0, with_initial=True),
}
# Large |i| makes exp(-m_t) tiny, so nothing bounds the normaliser away from a cancelling n·q̂: some
# rows of h become ill-conditioned (‖h_t‖ ~ 1000× the median). Every algorithm then loses precision
# in proportion to its own exponent rounding, and float32 errors of two different algorithms (here
# chunkwise or parallel vs the recurrent reference) differ by an unpredictable factor. Exactness at
# large |i| is therefore checked in float64; float32 kernels of the core are compared at large |i|
# with a native kernel of the same algorithm in float32.
DTYPE_VARIANTS = [(torch.float32, v) for v in ("plain", "fbias3_initial")] + [(torch.float64, v) for v in VARIANTS]
DTYPES = [torch.float32, torch.float64]
OUTPUT_NAMES = ("h", "c_last", "n_last", "m_last")


def shape_ids(shape) -> str:
    return "x".join(str(d) for d in shape)


def loss_weights(outputs: dict[str, torch.Tensor], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random weights W for the loss Σ W·out, drawn from `seed` and rounded to `dtype` (the same
    values for a kernel and its reference)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return {
        name: torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype).double()
        for name, out in sorted(outputs.items())
    }


def run_with_grads(fn, inputs: Inputs, weight_dtype: torch.dtype | None = None, **kwargs) -> dict[str, torch.Tensor]:
    """Outputs of fn(**inputs, **kwargs) and the gradients of a random linear loss on all of them,
    with weights rounded to `weight_dtype` (default: the dtype of q).

    Returns {"h", and with states "c_last", "n_last", "m_last", then "d<input>" for every input}."""
    leaves = inputs.detached(requires_grad=True)
    result = fn(**leaves, **kwargs)
    if isinstance(result, tuple):
        h, (c_last, n_last, m_last) = result
        outputs = {"h": h, "c_last": c_last, "n_last": n_last, "m_last": m_last}
    else:
        outputs = {"h": result}
    weights = loss_weights(outputs, inputs.seed, weight_dtype or inputs["q"].dtype)
    names = list(outputs)
    grads = torch.autograd.grad(
        [outputs[n] for n in names],
        list(leaves.values()),
        [weights[n].to(device=outputs[n].device, dtype=outputs[n].dtype) for n in names],
        allow_unused=True,
    )
    res = {n: outputs[n].detach() for n in names}
    for key, g in zip(leaves.keys(), grads):
        assert g is not None, f"no gradient reached {key}"
        res["d" + key] = g
    return res


def check_all(name, res, ref, plain, *, baseline, dtype, shape_info, extra_error=0.0, factor=DEFAULT_FACTOR):
    """Compare every entry of `res` with `ref`, each with a tolerance derived from the error of
    `plain` (the same reference run in float32; see `reference_results`) and `extra_error`."""
    assert set(res) == set(ref), f"{name}: outputs {sorted(res)} != reference {sorted(ref)}"
    for key in res:
        plain_err = rel_error(plain[key], ref[key]) if plain is not None else 0.0
        tol = derived_tolerance(
            plain_err, dtype, grad=key.startswith("d"), factor=factor, plain_dtype=torch.float32, extra_error=extra_error
        )
        compare(
            f"{name} {key}", res[key], ref[key],
            target=name, baseline=baseline, shape_info=shape_info, dtype=dtype, tol_rel=tol,
        )


def cumsum_gate_error(inputs: Inputs, dtype: torch.dtype, block: int) -> float:
    """Extra relative error of algorithms that form logD_{t,s} = b_t - b_s + i_s from cumulative sums
    b of f̃ over blocks of `block` steps (the chunk for chunkwise, the whole sequence for the
    subtractive parallel form): each b carries an absolute rounding error of about u·max|b|, which
    exp() turns into a relative error of the decay weights and so of h and the gradients. (The
    reference sums only the terms each entry needs; this is why the stablef form exists.)"""
    f_log = torch.nn.functional.logsigmoid(inputs["f"].double())  # (B, NH, S)
    S = f_log.shape[-1]
    largest = max(f_log[..., s : s + block].cumsum(dim=-1).abs().max().item() for s in range(0, S, block))
    return 2.0 * UNIT_ROUNDOFF[dtype] * largest


def reference_results(reference_fn, inputs: Inputs, **kwargs):
    """The float64 reference and the plain float32 run of the same reference, with gradients.

    For float32 kernels the float32 run is the plain implementation in their dtype; for float64
    kernels its error, scaled to float64 roundoff, measures the conditioning of each quantity."""
    dtype = inputs["q"].dtype
    ref = run_with_grads(reference_fn, inputs.to(torch.float64), weight_dtype=dtype, **kwargs)
    plain = run_with_grads(reference_fn, inputs.to(torch.float32), weight_dtype=dtype, **kwargs)
    return ref, plain


def dtype_variant_id(param) -> str:
    dtype, variant = param
    return f"{str(dtype).replace('torch.', '')}-{variant}"


@pytest.mark.parametrize("dtype_variant", DTYPE_VARIANTS, ids=dtype_variant_id)
@pytest.mark.parametrize("shape", CHUNKWISE_SHAPES, ids=shape_ids)
def test_chunkwise_vs_recurrent_reference(shape, dtype_variant):
    dtype, variant = dtype_variant
    B, NH, S, DHQK, DHHV, L = shape
    inputs = make_inputs(B, NH, S, DHQK, DHHV, dtype, "cpu", **VARIANTS[variant])
    ref, plain = reference_results(mlstm_recurrent_reference, inputs)
    extra = cumsum_gate_error(inputs, dtype, block=L)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, L=L, variant=variant, seed=inputs.seed)
    for name, fn in CHUNKWISE_KERNELS.items():
        res = run_with_grads(fn, inputs, return_last_states=True, chunk_size=L)
        check_all(
            name, res, ref, plain, baseline="recurrent_reference_fp64", dtype=dtype, shape_info=info, extra_error=extra
        )


@pytest.mark.parametrize("dtype_variant", DTYPE_VARIANTS, ids=dtype_variant_id)
@pytest.mark.parametrize("shape", PARALLEL_SHAPES, ids=shape_ids)
def test_parallel_vs_parallel_reference(shape, dtype_variant):
    dtype, variant = dtype_variant
    B, NH, S, DHQK, DHHV = shape
    dist = {key: val for key, val in VARIANTS[variant].items() if key != "with_initial"}
    inputs = make_inputs(B, NH, S, DHQK, DHHV, dtype, "cpu", **dist)
    ref, plain = reference_results(mlstm_parallel_reference, inputs)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, variant=variant, seed=inputs.seed)
    for name, fn in PARALLEL_KERNELS.items():
        res = run_with_grads(fn, inputs)
        # The stablef kernels build logD like the reference; the subtractive ones from global sums.
        extra = 0.0 if "stablef" in name else cumsum_gate_error(inputs, dtype, block=S)
        check_all(
            name, res, ref, plain, baseline="parallel_reference_fp64", dtype=dtype, shape_info=info, extra_error=extra
        )


@pytest.mark.parametrize("name", list(PARALLEL_KERNELS))
def test_parallel_rejects_states(name):
    fn = PARALLEL_KERNELS[name]
    inputs = make_inputs(1, 2, 5, 8, 8, torch.float32, "cpu", with_initial=True)
    qkvif = {key: inputs[key] for key in "qkvif"}
    with pytest.raises(ValueError, match="initial states"):
        fn(**inputs)
    with pytest.raises(ValueError, match="last states"):
        fn(**qkvif, return_last_states=True)


def test_references_agree():
    """The parallel reference is the recurrent definition started from m_0 = -inf (no state)."""
    B, NH, S, DHQK, DHHV = 2, 3, 40, 8, 12
    for dist in ({}, dict(f_bias=3.0), dict(i_scale=8.0)):
        inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", **dist)
        m_initial = torch.full((B, NH, 1), -math.inf, dtype=torch.float64)
        h_recurrent, _ = mlstm_recurrent_reference(**inputs, m_initial=m_initial)
        h_parallel = mlstm_parallel_reference(**inputs)
        info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, seed=inputs.seed, **dist)
        compare(
            "parallel_reference h", h_parallel, h_recurrent, target="parallel_reference",
            baseline="recurrent_reference(m_0=-inf)", shape_info=info, dtype=torch.float64,
            tol_rel=derived_tolerance(0.0, torch.float64),
        )


def test_normaliser_gradient_matters():
    """The gradient through max(|n·q̂|, exp(-m)) is not negligible on these inputs, and both branches
    occur: a backward that treats the normaliser as a constant would fail the tests above."""
    B, NH, S, DHQK, DHHV = 2, 2, 63, 8, 12
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", i_scale=3.0)
    ref = run_with_grads(mlstm_parallel_reference, inputs)

    leaves = inputs.detached(requires_grad=True)
    q, k = leaves["q"], leaves["k"]
    f_log = torch.nn.functional.logsigmoid(leaves["f"])
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(DHQK)
    strictly_lower = torch.ones(S, S, dtype=torch.bool).tril(-1)
    log_d = f_log[..., :, None].expand(B, NH, S, S).masked_fill(~strictly_lower, 0).cumsum(-2) + leaves["i"][..., None, :]
    log_d = log_d.masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(), -math.inf)
    m = log_d.amax(-1, keepdim=True)
    c_tilde = scores * torch.exp(log_d - m)
    den = c_tilde.sum(-1, keepdim=True)
    den_branch = den.abs() >= torch.exp(-m)
    assert den_branch.any() and (~den_branch).any(), "inputs exercise only one branch of the normaliser"
    normaliser = (torch.maximum(den.abs(), torch.exp(-m)) + 1e-6).detach()
    h = (c_tilde / normaliser) @ leaves["v"]
    weights = loss_weights({"h": h}, inputs.seed, torch.float64)
    dq_detached = torch.autograd.grad(h, q, weights["h"])[0]
    assert rel_error(dq_detached, ref["dq"]) > 1e-3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_initial", [False, True], ids=["zero_state", "initial_state"])
def test_sequence_vs_recurrent_reference(dtype, with_initial):
    B, NH, S, DHQK, DHHV = 3, 2, 37, 12, 8
    inputs = make_inputs(B, NH, S, DHQK, DHHV, dtype, "cpu", f_bias=1.0, with_initial=with_initial)
    ref, plain = reference_results(mlstm_recurrent_reference, inputs)
    res = run_with_grads(mlstm_recurrent_sequence__native_fw, inputs, return_last_states=True, dtype_state=dtype)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, seed=inputs.seed)
    check_all("native_sequence__native", res, ref, plain, baseline="recurrent_reference_fp64", dtype=dtype, shape_info=info)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_step_vs_reference(dtype):
    B, NH, DHQK, DHHV = 3, 5, 16, 24
    inputs = make_inputs(B, NH, 1, DHQK, DHHV, dtype, "cpu", with_initial=True, i_scale=3.0)
    ref, plain = reference_results(mlstm_recurrent_reference, inputs)

    def step_as_sequence(q, k, v, i, f, c_initial, n_initial, m_initial):
        h, states = mlstm_recurrent_step__native(
            q[:, :, 0], k[:, :, 0], v[:, :, 0], i, f, c_initial, n_initial, m_initial, dtype_state=c_initial.dtype
        )
        return h[:, :, None], states

    res = run_with_grads(step_as_sequence, inputs)
    info = dict(S=1, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, seed=inputs.seed)
    check_all("step--native", res, ref, plain, baseline="recurrent_reference_fp64", dtype=dtype, shape_info=info)


def test_step_bfloat16_state():
    """dtype_state=bfloat16 stores the new state in bfloat16 (inference), computing in float32."""
    B, NH, DHQK, DHHV = 2, 3, 16, 8
    inputs = make_inputs(B, NH, 1, DHQK, DHHV, torch.bfloat16, "cpu", with_initial=True)
    states = [inputs[n].to(torch.bfloat16) for n in ("c_initial", "n_initial", "m_initial")]
    q, k, v = (inputs[n][:, :, 0] for n in "qkv")
    h, (c, n, m) = mlstm_recurrent_step__native(q, k, v, inputs["i"], inputs["f"], *states, dtype_state=torch.bfloat16)
    assert h.dtype == torch.bfloat16 and c.dtype == n.dtype == m.dtype == torch.bfloat16
    assert m.shape == (B, NH, 1)
    h_ref, (c_ref, n_ref, m_ref) = mlstm_recurrent_reference(
        **{key: inputs[key].double() for key in "qkvif"}, c_initial=states[0], n_initial=states[1], m_initial=states[2]
    )
    info = dict(S=1, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, seed=inputs.seed)
    for key, out, ref in (("h", h[:, :, None], h_ref), ("c", c, c_ref), ("n", n, n_ref), ("m", m, m_ref)):
        compare(
            f"step--native {key}", out, ref, target="step--native(dtype_state=bf16)", baseline="recurrent_reference_fp64",
            shape_info=info, dtype=torch.bfloat16, tol_rel=derived_tolerance(0.0, torch.bfloat16),
        )


def test_step_loop_sequence_chunkwise_agree():
    """A Python loop of steps == the sequence kernel == both chunkwise kernels (float64)."""
    B, NH, S, DHQK, DHHV = 2, 3, 37, 8, 16
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", with_initial=True, f_bias=2.0)
    c, n, m = inputs["c_initial"], inputs["n_initial"], inputs["m_initial"]
    h_steps = []
    for t in range(S):
        h_t, (c, n, m) = mlstm_recurrent_step__native(
            *(inputs[key][:, :, t] for key in "qkv"), inputs["i"][:, :, t, None], inputs["f"][:, :, t, None],
            c, n, m, dtype_state=torch.float64,
        )
        h_steps.append(h_t)
    loop = {"h": torch.stack(h_steps, dim=2), "c_last": c, "n_last": n, "m_last": m}

    candidates = {
        "native_sequence__native": mlstm_recurrent_sequence__native_fw(**inputs, return_last_states=True, dtype_state=torch.float64),
        **{
            name: fn(**inputs, return_last_states=True, chunk_size=16)
            for name, fn in CHUNKWISE_KERNELS.items()
        },
    }
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, seed=inputs.seed)
    for name, (h, states) in candidates.items():
        for key, out in zip(OUTPUT_NAMES, (h, *states)):
            compare(
                f"{name} {key}", out, loop[key], target=name, baseline="step_loop", shape_info=info,
                dtype=torch.float64, tol_rel=derived_tolerance(0.0, torch.float64),
            )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CHUNKWISE_KERNELS))
def test_chunkwise_state_passing(name, dtype):
    """Two calls, the second started from the first's last states, == one call over the whole
    sequence: outputs, last states and the gradients of every input, initial states included."""
    fn = CHUNKWISE_KERNELS[name]
    B, NH, S, DHQK, DHHV, split, L = 2, 3, 130, 8, 12, 50, 32
    inputs = make_inputs(B, NH, S, DHQK, DHHV, dtype, "cpu", with_initial=True, f_bias=2.0)

    def two_calls(q, k, v, i, f, c_initial, n_initial, m_initial):
        first, second = slice(0, split), slice(split, S)
        h1, states = fn(
            q[:, :, first], k[:, :, first], v[:, :, first], i[..., first], f[..., first],
            c_initial, n_initial, m_initial, return_last_states=True, chunk_size=L,
        )
        h2, states = fn(
            q[:, :, second], k[:, :, second], v[:, :, second], i[..., second], f[..., second],
            *states, return_last_states=True, chunk_size=L,
        )
        return torch.cat([h1, h2], dim=2), states

    ref, plain = reference_results(mlstm_recurrent_reference, inputs)
    res = run_with_grads(two_calls, inputs)
    info = dict(S=f"{split}+{S - split}", B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, L=L, seed=inputs.seed)
    check_all(f"{name}(2 calls)", res, ref, plain, baseline="recurrent_reference_fp64", dtype=dtype, shape_info=info)

    one_call = run_with_grads(fn, inputs, return_last_states=True, chunk_size=L)
    for key in res:
        compare(
            f"{name}(2 calls) {key}", res[key], one_call[key], target=f"{name}(2 calls)", baseline=f"{name}(1 call)",
            shape_info=info, dtype=dtype, tol_rel=derived_tolerance(0.0, dtype, grad=key.startswith("d")),
        )


def test_chunk_sizes_agree():
    """Chunk sizes 16, 32, 64 (S = 130: partial last chunks) all equal the reference (float64)."""
    B, NH, S, DHQK, DHHV = 1, 2, 130, 8, 12
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", with_initial=True, i_scale=3.0)
    ref = run_with_grads(mlstm_recurrent_reference, inputs.to(torch.float64))
    for L in (16, 32, 64):
        info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, L=L, seed=inputs.seed)
        for name, fn in CHUNKWISE_KERNELS.items():
            res = run_with_grads(fn, inputs, return_last_states=True, chunk_size=L)
            check_all(name, res, ref, None, baseline="recurrent_reference_fp64", dtype=torch.float64, shape_info=info)


@pytest.mark.parametrize("name", list(CHUNKWISE_KERNELS))
def test_chunkwise_without_last_states(name):
    """return_last_states=False returns h alone; its gradients equal the reference's for a loss on h."""
    fn = CHUNKWISE_KERNELS[name]
    B, NH, S, DHQK, DHHV = 2, 1, 45, 8, 8
    inputs = make_inputs(B, NH, S, DHQK, DHHV, torch.float64, "cpu", with_initial=True)
    res = run_with_grads(fn, inputs, chunk_size=16)
    assert set(res) == {"h", "dq", "dk", "dv", "di", "df", "dc_initial", "dn_initial", "dm_initial"}

    def reference_h_only(**kw):
        return mlstm_recurrent_reference(**kw)[0]

    ref = run_with_grads(reference_h_only, inputs)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, seed=inputs.seed)
    check_all(name, res, ref, None, baseline="recurrent_reference_fp64", dtype=torch.float64, shape_info=info)


@pytest.mark.parametrize(
    "name", ["chunkwise--native_custbw", "parallel--native_stablef_custbw", "parallel--native_custbw"]
)
def test_bfloat16(name):
    """bfloat16 inputs: outputs, last states and gradients against the float64 reference from the same
    rounded inputs, held to the SPEC targets. The native kernels are themselves the plain bfloat16
    implementation (matrix operands rounded to bfloat16; gates, states and accumulation in float32).

    Inputs are redrawn until no step lies within 2^-6 of the normaliser's kink (see
    `normaliser_margin`): there the gradient jumps, and bfloat16 rounding of n·q̂ may take either side.
    A quantity so ill-conditioned on the drawn inputs that a computation entirely in bfloat16
    arithmetic would miss the target (the float32 reference's error scaled by 2^16 says so; e.g.
    dm_initial, a few sums that cancel) is held to twice that estimate instead: the kernel rounds far
    less than all-bfloat16 arithmetic, and the factor 2 covers the noise of estimating the error of a
    vector of B·NH numbers from one draw."""
    B, NH, S, DHQK, DHHV = 3, 2, 40, 16, 24
    dtype = torch.bfloat16
    chunkwise = name.startswith("chunkwise")
    for _ in range(100):
        inputs = make_inputs(B, NH, S, DHQK, DHHV, dtype, "cpu", with_initial=chunkwise, f_bias=2.0)
        if normaliser_margin(inputs, parallel=not chunkwise).min() > 2.0**-6:
            break
    else:
        pytest.fail("no input draw kept every step away from the normaliser's kink")
    if chunkwise:
        ref, plain = reference_results(mlstm_recurrent_reference, inputs)
        res = run_with_grads(CHUNKWISE_KERNELS[name], inputs, return_last_states=True, chunk_size=16)
    else:
        ref, plain = reference_results(mlstm_parallel_reference, inputs)
        res = run_with_grads(PARALLEL_KERNELS[name], inputs)
    info = dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV, seed=inputs.seed)
    check_all(name, res, ref, plain, baseline="reference_fp64", dtype=dtype, shape_info=info, factor=2.0)
