"""The mLSTM backend as an ``nn.Module``, configured by a dataclass (upstream-compatible).

Modes:
    train               the training kernel (chunkwise or parallel) on the whole sequence
    train_with_padding  the same after padding S with zeros to a multiple of chunk_size; the output
                        is cut back to S. Our core kernels take any S, so this is only kept for
                        code written against upstream, where the Triton kernels needed it.
    inference           any S, always returns the last states, in ``inference_state_dtype``: S == 1
                        goes to the step kernel; otherwise the chunkwise kernel runs on the largest
                        multiple of chunk_size and the sequence kernel on the remaining tail, passing
                        the states between them. A parallel training kernel has no states to pass
                        on: the sequence kernel then takes the whole sequence (upstream failed here).

The caller's shapes are validated before a mode pads or cuts the sequence, so errors quote them.
Kernel names may be ours or upstream's (resolved with a one-time warning), see
``mlstm_kernels.torch.get_available_mlstm_kernels`` and friends.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._spec import (  # the config and its typing names are shared with the JAX backend
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


def _states_as(c: torch.Tensor, n: torch.Tensor, m: torch.Tensor, dtype: torch.dtype):
    """(c, n, m) in `dtype`, m rounded first and c, n rescaled by exp(m - m_rounded), so that the true
    state exp(m)·c, exp(m)·n loses only the rounding of c and n (as the core stores 16-bit states)."""
    if m.dtype == dtype:
        return c.to(dtype), n.to(dtype), m
    m_rounded = m.to(dtype)  # (B, NH, 1)
    m_back = m_rounded.to(m.dtype)
    scale = torch.exp(torch.where(m == m_back, 0.0, m - m_back))  # (B, NH, 1); 1 where m is exact or infinite
    return (c * scale[..., None]).to(dtype), (n * scale).to(dtype), m_rounded


def wrap_chunkwise__pad_zeros(
    mlstm_chunkwise_kernel: Callable,
    q: torch.Tensor,  # (B, NH, S, DHQK)
    k: torch.Tensor,  # (B, NH, S, DHQK)
    v: torch.Tensor,  # (B, NH, S, DHHV)
    f: torch.Tensor,  # (B, NH, S)
    i: torch.Tensor,  # (B, NH, S)
    c_initial: torch.Tensor | None = None,
    n_initial: torch.Tensor | None = None,
    m_initial: torch.Tensor | None = None,
    return_last_states: bool = False,
    eps: float = 1e-6,
    autocast_kernel_dtype: torch.dtype = torch.bfloat16,
    chunk_size: int = 64,
    **kwargs,
) -> torch.Tensor:
    """Pad S with zeros to a multiple of chunk_size, run the kernel, cut h back to S.

    The padding comes after the sequence, so it cannot change h for t < S; it would change the last
    states, which are therefore not available here.
    """
    if return_last_states:
        raise ValueError("train_with_padding: the last states of a zero-padded sequence are not those of the input")
    check_backend_inputs("train_with_padding", dict(q=q, k=k, v=v, i=i, f=f, c_initial=c_initial, n_initial=n_initial,
                                                    m_initial=m_initial))
    S = q.shape[2]
    pad = (-S) % chunk_size
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))  # (B, NH, S + pad, DH)
        i, f = (F.pad(t, (0, pad)) for t in (i, f))  # (B, NH, S + pad)
    h = mlstm_chunkwise_kernel(
        q=q, k=k, v=v, i=i, f=f, c_initial=c_initial, n_initial=n_initial, m_initial=m_initial,
        return_last_states=False, eps=eps, autocast_kernel_dtype=autocast_kernel_dtype, chunk_size=chunk_size, **kwargs,
    )
    return h[:, :, :S, :]


def wrap_chunkwise__arbitrary_sequence_length(
    mlstm_chunkwise_kernel: Callable | None,
    mlstm_sequence_kernel: Callable,
    mlstm_step_kernel: Callable,
    q: torch.Tensor,  # (B, NH, S, DHQK)
    k: torch.Tensor,  # (B, NH, S, DHQK)
    v: torch.Tensor,  # (B, NH, S, DHHV)
    f: torch.Tensor,  # (B, NH, S)
    i: torch.Tensor,  # (B, NH, S)
    c_initial: torch.Tensor | None = None,  # (B, NH, DHQK, DHHV)
    n_initial: torch.Tensor | None = None,  # (B, NH, DHQK)
    m_initial: torch.Tensor | None = None,  # (B, NH, 1)
    return_last_states: bool = True,
    eps: float = 1e-6,
    autocast_kernel_dtype: torch.dtype = torch.bfloat16,
    chunk_size: int = 64,
    enable_logging: bool = False,
    dtype_state: torch.dtype | None = None,
):
    """h and the last states for any S: chunkwise over the largest multiple of chunk_size, then the
    sequence kernel over the tail (states passed between them); S == 1 goes straight to the step
    kernel (``_spec.inference_segments``). Missing initial states are zeros (m = 0).

    ``mlstm_chunkwise_kernel=None`` stands for a training kernel without states (a parallel one): the
    sequence kernel then takes the whole sequence. ``dtype_state`` (not in upstream's signature) is
    passed to the sequence and step kernels and is the dtype of the returned states whichever kernel
    ran last; None leaves both to the kernels, as upstream. ``enable_logging`` is accepted and ignored.
    """
    dims = check_backend_inputs("inference", dict(q=q, k=k, v=v, i=i, f=f, c_initial=c_initial, n_initial=n_initial,
                                                  m_initial=m_initial))
    B, NH, S, DHQK, DHHV = dims.B, dims.NH, dims.S, dims.DHQK, dims.DHHV
    zeros_dtype = torch.float32 if dtype_state is None else dtype_state
    c = c_initial if c_initial is not None else q.new_zeros((B, NH, DHQK, DHHV), dtype=zeros_dtype)
    n = n_initial if n_initial is not None else q.new_zeros((B, NH, DHQK), dtype=zeros_dtype)
    m = m_initial if m_initial is not None else q.new_zeros((B, NH, 1), dtype=zeros_dtype)
    recurrent_kw = {} if dtype_state is None else {"dtype_state": dtype_state}

    h_parts = []
    for registry, start, stop in inference_segments(S, chunk_size, mlstm_chunkwise_kernel is not None):
        if registry == "step":
            # The step kernel takes no time axis: q, k, v (B, NH, DH); i, f stay (B, NH, 1).
            h, (c, n, m) = mlstm_step_kernel(
                q=q[:, :, 0], k=k[:, :, 0], v=v[:, :, 0], i=i, f=f, c=c, n=n, m=m, eps=eps,
                autocast_kernel_dtype=autocast_kernel_dtype, **recurrent_kw,
            )
            h_parts.append(h[:, :, None, :])  # (B, NH, 1, DHHV)
            continue
        part = dict(q=q[:, :, start:stop], k=k[:, :, start:stop], v=v[:, :, start:stop], i=i[:, :, start:stop],
                    f=f[:, :, start:stop], c_initial=c, n_initial=n, m_initial=m, return_last_states=True, eps=eps,
                    autocast_kernel_dtype=autocast_kernel_dtype)
        if registry == "training":
            h, (c, n, m) = mlstm_chunkwise_kernel(**part, chunk_size=chunk_size)
        else:
            h, (c, n, m) = mlstm_sequence_kernel(**part, **recurrent_kw)
        h_parts.append(h)
    h = h_parts[0] if len(h_parts) == 1 else torch.cat(h_parts, dim=2)  # (B, NH, S, DHHV)
    if dtype_state is not None:
        # The chunkwise kernel returns float32 states; inference hands out dtype_state throughout.
        c, n, m = _states_as(c, n, m, dtype_state)

    if return_last_states:
        return h, (c, n, m)
    return h


class mLSTMBackend(nn.Module):
    """The mLSTM cell: forward(q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, mode)."""

    config_class = mLSTMBackendConfig

    def __init__(self, config: mLSTMBackendConfig):
        super().__init__()
        self.config = config
        self.chunkwise_kernel_fn = get_mlstm_kernel(config.chunkwise_kernel)
        self.sequence_kernel_fn = get_mlstm_sequence_kernel(config.sequence_kernel)
        self.step_kernel_fn = get_mlstm_step_kernel(config.step_kernel)
        state_dtype = getattr(torch, config.inference_state_dtype)
        kernel_dtype = getattr(torch, config.autocast_kernel_dtype)

        self._inference_fn = partial(
            wrap_chunkwise__arbitrary_sequence_length,
            # A parallel kernel has no states to pass on: the sequence kernel takes its part.
            mlstm_chunkwise_kernel=self.chunkwise_kernel_fn if training_kernel_has_states(config.chunkwise_kernel) else None,
            mlstm_sequence_kernel=self.sequence_kernel_fn,
            mlstm_step_kernel=self.step_kernel_fn,
            chunk_size=config.chunk_size,
            eps=config.eps,
            autocast_kernel_dtype=kernel_dtype,
            return_last_states=True,
            dtype_state=state_dtype,
        )
        self._train_fn = partial(
            self.chunkwise_kernel_fn, autocast_kernel_dtype=kernel_dtype, eps=config.eps, chunk_size=config.chunk_size
        )
        # The padding wrapper passes eps and the dtype on itself: bind the config's values there too.
        self._train_padded_fn = partial(
            wrap_chunkwise__pad_zeros, mlstm_chunkwise_kernel=self.chunkwise_kernel_fn,
            autocast_kernel_dtype=kernel_dtype, eps=config.eps, chunk_size=config.chunk_size,
        )

    def forward(
        self,
        q: torch.Tensor,  # (B, NH, S, DHQK)
        k: torch.Tensor,  # (B, NH, S, DHQK)
        v: torch.Tensor,  # (B, NH, S, DHHV)
        i: torch.Tensor,  # (B, NH, S)
        f: torch.Tensor,  # (B, NH, S)
        c_initial: torch.Tensor | None = None,  # (B, NH, DHQK, DHHV)
        n_initial: torch.Tensor | None = None,  # (B, NH, DHQK)
        m_initial: torch.Tensor | None = None,  # (B, NH, 1)
        return_last_states: bool | None = None,
        mode: BackendModeType | None = None,
    ):
        """h (B, NH, S, DHHV), or (h, (c_last, n_last, m_last)) when states are returned (always in
        inference mode). `return_last_states` and `mode` default to the config's."""
        if mode is None:
            mode = self.config.mode
        if mode in ("train", "train_with_padding"):
            if return_last_states is None:
                return_last_states = self.config.return_last_states
            if mode == "train_with_padding" and return_last_states:
                raise ValueError("return_last_states=True is not supported with train_with_padding mode.")
            train_fn = self._train_padded_fn if mode == "train_with_padding" else self._train_fn
            return train_fn(
                q=q, k=k, v=v, i=i, f=f, c_initial=c_initial, n_initial=n_initial, m_initial=m_initial,
                return_last_states=return_last_states,
            )
        check_backend_mode(mode)
        return self._inference_fn(q=q, k=k, v=v, i=i, f=f, c_initial=c_initial, n_initial=n_initial, m_initial=m_initial)

    def extra_repr(self) -> str:
        return f"{self.config}"


__all__ = [
    "ChunkwiseKernelType",
    "SequenceKernelType",
    "StepKernelType",
    "DtypeType",
    "BackendModeType",
    "mLSTMBackendConfig",
    "mLSTMBackend",
    "wrap_chunkwise__pad_zeros",
    "wrap_chunkwise__arbitrary_sequence_length",
]
