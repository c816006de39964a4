"""The parallel form with the "stablef" gate matrix (plain ``jax.numpy``; autodiff or hand-written backward).

logD_{t,s} = Σ_{r=s+1..t} f̃_r + i_s is built by placing f̃_r at row r of every column s < r (a
strictly-lower-triangular matrix) and summing down each column, so every entry is a sum of the
f̃ it really contains — never the difference of two long cumulative sums. The forward and the exact
backward are those of ``native`` with this logD.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .native import make_parallel_kernels


def log_gate_matrix_stablef(i, f):
    """logD (B, NH, S, S) as column sums of the strictly-lower-triangular f̃ matrix, plus i_s."""
    S = f.shape[-1]
    f_log = jax.nn.log_sigmoid(f)  # (B, NH, S)
    strictly_lower = jnp.tril(jnp.ones((S, S), bool), -1)
    causal = jnp.tril(jnp.ones((S, S), bool))
    f_sums = jnp.cumsum(jnp.where(strictly_lower, f_log[..., :, None], 0.0), axis=-2)  # (B, NH, S, S)
    return jnp.where(causal, f_sums + i[..., None, :], -jnp.inf)


mlstm_parallel__native_stablef_autograd, mlstm_parallel__native_stablef_custbw = make_parallel_kernels(
    log_gate_matrix_stablef, "native_stablef"
)
