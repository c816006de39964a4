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
  them (a parallel training kernel has no states: the sequence kernel then takes it all).

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
    check_backend_mode,
    mLSTMBackendConfig,
)
from . import get_mlstm_kernel, get_mlstm_sequence_kernel, get_mlstm_step_kernel


def _backend_call(config: mLSTMBackendConfig, q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, mode):
    mode = config.mode if mode is None else mode
    check_backend_mode(mode)
    train_kernel = get_mlstm_kernel(config.chunkwise_kernel)
    common = dict(eps=config.eps, autocast_kernel_dtype=getattr(jnp, config.autocast_kernel_dtype))

    if mode.startswith("train"):
        if return_last_states is None:
            return_last_states = config.return_last_states
        if mode == "train_with_padding":
            if return_last_states:
                raise ValueError("return_last_states=True is not supported with train_with_padding mode.")
            S = q.shape[2]
            S_padded = -(-S // config.chunk_size) * config.chunk_size
            pad = lambda x: jnp.pad(x, [(0, 0), (0, 0), (0, S_padded - S)] + [(0, 0)] * (x.ndim - 3))  # noqa: E731
            h = train_kernel(pad(q), pad(k), pad(v), pad(i), pad(f), c_initial, n_initial, m_initial,
                             return_last_states=False, chunk_size=config.chunk_size, **common)
            return h[:, :, :S]
        return train_kernel(q, k, v, i, f, c_initial, n_initial, m_initial,
                            return_last_states=return_last_states, chunk_size=config.chunk_size, **common)

    # Inference: any S, states always returned (in inference_state_dtype).
    state_dtype = getattr(jnp, config.inference_state_dtype)
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    if c_initial is None:
        c_initial = jnp.zeros((B, NH, DHQK, DHHV), state_dtype)  # (B, NH, DHQK, DHHV)
        n_initial = jnp.zeros((B, NH, DHQK), state_dtype)  # (B, NH, DHQK)
        m_initial = jnp.zeros((B, NH, 1), state_dtype)  # (B, NH, 1)
    states = (c_initial, n_initial, m_initial)
    if S == 1:
        h, states = get_mlstm_step_kernel(config.step_kernel)(
            q[:, :, 0], k[:, :, 0], v[:, :, 0], i, f, *states, dtype_state=state_dtype, **common
        )
        return h[:, :, None, :], states
    # As upstream: the chunkwise kernel over the largest multiple of chunk_size, the sequence kernel
    # over the tail, the states passed between them. A parallel kernel has no states: then the
    # sequence kernel takes the whole sequence.
    S_chunks = (S // config.chunk_size) * config.chunk_size if config.chunkwise_kernel.startswith("chunkwise") else 0
    h_parts = []
    if S_chunks > 0:
        h, states = train_kernel(q[:, :, :S_chunks], k[:, :, :S_chunks], v[:, :, :S_chunks], i[:, :, :S_chunks],
                                 f[:, :, :S_chunks], *states, return_last_states=True, chunk_size=config.chunk_size, **common)
        h_parts.append(h)
    if S_chunks < S:
        h, states = get_mlstm_sequence_kernel(config.sequence_kernel)(
            q[:, :, S_chunks:], k[:, :, S_chunks:], v[:, :, S_chunks:], i[:, :, S_chunks:], f[:, :, S_chunks:], *states,
            return_last_states=True, dtype_state=state_dtype, **common,
        )
        h_parts.append(h)
    return jnp.concatenate(h_parts, axis=2), tuple(s.astype(state_dtype) for s in states)


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
