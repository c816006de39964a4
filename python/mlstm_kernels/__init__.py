"""Fast and exact mLSTM kernels: a CUDA C++ core behind a C ABI, with PyTorch and JAX bindings.

Framework layers live in ``mlstm_kernels.torch`` and ``mlstm_kernels.jax``; importing this package
imports neither framework.
"""

from ._version import __version__

__all__ = ["__version__", "capabilities"]


def capabilities() -> dict:
    """What this build of the core can do: version, CUDA backend, archs, visible GPUs, CPU kernels, limits."""
    from . import _core

    forms = ("parallel", "chunkwise", "sequence", "step")
    caps = {
        "version": _core.version(),
        "cuda_compiled": _core.cuda_compiled(),
        "cuda_archs": _core.cuda_archs().split(",") if _core.cuda_archs() else [],
        "cuda_devices": _core.cuda_device_count(),
        "cpu_isa": _core.cpu_isa(),
        "max_head_dim": {
            "cpu": {f: _core.max_head_dim(f, _core.DEVICE_CPU) for f in forms},
            "cuda": {f: _core.max_head_dim(f, _core.DEVICE_CUDA) for f in forms},
        },
    }
    return caps
