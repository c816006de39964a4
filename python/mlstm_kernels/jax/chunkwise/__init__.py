"""Chunkwise mLSTM kernels (upstream import path).

``mlstm_chunkwise__limit_chunk`` and ``mlstm_chunkwise__xl_chunk`` run in the core through XLA FFI
(CPU or CUDA, wherever XLA runs the computation); the ``native`` ones are the jax.numpy references.
"""

from .._interface import (
    mlstm_chunkwise__limit_chunk,
    mlstm_chunkwise__native_autograd,
    mlstm_chunkwise__native_custbw,
    mlstm_chunkwise__xl_chunk,
)

__all__ = [
    "mlstm_chunkwise__native_autograd",
    "mlstm_chunkwise__native_custbw",
    "mlstm_chunkwise__limit_chunk",
    "mlstm_chunkwise__xl_chunk",
]
