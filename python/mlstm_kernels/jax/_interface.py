"""One upstream-compatible interface around every JAX kernel, native (``jax.numpy``) or core (XLA FFI).

Training kernels (chunkwise and parallel forms)::

    fn(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False,
       eps=1e-6, autocast_kernel_dtype=jnp.bfloat16, chunk_size=64, **kwargs)
    -> h (B, NH, S, DHHV)  |  (h, (c_last (B, NH, DHQK, DHHV), n_last (B, NH, DHQK), m_last (B, NH, 1)))

Sequence kernels: the same plus ``dtype_state=jnp.float32`` (the dtype of the recurrent states).
Step kernels::

    fn(q, k, v, i, f, c, n, m, eps=1e-6, dtype_state=jnp.float32, **kwargs) -> (h, (c_new, n_new, m_new))
    q, k (B, NH, DHQK); v (B, NH, DHHV); i, f (B, NH, 1) or (B, NH); h (B, NH, DHHV)

The same conventions as ``mlstm_kernels.torch``, so both give the same results on the same inputs:

* m is (B, NH, 1) everywhere, as in torch (upstream's JAX used (B, NH) for chunkwise states); an m
  of shape (B, NH) is accepted and read as (B, NH, 1);
* kernels run in the inputs' dtype (q, k and v must share one). JAX has no autocast region, so
  ``autocast_kernel_dtype`` is accepted for signature compatibility and has no effect — torch also
  ignores it outside an autocast region;
* gates i, f are float32 (float64 when q is float64); states of the training forms are float32
  (float64 when q is float64), of the recurrent forms ``dtype_state``;
* ``eps``, ``chunk_size`` and ``return_last_states`` are static (Python values, also under jit).

Core kernels take any S >= 1 (no padding); extra keyword arguments (upstream's Triton tuning knobs)
are accepted and ignored. Native kernels receive them unchanged.
"""

from __future__ import annotations

import importlib
from typing import Callable

import jax
import jax.numpy as jnp

from .. import _spec
from . import _ffi

_FLOAT_DTYPES = tuple(jnp.dtype(d) for d in (jnp.float32, jnp.float16, jnp.bfloat16, jnp.float64))


# ---------------------------------------------------------------------------------------------
# Validation and input preparation shared by all kernels.


class _Prepared:
    """Validated inputs in the kernel's dtypes."""

    __slots__ = ("q", "k", "v", "i", "f", "c", "n", "m")

    def __init__(self, q, k, v, i, f, c, n, m):
        self.q, self.k, self.v, self.i, self.f, self.c, self.n, self.m = q, k, v, i, f, c, n, m

    @property
    def states(self):
        return None if self.c is None else (self.c, self.n, self.m)


def _prepare(kernel, q, k, v, i, f, c, n, m, state_dtype=None, step=False) -> _Prepared:
    """Validate and cast. state_dtype None: float32 (float64 when q is float64)."""
    state_names = ("c", "n", "m") if step else ("c_initial", "n_initial", "m_initial")
    arrays = {"q": q, "k": k, "v": v, "i": i, "f": f, state_names[0]: c, state_names[1]: n, state_names[2]: m}
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
    if step and (c is None or n is None or m is None):
        raise ValueError(f"{kernel}: the step kernel needs the states c, n and m")
    try:
        _spec.check_shapes(
            {name: None if x is None else tuple(x.shape) for name, x in arrays.items()}, step=step, state_names=state_names
        )
    except ValueError as e:
        raise ValueError(f"{kernel}: {e}") from None
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{kernel}: q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    gate_dtype = jnp.float64 if q.dtype == jnp.float64 else jnp.float32
    state_dtype = gate_dtype if state_dtype is None else state_dtype
    B, NH = q.shape[:2]
    if step:
        # Gates of a step are (B, NH, 1); (B, NH) is accepted.
        i, f = (g.reshape(B, NH, 1) for g in (i, f))

    def state(x, shape=None):
        if x is None:
            return None
        return (x if shape is None else x.reshape(shape)).astype(state_dtype)

    return _Prepared(
        q, k, v, i.astype(gate_dtype), f.astype(gate_dtype), state(c), state(n), state(m, (B, NH, 1))
    )


_native_cache: dict[tuple[str, str], Callable] = {}


def _native_fn(module: str, name: str) -> Callable:
    """The jax.numpy implementation `name` in `module`, imported on first use."""
    fn = _native_cache.get((module, name))
    if fn is None:
        fn = getattr(importlib.import_module(module), name)
        _native_cache[(module, name)] = fn
    return fn


_PKG = "mlstm_kernels.jax"

# ---------------------------------------------------------------------------------------------
# Training kernels.

# run(prepared, return_last_states, eps, chunk_size, kwargs) -> h | (h, (c, n, m))
TrainingRun = Callable[[_Prepared, bool, float, int, dict], object]


def _training_kernel(kernel: str, python_name: str, run: TrainingRun, doc: str, default_chunk_size: int = 64):
    stateless = kernel.startswith("parallel--")

    def fn(
        q: jax.Array,  # (B, NH, S, DHQK)
        k: jax.Array,  # (B, NH, S, DHQK)
        v: jax.Array,  # (B, NH, S, DHHV)
        i: jax.Array,  # (B, NH, S)
        f: jax.Array,  # (B, NH, S)
        c_initial: jax.Array | None = None,  # (B, NH, DHQK, DHHV)
        n_initial: jax.Array | None = None,  # (B, NH, DHQK)
        m_initial: jax.Array | None = None,  # (B, NH, 1)
        return_last_states: bool = False,
        eps: float = _spec.DEFAULT_EPS,
        autocast_kernel_dtype=jnp.bfloat16,
        chunk_size: int = default_chunk_size,
        **kwargs,
    ):
        if stateless and (c_initial is not None or n_initial is not None or m_initial is not None or return_last_states):
            raise ValueError(
                f"{kernel}: the parallel form has no state; pass no initial states and return_last_states=False "
                "(use a chunkwise kernel for state passing)"
            )
        x = _prepare(kernel, q, k, v, i, f, c_initial, n_initial, m_initial)
        return run(x, bool(return_last_states), float(eps), chunk_size, kwargs)

    fn.__name__ = fn.__qualname__ = python_name
    fn.__doc__ = doc
    return fn


def _core_chunkwise_run(algorithm: str) -> TrainingRun:
    def run(x: _Prepared, return_last_states, eps, chunk_size, kwargs):
        _spec.check_chunk_size(algorithm, chunk_size)
        cfg = _ffi.Config(
            "chunkwise", eps, chunk_size, _ffi.ALGORITHMS[algorithm], return_last_states,
            jnp.dtype(x.i.dtype).name,  # states share the gates' float32 / float64
        )
        h, last = _ffi.core_train(cfg, x.q, x.k, x.v, x.i, x.f, x.states)
        return (h, last) if return_last_states else h

    return run


def _core_parallel_run(x: _Prepared, return_last_states, eps, chunk_size, kwargs):
    h, _ = _ffi.core_train(_ffi.Config("parallel", eps), x.q, x.k, x.v, x.i, x.f, None)
    return h


def _native_training_run(module: str, name: str) -> TrainingRun:
    def run(x: _Prepared, return_last_states, eps, chunk_size, kwargs):
        return _native_fn(module, name)(
            q=x.q, k=x.k, v=x.v, i=x.i, f=x.f, c_initial=x.c, n_initial=x.n, m_initial=x.m,
            return_last_states=return_last_states, eps=eps, chunk_size=chunk_size, **kwargs,
        )

    return run


mlstm_chunkwise__limit_chunk = _training_kernel(
    "chunkwise--limit_chunk",
    "mlstm_chunkwise__limit_chunk",
    _core_chunkwise_run("limit_chunk"),
    """Chunkwise mLSTM in the core, one level of tiling: a whole L x L chunk per block (L = chunk_size
    in 16..128, a power of two). Any S >= 1. Exact gradients, including initial and last states.""",
)
mlstm_chunkwise__xl_chunk = _training_kernel(
    "chunkwise--xl_chunk",
    "mlstm_chunkwise__xl_chunk",
    _core_chunkwise_run("xl_chunk"),
    """Chunkwise mLSTM in the core, two-level (TFLA) tiling: large chunks for the state recurrence,
    tiles inside a chunk (chunk_size in 16..4096, a power of two; default 128 as upstream). Any S >= 1.
    Exact gradients, including initial and last states.""",
    default_chunk_size=128,
)
mlstm_parallel__tiled = _training_kernel(
    "parallel--tiled",
    "mlstm_parallel__tiled",
    _core_parallel_run,
    """Parallel (stablef) mLSTM in the core, tiled over the S x S gate matrix; no state.""",
)
mlstm_chunkwise__native_autograd = _training_kernel(
    "chunkwise--native_autograd",
    "mlstm_chunkwise__native_autograd",
    _native_training_run(f"{_PKG}.chunkwise.native", "mlstm_chunkwise__native_autograd"),
    """Chunkwise mLSTM in jax.numpy, gradients by JAX autodiff (readable reference).""",
)
mlstm_chunkwise__native_custbw = _training_kernel(
    "chunkwise--native_custbw",
    "mlstm_chunkwise__native_custbw",
    _native_training_run(f"{_PKG}.chunkwise.native", "mlstm_chunkwise__native_custbw"),
    """Chunkwise mLSTM in jax.numpy with the hand-written exact backward.""",
)
mlstm_parallel__native_autograd = _training_kernel(
    "parallel--native_autograd",
    "mlstm_parallel__native_autograd",
    _native_training_run(f"{_PKG}.parallel.native", "mlstm_parallel__native_autograd"),
    """Parallel mLSTM in jax.numpy (subtractive gate matrix), gradients by JAX autodiff; no state.""",
)
mlstm_parallel__native_custbw = _training_kernel(
    "parallel--native_custbw",
    "mlstm_parallel__native_custbw",
    _native_training_run(f"{_PKG}.parallel.native", "mlstm_parallel__native_custbw"),
    """Parallel mLSTM in jax.numpy (subtractive gate matrix) with the hand-written backward; no state.""",
)
mlstm_parallel__native_stablef_autograd = _training_kernel(
    "parallel--native_stablef_autograd",
    "mlstm_parallel__native_stablef_autograd",
    _native_training_run(f"{_PKG}.parallel.native_stablef", "mlstm_parallel__native_stablef_autograd"),
    """Parallel mLSTM in jax.numpy, stablef gate matrix, gradients by JAX autodiff; no state.""",
)
mlstm_parallel__native_stablef_custbw = _training_kernel(
    "parallel--native_stablef_custbw",
    "mlstm_parallel__native_stablef_custbw",
    _native_training_run(f"{_PKG}.parallel.native_stablef", "mlstm_parallel__native_stablef_custbw"),
    """Parallel mLSTM in jax.numpy, stablef gate matrix, hand-written backward; no state.""",
)


# ---------------------------------------------------------------------------------------------
# Step kernels.

# run(prepared, eps, kwargs) -> (h, (c_new, n_new, m_new))
StepRun = Callable[[_Prepared, float, dict], object]


def _step_kernel(kernel: str, python_name: str, run: StepRun, doc: str):
    def fn(
        q: jax.Array,  # (B, NH, DHQK)
        k: jax.Array,  # (B, NH, DHQK)
        v: jax.Array,  # (B, NH, DHHV)
        i: jax.Array,  # (B, NH, 1)
        f: jax.Array,  # (B, NH, 1)
        c: jax.Array,  # (B, NH, DHQK, DHHV)
        n: jax.Array,  # (B, NH, DHQK)
        m: jax.Array,  # (B, NH, 1)
        eps: float = _spec.DEFAULT_EPS,
        dtype_state=jnp.float32,
        autocast_kernel_dtype=jnp.bfloat16,
        **kwargs,
    ):
        x = _prepare(kernel, q, k, v, i, f, c, n, m, state_dtype=dtype_state, step=True)
        return run(x, float(eps), kwargs)

    fn.__name__ = fn.__qualname__ = python_name
    fn.__doc__ = doc
    return fn


def _core_step_run(x: _Prepared, eps, kwargs):
    cfg = _ffi.Config("step", eps, return_last=True, state_dtype=jnp.dtype(x.c.dtype).name)
    return _ffi.core_step(cfg, x.q, x.k, x.v, x.i, x.f, x.states)


def _native_step_run(x: _Prepared, eps, kwargs):
    fn = _native_fn(f"{_PKG}.recurrent.native", "mlstm_recurrent_step__native")
    return fn(q=x.q, k=x.k, v=x.v, i=x.i, f=x.f, c=x.c, n=x.n, m=x.m, eps=eps, dtype_state=x.c.dtype, **kwargs)


mlstm_recurrent_step__fused = _step_kernel(
    "fused",
    "mlstm_recurrent_step__fused",
    _core_step_run,
    """One recurrent step in the core (a single kernel; the states are updated in place where XLA
    can donate them). Forward only.""",
)
mlstm_recurrent_step__native = _step_kernel(
    "native",
    "mlstm_recurrent_step__native",
    _native_step_run,
    """One recurrent step in jax.numpy (differentiable).""",
)


# ---------------------------------------------------------------------------------------------
# Sequence kernels (the core ones forward only, for inference).

# run(prepared, return_last_states, eps, kwargs) -> h | (h, (c, n, m)); states already in dtype_state.
SequenceRun = Callable[[_Prepared, bool, float, dict], object]


def _sequence_kernel(kernel: str, python_name: str, run: SequenceRun, doc: str):
    def fn(
        q: jax.Array,  # (B, NH, S, DHQK)
        k: jax.Array,  # (B, NH, S, DHQK)
        v: jax.Array,  # (B, NH, S, DHHV)
        i: jax.Array,  # (B, NH, S)
        f: jax.Array,  # (B, NH, S)
        c_initial: jax.Array | None = None,  # (B, NH, DHQK, DHHV)
        n_initial: jax.Array | None = None,  # (B, NH, DHQK)
        m_initial: jax.Array | None = None,  # (B, NH, 1)
        return_last_states: bool = False,
        eps: float = _spec.DEFAULT_EPS,
        dtype_state=jnp.float32,
        autocast_kernel_dtype=jnp.bfloat16,
        **kwargs,
    ):
        x = _prepare(kernel, q, k, v, i, f, c_initial, n_initial, m_initial, state_dtype=dtype_state)
        if x.c is None:
            B, NH, S, DHQK = x.q.shape
            DHHV = x.v.shape[-1]
            x.c = jnp.zeros((B, NH, DHQK, DHHV), dtype_state)  # (B, NH, DHQK, DHHV)
            x.n = jnp.zeros((B, NH, DHQK), dtype_state)  # (B, NH, DHQK)
            x.m = jnp.zeros((B, NH, 1), dtype_state)  # (B, NH, 1)
        return run(x, bool(return_last_states), float(eps), kwargs)

    fn.__name__ = fn.__qualname__ = python_name
    fn.__doc__ = doc
    return fn


def _core_sequence_run(x: _Prepared, return_last_states, eps, kwargs):
    cfg = _ffi.Config("sequence", eps, return_last=return_last_states, state_dtype=jnp.dtype(x.c.dtype).name)
    h, last = _ffi.core_sequence(cfg, x.q, x.k, x.v, x.i, x.f, x.states)
    return (h, last) if return_last_states else h


def _core_step_loop_run(x: _Prepared, return_last_states, eps, kwargs):
    cfg = _ffi.Config("step", eps, return_last=True, state_dtype=jnp.dtype(x.c.dtype).name)
    h, last = _ffi.core_step_loop(cfg, x.q, x.k, x.v, x.i, x.f, x.states)
    return (h, last) if return_last_states else h


def _native_sequence_run(x: _Prepared, return_last_states, eps, kwargs):
    fn = _native_fn(f"{_PKG}.recurrent.native", "mlstm_recurrent_sequence__native_fw")
    return fn(
        q=x.q, k=x.k, v=x.v, i=x.i, f=x.f, c_initial=x.c, n_initial=x.n, m_initial=x.m,
        return_last_states=return_last_states, eps=eps, dtype_state=x.c.dtype, **kwargs,
    )


mlstm_recurrent_sequence__fused_fw = _sequence_kernel(
    "fused_sequence",
    "mlstm_recurrent_sequence__fused_fw",
    _core_sequence_run,
    """The recurrence over the whole sequence in one core kernel (states kept on chip). Forward only.""",
)
mlstm_recurrent_sequence__native_fused_fw = _sequence_kernel(
    "native_sequence__fused",
    "mlstm_recurrent_sequence__native_fused_fw",
    _core_step_loop_run,
    """lax.scan over the sequence calling the core step kernel. Forward only.""",
)
mlstm_recurrent_sequence__native_fw = _sequence_kernel(
    "native_sequence__native",
    "mlstm_recurrent_sequence__native_fw",
    _native_sequence_run,
    """lax.scan over the sequence calling the jax.numpy step (differentiable).""",
)
