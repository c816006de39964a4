"""Pieces of the exact backward shared by the hand-written (``custbw``) native kernels.

The derivation is in docs/dev-notes.md ("Exact gradients"). With d_t = max(|den_t|, exp(-m_t)) + eps:

* the normaliser: h_t = num_t / d_t gives dnum_t = dh_t / d_t and, through den_t (only where the
  |den_t| branch is active), dden_t = σ_t = -sign(den_t) (dh_t·h_t) / d_t;
* the stabiliser: at fixed true (unstabilised) quantities h_t depends on m_t only through eps,
  dm_t = -eps (dh_t·h_t) / d_t;
* the gates, once dq and dk hold every path (intra-chunk, inter-chunk, initial and last states):
  di_s = k_s·dk_s,  df̃_r = Σ_{t≥r} (q_t·dq_t - k_t·dk_t) + ⟨dc_last, c_last⟩ + ⟨dn_last, n_last⟩,
  plus the stabiliser gradient routed back through m_t = max(f̃_t + m_{t-1}, i_t).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normaliser_gradients(dh, h, den, m, eps):
    """``(dh / d, σ, dm)`` for h = num / d, d = max(|den|, exp(-m)) + eps.

    dh, h (..., DHHV); den, m (...). Returns dh / d (..., DHHV), σ (...) and dm (...).
    """
    floor = jnp.exp(-m)
    d = jnp.maximum(jnp.abs(den), floor) + eps
    dh_dot_h = jnp.sum(dh * h, axis=-1)
    sigma = -jnp.where(jnp.abs(den) >= floor, jnp.sign(den), 0.0) * dh_dot_h / d
    dm = -eps * dh_dot_h / d
    return dh / d[..., None], sigma, dm


def _route_stabiliser_gradient(dm, i_won):
    """Back-propagate dm (B, NH, S) through m_t = max(f̃_t + m_{t-1}, i_t), last step first.

    Returns (to i (B, NH, S), to f̃ (B, NH, S), to m_0 (B, NH)): the gradient accumulated since the
    last step where the input gate set the maximum goes to i there, and through f̃ on the way.
    """

    def step(acc, x):
        dm_t, won = x
        acc = acc + dm_t
        return jnp.where(won, 0.0, acc), (jnp.where(won, acc, 0.0), jnp.where(won, 0.0, acc))

    time_major = (jnp.moveaxis(dm, -1, 0), jnp.moveaxis(i_won, -1, 0))
    to_m0, (to_i, to_f) = jax.lax.scan(step, jnp.zeros_like(dm[..., 0]), time_major, reverse=True)
    return jnp.moveaxis(to_i, 0, -1), jnp.moveaxis(to_f, 0, -1), to_m0


def gate_gradients(q, dq, k, dk, i, f, m, dm, last_term=None):
    """``(di, df, dm_0)`` from the complete dq, dk and the per-step stabiliser gradient dm.

    q, dq, k, dk (B, NH, S, DHQK); i, f, m, dm (B, NH, S) where m is the running stabiliser; the
    input gate set it at t exactly when m_t == i_t (the diagonal of logD is i_t with no rounding).
    last_term (B, NH) is ⟨dc_last, c_last⟩ + ⟨dn_last, n_last⟩ (None without last states); the
    caller has already added dm_last - last_term to dm at the last step. dm_0 is the stabiliser
    gradient that reaches m_0.
    """
    qdq = jnp.sum(q * dq, axis=-1)  # (B, NH, S)
    kdk = jnp.sum(k * dk, axis=-1)  # (B, NH, S)
    di = kdk
    df_log = jax.lax.cumsum(qdq - kdk, axis=qdq.ndim - 1, reverse=True)
    if last_term is not None:
        df_log = df_log + last_term[..., None]
    to_i, to_f, dm_0 = _route_stabiliser_gradient(dm, m == i)
    di = di + to_i
    df_log = df_log + to_f
    return di, df_log * jax.nn.sigmoid(-f), dm_0
