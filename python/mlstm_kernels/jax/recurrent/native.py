"""The recurrent form in plain ``jax.numpy``: one step, and a sequence as ``lax.scan`` over steps.

Per (b, h), one step (SPEC §2):

    f̃ = logsigmoid(f);  m_new = max(f̃ + m, i)
    F = exp(f̃ + m - m_new);  I = exp(i - m_new)
    C_new = F C + I k vᵀ;  n_new = F n + I k
    h = C_newᵀ q̂ / (max(|n_newᵀ q̂|, exp(-m_new)) + eps),   q̂ = q / sqrt(DHQK)

Arithmetic is in float32 (float64 for float64 inputs); h comes back in q's dtype, the states in
``dtype_state``. Both functions are differentiable by JAX autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _compute_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def mlstm_recurrent_step__native(
    q: jax.Array,  # (B, NH, DHQK)
    k: jax.Array,  # (B, NH, DHQK)
    v: jax.Array,  # (B, NH, DHHV)
    i: jax.Array,  # (B, NH, 1)
    f: jax.Array,  # (B, NH, 1)
    c: jax.Array,  # (B, NH, DHQK, DHHV)
    n: jax.Array,  # (B, NH, DHQK)
    m: jax.Array,  # (B, NH, 1)
    eps: float = 1e-6,
    dtype_state=jnp.float32,
    **kwargs,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """One recurrent step. Returns ``h (B, NH, DHHV), (c_new, n_new, m_new)``."""
    acc = _compute_dtype(q.dtype)
    DHQK = q.shape[-1]
    q_hat = q.astype(acc) * DHQK**-0.5  # (B, NH, DHQK)
    k, v = k.astype(acc), v.astype(acc)
    i, f = i.astype(acc), f.astype(acc)
    c, n, m = c.astype(acc), n.astype(acc), m.astype(acc)

    f_log = jax.nn.log_sigmoid(f)  # (B, NH, 1)
    m_new = jnp.maximum(f_log + m, i)  # (B, NH, 1)
    f_act = jnp.exp(f_log + m - m_new)  # (B, NH, 1)
    i_act = jnp.exp(i - m_new)  # (B, NH, 1)

    c_new = f_act[..., None] * c + i_act[..., None] * (k[..., :, None] * v[..., None, :])  # (B, NH, DHQK, DHHV)
    n_new = f_act * n + i_act * k  # (B, NH, DHQK)

    num = jnp.einsum("bhd,bhde->bhe", q_hat, c_new)  # (B, NH, DHHV)
    den = jnp.sum(q_hat * n_new, axis=-1, keepdims=True)  # (B, NH, 1)
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m_new)) + eps)  # (B, NH, DHHV)
    return h.astype(q.dtype), (c_new.astype(dtype_state), n_new.astype(dtype_state), m_new.astype(dtype_state))


def mlstm_recurrent_sequence__native_fw(
    q: jax.Array,  # (B, NH, S, DHQK)
    k: jax.Array,  # (B, NH, S, DHQK)
    v: jax.Array,  # (B, NH, S, DHHV)
    i: jax.Array,  # (B, NH, S)
    f: jax.Array,  # (B, NH, S)
    c_initial: jax.Array | None = None,  # (B, NH, DHQK, DHHV)
    n_initial: jax.Array | None = None,  # (B, NH, DHQK)
    m_initial: jax.Array | None = None,  # (B, NH, 1)
    return_last_states: bool = False,
    eps: float = 1e-6,
    dtype_state=jnp.float32,
    **kwargs,
):
    """The recurrence over the sequence, ``lax.scan`` over :func:`mlstm_recurrent_step__native`.

    Missing initial states are zero (m too). The carried states stay in ``dtype_state`` between
    steps, as a step-by-step decoder would keep them. Returns ``h (B, NH, S, DHHV)`` or
    ``(h, (c_last, n_last, m_last))``.
    """
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    if c_initial is None:
        c_initial = jnp.zeros((B, NH, DHQK, DHHV), dtype_state)
        n_initial = jnp.zeros((B, NH, DHQK), dtype_state)
        m_initial = jnp.zeros((B, NH, 1), dtype_state)
    states = (c_initial.astype(dtype_state), n_initial.astype(dtype_state), m_initial.reshape(B, NH, 1).astype(dtype_state))

    def step(carry, x):
        q_t, k_t, v_t, i_t, f_t = x
        h_t, carry = mlstm_recurrent_step__native(q_t, k_t, v_t, i_t[..., None], f_t[..., None], *carry, eps=eps, dtype_state=dtype_state)
        return carry, h_t

    time_major = [jnp.moveaxis(x, 2, 0) for x in (q, k, v, i, f)]  # (S, B, NH, ...)
    last, h = jax.lax.scan(step, states, time_major)
    h = jnp.moveaxis(h, 0, 2)  # (B, NH, S, DHHV)
    return (h, last) if return_last_states else h
