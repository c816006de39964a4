"""mLSTMBackendConfig / mLSTMBackend: upstream's fields, defaults and validation, and the three
modes against the float64 reference (train, train_with_padding, inference incl. S = 1 and tails)."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch

import mlstm_kernels._spec as spec
from mlstm_kernels.torch.backend_module import (
    BackendModeType,
    ChunkwiseKernelType,
    DtypeType,
    SequenceKernelType,
    StepKernelType,
    mLSTMBackend,
    mLSTMBackendConfig,
)

from .test_core_kernels import EPS, check_all, reference_h, reference_parallel, reference_with_states, run
from .utils import compare, derived_tolerance, make_inputs, rel_error

UPSTREAM_DEFAULTS = {
    "chunkwise_kernel": "chunkwise--native_autograd",
    "sequence_kernel": "native_sequence__native",
    "step_kernel": "native",
    "mode": "train",
    "chunk_size": 64,
    "return_last_states": False,
    "autocast_kernel_dtype": "bfloat16",
    "eps": 1e-6,
    "inference_state_dtype": "float32",
}
CHUNKWISE_KERNELS = ["chunkwise--native_autograd", "chunkwise--native_custbw", "chunkwise--limit_chunk", "chunkwise--xl_chunk"]


def test_config_fields_and_defaults_are_upstreams():
    fields = dataclasses.fields(mLSTMBackendConfig)
    assert [f.name for f in fields] == list(UPSTREAM_DEFAULTS)
    assert dataclasses.asdict(mLSTMBackendConfig()) == UPSTREAM_DEFAULTS
    assert mLSTMBackend.config_class is mLSTMBackendConfig


def test_typing_names_cover_every_kernel_and_upstream_name():
    assert set(typing.get_args(ChunkwiseKernelType)) == set(spec.TRAINING_KERNELS) | set(spec.ALIASES["training"])
    assert set(typing.get_args(SequenceKernelType)) == set(spec.SEQUENCE_KERNELS) | set(spec.ALIASES["sequence"])
    assert set(typing.get_args(StepKernelType)) == set(spec.STEP_KERNELS) | set(spec.ALIASES["step"])
    assert set(typing.get_args(DtypeType)) == {"float32", "bfloat16", "float16"}
    assert set(typing.get_args(BackendModeType)) == {"train", "train_with_padding", "inference"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(chunkwise_kernel="parallel--tiled", return_last_states=True), "parallel"),
        (dict(chunkwise_kernel="parallel--native_autograd", return_last_states=True), "parallel"),
        (dict(mode="train_with_padding", return_last_states=True), "train_with_padding"),
        (dict(mode="training"), "mode must be one of"),
        (dict(autocast_kernel_dtype="fp16"), "autocast_kernel_dtype"),
        (dict(inference_state_dtype="int8"), "inference_state_dtype"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mLSTMBackendConfig(**kwargs)


def test_unknown_kernel_name_fails_at_construction():
    with pytest.raises(ValueError, match="Unknown training kernel 'chunkwise--nope'"):
        mLSTMBackend(mLSTMBackendConfig(chunkwise_kernel="chunkwise--nope"))
    with pytest.raises(ValueError, match="Unknown step kernel"):
        mLSTMBackend(mLSTMBackendConfig(step_kernel="nope"))


def test_upstream_configuration_runs_unchanged(monkeypatch):
    """A configuration written for upstream (Triton kernel names) builds and runs, with a warning."""
    monkeypatch.setattr(spec, "_warned_aliases", set())
    config = mLSTMBackendConfig(
        chunkwise_kernel="chunkwise--triton_xl_chunk",
        sequence_kernel="native_sequence__triton",
        step_kernel="triton",
        mode="inference",
        chunk_size=64,
        return_last_states=True,
        autocast_kernel_dtype="bfloat16",
        eps=1e-6,
        inference_state_dtype="float32",
    )
    with pytest.warns(UserWarning, match="upstream Triton name"):
        backend = mLSTMBackend(config)
    assert "chunkwise--triton_xl_chunk" in repr(backend)
    x = make_inputs(1, 2, 70, 16, 16, torch.float32, "cpu")
    h, (c, n, m) = backend(**x)
    assert h.shape == (1, 2, 70, 16) and c.shape == (1, 2, 16, 16) and m.shape == (1, 2, 1)


# ---------------------------------------------------------------------------------------------
# Modes against the reference (float64 inputs so every path is held to float64 precision).


def info_of(inputs, **extra):
    q, v = inputs["q"], inputs["v"]
    return dict(S=q.shape[2], B=q.shape[0], NH=q.shape[1], DHQK=q.shape[3], DHHV=v.shape[3], seed=inputs.seed, **extra)


@pytest.mark.parametrize("kernel", CHUNKWISE_KERNELS)
def test_train_mode(kernel):
    inputs = make_inputs(2, 3, 45, 8, 12, torch.float64, "cpu", with_initial=True, f_bias=1.0)
    backend = mLSTMBackend(mLSTMBackendConfig(eps=EPS, chunkwise_kernel=kernel, chunk_size=16, return_last_states=True))
    res = run(backend, inputs)
    ref = run(reference_with_states, inputs)
    check_all(f"backend(train, {kernel})", res, ref, None, dtype=torch.float64, shape_info=info_of(inputs))


@pytest.mark.parametrize("kernel", ["parallel--tiled", "parallel--native_stablef_custbw"])
def test_train_mode_parallel(kernel):
    inputs = make_inputs(2, 1, 33, 8, 8, torch.float64, "cpu")
    backend = mLSTMBackend(mLSTMBackendConfig(eps=EPS, chunkwise_kernel=kernel))
    res = run(backend, inputs)
    ref = run(reference_parallel, inputs)
    check_all(f"backend(train, {kernel})", res, ref, None, dtype=torch.float64, shape_info=info_of(inputs),
              baseline="parallel_reference_fp64", parallel=True)


def test_return_last_states_argument_overrides_config():
    inputs = make_inputs(1, 2, 20, 8, 8, torch.float64, "cpu")
    backend = mLSTMBackend(mLSTMBackendConfig(eps=EPS, chunkwise_kernel="chunkwise--limit_chunk", chunk_size=16))
    assert isinstance(backend(**inputs), torch.Tensor)
    h, states = backend(**inputs, return_last_states=True)
    assert len(states) == 3


@pytest.mark.parametrize("S", [1, 16, 50])
@pytest.mark.parametrize("kernel", CHUNKWISE_KERNELS)
def test_train_with_padding(kernel, S):
    """Padding to a multiple of chunk_size and cutting back changes nothing, gradients included."""
    inputs = make_inputs(2, 2, S, 8, 12, torch.float64, "cpu", with_initial=True, i_scale=3.0)
    backend = mLSTMBackend(mLSTMBackendConfig(eps=EPS, chunkwise_kernel=kernel, chunk_size=16, mode="train_with_padding"))
    res = run(backend, inputs)
    ref = run(reference_h, inputs)
    check_all(f"backend(train_with_padding, {kernel})", res, ref, None, dtype=torch.float64, shape_info=info_of(inputs))
    with pytest.raises(ValueError, match="train_with_padding"):
        backend(**inputs, return_last_states=True)


class Spy:
    """Counts the calls of a kernel and the sequence lengths it saw."""

    def __init__(self, fn):
        self.fn, self.lengths = fn, []

    def __call__(self, **kw):
        q = kw["q"]
        self.lengths.append(q.shape[2] if q.dim() == 4 else "step")
        return self.fn(**kw)


def spied_backend(config):
    backend = mLSTMBackend(config)
    spies = {}
    for key in ("mlstm_chunkwise_kernel", "mlstm_sequence_kernel", "mlstm_step_kernel"):
        if backend._inference_fn.keywords[key] is not None:  # None: a parallel training kernel
            spies[key] = Spy(backend._inference_fn.keywords[key])
            backend._inference_fn.keywords[key] = spies[key]
    return backend, spies


INFERENCE_KERNELS = [
    ("chunkwise--native_custbw", "native_sequence__native", "native"),
    ("chunkwise--limit_chunk", "native_sequence__fused", "fused"),
    ("chunkwise--xl_chunk", "fused_sequence", "fused"),
]


@pytest.mark.parametrize("with_initial", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize(
    "S, expected",
    [(1, {"step": ["step"]}), (7, {"sequence": [7]}), (32, {"chunkwise": [32]}), (77, {"chunkwise": [64], "sequence": [13]})],
)
@pytest.mark.parametrize("kernels", INFERENCE_KERNELS, ids=lambda k: k[0])
def test_inference_mode(kernels, S, expected, with_initial):
    """Any S: S == 1 → step kernel; else chunkwise over the largest multiple of chunk_size and the
    sequence kernel for the tail. h and the returned states equal the reference."""
    chunkwise, sequence, step = kernels
    config = mLSTMBackendConfig(
        eps=EPS,
        chunkwise_kernel=chunkwise, sequence_kernel=sequence, step_kernel=step, mode="inference", chunk_size=32
    )
    backend, spies = spied_backend(config)
    inputs = make_inputs(2, 3, S, 8, 12, torch.float64, "cpu", with_initial=with_initial, f_bias=1.0, i_scale=3.0)
    # float64 states so that every path is held to float64 precision
    backend._inference_fn.keywords["dtype_state"] = torch.float64
    if not with_initial:
        # inference starts from float32 zeros when no state is given; use float64 zeros here
        inputs["c_initial"] = torch.zeros(2, 3, 8, 12, dtype=torch.float64)
        inputs["n_initial"] = torch.zeros(2, 3, 8, dtype=torch.float64)
        inputs["m_initial"] = torch.zeros(2, 3, 1, dtype=torch.float64)
    with torch.no_grad():
        res = run(backend, inputs, grads=False)
    assert {k.split("_")[1]: s.lengths for k, s in spies.items() if s.lengths} == expected
    ref = run(reference_with_states, inputs, grads=False)
    check_all(f"backend(inference, {chunkwise})", res, ref, None, dtype=torch.float64, shape_info=info_of(inputs))


@pytest.mark.parametrize("S", [1, 16, 20, 32], ids=lambda S: f"S={S}")
def test_inference_state_dtype(S):
    """Inference hands out states in inference_state_dtype whichever kernel ran last: the step (S=1),
    the chunkwise kernel alone (S=16, 32 with chunk_size 16; its states are float32) or the tail."""
    config = mLSTMBackendConfig(
        eps=EPS,
        chunkwise_kernel="chunkwise--limit_chunk", sequence_kernel="fused_sequence", step_kernel="fused",
        mode="inference", chunk_size=16, inference_state_dtype="bfloat16",
    )
    backend = mLSTMBackend(config)
    inputs = make_inputs(1, 2, S, 16, 16, torch.float32, "cpu", f_bias=2.0)
    with torch.no_grad():
        h, states = backend(**inputs)
        assert all(s.dtype == torch.bfloat16 for s in states)
        h1, states1 = backend(**{k: inputs[k][:, :, :1] for k in "qkvif"}, c_initial=states[0], n_initial=states[1], m_initial=states[2])
    assert h1.shape == (1, 2, 1, 16) and all(s.dtype == torch.bfloat16 for s in states1)
    ref = run(reference_with_states, inputs.to(torch.float64), grads=False)
    compare("backend(inference, bf16 states) h", h, ref["h"], target="backend(inference)", baseline="recurrent_reference_fp64",
            shape_info=info_of(inputs), dtype=torch.bfloat16, tol_rel=derived_tolerance(0.0, torch.bfloat16))
    # Each bfloat16 step of the tail rounds the state (m first, c and n rescaled to it): error ~ sqrt(roundings).
    tol = min(derived_tolerance(0.0, torch.bfloat16) * math.sqrt(max(1, S % 16)), 2e-2)
    for key, state in zip(("c_last", "n_last", "m_last"), states):
        compare(f"backend(inference, bf16 states) {key}", state, ref[key], target="backend(inference)",
                baseline="recurrent_reference_fp64", shape_info=info_of(inputs), dtype=torch.bfloat16, tol_rel=tol)


def test_inference_low_precision_states_keep_the_true_state():
    """Converting the chunkwise kernel's float32 states to bfloat16 rounds m first and rescales c, n to
    it: the true state exp(m)·c, exp(m)·n then carries one bfloat16 rounding of c, n, whereas casting
    the three separately would add the rounding of m (|m| ≈ 10..25 here: up to ~5 %)."""
    inputs = make_inputs(2, 4, 32, 16, 16, torch.float32, "cpu", i_scale=8.0, f_bias=2.0)
    config = dict(eps=EPS, chunkwise_kernel="chunkwise--limit_chunk", sequence_kernel="fused_sequence", step_kernel="fused",
                  mode="inference", chunk_size=16)
    with torch.no_grad():
        _, low = mLSTMBackend(mLSTMBackendConfig(**config, inference_state_dtype="bfloat16"))(**inputs)
        _, full = mLSTMBackend(mLSTMBackendConfig(**config, inference_state_dtype="float32"))(**inputs)
    assert full[2].abs().max() > 8  # the rounding of m matters

    def true_state(x, m):  # x: c (B, NH, DHQK, DHHV) or n (B, NH, DHQK); m (B, NH, 1)
        w = torch.exp(m.double())
        return x.double() * (w[..., None] if x.dim() == 4 else w)

    for what, index in (("c", 0), ("n", 1)):
        lo, hi = true_state(low[index], low[2]), true_state(full[index], full[2])
        err = max(rel_error(lo[b, h], hi[b, h]) for b in range(lo.shape[0]) for h in range(lo.shape[1]))
        assert err <= 2.0**-8, f"true state {what}: relative error {err:.2e} (worst head) > one bfloat16 rounding"


@pytest.mark.parametrize("S, expected", [(1, {"step": ["step"]}), (45, {"sequence": [45]})])
@pytest.mark.parametrize("kernels", [("parallel--tiled", "fused_sequence", "fused"),
                                     ("parallel--native_stablef_custbw", "native_sequence__native", "native")],
                         ids=lambda k: k[0])
def test_inference_mode_with_a_parallel_kernel(kernels, S, expected):
    """A parallel training kernel has no states to pass on: in inference the sequence kernel takes the
    whole sequence (as in the JAX backend); h and the states equal the recurrent reference."""
    chunkwise, sequence, step = kernels
    config = mLSTMBackendConfig(eps=EPS, chunkwise_kernel=chunkwise, sequence_kernel=sequence, step_kernel=step,
                                mode="inference", chunk_size=16)
    backend, spies = spied_backend(config)
    assert backend._inference_fn.keywords["mlstm_chunkwise_kernel"] is None
    backend._inference_fn.keywords["dtype_state"] = torch.float64
    inputs = make_inputs(2, 3, S, 8, 12, torch.float64, "cpu", with_initial=True, f_bias=1.0, i_scale=3.0)
    with torch.no_grad():
        res = run(backend, inputs, grads=False)
    assert {k.split("_")[1]: s.lengths for k, s in spies.items() if s.lengths} == expected
    ref = run(reference_with_states, inputs, grads=False)
    check_all(f"backend(inference, {chunkwise})", res, ref, None, dtype=torch.float64, shape_info=info_of(inputs))


def test_mode_argument_overrides_config():
    inputs = make_inputs(1, 2, 5, 8, 8, torch.float64, "cpu")
    backend = mLSTMBackend(mLSTMBackendConfig(eps=EPS, chunkwise_kernel="chunkwise--limit_chunk", chunk_size=16))
    out = backend(**inputs, mode="inference")
    assert isinstance(out, tuple) and len(out[1]) == 3
    h = backend(**inputs, mode="train_with_padding")
    # inference keeps float32 states (the default inference_state_dtype): float32 rounding per step
    torch.testing.assert_close(h, out[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Unknown mode"):
        backend(**inputs, mode="eval")


def test_autocast_in_backend():
    backend = mLSTMBackend(mLSTMBackendConfig(eps=EPS, chunkwise_kernel="chunkwise--limit_chunk", chunk_size=16, autocast_kernel_dtype="float16"))
    inputs = make_inputs(1, 2, 20, 16, 16, torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = backend(**inputs)
    assert h.dtype == torch.float16
    assert backend(**inputs).dtype == torch.float32


def test_backend_is_a_module_without_parameters():
    backend = mLSTMBackend(mLSTMBackendConfig())
    assert isinstance(backend, torch.nn.Module)
    assert list(backend.parameters()) == []
    assert "chunkwise--native_autograd" in backend.extra_repr()
