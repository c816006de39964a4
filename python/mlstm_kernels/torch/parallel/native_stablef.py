"""Parallel mLSTM in plain PyTorch, "stablef" gate matrix.

The same parallel form as ``native.py`` (per (b, h)):

    logD_{t,s} = Σ_{r=s+1..t} f̃_r + i_s  (s ≤ t, -inf above the diagonal),  f̃ = logsigmoid(f)
    m_t = max_s logD_{t,s},  D' = exp(logD - m),  C̃ = (q̂ kᵀ) ∘ D'
    h_t = (C̃ V)_t / (max(|Σ_s C̃_{t,s}|, exp(-m_t)) + eps)

but the decay Σ_{r=s+1..t} f̃_r is the cumulative sum, down column s, of the strictly-lower-
triangular matrix whose entry (t, s) is f̃_t. Each entry then sums only its own terms, instead of
being the difference F_t - F_s of two global cumulative sums, whose rounding error grows with the
position in the sequence. Everything else — the forward, the exact hand-written backward and its
derivation — is shared with ``native.py``.
"""

from __future__ import annotations

import math

import torch

from .native import ParallelCustomBackward, parallel_forward, reject_states

__all__ = [
    "mlstm_parallel__native_stablef_autograd",
    "mlstm_parallel__native_stablef_custbw",
    "log_decay_matrix_stablef",
]


def log_decay_matrix_stablef(f_log: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """logD_{t,s} = Σ_{r=s+1..t} f̃_r + i_s (s ≤ t) as a column-wise cumulative sum."""
    S = f_log.shape[-1]
    strictly_lower = torch.ones(S, S, dtype=torch.bool, device=f_log.device).tril(diagonal=-1)  # (S, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=f_log.device).tril()  # (S, S)
    f_matrix = f_log[..., :, None].expand(*f_log.shape, S).masked_fill(~strictly_lower, 0.0)  # (B, NH, S, S)
    log_d = f_matrix.cumsum(dim=-2) + i[..., None, :]  # (B, NH, S, S)
    return log_d.masked_fill(~causal, -math.inf)


def mlstm_parallel__native_stablef_autograd(
    q: torch.Tensor,  # (B, NH, S, DHQK)
    k: torch.Tensor,  # (B, NH, S, DHQK)
    v: torch.Tensor,  # (B, NH, S, DHHV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    c_initial: torch.Tensor | None = None,
    n_initial: torch.Tensor | None = None,
    m_initial: torch.Tensor | None = None,
    return_last_states: bool = False,
    eps: float = 1e-6,
    **kwargs,
) -> torch.Tensor:
    """Parallel mLSTM (stablef gate matrix), gradients by autograd. Returns h (B, NH, S, DHHV)."""
    reject_states(c_initial, n_initial, m_initial, return_last_states)
    return parallel_forward(q, k, v, i, f, eps, log_decay_matrix_stablef).h.to(q.dtype)


def mlstm_parallel__native_stablef_custbw(
    q: torch.Tensor,  # (B, NH, S, DHQK)
    k: torch.Tensor,  # (B, NH, S, DHQK)
    v: torch.Tensor,  # (B, NH, S, DHHV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    c_initial: torch.Tensor | None = None,
    n_initial: torch.Tensor | None = None,
    m_initial: torch.Tensor | None = None,
    return_last_states: bool = False,
    eps: float = 1e-6,
    **kwargs,
) -> torch.Tensor:
    """Parallel mLSTM (stablef gate matrix), exact hand-written backward. Returns h (B, NH, S, DHHV)."""
    reject_states(c_initial, n_initial, m_initial, return_last_states)
    return ParallelCustomBackward.apply(q, k, v, i, f, eps, log_decay_matrix_stablef)
