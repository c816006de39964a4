"""Chunkwise mLSTM in plain PyTorch: the readable version of the algorithm the core runs.

The sequence is cut into NC = ceil(S / L) chunks of L steps (the last one may be shorter; any
S ≥ 1 works). A chunk is processed from the state (C_k, n_k, m_k) at its start; per (b, h), with
f̃ = logsigmoid(f), q̂ = q / sqrt(DHQK) and, inside the chunk, b_t = Σ_{r≤t} f̃_r, g = b_last:

    intra-chunk:  logD_{t,s} = b_t - b_s + i_s (s ≤ t),  m_t = max(b_t + m_k, max_s logD_{t,s})
                  D̄_{t,s} = exp(logD_{t,s} - m_t),  β_t = exp(b_t + m_k - m_t)
                  num_t = β_t C_kᵀ q̂_t + Σ_s (q̂_t·k_s) D̄_{t,s} v_s
                  den_t = β_t n_kᵀ q̂_t + Σ_s (q̂_t·k_s) D̄_{t,s}
                  h_t = num_t / (max(|den_t|, exp(-m_t)) + eps)
    inter-chunk:  a_s = g - b_s + i_s,  m_{k+1} = max(g + m_k, max_s a_s)
                  C_{k+1} = exp(g + m_k - m_{k+1}) C_k + Σ_s exp(a_s - m_{k+1}) k_s v_sᵀ   (n likewise)

m_t is the recurrent running max, so this equals the recurrent definition (``reference.py``) for any
L. The initial state defaults to C_0 = 0, n_0 = 0, m_0 = 0.

``mlstm_chunkwise__native_autograd`` differentiates this by autograd. ``mlstm_chunkwise__native_custbw``
has an exact hand-written backward (docs/dev-notes.md, "Exact gradients"): with every stabiliser held
fixed the computation is an exact function of the true (unstabilised) quantities, so

  1. dq, dk, dv and dC_0, dn_0 come from one reverse pass over the chunks carrying (dC_k, dn_k),
     with the score gradient dC̃_{t,s} = dh'_t·v_s + σ_t, where dh'_t = dh_t / d_t and
     σ_t = -[|den_t| ≥ exp(-m_t)]·sign(den_t)·(dh_t·h_t) / d_t;
  2. the gates follow from dq, dk:  di_s = k_s·dk_s,
     df̃_r = Σ_{t≥r} (q_t·dq_t - k_t·dk_t) + ⟨dC_last, C_last⟩ + ⟨dn_last, n_last⟩,
     dm_0 = ⟨dC_0, C_0⟩ + ⟨dn_0, n_0⟩;
  3. the stabilisers move the outputs only through eps (dm_t = -eps·(dh_t·h_t)/d_t) and through the
     returned last state (dm_S += dm_last - ⟨dC_last, C_last⟩ - ⟨dn_last, n_last⟩); that gradient is
     carried back through m_t = max(f̃_t + m_{t-1}, i_t) by a reverse scan;
  4. df = df̃ · sigmoid(-f).

Precision: matrix products take their operands in the dtype of q, k, v and accumulate in float32
(float64 for float64 inputs); gates, stabilisers and the states are float32 (float64). No autocast
handling here: the registry wraps these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..parallel.native import accumulation_dtype, matmul, reverse_cumsum, route_stabiliser_gradient

__all__ = ["mlstm_chunkwise__native_autograd", "mlstm_chunkwise__native_custbw"]


@dataclass
class ChunkForward:
    """One chunk of the forward: its outputs, its end state and what the backward reuses."""

    h: torch.Tensor  # (B, NH, L, DHHV)
    m: torch.Tensor  # (B, NH, L) combined stabiliser m_t (the recurrent running max)
    d_bar: torch.Tensor  # (B, NH, L, L) exp(logD - m_t), zero above the diagonal
    beta: torch.Tensor  # (B, NH, L) exp(b_t + m_k - m_t), weight of the chunk-start state
    c_tilde: torch.Tensor  # (B, NH, L, L) (q̂ kᵀ) ∘ D̄
    denominator: torch.Tensor  # (B, NH, L)
    normaliser: torch.Tensor  # (B, NH, L) max(|den_t|, exp(-m_t)) + eps
    key_weight: torch.Tensor  # (B, NH, L) exp(a_s - m_{k+1}), weight of k_s v_sᵀ in C_{k+1}
    state_decay: torch.Tensor  # (B, NH, 1) exp(g + m_k - m_{k+1})
    c_next: torch.Tensor  # (B, NH, DHQK, DHHV)
    n_next: torch.Tensor  # (B, NH, DHQK)
    m_next: torch.Tensor  # (B, NH, 1)


def chunk_forward(
    q: torch.Tensor,  # (B, NH, L, DHQK)
    k: torch.Tensor,  # (B, NH, L, DHQK)
    v: torch.Tensor,  # (B, NH, L, DHHV)
    i: torch.Tensor,  # (B, NH, L) accumulation dtype
    f_log: torch.Tensor,  # (B, NH, L) logsigmoid(f), accumulation dtype
    c: torch.Tensor,  # (B, NH, DHQK, DHHV) state at the chunk start
    n: torch.Tensor,  # (B, NH, DHQK)
    m: torch.Tensor,  # (B, NH, 1)
    eps: float,
) -> ChunkForward:
    """Outputs of one chunk and the state after it; differentiable by autograd."""
    L, DHQK = q.shape[-2], q.shape[-1]
    dtype = q.dtype
    scale = 1.0 / math.sqrt(DHQK)

    b = f_log.cumsum(dim=-1)  # (B, NH, L) inclusive, within the chunk
    g = b[..., -1:]  # (B, NH, 1)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()  # (L, L)
    log_d = ((b[..., :, None] - b[..., None, :]) + i[..., None, :]).masked_fill(~causal, -math.inf)  # (B, NH, L, L)
    m_combined = torch.maximum(b + m, log_d.amax(dim=-1))  # (B, NH, L)
    d_bar = torch.exp(log_d - m_combined[..., None])  # (B, NH, L, L)
    beta = torch.exp(b + m - m_combined)  # (B, NH, L)

    c_tilde = matmul(q, k.transpose(-1, -2), dtype) * scale * d_bar  # (B, NH, L, L)
    numerator = beta[..., None] * matmul(q, c, dtype) * scale + matmul(c_tilde, v, dtype)  # (B, NH, L, DHHV)
    denominator = beta * matmul(q, n[..., None], dtype)[..., 0] * scale + c_tilde.sum(dim=-1)  # (B, NH, L)
    normaliser = torch.maximum(denominator.abs(), torch.exp(-m_combined)) + eps  # (B, NH, L)
    h = numerator / normaliser[..., None]  # (B, NH, L, DHHV)

    a = g - b + i  # (B, NH, L)
    m_next = torch.maximum(g + m, a.amax(dim=-1, keepdim=True))  # (B, NH, 1)
    key_weight = torch.exp(a - m_next)  # (B, NH, L)
    state_decay = torch.exp(g + m - m_next)  # (B, NH, 1)
    k_weighted = k * key_weight[..., None]  # (B, NH, L, DHQK)
    c_next = state_decay[..., None] * c + matmul(k_weighted.transpose(-1, -2), v, dtype)  # (B, NH, DHQK, DHHV)
    n_next = state_decay * n + k_weighted.sum(dim=-2)  # (B, NH, DHQK)

    return ChunkForward(
        h, m_combined, d_bar, beta, c_tilde, denominator, normaliser, key_weight, state_decay, c_next, n_next, m_next
    )


def initial_states(q, v, c_initial, n_initial, m_initial):
    """The initial (C_0, n_0, m_0) in the accumulation dtype; zeros where not given."""
    B, NH, _, DHQK = q.shape
    DHHV = v.shape[-1]
    acc = accumulation_dtype(q.dtype)
    kw = dict(dtype=acc, device=q.device)
    c = c_initial.to(acc) if c_initial is not None else torch.zeros(B, NH, DHQK, DHHV, **kw)
    n = n_initial.to(acc) if n_initial is not None else torch.zeros(B, NH, DHQK, **kw)
    m = m_initial.to(acc).reshape(B, NH, 1) if m_initial is not None else torch.zeros(B, NH, 1, **kw)
    return c, n, m


def chunk_bounds(S: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk; the last one is partial when chunk_size does not divide S."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(start, min(start + chunk_size, S)) for start in range(0, S, chunk_size)]


def chunkwise_forward(q, k, v, i, f, c, n, m, eps: float, chunk_size: int, keep_chunk_states: bool = False):
    """The whole sequence, chunk by chunk. Returns h (accumulation dtype), the last state and, when
    asked, the state at the start of every chunk (for the hand-written backward)."""
    acc = accumulation_dtype(q.dtype)
    i = i.to(acc)  # (B, NH, S)
    f_log = F.logsigmoid(f.to(acc))  # (B, NH, S)
    h_chunks, chunk_states = [], []
    for start, end in chunk_bounds(q.shape[2], chunk_size):
        if keep_chunk_states:
            chunk_states.append((c, n, m))
        fw = chunk_forward(
            q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], i[..., start:end], f_log[..., start:end], c, n, m, eps
        )
        h_chunks.append(fw.h)
        c, n, m = fw.c_next, fw.n_next, fw.m_next
    return torch.cat(h_chunks, dim=2), (c, n, m), chunk_states


def chunkwise_backward(q, k, v, i, f, initial, chunk_states, last_states, grads, eps: float, chunk_size: int):
    """Exact gradients of the chunkwise form (see the module docstring), in the accumulation dtype.

    `initial` = (c_initial, n_initial, m_initial) as given (None for zeros), `chunk_states` the state
    at every chunk start, `last_states` = (c_last, n_last), `grads` = (dh, dc_last, dn_last, dm_last).
    Returns (dq, dk, dv, di, df, dc_0, dn_0, dm_0).
    """
    DHQK = q.shape[-1]
    dtype = q.dtype
    acc = accumulation_dtype(dtype)
    scale = 1.0 / math.sqrt(DHQK)
    dh, dc_last, dn_last, dm_last = (g.to(acc) for g in grads)
    c_last, n_last = last_states
    i_acc = i.to(acc)  # (B, NH, S)
    f_log = F.logsigmoid(f.to(acc))  # (B, NH, S)

    dq = torch.empty(q.shape, dtype=acc, device=q.device)  # (B, NH, S, DHQK)
    dk = torch.empty(k.shape, dtype=acc, device=q.device)  # (B, NH, S, DHQK)
    dv = torch.empty(v.shape, dtype=acc, device=q.device)  # (B, NH, S, DHHV)
    dm = torch.empty(i.shape, dtype=acc, device=q.device)  # (B, NH, S) eps path of each m_t
    i_won = torch.empty(i.shape, dtype=torch.bool, device=q.device)  # (B, NH, S)

    # Gradients w.r.t. the stabilised state at the end of the current chunk, carried backwards.
    dc, dn = dc_last, dn_last  # (B, NH, DHQK, DHHV), (B, NH, DHQK)
    bounds = chunk_bounds(q.shape[2], chunk_size)
    for (start, end), (c, n, m) in zip(reversed(bounds), reversed(chunk_states)):
        q_c, k_c, v_c = q[:, :, start:end], k[:, :, start:end], v[:, :, start:end]
        fw = chunk_forward(q_c, k_c, v_c, i_acc[..., start:end], f_log[..., start:end], c, n, m, eps)
        dh_c = dh[:, :, start:end]  # (B, NH, L, DHHV)

        h_dot = (dh_c * fw.h).sum(dim=-1)  # (B, NH, L) dh_t·h_t
        dh_scaled = dh_c / fw.normaliser[..., None]  # (B, NH, L, DHHV) dh'
        den_branch = (fw.denominator.abs() >= torch.exp(-fw.m)).to(acc)  # (B, NH, L)
        sigma = -den_branch * torch.sign(fw.denominator) * h_dot / fw.normaliser  # (B, NH, L)
        dm[..., start:end] = -eps * h_dot / fw.normaliser
        i_won[..., start:end] = fw.m == i_acc[..., start:end]  # logD_{t,t} = i_t exactly

        # State update C_{k+1} = decay·C_k + Σ_s w_s k_s v_sᵀ (n_{k+1} likewise with k_s).
        dk_c = fw.key_weight[..., None] * (matmul(v_c, dc.transpose(-1, -2), dtype) + dn[..., None, :])
        dv_c = fw.key_weight[..., None] * matmul(k_c, dc, dtype)

        # Intra-chunk part: V augmented with ones, dH' with the column σ.
        d_c_tilde = matmul(dh_scaled, v_c.transpose(-1, -2), dtype) + sigma[..., None]  # (B, NH, L, L)
        d_scores = d_c_tilde * fw.d_bar * scale  # (B, NH, L, L) w.r.t. q kᵀ
        dv_c = dv_c + matmul(fw.c_tilde.transpose(-1, -2), dh_scaled, dtype)
        dk_c = dk_c + matmul(d_scores.transpose(-1, -2), q_c, dtype)

        # Inter-chunk part: num_t += β_t C_kᵀ q̂_t, den_t += β_t n_kᵀ q̂_t.
        dq_c = matmul(d_scores, k_c, dtype) + scale * fw.beta[..., None] * (
            matmul(dh_scaled, c.transpose(-1, -2), dtype) + sigma[..., None] * n[..., None, :]
        )
        q_beta = q_c.to(acc) * (scale * fw.beta[..., None])  # (B, NH, L, DHQK)
        dc = fw.state_decay[..., None] * dc + matmul(q_beta.transpose(-1, -2), dh_scaled, dtype)
        dn = fw.state_decay * dn + (q_beta * sigma[..., None]).sum(dim=-2)

        dq[:, :, start:end], dk[:, :, start:end], dv[:, :, start:end] = dq_c, dk_c, dv_c

    c_0, n_0, _ = initial_states(q, v, *initial)
    dc_0, dn_0 = dc, dn

    # Gates with every stabiliser held fixed (homogeneity of the true quantities in e^{i_s}, e^{f̃_r}, e^{m_0}).
    last_state_dot = (dc_last * c_last).sum(dim=(-2, -1)) + (dn_last * n_last).sum(dim=-1)  # (B, NH)
    q_dq = (q.to(acc) * dq).sum(dim=-1)  # (B, NH, S)
    k_dk = (k.to(acc) * dk).sum(dim=-1)  # (B, NH, S)
    di = k_dk
    df_log = reverse_cumsum(q_dq - k_dk) + last_state_dot[..., None]
    dm_0 = ((dc_0 * c_0).sum(dim=(-2, -1)) + (dn_0 * n_0).sum(dim=-1))[..., None]  # (B, NH, 1)

    # Stabiliser path: eps in every h_t, and m_last (the returned c_last, n_last are true / e^{m_S}).
    dm[..., -1] += dm_last.reshape(last_state_dot.shape) - last_state_dot
    di_stab, df_log_stab, dm_0_stab = route_stabiliser_gradient(dm, i_won)

    di = di + di_stab
    df = (df_log + df_log_stab) * torch.sigmoid(-f.to(acc))
    return dq, dk, dv, di, df, dc_0, dn_0, dm_0 + dm_0_stab


class ChunkwiseCustomBackward(torch.autograd.Function):
    """The chunkwise forward, storing the state at every chunk start; the backward recomputes each
    chunk's intermediates from it."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, c_initial, n_initial, m_initial, eps: float, chunk_size: int):
        c_0, n_0, m_0 = initial_states(q, v, c_initial, n_initial, m_initial)
        h, (c_last, n_last, m_last), chunk_states = chunkwise_forward(
            q, k, v, i, f, c_0, n_0, m_0, eps, chunk_size, keep_chunk_states=True
        )
        c_starts, n_starts, m_starts = (torch.stack(x) for x in zip(*chunk_states))  # (NC, B, NH, ...)
        ctx.save_for_backward(q, k, v, i, f, c_initial, n_initial, m_initial, c_starts, n_starts, m_starts, c_last, n_last)
        ctx.eps, ctx.chunk_size = eps, chunk_size
        return h.to(q.dtype), c_last, n_last, m_last

    @staticmethod
    def backward(ctx, dh, dc_last, dn_last, dm_last):
        q, k, v, i, f, c_initial, n_initial, m_initial, c_starts, n_starts, m_starts, c_last, n_last = ctx.saved_tensors
        chunk_states = list(zip(c_starts.unbind(0), n_starts.unbind(0), m_starts.unbind(0)))
        initial = (c_initial, n_initial, m_initial)
        dq, dk, dv, di, df, dc_0, dn_0, dm_0 = chunkwise_backward(
            q, k, v, i, f, initial, chunk_states, (c_last, n_last), (dh, dc_last, dn_last, dm_last), ctx.eps, ctx.chunk_size
        )
        out = [g.to(x.dtype) for g, x in zip((dq, dk, dv, di, df), (q, k, v, i, f))]
        for g, x in zip((dc_0, dn_0, dm_0), initial):
            out.append(g.to(x.dtype).reshape(x.shape) if x is not None else None)
        return (*out, None, None)


def _check_states(c_initial, n_initial, m_initial) -> None:
    given = [x is not None for x in (c_initial, n_initial, m_initial)]
    if any(given) and not all(given):
        raise ValueError("c_initial, n_initial and m_initial must be given together")


def mlstm_chunkwise__native_autograd(
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
    chunk_size: int = 64,
    **kwargs,
):
    """Chunkwise mLSTM, gradients by autograd. Returns h (B, NH, S, DHHV), and
    (c_last, n_last, m_last) when `return_last_states`."""
    _check_states(c_initial, n_initial, m_initial)
    c_0, n_0, m_0 = initial_states(q, v, c_initial, n_initial, m_initial)
    h, last_states, _ = chunkwise_forward(q, k, v, i, f, c_0, n_0, m_0, eps, chunk_size)
    h = h.to(q.dtype)
    return (h, last_states) if return_last_states else h


def mlstm_chunkwise__native_custbw(
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
    chunk_size: int = 64,
    **kwargs,
):
    """Chunkwise mLSTM, exact hand-written backward. Returns h (B, NH, S, DHHV), and
    (c_last, n_last, m_last) when `return_last_states`."""
    _check_states(c_initial, n_initial, m_initial)
    h, c_last, n_last, m_last = ChunkwiseCustomBackward.apply(
        q, k, v, i, f, c_initial, n_initial, m_initial, eps, chunk_size
    )
    return (h, (c_last, n_last, m_last)) if return_last_states else h
