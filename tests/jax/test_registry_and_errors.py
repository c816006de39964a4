"""Registries, upstream names, direct imports, and clear errors for invalid calls (raised at trace
time, before any kernel runs)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import pytest

import mlstm_kernels.jax as mj
from mlstm_kernels import _spec


def test_registries_list_the_canonical_names():
    assert tuple(mj.get_available_mlstm_kernels()) == _spec.TRAINING_KERNELS
    assert tuple(mj.get_available_mlstm_sequence_kernels()) == _spec.SEQUENCE_KERNELS
    assert tuple(mj.get_available_mlstm_step_kernels()) == _spec.STEP_KERNELS
    for name in _spec.TRAINING_KERNELS:
        assert callable(mj.get_mlstm_kernel(name))


@pytest.mark.parametrize(
    "getter,registry",
    [(mj.get_mlstm_kernel, "training"), (mj.get_mlstm_sequence_kernel, "sequence"), (mj.get_mlstm_step_kernel, "step")],
)
def test_upstream_names_resolve_with_a_warning(getter, registry):
    for alias, target in _spec.ALIASES[registry].items():
        _spec._warned_aliases.discard((registry, alias))
        with pytest.warns(UserWarning, match="upstream Triton name"):
            fn = getter(alias)
        assert fn is getter(target)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert getter(alias) is fn  # only once


@pytest.mark.parametrize("getter", [mj.get_mlstm_kernel, mj.get_mlstm_sequence_kernel, mj.get_mlstm_step_kernel])
def test_unknown_names_list_the_available_ones(getter):
    with pytest.raises(ValueError, match="Available"):
        getter("chunkwise--no_such_kernel")


def test_direct_imports():
    from mlstm_kernels.jax.chunkwise import mlstm_chunkwise__limit_chunk, mlstm_chunkwise__xl_chunk  # noqa: F401
    from mlstm_kernels.jax.parallel import mlstm_parallel__limit_headdim, mlstm_parallel__tiled
    from mlstm_kernels.jax.recurrent import (  # noqa: F401
        mlstm_recurrent_sequence__native_fw,
        mlstm_recurrent_sequence__triton_step_fused_fw,
        mlstm_recurrent_step__native,
        mlstm_recurrent_step__triton,
    )

    assert mlstm_parallel__limit_headdim is mlstm_parallel__tiled


def _x(B=1, NH=2, S=5, DHQK=4, DHHV=3, dtype=jnp.float32):
    return dict(
        q=jnp.ones((B, NH, S, DHQK), dtype), k=jnp.ones((B, NH, S, DHQK), dtype), v=jnp.ones((B, NH, S, DHHV), dtype),
        i=jnp.zeros((B, NH, S), dtype), f=jnp.zeros((B, NH, S), dtype),
    )


@pytest.mark.parametrize(
    "kernel,kwargs,message",
    [
        ("chunkwise--limit_chunk", dict(chunk_size=256), "power of two in \\[16, 128\\]"),
        ("chunkwise--xl_chunk", dict(chunk_size=48), "power of two in \\[16, 4096\\]"),
        ("parallel--tiled", dict(return_last_states=True), "no state"),
        ("parallel--tiled", dict(c_initial=jnp.zeros((1, 2, 4, 3)), n_initial=jnp.zeros((1, 2, 4)), m_initial=jnp.zeros((1, 2, 1))), "no state"),
        ("chunkwise--limit_chunk", dict(c_initial=jnp.zeros((1, 2, 4, 3))), "given together"),
        ("chunkwise--limit_chunk", dict(c_initial=jnp.zeros((1, 2, 3, 4)), n_initial=jnp.zeros((1, 2, 4)), m_initial=jnp.zeros((1, 2, 1))), "c_initial must have shape"),
        ("chunkwise--limit_chunk", dict(k=jnp.ones((1, 2, 5, 4), jnp.bfloat16)), "share one dtype"),
        ("chunkwise--limit_chunk", dict(v=jnp.ones((1, 2, 6, 3))), "v must have shape"),
        ("chunkwise--limit_chunk", dict(i=jnp.zeros((1, 2, 5), jnp.int32)), "floating-point"),
        ("chunkwise--limit_chunk", dict(eps=-1.0), "eps must be finite and >= 0"),
    ],
)
def test_invalid_calls_raise_value_error(kernel, kwargs, message):
    fn = mj.get_mlstm_kernel(kernel)
    x = _x()
    x.update({k: v for k, v in kwargs.items() if k in x})
    rest = {k: v for k, v in kwargs.items() if k not in x}
    with pytest.raises(ValueError, match=message):
        fn(**x, **rest)
    with pytest.raises(ValueError, match=message):  # the same error under jit, at trace time
        jax.jit(lambda x: fn(**x, **rest))(x)


def test_m_of_shape_B_NH_is_accepted():
    x = _x()
    c, n = jnp.zeros((1, 2, 4, 3)), jnp.zeros((1, 2, 4))
    fn = mj.get_mlstm_kernel("chunkwise--limit_chunk")
    h2, _ = fn(**x, c_initial=c, n_initial=n, m_initial=jnp.zeros((1, 2)), return_last_states=True, chunk_size=16)
    h3, (_, _, m3) = fn(**x, c_initial=c, n_initial=n, m_initial=jnp.zeros((1, 2, 1)), return_last_states=True, chunk_size=16)
    assert m3.shape == (1, 2, 1)
    assert jnp.array_equal(h2, h3)
