"""Parallel mLSTM in plain PyTorch, gate matrix from a subtractive cumulative sum.

The parallel form computes all S outputs at once from an S×S matrix, per (b, h):

    f̃ = logsigmoid(f),  F_t = Σ_{r≤t} f̃_r
    logD_{t,s} = F_t - F_s + i_s  (s ≤ t, -inf above the diagonal)
    m_t = max_s logD_{t,s},  D'_{t,s} = exp(logD_{t,s} - m_t)
    C̃ = (q̂ kᵀ) ∘ D',  den_t = Σ_s C̃_{t,s},  d_t = max(|den_t|, exp(-m_t)) + eps
    h_t = (C̃ V)_t / d_t

There is no state: the stabiliser starts at -inf, so m_t is the recurrent running max started from
m_0 = -inf. The difference F_t - F_s of two global sums loses precision on long sequences; the
stablef variant (``native_stablef.py``) sums only the terms between s and t and shares everything
else in this file.

Two kernels: ``mlstm_parallel__native_autograd`` (autograd through the forward) and
``mlstm_parallel__native_custbw`` (a hand-written backward). The hand-written backward is exact, the
normaliser included; it is the derivation in docs/dev-notes.md ("Exact gradients"):

    dh'_t = dh_t / d_t,  σ_t = -[|den_t| ≥ exp(-m_t)]·sign(den_t)·(dh_t·h_t) / d_t
    dC̃_{t,s} = dh'_t·v_s + σ_t,  dV = C̃ᵀ dh',  dq̂ = (dC̃ ∘ D') K,  dk = (dC̃ ∘ D')ᵀ q̂
    di_s = k_s·dk_s,  df̃_r = Σ_{t≥r} (q_t·dq_t - k_t·dk_t)          (stabiliser held fixed)
    dm_t = -eps·(dh_t·h_t) / d_t, carried back through m_t = max(f̃_t + m_{t-1}, i_t)
    df = df̃ · sigmoid(-f)

Precision: matrix products take their operands in the dtype of q, k, v and accumulate in float32
(float64 for float64 inputs), as tensor cores do; gates, stabilisers and normalisers are float32
(float64). No autocast handling here: the registry wraps these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "mlstm_parallel__native_autograd",
    "mlstm_parallel__native_custbw",
    "log_decay_matrix_subtractive",
    "route_stabiliser_gradient",
]

# (B, NH, S) log forget gates f̃, (B, NH, S) input gates -> (B, NH, S, S) logD, -inf above the diagonal.
LogDecayMatrix = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for 16- and 32-bit inputs, float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def matmul(a: torch.Tensor, b: torch.Tensor, operand_dtype: torch.dtype) -> torch.Tensor:
    """a @ b with both operands rounded to `operand_dtype` and the products summed in the
    accumulation dtype, like a tensor-core matrix product."""
    acc = accumulation_dtype(operand_dtype)
    return a.to(operand_dtype).to(acc) @ b.to(operand_dtype).to(acc)


def reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """out_t = Σ_{t'≥t} x_t' along the last dimension."""
    return x.flip(-1).cumsum(-1).flip(-1)


def log_decay_matrix_subtractive(f_log: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """logD_{t,s} = F_t - F_s + i_s with F the inclusive cumulative sum of f̃ (s ≤ t)."""
    S = f_log.shape[-1]
    f_cumsum = f_log.cumsum(dim=-1)  # (B, NH, S)
    log_d = (f_cumsum[..., :, None] - f_cumsum[..., None, :]) + i[..., None, :]  # (B, NH, S, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=f_log.device).tril()  # (S, S)
    return log_d.masked_fill(~causal, -math.inf)


@dataclass
class ParallelForward:
    """Intermediates of the parallel forward that the hand-written backward reuses."""

    h: torch.Tensor  # (B, NH, S, DHHV) accumulation dtype
    m: torch.Tensor  # (B, NH, S) stabiliser max_s logD_{t,s}
    d_stable: torch.Tensor  # (B, NH, S, S) D' = exp(logD - m)
    c_tilde: torch.Tensor  # (B, NH, S, S) C̃ = (q̂ kᵀ) ∘ D'
    denominator: torch.Tensor  # (B, NH, S) den_t = Σ_s C̃_{t,s}
    normaliser: torch.Tensor  # (B, NH, S) d_t = max(|den_t|, exp(-m_t)) + eps


def parallel_forward(
    q: torch.Tensor,  # (B, NH, S, DHQK)
    k: torch.Tensor,  # (B, NH, S, DHQK)
    v: torch.Tensor,  # (B, NH, S, DHHV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    eps: float,
    log_decay_matrix: LogDecayMatrix,
) -> ParallelForward:
    """The parallel forward with a given gate-matrix construction; differentiable by autograd."""
    DHQK = q.shape[-1]
    dtype = q.dtype
    acc = accumulation_dtype(dtype)
    scale = 1.0 / math.sqrt(DHQK)

    log_d = log_decay_matrix(F.logsigmoid(f.to(acc)), i.to(acc))  # (B, NH, S, S)
    m = log_d.amax(dim=-1)  # (B, NH, S)
    d_stable = torch.exp(log_d - m[..., None])  # (B, NH, S, S)

    scores = matmul(q, k.transpose(-1, -2), dtype) * scale  # (B, NH, S, S)
    c_tilde = scores * d_stable  # (B, NH, S, S)
    denominator = c_tilde.sum(dim=-1)  # (B, NH, S)
    normaliser = torch.maximum(denominator.abs(), torch.exp(-m)) + eps  # (B, NH, S)
    h = matmul(c_tilde, v, dtype) / normaliser[..., None]  # (B, NH, S, DHHV)
    return ParallelForward(h, m, d_stable, c_tilde, denominator, normaliser)


def route_stabiliser_gradient(
    dm: torch.Tensor,  # (B, NH, S)
    i_won: torch.Tensor,  # (B, NH, S) bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Carry dL/dm_t back through m_t = max(f̃_t + m_{t-1}, i_t).

    `dm` is the gradient w.r.t. each stabiliser at fixed true (unstabilised) quantities, `i_won`
    marks the steps whose max was the input gate (m_t == i_t). Returns (di, df̃, dm_initial) with
    dm_initial (B, NH, 1). It computes this reverse scan, per (b, h):

        acc = 0
        for t = S-1 .. 0:
            acc += dm_t
            if i_won_t: di_t = acc; acc = 0
            else:       df̃_t = acc
        dm_initial = acc

    vectorised: with R_t = Σ_{t'≥t} dm_t' (R_S = 0) and w(t) the first win at or after t, the
    accumulator seen at step t is R_t - R_{w(t)} (f-branch steps) or R_t - R_{w(t+1)} (wins).
    """
    S = dm.shape[-1]
    r = torch.cat([reverse_cumsum(dm), dm.new_zeros(*dm.shape[:-1], 1)], dim=-1)  # (B, NH, S+1)
    positions = torch.arange(S, device=dm.device).expand_as(dm)  # (B, NH, S)
    win_or_end = torch.where(i_won, positions, torch.full_like(positions, S))  # (B, NH, S)
    first_win_from = win_or_end.flip(-1).cummin(dim=-1).values.flip(-1)  # (B, NH, S) w(t)
    first_win_after = torch.cat([first_win_from[..., 1:], torch.full_like(first_win_from[..., :1], S)], dim=-1)

    r_t = r[..., :S]  # (B, NH, S)
    df_log = r_t - r.gather(-1, first_win_from)  # zero where i_won: w(t) = t
    di = torch.where(i_won, r_t - r.gather(-1, first_win_after), torch.zeros_like(r_t))
    dm_initial = r[..., :1] - r.gather(-1, first_win_from[..., :1])  # (B, NH, 1)
    return di, df_log, dm_initial


def parallel_backward(
    dh: torch.Tensor,  # (B, NH, S, DHHV)
    q: torch.Tensor,  # (B, NH, S, DHQK)
    k: torch.Tensor,  # (B, NH, S, DHQK)
    v: torch.Tensor,  # (B, NH, S, DHHV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    eps: float,
    log_decay_matrix: LogDecayMatrix,
) -> tuple[torch.Tensor, ...]:
    """Exact gradients (dq, dk, dv, di, df) of the parallel form, in the accumulation dtype."""
    DHQK = q.shape[-1]
    dtype = q.dtype
    acc = accumulation_dtype(dtype)
    scale = 1.0 / math.sqrt(DHQK)
    fw = parallel_forward(q, k, v, i, f, eps, log_decay_matrix)
    dh = dh.to(acc)

    # Output and normaliser: h_t = num_t / d_t with d_t = max(|den_t|, exp(-m_t)) + eps.
    dh_scaled = dh / fw.normaliser[..., None]  # (B, NH, S, DHHV) dh'
    h_dot = (dh * fw.h).sum(dim=-1)  # (B, NH, S) dh_t·h_t
    den_branch = (fw.denominator.abs() >= torch.exp(-fw.m)).to(acc)  # (B, NH, S)
    sigma = -den_branch * torch.sign(fw.denominator) * h_dot / fw.normaliser  # (B, NH, S)

    # Score gradient: V augmented with a column of ones, dH' with the column σ.
    d_c_tilde = matmul(dh_scaled, v.transpose(-1, -2), dtype) + sigma[..., None]  # (B, NH, S, S)
    dv = matmul(fw.c_tilde.transpose(-1, -2), dh_scaled, dtype)  # (B, NH, S, DHHV)
    d_scores = d_c_tilde * fw.d_stable  # (B, NH, S, S), zero above the diagonal
    dq = matmul(d_scores, k, dtype) * scale  # (B, NH, S, DHQK)
    dk = matmul(d_scores.transpose(-1, -2), q, dtype) * scale  # (B, NH, S, DHQK)

    # Gates with the stabiliser held fixed: the column sums of dlogD are k_s·dk_s, and f̃_r scales
    # every (t ≥ r, s < r) entry: rows from r on (q·dq) minus columns from r on (k·dk).
    q_dq = (q.to(acc) * dq).sum(dim=-1)  # (B, NH, S)
    k_dk = (k.to(acc) * dk).sum(dim=-1)  # (B, NH, S)
    di = k_dk
    df_log = reverse_cumsum(q_dq - k_dk)

    # The stabiliser moves h only through eps: dh_t/dm_t = -eps·h_t/d_t at fixed true quantities.
    dm = -eps * h_dot / fw.normaliser  # (B, NH, S)
    i_won = fw.m == i.to(acc)  # logD_{t,t} = i_t exactly, so the diagonal won iff m_t == i_t
    di_stab, df_log_stab, _ = route_stabiliser_gradient(dm, i_won)  # m_0 = -inf: step 0 always wins

    di = di + di_stab
    df = (df_log + df_log_stab) * torch.sigmoid(-f.to(acc))
    return dq, dk, dv, di, df


class ParallelCustomBackward(torch.autograd.Function):
    """The parallel forward with the hand-written backward above, which recomputes the forward
    intermediates from the saved inputs."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, eps: float, log_decay_matrix: LogDecayMatrix):
        ctx.save_for_backward(q, k, v, i, f)
        ctx.eps = eps
        ctx.log_decay_matrix = log_decay_matrix
        return parallel_forward(q, k, v, i, f, eps, log_decay_matrix).h.to(q.dtype)

    @staticmethod
    def backward(ctx, dh):
        q, k, v, i, f = ctx.saved_tensors
        grads = parallel_backward(dh, q, k, v, i, f, ctx.eps, ctx.log_decay_matrix)
        dq, dk, dv, di, df = (g.to(x.dtype) for g, x in zip(grads, (q, k, v, i, f)))
        return dq, dk, dv, di, df, None, None


def reject_states(c_initial, n_initial, m_initial, return_last_states: bool) -> None:
    """The parallel form has no state: initial states and last states are an error, not ignored."""
    given = [n for n, x in (("c_initial", c_initial), ("n_initial", n_initial), ("m_initial", m_initial)) if x is not None]
    if given:
        raise ValueError(
            f"parallel kernels take no initial states (got {', '.join(given)}); use a chunkwise kernel"
        )
    if return_last_states:
        raise ValueError("parallel kernels cannot return last states; use a chunkwise kernel")


def mlstm_parallel__native_autograd(
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
    """Parallel mLSTM (subtractive gate matrix), gradients by autograd. Returns h (B, NH, S, DHHV)."""
    reject_states(c_initial, n_initial, m_initial, return_last_states)
    return parallel_forward(q, k, v, i, f, eps, log_decay_matrix_subtractive).h.to(q.dtype)


def mlstm_parallel__native_custbw(
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
    """Parallel mLSTM (subtractive gate matrix), exact hand-written backward. Returns h (B, NH, S, DHHV)."""
    reject_states(c_initial, n_initial, m_initial, return_last_states)
    return ParallelCustomBackward.apply(q, k, v, i, f, eps, log_decay_matrix_subtractive)
