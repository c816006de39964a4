"""JAX interface of mlstm_kernels: kernel registries, direct imports and the backend module.

Mirrors ``mlstm_kernels.torch`` name for name (names in ``mlstm_kernels._spec``; upstream's Triton
names resolve to our equivalents with a one-time warning; unknown names raise ValueError listing
the available ones)::

    get_available_mlstm_kernels()           training kernels "<form>--<kernel>"
    get_mlstm_kernel(name)
    get_available_mlstm_sequence_kernels()  sequence kernels
    get_mlstm_sequence_kernel(name)
    get_available_mlstm_step_kernels()      step kernels
    get_mlstm_step_kernel(name)

Kernels named ``native`` are plain jax.numpy; the others call the core through XLA FFI custom calls
and work under ``jit``, ``grad`` (training kernels) and ``vmap``.
"""

from __future__ import annotations

from ._interface import registry as _registry

# The kernel functions, also reachable from the package.
from .chunkwise import (  # noqa: F401
    mlstm_chunkwise__limit_chunk,
    mlstm_chunkwise__native_autograd,
    mlstm_chunkwise__native_custbw,
    mlstm_chunkwise__xl_chunk,
)
from .parallel import (  # noqa: F401
    mlstm_parallel__native_autograd,
    mlstm_parallel__native_custbw,
    mlstm_parallel__native_stablef_autograd,
    mlstm_parallel__native_stablef_custbw,
    mlstm_parallel__tiled,
)
from .recurrent import (  # noqa: F401
    mlstm_recurrent_sequence__fused_fw,
    mlstm_recurrent_sequence__native_fused_fw,
    mlstm_recurrent_sequence__native_fw,
    mlstm_recurrent_step__fused,
    mlstm_recurrent_step__native,
)

get_available_mlstm_kernels = _registry["get_available_mlstm_kernels"]
get_mlstm_kernel = _registry["get_mlstm_kernel"]
get_available_mlstm_sequence_kernels = _registry["get_available_mlstm_sequence_kernels"]
get_mlstm_sequence_kernel = _registry["get_mlstm_sequence_kernel"]
get_available_mlstm_step_kernels = _registry["get_available_mlstm_step_kernels"]
get_mlstm_step_kernel = _registry["get_mlstm_step_kernel"]


__all__ = [
    "get_available_mlstm_kernels",
    "get_mlstm_kernel",
    "get_available_mlstm_sequence_kernels",
    "get_mlstm_sequence_kernel",
    "get_available_mlstm_step_kernels",
    "get_mlstm_step_kernel",
]
