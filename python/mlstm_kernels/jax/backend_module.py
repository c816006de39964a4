"""A ready-made mLSTM backend for JAX models: the kernel choice, modes and state passing in one place.

``mLSTMBackendConfig`` has upstream's fields, defaults and validation; ``mLSTMBackend(config)`` is
called like the torch module's ``forward``::

    backend = mLSTMBackend(mLSTMBackendConfig(chunkwise_kernel="chunkwise--limit_chunk", mode="train"))
    h = backend(q, k, v, i, f)                              # train, return_last_states=False
    h, (c, n, m) = backend(q, k, v, i, f, c, n, m, mode="inference")

Modes:
* ``train``: the chunkwise (or parallel) kernel on the whole sequence; last states if
  ``return_last_states`` (chunkwise kernels only).
* ``train_with_padding``: as upstream, S is padded with zeros to a multiple of ``chunk_size`` and h
  cut back (our kernels take any S, so this only matters for matching upstream bit for bit); no states.
* ``inference``: any S, always returns the last states (in ``inference_state_dtype``): S == 1 goes
  straight to the step kernel; otherwise, as upstream, the chunkwise kernel runs over the largest
  multiple of ``chunk_size`` and the sequence kernel over the tail, with the states passed between
  them (a parallel training kernel has no states: the sequence kernel then takes it all). The torch
  backend does the same (``_spec.inference_segments``).

The caller's shapes are validated before a mode pads or cuts the sequence, so errors quote them.

When flax is importable ``mLSTMBackend`` is a ``flax.linen.Module`` (no parameters) so it nests in
linen models; otherwise it is a plain callable class with the same constructor and call.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._spec import (  # the config and its typing names are shared with the torch backend
    BackendModeType,
    ChunkwiseKernelType,
    DtypeType,
    SequenceKernelType,
    StepKernelType,
    check_backend_inputs,
    check_backend_mode,
    inference_segments,
    mLSTMBackendConfig,
    training_kernel_has_states,
)
from . import get_mlstm_kernel, get_mlstm_sequence_kernel, get_mlstm_step_kernel


def _backend_call(config: mLSTMBackendConfig, q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, mode):
    mode = config.mode if mode is None else mode
    check_backend_mode(mode)
    train_kernel = get_mlstm_kernel(config.chunkwise_kernel)
    common = dict(eps=config.eps, autocast_kernel_dtype=getattr(jnp, config.autocast_kernel_dtype))
    arrays = dict(q=q, k=k, v=v, i=i, f=f, c_initial=c_initial, n_initial=n_initial, m_initial=m_initial)

    if mode.startswith("train"):
        if return_last_states is None:
            return_last_states = config.return_last_states
        if mode == "train_with_padding":
            if return_last_states:
                raise ValueError("return_last_states=True is not supported with train_with_padding mode.")
            # Validate the caller's shapes before padding, so that errors quote them.
            S = check_backend_inputs(mode, arrays).S
            S_padded = -(-S // config.chunk_size) * config.chunk_size
            pad = lambda x: jnp.pad(x, [(0, 0), (0, 0), (0, S_padded - S)] + [(0, 0)] * (x.ndim - 3))  # noqa: E731
            h = train_kernel(pad(q), pad(k), pad(v), pad(i), pad(f), c_initial, n_initial, m_initial,
                             return_last_states=False, chunk_size=config.chunk_size, **common)
            return h[:, :, :S]
        return train_kernel(q, k, v, i, f, c_initial, n_initial, m_initial,
                            return_last_states=return_last_states, chunk_size=config.chunk_size, **common)

    # Inference: any S, states always returned in inference_state_dtype. Shapes first: the
    # sequence is cut into parts below.
    dims = check_backend_inputs(mode, arrays)
    B, NH, S, DHQK, DHHV = dims.B, dims.NH, dims.S, dims.DHQK, dims.DHHV
    state_dtype = getattr(jnp, config.inference_state_dtype)
    if c_initial is None:
        c_initial = jnp.zeros((B, NH, DHQK, DHHV), state_dtype)  # (B, NH, DHQK, DHHV)
        n_initial = jnp.zeros((B, NH, DHQK), state_dtype)  # (B, NH, DHQK)
        m_initial = jnp.zeros((B, NH, 1), state_dtype)  # (B, NH, 1)
    states = (c_initial, n_initial, m_initial)
    h_parts = []
    segments = inference_segments(S, config.chunk_size, training_kernel_has_states(config.chunkwise_kernel))
    for registry, start, stop in segments:
        if registry == "step":
            h, states = get_mlstm_step_kernel(config.step_kernel)(
                q[:, :, 0], k[:, :, 0], v[:, :, 0], i, f, *states, dtype_state=state_dtype, **common
            )
            h_parts.append(h[:, :, None, :])  # (B, NH, 1, DHHV)
            continue
        part = [x[:, :, start:stop] for x in (q, k, v, i, f)]
        if registry == "training":
            h, states = train_kernel(*part, *states, return_last_states=True, chunk_size=config.chunk_size, **common)
        else:
            h, states = get_mlstm_sequence_kernel(config.sequence_kernel)(
                *part, *states, return_last_states=True, dtype_state=state_dtype, **common
            )
        h_parts.append(h)
    h = h_parts[0] if len(h_parts) == 1 else jnp.concatenate(h_parts, axis=2)  # (B, NH, S, DHHV)
    # The chunkwise kernel returns float32 states; inference hands out inference_state_dtype throughout.
    return h, _states_as(*states, state_dtype)


def _states_as(c, n, m, dtype):
    """(c, n, m) in `dtype`, m rounded first and c, n rescaled by exp(m - m_rounded), so that the true
    state exp(m)·c, exp(m)·n loses only the rounding of c and n (as the core stores 16-bit states)."""
    if m.dtype == dtype:
        return c.astype(dtype), n.astype(dtype), m
    m_rounded = m.astype(dtype)  # (B, NH, 1)
    m_back = m_rounded.astype(m.dtype)
    scale = jnp.exp(jnp.where(m == m_back, 0.0, m - m_back))  # (B, NH, 1); 1 where m is exact or infinite
    return (c * scale[..., None]).astype(dtype), (n * scale).astype(dtype), m_rounded


_CALL_DOC = """Run the configured kernel.

    q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S); optional initial states
    c (B, NH, DHQK, DHHV), n (B, NH, DHQK), m (B, NH, 1). ``return_last_states`` and ``mode``
    override the config for this call. Returns h (B, NH, S, DHHV), or (h, (c, n, m)).
    """

try:
    import flax.linen as _linen
except ImportError:
    _linen = None

if _linen is not None:

    class mLSTMBackend(_linen.Module):
        """mLSTM backend as a parameter-free flax.linen Module (see the module docstring)."""

        config: mLSTMBackendConfig
        config_class = mLSTMBackendConfig

        def __call__(self, q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
                     return_last_states: bool | None = None, mode: BackendModeType | None = None):
            return _backend_call(self.config, q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, mode)

        __call__.__doc__ = _CALL_DOC

else:

    class mLSTMBackend:
        """mLSTM backend as a plain callable (flax is not installed; see the module docstring)."""

        config_class = mLSTMBackendConfig

        def __init__(self, config: mLSTMBackendConfig):
            self.config = config

        def __call__(self, q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
                     return_last_states: bool | None = None, mode: BackendModeType | None = None):
            return _backend_call(self.config, q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, mode)

        __call__.__doc__ = _CALL_DOC

        def __repr__(self) -> str:
            return f"mLSTMBackend({self.config})"


__all__ = [
    "mLSTMBackendConfig",
    "mLSTMBackend",
    "ChunkwiseKernelType",
    "SequenceKernelType",
    "StepKernelType",
    "DtypeType",
    "BackendModeType",
]
