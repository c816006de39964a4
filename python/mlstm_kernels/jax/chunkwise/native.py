"""The chunkwise form in plain ``jax.numpy``, with autodiff or a hand-written exact backward.

Split S into NC chunks of L (the last one padded with steps that leave the state unchanged:
q = k = v = 0, i = -inf, f̃ = 0). Per chunk, b_j = Σ_{r≤j} f̃_r (inclusive), g = b_L and
a_j = g - b_j + i_j.

Inter-chunk recurrence (``lax.scan`` over chunks), from (C_0, n_0, m_0):
    m_{k+1} = max(g_k + m_k, max_j a_{k,j})
    C_{k+1} = exp(g_k + m_k - m_{k+1}) C_k + Σ_j exp(a_{k,j} - m_{k+1}) k_j v_jᵀ     (n likewise with k_j)
Intra-chunk, for chunk k (all chunks at once):
    logD_{t,s} = b_t - b_s + i_s (s ≤ t);  m_t = max(b_t + m_k, max_s logD_{t,s})
    D̄ = exp(logD - m_t);  β_t = exp(b_t + m_k - m_t)
    num_t = β_t C_kᵀ q̂_t + Σ_s (q̂_t·k_s) D̄_{t,s} v_s;  den_t = β_t n_kᵀ q̂_t + Σ_s (q̂_t·k_s) D̄_{t,s}
    h_t = num_t / (max(|den_t|, exp(-m_t)) + eps)
The combined m_t is the recurrent running max, so this equals the recurrent form exactly.

The hand-written backward (custbw) runs the same two levels in reverse: the intra-chunk part with
the augmented score gradient dC̃_{t,s} = (dh_t/d_t)·v_s + σ_t, the state gradients carried
backwards over chunks from (dc_last, dn_last), and the gate gradients from the complete dq, dk
(see ``_native_backward``).

Arithmetic is in float32 (float64 for float64 inputs); h comes back in q's dtype, the last states
(c (B, NH, DHQK, DHHV), n (B, NH, DHQK), m (B, NH, 1)) in the compute dtype. Any S ≥ 1, any L ≥ 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .._native_backward import gate_gradients, normaliser_gradients


def _compute_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def _to_chunks(x, L, fill, dtype):
    """(B, NH, S, ...) -> (B, NH, NC, L, ...), the last chunk padded with `fill`."""
    B, NH, S = x.shape[:3]
    NC = -(-S // L)
    pad = [(0, 0), (0, 0), (0, NC * L - S)] + [(0, 0)] * (x.ndim - 3)
    x = jnp.pad(x.astype(dtype), pad, constant_values=fill)
    return x.reshape((B, NH, NC, L) + x.shape[3:])


def _from_chunks(x, S):
    """(B, NH, NC, L, ...) -> (B, NH, S, ...)."""
    B, NH, NC, L = x.shape[:4]
    return x.reshape((B, NH, NC * L) + x.shape[4:])[:, :, :S]


def _chunk_gates(i, f, L, acc):
    """b (B, NH, NC, L), g (B, NH, NC), a (B, NH, NC, L) and the padded i (B, NH, NC, L)."""
    i_c = _to_chunks(i, L, -jnp.inf, acc)
    f_log = _to_chunks(jax.nn.log_sigmoid(f.astype(acc)), L, 0.0, acc)
    b = jnp.cumsum(f_log, axis=-1)
    g = b[..., -1]
    return b, g, g[..., None] - b + i_c, i_c


def _intra_gates(b, i_c, m_k):
    """logD (B, NH, NC, L, L), m_t (B, NH, NC, L), D̄ and β of every chunk."""
    L = b.shape[-1]
    causal = jnp.tril(jnp.ones((L, L), bool))
    log_d = jnp.where(causal, b[..., :, None] - b[..., None, :] + i_c[..., None, :], -jnp.inf)
    m_t = jnp.maximum(b + m_k[..., None], jnp.max(log_d, axis=-1))
    d = jnp.exp(log_d - m_t[..., None])
    beta = jnp.exp(b + m_k[..., None] - m_t)
    return m_t, d, beta


def chunkwise_forward(q, k, v, i, f, c0, n0, m0, eps, L):
    """Forward with everything the backward needs.

    q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S); c0, n0, m0 (B, NH, DHQK, DHHV),
    (B, NH, DHQK), (B, NH) in the compute dtype. Returns h (B, NH, S, DHHV), the last states
    (c, n, m (B, NH)) and the residuals (chunk-start states, m_t, den_t, h, all chunked).
    """
    S, DHQK = q.shape[2], q.shape[3]
    acc = _compute_dtype(q.dtype)
    q_hat = _to_chunks(q, L, 0.0, acc) * DHQK**-0.5  # (B, NH, NC, L, DHQK)
    k_c = _to_chunks(k, L, 0.0, acc)  # (B, NH, NC, L, DHQK)
    v_c = _to_chunks(v, L, 0.0, acc)  # (B, NH, NC, L, DHHV)
    b, g, a, i_c = _chunk_gates(i, f, L, acc)

    def chunk_step(state, x):
        c, n, m = state  # (B, NH, DHQK, DHHV), (B, NH, DHQK), (B, NH)
        g_k, a_k, k_k, v_k = x  # (B, NH), (B, NH, L), (B, NH, L, DHQK), (B, NH, L, DHHV)
        m_next = jnp.maximum(g_k + m, jnp.max(a_k, axis=-1))
        decay = jnp.exp(g_k + m - m_next)
        w = jnp.exp(a_k - m_next[..., None])  # (B, NH, L)
        c_next = decay[..., None, None] * c + jnp.einsum("bhl,bhld,bhle->bhde", w, k_k, v_k)
        n_next = decay[..., None] * n + jnp.einsum("bhl,bhld->bhd", w, k_k)
        return (c_next, n_next, m_next), (c, n, m)

    chunk_major = [jnp.moveaxis(x, 2, 0) for x in (g, a, k_c, v_c)]
    last, starts = jax.lax.scan(chunk_step, (c0, n0, m0), chunk_major)
    c_k, n_k, m_k = (jnp.moveaxis(x, 0, 2) for x in starts)  # (B, NH, NC, ...)

    m_t, d, beta = _intra_gates(b, i_c, m_k)
    c_tilde = (q_hat @ jnp.swapaxes(k_c, -1, -2)) * d  # (B, NH, NC, L, L)
    num = beta[..., None] * (q_hat @ c_k) + c_tilde @ v_c  # (B, NH, NC, L, DHHV)
    den = beta * jnp.einsum("bhcld,bhcd->bhcl", q_hat, n_k) + jnp.sum(c_tilde, axis=-1)  # (B, NH, NC, L)
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m_t)) + eps)[..., None]
    residuals = (c_k, n_k, m_k, m_t, den, h)
    return _from_chunks(h, S), last, residuals


def chunkwise_backward(q, k, v, i, f, c0, n0, m0, last, residuals, dh, dlast, eps, L):
    """dq, dk, dv, di, df, (dc0, dn0, dm0) of :func:`chunkwise_forward` in the compute dtype.

    dh (B, NH, S, DHHV); dlast = (dc_last, dn_last, dm_last (B, NH)) cotangents on the last states.
    """
    S, DHQK = q.shape[2], q.shape[3]
    acc = _compute_dtype(q.dtype)
    scale = DHQK**-0.5
    c_k, n_k, m_k, m_t, den, h = residuals
    c_last, n_last, m_last = last
    dc_last, dn_last, dm_last = dlast
    q_hat = _to_chunks(q, L, 0.0, acc) * scale
    k_c = _to_chunks(k, L, 0.0, acc)
    v_c = _to_chunks(v, L, 0.0, acc)
    b, g, a, i_c = _chunk_gates(i, f, L, acc)
    _, d, beta = _intra_gates(b, i_c, m_k)

    # Intra-chunk part and the gradients of the chunk-start states seen by each chunk's queries.
    dh_scaled, sigma, dm = normaliser_gradients(_to_chunks(dh, L, 0.0, acc), h, den, m_t, eps)
    causal = jnp.tril(jnp.ones((L, L), bool))
    dc_tilde = jnp.where(causal, dh_scaled @ jnp.swapaxes(v_c, -1, -2) + sigma[..., None], 0.0)
    ds = dc_tilde * d  # (B, NH, NC, L, L)
    scores = q_hat @ jnp.swapaxes(k_c, -1, -2)
    dq_hat = ds @ k_c + beta[..., None] * (dh_scaled @ jnp.swapaxes(c_k, -1, -2) + sigma[..., None] * n_k[..., None, :])
    dk = jnp.swapaxes(ds, -1, -2) @ q_hat  # (B, NH, NC, L, DHQK)
    dv = jnp.swapaxes(scores * d, -1, -2) @ dh_scaled  # (B, NH, NC, L, DHHV)
    dc_seen = jnp.einsum("bhcl,bhcld,bhcle->bhcde", beta, q_hat, dh_scaled)  # (B, NH, NC, DHQK, DHHV)
    dn_seen = jnp.einsum("bhcl,bhcld->bhcd", beta * sigma, q_hat)  # (B, NH, NC, DHQK)

    # Inter-chunk part: carry the state gradients from the last state back to the first.
    m_next = jnp.concatenate([m_k[..., 1:], m_last[..., None]], axis=-1)  # (B, NH, NC)

    def chunk_step_back(carry, x):
        dc, dn = carry  # gradients of the state at the end of chunk k (B, NH, DHQK, DHHV), (B, NH, DHQK)
        g_k, a_k, k_k, v_k, m_k_, m_next_k, dc_seen_k, dn_seen_k = x
        w = jnp.exp(a_k - m_next_k[..., None])  # (B, NH, L)
        dk_k = w[..., None] * (jnp.einsum("bhde,bhle->bhld", dc, v_k) + dn[..., None, :])
        dv_k = w[..., None] * jnp.einsum("bhde,bhld->bhle", dc, k_k)
        decay = jnp.exp(g_k + m_k_ - m_next_k)
        return (dc_seen_k + decay[..., None, None] * dc, dn_seen_k + decay[..., None] * dn), (dk_k, dv_k)

    chunk_major = [jnp.moveaxis(x, 2, 0) for x in (g, a, k_c, v_c, m_k, m_next, dc_seen, dn_seen)]
    (dc0, dn0), (dk_inter, dv_inter) = jax.lax.scan(chunk_step_back, (dc_last, dn_last), chunk_major, reverse=True)
    dk = dk + jnp.moveaxis(dk_inter, 0, 2)
    dv = dv + jnp.moveaxis(dv_inter, 0, 2)

    dq = _from_chunks(dq_hat, S) * scale
    dk, dv = _from_chunks(dk, S), _from_chunks(dv, S)
    dm = _from_chunks(dm, S)
    # c_last, n_last are stabilised by m_last: at fixed true states they move as -c_last dm_last.
    last_term = jnp.sum(dc_last * c_last, axis=(-2, -1)) + jnp.sum(dn_last * n_last, axis=-1)  # (B, NH)
    dm = dm.at[..., -1].add(dm_last - last_term)
    i_a, f_a = i.astype(acc), f.astype(acc)
    di, df, dm0_routed = gate_gradients(q.astype(acc), dq, k.astype(acc), dk, i_a, f_a, _from_chunks(m_t, S), dm, last_term)
    dm0 = jnp.sum(dc0 * c0, axis=(-2, -1)) + jnp.sum(dn0 * n0, axis=-1) + dm0_routed  # (B, NH)
    return dq, dk, dv, di, df, (dc0, dn0, dm0)


def _initial_states(q, v, c_initial, n_initial, m_initial, acc):
    B, NH, _, DHQK = q.shape
    DHHV = v.shape[-1]
    if c_initial is None:
        return jnp.zeros((B, NH, DHQK, DHHV), acc), jnp.zeros((B, NH, DHQK), acc), jnp.zeros((B, NH), acc)
    return c_initial.astype(acc), n_initial.astype(acc), m_initial.reshape(B, NH).astype(acc)


def _outputs(h, last, q, return_last_states):
    c, n, m = last
    h = h.astype(q.dtype)
    return (h, (c, n, m[..., None])) if return_last_states else h


def mlstm_chunkwise__native_autograd(
    q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False, eps=1e-6, chunk_size=64, **kwargs
):
    """Chunkwise mLSTM in ``jax.numpy``, gradients by JAX autodiff."""
    acc = _compute_dtype(q.dtype)
    c0, n0, m0 = _initial_states(q, v, c_initial, n_initial, m_initial, acc)
    h, last, _ = chunkwise_forward(q, k, v, i, f, c0, n0, m0, eps, chunk_size)
    return _outputs(h, last, q, return_last_states)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _chunkwise_custbw(q, k, v, i, f, c0, n0, m0, eps, L):
    h, last, _ = chunkwise_forward(q, k, v, i, f, c0, n0, m0, eps, L)
    return h, last


def _chunkwise_custbw_fwd(q, k, v, i, f, c0, n0, m0, eps, L):
    h, last, residuals = chunkwise_forward(q, k, v, i, f, c0, n0, m0, eps, L)
    return (h, last), (q, k, v, i, f, c0, n0, m0, last, residuals)


def _chunkwise_custbw_bwd(eps, L, saved, cotangents):
    q, k, v, i, f, c0, n0, m0, last, residuals = saved
    dh, dlast = cotangents
    dq, dk, dv, di, df, dstates = chunkwise_backward(q, k, v, i, f, c0, n0, m0, last, residuals, dh, dlast, eps, L)
    return (
        dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), di.astype(i.dtype), df.astype(f.dtype),
        *(ds.astype(s.dtype) for ds, s in zip(dstates, (c0, n0, m0))),
    )


_chunkwise_custbw.defvjp(_chunkwise_custbw_fwd, _chunkwise_custbw_bwd)


def mlstm_chunkwise__native_custbw(
    q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False, eps=1e-6, chunk_size=64, **kwargs
):
    """Chunkwise mLSTM in ``jax.numpy`` with the hand-written exact backward."""
    acc = _compute_dtype(q.dtype)
    c0, n0, m0 = _initial_states(q, v, c_initial, n_initial, m_initial, acc)
    h, last = _chunkwise_custbw(q, k, v, i, f, c0, n0, m0, float(eps), int(chunk_size))
    return _outputs(h, last, q, return_last_states)
