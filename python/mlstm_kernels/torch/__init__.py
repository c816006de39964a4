"""PyTorch interface of mlstm_kernels: kernel registries, direct imports and the backend module.

Registries (names in ``mlstm_kernels._spec``; upstream's Triton names resolve to our equivalents
with a one-time warning; unknown names raise ValueError listing the available ones)::

    get_available_mlstm_kernels()           training kernels "<form>--<kernel>"
    get_mlstm_kernel(name)
    get_available_mlstm_sequence_kernels()  sequence kernels (forward only)
    get_mlstm_sequence_kernel(name)
    get_available_mlstm_step_kernels()      step kernels
    get_mlstm_step_kernel(name)

Kernels named ``native`` are plain torch; the others run in the core on the tensors' device.
"""

from __future__ import annotations

from typing import Callable

from .. import _spec
from .chunkwise import (
    mlstm_chunkwise__limit_chunk,
    mlstm_chunkwise__native_autograd,
    mlstm_chunkwise__native_custbw,
    mlstm_chunkwise__xl_chunk,
)
from .parallel import (
    mlstm_parallel__native_autograd,
    mlstm_parallel__native_custbw,
    mlstm_parallel__native_stablef_autograd,
    mlstm_parallel__native_stablef_custbw,
    mlstm_parallel__tiled,
)
from .recurrent import (
    mlstm_recurrent_sequence__fused_fw,
    mlstm_recurrent_sequence__native_fused_fw,
    mlstm_recurrent_sequence__native_fw,
    mlstm_recurrent_step__fused,
    mlstm_recurrent_step__native,
)

_TRAINING_KERNELS: dict[str, Callable] = {
    "chunkwise--native_autograd": mlstm_chunkwise__native_autograd,
    "chunkwise--native_custbw": mlstm_chunkwise__native_custbw,
    "chunkwise--limit_chunk": mlstm_chunkwise__limit_chunk,
    "chunkwise--xl_chunk": mlstm_chunkwise__xl_chunk,
    "parallel--native_autograd": mlstm_parallel__native_autograd,
    "parallel--native_custbw": mlstm_parallel__native_custbw,
    "parallel--native_stablef_autograd": mlstm_parallel__native_stablef_autograd,
    "parallel--native_stablef_custbw": mlstm_parallel__native_stablef_custbw,
    "parallel--tiled": mlstm_parallel__tiled,
}
_SEQUENCE_KERNELS: dict[str, Callable] = {
    "native_sequence__native": mlstm_recurrent_sequence__native_fw,
    "native_sequence__fused": mlstm_recurrent_sequence__native_fused_fw,
    "fused_sequence": mlstm_recurrent_sequence__fused_fw,
}
_STEP_KERNELS: dict[str, Callable] = {
    "native": mlstm_recurrent_step__native,
    "fused": mlstm_recurrent_step__fused,
}

_registry = _spec.registry_functions(_TRAINING_KERNELS, _SEQUENCE_KERNELS, _STEP_KERNELS)
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
