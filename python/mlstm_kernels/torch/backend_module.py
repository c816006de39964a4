"""The mLSTM backend as an ``nn.Module``, configured by a dataclass (upstream-compatible).

Modes:
    train               the training kernel (chunkwise or parallel) on the whole sequence
    train_with_padding  the same after padding S with zeros to a multiple of chunk_size; the output
                        is cut back to S. Our core kernels take any S, so this is only kept for
                        code written against upstream, where the Triton kernels needed it.
    inference           any S, always returns the last states: S == 1 goes to the step kernel;
                        otherwise the chunkwise kernel runs on the largest multiple of chunk_size and
                        the sequence kernel on the remaining tail, passing the states between them.

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
    check_backend_mode,
    mLSTMBackendConfig,
)
from . import get_mlstm_kernel, get_mlstm_sequence_kernel, get_mlstm_step_kernel


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
    mlstm_chunkwise_kernel: Callable,
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
):
    """h and the last states for any S: chunkwise over the largest multiple of chunk_size, then the
    sequence kernel over the tail (states passed between them); S == 1 goes straight to the step
    kernel. Missing initial states are zeros (m = 0)."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    if S < 1:
        raise ValueError(f"inference: the sequence is empty (S={S}); need S >= 1")
    c = c_initial if c_initial is not None else q.new_zeros((B, NH, DHQK, DHHV), dtype=torch.float32)
    n = n_initial if n_initial is not None else q.new_zeros((B, NH, DHQK), dtype=torch.float32)
    m = m_initial if m_initial is not None else q.new_zeros((B, NH, 1), dtype=torch.float32)

    if S == 1:
        # The step kernel takes no time axis: q, k, v (B, NH, DH); i, f stay (B, NH, 1).
        h, (c, n, m) = mlstm_step_kernel(
            q=q[:, :, 0], k=k[:, :, 0], v=v[:, :, 0], i=i, f=f, c=c, n=n, m=m, eps=eps,
            autocast_kernel_dtype=autocast_kernel_dtype,
        )
        h = h[:, :, None, :]  # (B, NH, 1, DHHV)
    else:
        h_parts = []
        S_chunks = (S // chunk_size) * chunk_size
        if S_chunks > 0:
            h_part, (c, n, m) = mlstm_chunkwise_kernel(
                q=q[:, :, :S_chunks], k=k[:, :, :S_chunks], v=v[:, :, :S_chunks], i=i[:, :, :S_chunks],
                f=f[:, :, :S_chunks], c_initial=c, n_initial=n, m_initial=m, return_last_states=True, eps=eps,
                autocast_kernel_dtype=autocast_kernel_dtype, chunk_size=chunk_size,
            )
            h_parts.append(h_part)
        if S_chunks < S:
            h_part, (c, n, m) = mlstm_sequence_kernel(
                q=q[:, :, S_chunks:], k=k[:, :, S_chunks:], v=v[:, :, S_chunks:], i=i[:, :, S_chunks:],
                f=f[:, :, S_chunks:], c_initial=c, n_initial=n, m_initial=m, return_last_states=True, eps=eps,
                autocast_kernel_dtype=autocast_kernel_dtype,
            )
            h_parts.append(h_part)
        h = torch.cat(h_parts, dim=2)  # (B, NH, S, DHHV)

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
            mlstm_chunkwise_kernel=self.chunkwise_kernel_fn,
            mlstm_sequence_kernel=partial(self.sequence_kernel_fn, dtype_state=state_dtype),
            mlstm_step_kernel=partial(self.step_kernel_fn, dtype_state=state_dtype),
            chunk_size=config.chunk_size,
            eps=config.eps,
            autocast_kernel_dtype=kernel_dtype,
            return_last_states=True,
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
