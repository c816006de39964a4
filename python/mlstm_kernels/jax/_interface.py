"""The JAX kernel functions: the shared upstream-compatible wrappers (``mlstm_kernels._wrappers``)
over the core's XLA FFI calls (``_ffi``) and the ``jax.numpy`` references.

The same conventions as ``mlstm_kernels.torch``, so both give the same results on the same inputs;
JAX specifics:

* m is (B, NH, 1) everywhere, as in torch (upstream's JAX used (B, NH) for chunkwise states); an m
  of shape (B, NH) is accepted and read as (B, NH, 1);
* kernels run in the inputs' dtype (q, k and v must share one). JAX has no autocast region, so
  ``autocast_kernel_dtype`` is accepted for signature compatibility and has no effect — torch also
  ignores it outside an autocast region;
* ``eps``, ``chunk_size`` and ``return_last_states`` are static (Python values, also under jit);
* ``dtype_state`` is anything ``jnp.dtype`` reads (``jnp.bfloat16``, ``"bfloat16"``), static too;
* the core step kernel updates the states in place where XLA can donate them: carry them through
  ``lax.scan``/``while_loop`` or donate them (``jax.jit(..., donate_argnums=...)``); states that XLA
  may not overwrite are copied first, which costs as much as the step itself.
"""

from __future__ import annotations

import jax.numpy as jnp

from .. import _wrappers
from . import _ffi

_FLOAT_DTYPES = tuple(jnp.dtype(d) for d in (jnp.float32, jnp.float16, jnp.bfloat16, jnp.float64))


class _Jax(_wrappers.Framework):
    package = "mlstm_kernels.jax"
    words = {"native": "jax.numpy", "autodiff": "JAX autodiff", "loop": "lax.scan"}
    float32, float64, float16, bfloat16 = jnp.float32, jnp.float64, jnp.float16, jnp.bfloat16

    def check_arrays(self, kernel, arrays):
        for name, x in arrays.items():
            if x is None:
                continue
            if not hasattr(x, "shape") or not hasattr(x, "dtype"):
                raise TypeError(f"{kernel}: {name} must be an array, got {type(x).__name__}")
            if jnp.dtype(x.dtype) not in _FLOAT_DTYPES:
                raise ValueError(
                    f"{kernel}: {name} has dtype {x.dtype}; the mLSTM kernels take floating-point arrays "
                    "(float32, float16, bfloat16; float64 on CPU)"
                )

    def kernel_dtype(self, kernel, q, k, v, autocast_kernel_dtype):
        if not (q.dtype == k.dtype == v.dtype):
            raise ValueError(f"{kernel}: q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        return q.dtype, False

    def cast(self, x, dtype):
        return x.astype(dtype)

    def zeros(self, like, shape, dtype):
        return jnp.zeros(shape, dtype)

    def floating_dtype(self, dtype):
        # jnp.dtype reads names, scalar types and numpy dtypes alike; None would mean float64, refuse it.
        try:
            d = None if dtype is None else jnp.dtype(dtype)
        except (TypeError, ValueError):
            return None
        return d if d in _FLOAT_DTYPES else None


def _state_dtype(x: _wrappers.Prepared) -> str:
    return jnp.dtype(x.c.dtype).name


def _core_chunkwise_run(algorithm: str) -> _wrappers.TrainingRun:
    def run(x: _wrappers.Prepared, return_last_states, eps, chunk_size, kwargs):
        cfg = _ffi.Config(
            "chunkwise", eps, chunk_size, _ffi.ALGORITHMS[algorithm], return_last_states,
            jnp.dtype(x.i.dtype).name,  # states share the gates' float32 / float64
        )
        h, last = _ffi.core_train(cfg, x.q, x.k, x.v, x.i, x.f, x.states)
        return (h, last) if return_last_states else h

    return run


def _core_parallel_run(x: _wrappers.Prepared, return_last_states, eps, chunk_size, kwargs):
    h, _ = _ffi.core_train(_ffi.Config("parallel", eps), x.q, x.k, x.v, x.i, x.f, None)
    return h


def _core_step_run(x: _wrappers.Prepared, eps, kwargs):
    cfg = _ffi.Config("step", eps, return_last=True, state_dtype=_state_dtype(x))
    return _ffi.core_step(cfg, x.q, x.k, x.v, x.i, x.f, x.states)


def _core_sequence_run(x: _wrappers.Prepared, return_last_states, eps, kwargs):
    cfg = _ffi.Config("sequence", eps, return_last=return_last_states, state_dtype=_state_dtype(x))
    h, last = _ffi.core_sequence(cfg, x.q, x.k, x.v, x.i, x.f, x.states)
    return (h, last) if return_last_states else h


def _core_step_loop_run(x: _wrappers.Prepared, return_last_states, eps, kwargs):
    cfg = _ffi.Config("step", eps, return_last=True, state_dtype=_state_dtype(x))
    h, last = _ffi.core_step_loop(cfg, x.q, x.k, x.v, x.i, x.f, x.states)
    return (h, last) if return_last_states else h


_CORE_RUNS = {
    "chunkwise--limit_chunk": _core_chunkwise_run("limit_chunk"),
    "chunkwise--xl_chunk": _core_chunkwise_run("xl_chunk"),
    "parallel--tiled": _core_parallel_run,
    "native_sequence__fused": _core_step_loop_run,
    "fused_sequence": _core_sequence_run,
    "fused": _core_step_run,
}

# The kernel functions under their upstream names (mlstm_chunkwise__xl_chunk, ...; _spec.KERNELS).
registry, _functions = _wrappers.build_kernels(_Jax(), _CORE_RUNS, __name__)
globals().update(_functions)
__all__ = list(_functions)
