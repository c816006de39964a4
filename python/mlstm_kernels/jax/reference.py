"""Reference implementations of the mLSTM cell in ``jax.numpy``: what every JAX kernel is tested against.

Both compute in the dtype of their inputs and are differentiable by JAX autodiff; call them with
float64 arrays (``jax.config.update("jax_enable_x64", True)``) to get the reference.

``mlstm_recurrent_reference`` is the recurrent definition (SPEC §2), one time step after the other:

    f̃_t = logsigmoid(f_t)
    m_t = max(f̃_t + m_{t-1}, i_t)                      m_0 = 0 unless given
    F_t = exp(f̃_t + m_{t-1} - m_t),  I_t = exp(i_t - m_t)
    C_t = F_t C_{t-1} + I_t k_t v_tᵀ,   n_t = F_t n_{t-1} + I_t k_t
    h_t = C_tᵀ q̂_t / (max(|n_tᵀ q̂_t|, exp(-m_t)) + eps),   q̂_t = q_t / sqrt(DHQK)

Its autodiff gradients are the exact gradients, through the normaliser max(|n·q̂|, exp(-m)), the
initial states and the returned last states.

``mlstm_parallel_reference`` is the parallel form with the stablef gate matrix and no state:

    logD_{t,s} = Σ_{r=s+1..t} f̃_r + i_s  (s ≤ t; -inf above the diagonal)
    m_t = max_s logD_{t,s},  D'_{t,s} = exp(logD_{t,s} - m_t)
    C̃ = (q̂ kᵀ) ∘ D',  n_t = max(|Σ_s C̃_{t,s}|, exp(-m_t)),  h = (C̃ / (n + eps)) V

It equals the recurrence started from m_0 = -inf; with m_0 = 0 the two differ only where the
exp(-m_t) branch of the denominator is active.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["mlstm_recurrent_reference", "mlstm_parallel_reference"]


def mlstm_recurrent_reference(
    q: jax.Array,  # (B, NH, S, DHQK)
    k: jax.Array,  # (B, NH, S, DHQK)
    v: jax.Array,  # (B, NH, S, DHHV)
    i: jax.Array,  # (B, NH, S)
    f: jax.Array,  # (B, NH, S)
    c_initial: jax.Array | None = None,  # (B, NH, DHQK, DHHV)
    n_initial: jax.Array | None = None,  # (B, NH, DHQK)
    m_initial: jax.Array | None = None,  # (B, NH, 1)
    eps: float = 1e-6,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """The recurrent definition. Returns ``h, (c_last, n_last, m_last (B, NH, 1))``, all in q's dtype."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    dtype = q.dtype
    if c_initial is None:
        c_initial = jnp.zeros((B, NH, DHQK, DHHV), dtype)
        n_initial = jnp.zeros((B, NH, DHQK), dtype)
        m_initial = jnp.zeros((B, NH, 1), dtype)
    states = (c_initial.astype(dtype), n_initial.astype(dtype), m_initial.reshape(B, NH, 1).astype(dtype))

    def step(state, x):
        c, n, m = state  # (B, NH, DHQK, DHHV), (B, NH, DHQK), (B, NH, 1)
        q_t, k_t, v_t, i_t, f_t = x  # (B, NH, DHQK) x2, (B, NH, DHHV), (B, NH) x2
        i_t, f_log = i_t[..., None], jax.nn.log_sigmoid(f_t)[..., None]  # (B, NH, 1)
        m_t = jnp.maximum(f_log + m, i_t)
        f_act, i_act = jnp.exp(f_log + m - m_t), jnp.exp(i_t - m_t)
        c = f_act[..., None] * c + i_act[..., None] * k_t[..., :, None] * v_t[..., None, :]
        n = f_act * n + i_act * k_t
        q_hat = q_t / jnp.sqrt(jnp.asarray(DHQK, dtype))
        num = jnp.einsum("bhd,bhde->bhe", q_hat, c)  # (B, NH, DHHV)
        den = jnp.einsum("bhd,bhd->bh", q_hat, n)[..., None]  # (B, NH, 1)
        h_t = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m_t)) + eps)
        return (c, n, m_t), h_t

    xs = [jnp.moveaxis(x.astype(dtype), 2, 0) for x in (q, k, v, i, f)]  # time first
    last, h = jax.lax.scan(step, states, xs)
    return jnp.moveaxis(h, 0, 2), last


def mlstm_parallel_reference(
    q: jax.Array,  # (B, NH, S, DHQK)
    k: jax.Array,  # (B, NH, S, DHQK)
    v: jax.Array,  # (B, NH, S, DHHV)
    i: jax.Array,  # (B, NH, S)
    f: jax.Array,  # (B, NH, S)
    eps: float = 1e-6,
) -> jax.Array:
    """The parallel form (stablef gate matrix, no state). Returns ``h (B, NH, S, DHHV)`` in q's dtype."""
    S, DHQK = q.shape[-2], q.shape[-1]
    dtype = q.dtype
    i, f = i.astype(dtype), f.astype(dtype)
    f_log = jax.nn.log_sigmoid(f)  # (B, NH, S)
    strictly_lower = jnp.tril(jnp.ones((S, S), bool), -1)
    causal = jnp.tril(jnp.ones((S, S), bool))
    # Row r, column s holds f̃_r for r > s; the column sum down to row t is Σ_{r=s+1..t} f̃_r.
    f_sums = jnp.cumsum(jnp.where(strictly_lower, f_log[..., :, None], 0.0), axis=-2)  # (B, NH, S, S)
    log_d = jnp.where(causal, f_sums + i[..., None, :], -jnp.inf)  # (B, NH, S, S)
    m = jnp.max(log_d, axis=-1, keepdims=True)  # (B, NH, S, 1)
    scores = q @ jnp.swapaxes(k, -1, -2) / jnp.sqrt(jnp.asarray(DHQK, dtype))  # (B, NH, S, S)
    c_tilde = scores * jnp.exp(log_d - m)
    n = jnp.maximum(jnp.abs(jnp.sum(c_tilde, axis=-1, keepdims=True)), jnp.exp(-m))  # (B, NH, S, 1)
    return (c_tilde / (n + eps)) @ v.astype(dtype)
