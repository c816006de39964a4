"""Parallel mLSTM kernels (upstream import path); no state.

``mlstm_parallel__tiled`` runs in the core through XLA FFI; ``mlstm_parallel__limit_headdim`` is
upstream's name for it. The ``native`` ones are the jax.numpy references.
"""

from .._interface import (
    mlstm_parallel__native_autograd,
    mlstm_parallel__native_custbw,
    mlstm_parallel__native_stablef_autograd,
    mlstm_parallel__native_stablef_custbw,
    mlstm_parallel__tiled,
)

mlstm_parallel__limit_headdim = mlstm_parallel__tiled

__all__ = [
    "mlstm_parallel__native_autograd",
    "mlstm_parallel__native_custbw",
    "mlstm_parallel__native_stablef_autograd",
    "mlstm_parallel__native_stablef_custbw",
    "mlstm_parallel__tiled",
    "mlstm_parallel__limit_headdim",
]
