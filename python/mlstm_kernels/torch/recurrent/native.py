"""Recurrent mLSTM in plain PyTorch: one step, and a sequence as a loop of steps.

One step of the recurrent definition (SPEC §2), per (b, h):

    f̃ = logsigmoid(f),  m_new = max(f̃ + m, i)
    F = exp(f̃ + m - m_new),  I = exp(i - m_new)
    C_new = F C + I k vᵀ,  n_new = F n + I k
    h = C_newᵀ q̂ / (max(|n_newᵀ q̂|, exp(-m_new)) + eps),  q̂ = q / sqrt(DHQK)

The step computes in float32 (float64 if the inputs or `dtype_state` are float64) and stores the new
state in `dtype_state` (inference may keep bfloat16 states). The sequence function runs the step over
S time steps, from the given initial state or from C_0 = 0, n_0 = 0, m_0 = 0; autograd differentiates
through the loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["mlstm_recurrent_step__native", "mlstm_recurrent_sequence__native_fw"]


def mlstm_recurrent_step__native(
    q: torch.Tensor,  # (B, NH, DHQK)
    k: torch.Tensor,  # (B, NH, DHQK)
    v: torch.Tensor,  # (B, NH, DHHV)
    i: torch.Tensor,  # (B, NH, 1)
    f: torch.Tensor,  # (B, NH, 1)
    c: torch.Tensor,  # (B, NH, DHQK, DHHV)
    n: torch.Tensor,  # (B, NH, DHQK)
    m: torch.Tensor,  # (B, NH, 1)
    eps: float = 1e-6,
    dtype_state: torch.dtype = torch.float32,
    **kwargs,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One recurrent step. Returns h (B, NH, DHHV) and the new state (c, n, m) in `dtype_state`."""
    B, NH, DHQK = q.shape
    acc = torch.promote_types(torch.promote_types(q.dtype, dtype_state), torch.float32)

    f_log = F.logsigmoid(f.to(acc).reshape(B, NH, 1))  # (B, NH, 1)
    i = i.to(acc).reshape(B, NH, 1)  # (B, NH, 1)
    m = m.to(acc).reshape(B, NH, 1)  # (B, NH, 1)
    m_new = torch.maximum(f_log + m, i)  # (B, NH, 1)
    f_act = torch.exp(f_log + m - m_new)  # (B, NH, 1)
    i_act = torch.exp(i - m_new)  # (B, NH, 1)

    q_scaled = q.to(acc) * (1.0 / math.sqrt(DHQK))  # (B, NH, DHQK)
    k, v = k.to(acc), v.to(acc)
    c_new = f_act[..., None] * c.to(acc) + i_act[..., None] * (k[..., :, None] * v[..., None, :])  # (B, NH, DHQK, DHHV)
    n_new = f_act * n.to(acc) + i_act * k  # (B, NH, DHQK)

    numerator = (c_new * q_scaled[..., :, None]).sum(dim=-2)  # (B, NH, DHHV) = C_newᵀ q̂
    denominator = (n_new * q_scaled).sum(dim=-1, keepdim=True)  # (B, NH, 1)
    h = numerator / (torch.maximum(denominator.abs(), torch.exp(-m_new)) + eps)  # (B, NH, DHHV)
    return h.to(q.dtype), (c_new.to(dtype_state), n_new.to(dtype_state), m_new.to(dtype_state))


def mlstm_recurrent_sequence__native_fw(
    q: torch.Tensor,  # (B, NH, S, DHQK)
    k: torch.Tensor,  # (B, NH, S, DHQK)
    v: torch.Tensor,  # (B, NH, S, DHHV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    c_initial: torch.Tensor | None = None,  # (B, NH, DHQK, DHHV)
    n_initial: torch.Tensor | None = None,  # (B, NH, DHQK)
    m_initial: torch.Tensor | None = None,  # (B, NH, 1)
    return_last_states: bool = False,
    eps: float = 1e-6,
    dtype_state: torch.dtype = torch.float32,
    **kwargs,
):
    """The recurrence over S steps. Returns h (B, NH, S, DHHV), and (c_last, n_last, m_last) in
    `dtype_state` when `return_last_states`."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    given = [x is not None for x in (c_initial, n_initial, m_initial)]
    if any(given) and not all(given):
        raise ValueError("c_initial, n_initial and m_initial must be given together")
    kw = dict(dtype=dtype_state, device=q.device)
    c = c_initial if c_initial is not None else torch.zeros(B, NH, DHQK, DHHV, **kw)
    n = n_initial if n_initial is not None else torch.zeros(B, NH, DHQK, **kw)
    m = m_initial if m_initial is not None else torch.zeros(B, NH, 1, **kw)

    h_steps = []
    for t in range(S):
        h_t, (c, n, m) = mlstm_recurrent_step__native(
            q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t, None], f[:, :, t, None], c, n, m,
            eps=eps, dtype_state=dtype_state,
        )
        h_steps.append(h_t)
    h = torch.stack(h_steps, dim=2)  # (B, NH, S, DHHV)
    return (h, (c, n, m)) if return_last_states else h
