"""Reference implementations of the mLSTM cell: the definitions every kernel is tested against.

Two functions, both written for clarity, both differentiable by autograd, both computing in the
dtype of their inputs (call them with float64 tensors to get the reference):

``mlstm_recurrent_reference`` is the recurrent definition (SPEC §2), one time step after the other,
per (b, h):

    f̃_t = logsigmoid(f_t)
    m_t = max(f̃_t + m_{t-1}, i_t)                      log-domain stabiliser, m_0 = 0 by default
    F_t = exp(f̃_t + m_{t-1} - m_t),  I_t = exp(i_t - m_t)
    C_t = F_t C_{t-1} + I_t k_t v_tᵀ,   n_t = F_t n_{t-1} + I_t k_t
    q̂_t = q_t / sqrt(DHQK)
    h_t = C_tᵀ q̂_t / (max(|n_tᵀ q̂_t|, exp(-m_t)) + eps)

Its gradients (by autograd) are the exact gradients of the mLSTM, including the normaliser path
max(|n·q̂|, exp(-m)) and the paths through the initial and the returned last states.

``mlstm_parallel_reference`` is the parallel form with the "stablef" gate matrix and no state:

    logD_{t,s} = Σ_{r=s+1..t} f̃_r + i_s  (s ≤ t, -inf above the diagonal)
    m_t = max_s logD_{t,s},  D'_{t,s} = exp(logD_{t,s} - m_t)
    C̃ = (q̂ kᵀ) ∘ D',  n_t = max(|Σ_s C̃_{t,s}|, exp(-m_t)),  h = (C̃ / (n + eps)) V

The sum of f̃ is taken as a cumulative sum of the strictly-lower-triangular f̃ matrix down each
column, never as the difference of two global cumulative sums (which loses precision on long
sequences). This equals the recurrent form started from m_0 = -inf (no state); with m_0 = 0 the two
differ only where the exp(-m_t) branch of the denominator is active.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["mlstm_recurrent_reference", "mlstm_parallel_reference"]


def mlstm_recurrent_reference(
    q: torch.Tensor,  # (B, NH, S, DHQK)
    k: torch.Tensor,  # (B, NH, S, DHQK)
    v: torch.Tensor,  # (B, NH, S, DHHV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    c_initial: torch.Tensor | None = None,  # (B, NH, DHQK, DHHV)
    n_initial: torch.Tensor | None = None,  # (B, NH, DHQK)
    m_initial: torch.Tensor | None = None,  # (B, NH, 1)
    eps: float = 1e-6,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The recurrent definition, step by step. Returns ``h, (c_last, n_last, m_last)``.

    Everything is computed in the dtype of ``q`` (states included); missing initial states are
    zero (C_0 = 0, n_0 = 0, m_0 = 0).
    """
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    dtype, device = q.dtype, q.device

    c = c_initial.to(dtype) if c_initial is not None else q.new_zeros(B, NH, DHQK, DHHV)
    n = n_initial.to(dtype) if n_initial is not None else q.new_zeros(B, NH, DHQK)
    if m_initial is not None:
        m = m_initial.to(dtype).reshape(B, NH, 1)
    else:
        m = torch.zeros(B, NH, 1, dtype=dtype, device=device)

    q_scaled = q * (1.0 / math.sqrt(DHQK))  # (B, NH, S, DHQK)
    f_log = F.logsigmoid(f.to(dtype))  # (B, NH, S)
    i = i.to(dtype)

    h_steps = []
    for t in range(S):
        f_log_t = f_log[:, :, t, None]  # (B, NH, 1)
        i_t = i[:, :, t, None]  # (B, NH, 1)
        m_new = torch.maximum(f_log_t + m, i_t)  # (B, NH, 1)
        f_act = torch.exp(f_log_t + m - m_new)  # (B, NH, 1)
        i_act = torch.exp(i_t - m_new)  # (B, NH, 1)

        k_t, v_t, q_t = k[:, :, t], v[:, :, t], q_scaled[:, :, t]  # (B, NH, DHQK|DHHV)
        c = f_act[..., None] * c + i_act[..., None] * (k_t[..., :, None] * v_t[..., None, :])
        n = f_act * n + i_act * k_t
        m = m_new

        numerator = (c * q_t[..., :, None]).sum(dim=-2)  # (B, NH, DHHV) = Cᵀ q̂
        denominator = (n * q_t).sum(dim=-1, keepdim=True)  # (B, NH, 1) = nᵀ q̂
        normaliser = torch.maximum(denominator.abs(), torch.exp(-m)) + eps  # (B, NH, 1)
        h_steps.append(numerator / normaliser)

    h = torch.stack(h_steps, dim=2)  # (B, NH, S, DHHV)
    return h, (c, n, m)


def mlstm_parallel_reference(
    q: torch.Tensor,  # (B, NH, S, DHQK)
    k: torch.Tensor,  # (B, NH, S, DHQK)
    v: torch.Tensor,  # (B, NH, S, DHHV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    eps: float = 1e-6,
) -> torch.Tensor:
    """The parallel form with the stablef gate matrix (stabiliser m_t = max_s logD_{t,s}, no state).

    Returns h (B, NH, S, DHHV), computed in the dtype of ``q``.
    """
    S, DHQK = q.shape[-2], q.shape[-1]
    dtype, device = q.dtype, q.device
    f_log = F.logsigmoid(f.to(dtype))  # (B, NH, S)

    strictly_lower = torch.ones(S, S, dtype=torch.bool, device=device).tril(diagonal=-1)  # (S, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=device).tril()  # (S, S)

    # Entry (t, s) of the f̃ matrix is f̃_t below the diagonal; its cumulative sum down column s is
    # Σ_{r=s+1..t} f̃_r, a sum of only the terms that belong to it.
    f_matrix = f_log[..., :, None].expand(*f_log.shape, S).masked_fill(~strictly_lower, 0.0)  # (B, NH, S, S)
    log_decay = f_matrix.cumsum(dim=-2)  # (B, NH, S, S)
    log_d = (log_decay + i.to(dtype)[..., None, :]).masked_fill(~causal, -math.inf)  # (B, NH, S, S)

    m = log_d.amax(dim=-1, keepdim=True)  # (B, NH, S, 1)
    d_stable = torch.exp(log_d - m)  # (B, NH, S, S)

    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(DHQK))  # (B, NH, S, S)
    c_tilde = scores * d_stable  # (B, NH, S, S)
    normaliser = torch.maximum(c_tilde.sum(dim=-1, keepdim=True).abs(), torch.exp(-m)) + eps  # (B, NH, S, 1)
    return (c_tilde / normaliser) @ v.to(dtype)
