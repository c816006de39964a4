"""The parallel form in plain ``jax.numpy`` (no state), with autodiff or a hand-written exact backward.

    logD_{t,s} = Σ_{r=s+1..t} f̃_r + i_s  (s ≤ t; -inf above the diagonal),   f̃ = logsigmoid(f)
    m_t = max_s logD_{t,s},  D'_{t,s} = exp(logD_{t,s} - m_t)
    C̃ = (q̂ kᵀ) ∘ D',  den_t = Σ_s C̃_{t,s},  h = C̃ V / (max(|den|, exp(-m)) + eps)

This module builds logD "subtractively", as F_t - F_s + i_s from one cumulative sum F of f̃ (as
upstream's native kernel does); that loses precision on long sequences, which is why
``native_stablef`` builds it from column sums instead. The forward and the backward below take the
logD builder as an argument and are shared by both.

Backward (custbw), with d_t = max(|den_t|, exp(-m_t)) + eps and σ_t the normaliser term
(``_native_backward.normaliser_gradients``):  dC̃_{t,s} = (dh_t / d_t)·v_s + σ_t,  dV = C̃ᵀ (dh / d),
dq = (dC̃ ∘ D') K / sqrt(DHQK),  dk = (dC̃ ∘ D')ᵀ q̂, and the gate gradients from dq, dk.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .._native_backward import gate_gradients, normaliser_gradients


def log_gate_matrix_subtractive(i, f):
    """logD (B, NH, S, S) = F_t - F_s + i_s below the diagonal, F = cumsum(logsigmoid(f))."""
    S = f.shape[-1]
    f_cum = jnp.cumsum(jax.nn.log_sigmoid(f), axis=-1)  # (B, NH, S)
    causal = jnp.tril(jnp.ones((S, S), bool))
    return jnp.where(causal, f_cum[..., :, None] - f_cum[..., None, :] + i[..., None, :], -jnp.inf)


def _compute_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def parallel_forward(q, k, v, i, f, eps, log_gate_matrix):
    """h (B, NH, S, DHHV), m (B, NH, S) and den (B, NH, S), all in the compute dtype."""
    acc = _compute_dtype(q.dtype)
    q_hat = q.astype(acc) * q.shape[-1] ** -0.5  # (B, NH, S, DHQK)
    k, v = k.astype(acc), v.astype(acc)
    log_d = log_gate_matrix(i.astype(acc), f.astype(acc))  # (B, NH, S, S)
    m = jnp.max(log_d, axis=-1)  # (B, NH, S)
    c_tilde = (q_hat @ jnp.swapaxes(k, -1, -2)) * jnp.exp(log_d - m[..., None])  # (B, NH, S, S)
    den = jnp.sum(c_tilde, axis=-1)  # (B, NH, S)
    h = (c_tilde @ v) / (jnp.maximum(jnp.abs(den), jnp.exp(-m)) + eps)[..., None]  # (B, NH, S, DHHV)
    return h, m, den


def parallel_backward(q, k, v, i, f, h, m, den, dh, eps, log_gate_matrix):
    """dq, dk, dv, di, df of :func:`parallel_forward` (h, m, den from it; dh (B, NH, S, DHHV))."""
    acc = _compute_dtype(q.dtype)
    S, DHQK = q.shape[-2], q.shape[-1]
    scale = DHQK**-0.5
    qa, k, v, i_a, f_a = q.astype(acc), k.astype(acc), v.astype(acc), i.astype(acc), f.astype(acc)
    q_hat = qa * scale
    log_d = log_gate_matrix(i_a, f_a)
    d = jnp.exp(log_d - m[..., None])  # (B, NH, S, S)
    scores = q_hat @ jnp.swapaxes(k, -1, -2)  # (B, NH, S, S)

    dh_scaled, sigma, dm = normaliser_gradients(dh.astype(acc), h, den, m, eps)
    causal = jnp.tril(jnp.ones((S, S), bool))
    dc_tilde = jnp.where(causal, dh_scaled @ jnp.swapaxes(v, -1, -2) + sigma[..., None], 0.0)  # (B, NH, S, S)
    dv = jnp.swapaxes(scores * d, -1, -2) @ dh_scaled  # (B, NH, S, DHHV)
    ds = dc_tilde * d
    dq = (ds @ k) * scale  # (B, NH, S, DHQK)
    dk = jnp.swapaxes(ds, -1, -2) @ q_hat  # (B, NH, S, DHQK)
    di, df, _ = gate_gradients(qa, dq, k, dk, i_a, f_a, m, dm)
    return dq.astype(q.dtype), dk.astype(q.dtype), dv.astype(q.dtype), di.astype(i.dtype), df.astype(f.dtype)


def _check_stateless(name, c_initial, n_initial, m_initial, return_last_states):
    if c_initial is not None or n_initial is not None or m_initial is not None or return_last_states:
        raise ValueError(f"{name}: the parallel form has no state; pass no initial states and return_last_states=False")


def make_parallel_kernels(log_gate_matrix, name: str):
    """(autograd kernel, custbw kernel) of the parallel form with the given logD builder."""

    def autograd_kernel(
        q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False, eps=1e-6, **kwargs
    ):
        _check_stateless(f"parallel--{name}_autograd", c_initial, n_initial, m_initial, return_last_states)
        return parallel_forward(q, k, v, i, f, eps, log_gate_matrix)[0].astype(q.dtype)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
    def custbw(q, k, v, i, f, eps):
        return parallel_forward(q, k, v, i, f, eps, log_gate_matrix)[0].astype(q.dtype)

    def custbw_fwd(q, k, v, i, f, eps):
        h, m, den = parallel_forward(q, k, v, i, f, eps, log_gate_matrix)
        return h.astype(q.dtype), (q, k, v, i, f, h, m, den)

    def custbw_bwd(eps, residuals, dh):
        q, k, v, i, f, h, m, den = residuals
        return parallel_backward(q, k, v, i, f, h, m, den, dh, eps, log_gate_matrix)

    custbw.defvjp(custbw_fwd, custbw_bwd)

    def custbw_kernel(
        q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False, eps=1e-6, **kwargs
    ):
        _check_stateless(f"parallel--{name}_custbw", c_initial, n_initial, m_initial, return_last_states)
        return custbw(q, k, v, i, f, float(eps))

    return autograd_kernel, custbw_kernel


mlstm_parallel__native_autograd, mlstm_parallel__native_custbw = make_parallel_kernels(
    log_gate_matrix_subtractive, "native"
)
