"""Kernel registries, direct imports and upstream names (SPEC §3)."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import mlstm_kernels._spec as spec
import mlstm_kernels.torch as mt
from mlstm_kernels.torch.chunkwise import (
    mlstm_chunkwise__limit_chunk,
    mlstm_chunkwise__native_autograd,
    mlstm_chunkwise__native_custbw,
    mlstm_chunkwise__xl_chunk,
)
from mlstm_kernels.torch.parallel import (
    mlstm_parallel__limit_headdim,
    mlstm_parallel__native_autograd,
    mlstm_parallel__native_custbw,
    mlstm_parallel__native_stablef_autograd,
    mlstm_parallel__native_stablef_custbw,
    mlstm_parallel__tiled,
)
from mlstm_kernels.torch.recurrent import (
    mlstm_recurrent_sequence__fused_fw,
    mlstm_recurrent_sequence__native_fused_fw,
    mlstm_recurrent_sequence__native_fw,
    mlstm_recurrent_sequence__triton_step_fused_fw,
    mlstm_recurrent_step__fused,
    mlstm_recurrent_step__native,
    mlstm_recurrent_step__triton,
)

TRAINING = {
    "chunkwise--native_autograd": mlstm_chunkwise__native_autograd,
    "chunkwise--native_custbw": mlstm_chunkwise__native_custbw,
    "chunkwise--limit_chunk": mlstm_chunkwise__limit_chunk,
    "chunkwise--xl_chunk": mlstm_chunkwise__xl_chunk,
    "parallel--native_autograd": mlstm_parallel__native_autograd,
    "parallel--native_custbw": mlstm_parallel__native_custbw,
    "parallel--native_stablef_autograd": mlstm_parallel__native_stablef_autograd,
    "parallel--native_stablef_custbw": mlstm_parallel__native_stablef_custbw,
    "parallel--tiled": mlstm_parallel__tiled,
}
SEQUENCE = {
    "native_sequence__native": mlstm_recurrent_sequence__native_fw,
    "native_sequence__fused": mlstm_recurrent_sequence__native_fused_fw,
    "fused_sequence": mlstm_recurrent_sequence__fused_fw,
}
STEP = {"native": mlstm_recurrent_step__native, "fused": mlstm_recurrent_step__fused}

REGISTRIES = [
    ("training", mt.get_available_mlstm_kernels, mt.get_mlstm_kernel, TRAINING),
    ("sequence", mt.get_available_mlstm_sequence_kernels, mt.get_mlstm_sequence_kernel, SEQUENCE),
    ("step", mt.get_available_mlstm_step_kernels, mt.get_mlstm_step_kernel, STEP),
]


@pytest.fixture
def fresh_alias_warnings(monkeypatch):
    """Alias warnings are once per process; give each test its own record."""
    monkeypatch.setattr(spec, "_warned_aliases", set())


@pytest.mark.parametrize("registry, available, get, expected", REGISTRIES, ids=[r[0] for r in REGISTRIES])
def test_registry_names_and_objects(registry, available, get, expected):
    canonical = {"training": spec.TRAINING_KERNELS, "sequence": spec.SEQUENCE_KERNELS, "step": spec.STEP_KERNELS}
    assert available() == list(canonical[registry])
    assert available() == list(expected)
    for name, fn in expected.items():
        assert get(name) is fn


def test_upstream_direct_import_aliases():
    assert mlstm_parallel__limit_headdim is mlstm_parallel__tiled
    assert mlstm_recurrent_step__triton is mlstm_recurrent_step__fused
    assert mlstm_recurrent_sequence__triton_step_fused_fw is mlstm_recurrent_sequence__native_fused_fw


ALIASES = [
    (mt.get_mlstm_kernel, "chunkwise--triton_limit_chunk", mlstm_chunkwise__limit_chunk),
    (mt.get_mlstm_kernel, "chunkwise--triton_xl_chunk", mlstm_chunkwise__xl_chunk),
    (mt.get_mlstm_kernel, "parallel--triton_limit_headdim", mlstm_parallel__tiled),
    (mt.get_mlstm_sequence_kernel, "native_sequence__triton", mlstm_recurrent_sequence__native_fused_fw),
    (mt.get_mlstm_step_kernel, "triton", mlstm_recurrent_step__fused),
]


@pytest.mark.parametrize("get, alias, target", ALIASES, ids=[a[1] for a in ALIASES])
def test_upstream_alias_resolves_with_one_warning(fresh_alias_warnings, get, alias, target):
    with pytest.warns(UserWarning, match=alias) as record:
        assert get(alias) is target
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get(alias) is target  # second time: no warning


def test_canonical_names_never_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _, available, get, _ in REGISTRIES:
            for name in available():
                get(name)


@pytest.mark.parametrize("registry, available, get, expected", REGISTRIES, ids=[r[0] for r in REGISTRIES])
def test_unknown_name_lists_available(registry, available, get, expected):
    with pytest.raises(ValueError) as info:
        get("chunkwise--does_not_exist")
    message = str(info.value)
    assert "chunkwise--does_not_exist" in message
    for name in available():
        assert name in message
    for alias in spec.ALIASES[registry]:
        assert alias in message


def test_alias_of_another_registry_is_unknown():
    with pytest.raises(ValueError, match="Unknown step kernel"):
        mt.get_mlstm_step_kernel("chunkwise--triton_xl_chunk")


TRAINING_PARAMS = [
    ("q", inspect.Parameter.empty), ("k", inspect.Parameter.empty), ("v", inspect.Parameter.empty),
    ("i", inspect.Parameter.empty), ("f", inspect.Parameter.empty), ("c_initial", None), ("n_initial", None),
    ("m_initial", None), ("return_last_states", False), ("eps", 1e-6), ("autocast_kernel_dtype", torch.bfloat16),
]


@pytest.mark.parametrize("name", list(TRAINING))
def test_training_signature_is_upstreams(name):
    params = inspect.signature(TRAINING[name]).parameters
    for (pname, default), actual in zip(TRAINING_PARAMS, params.values()):
        assert actual.name == pname
        assert actual.default == default
    # upstream's defaults: 64, except xl_chunk which defaults to 128
    assert params["chunk_size"].default == (128 if name == "chunkwise--xl_chunk" else 64)
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@pytest.mark.parametrize("name", list(STEP))
def test_step_signature_is_upstreams(name):
    params = list(inspect.signature(STEP[name]).parameters.values())
    assert [p.name for p in params[:8]] == ["q", "k", "v", "i", "f", "c", "n", "m"]
    named = {p.name: p.default for p in params}
    assert named["eps"] == 1e-6 and named["dtype_state"] == torch.float32


@pytest.mark.parametrize("name", list(SEQUENCE))
def test_sequence_signature_is_upstreams(name):
    params = inspect.signature(SEQUENCE[name]).parameters
    for (pname, default), actual in zip(TRAINING_PARAMS[:10], params.values()):
        assert actual.name == pname
        assert actual.default == default
    assert params["dtype_state"].default == torch.float32
