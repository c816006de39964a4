"""One upstream-compatible interface around every kernel, native (plain torch) or core.

Training kernels (chunkwise and parallel forms)::

    fn(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False,
       eps=1e-6, autocast_kernel_dtype=torch.bfloat16, chunk_size=64, **kwargs)
    -> h (B, NH, S, DHHV)  |  (h, (c_last (B, NH, DHQK, DHHV), n_last (B, NH, DHQK), m_last (B, NH, 1)))

Sequence kernels: the same plus ``dtype_state=torch.float32`` (the dtype of the recurrent states).
Step kernels::

    fn(q, k, v, i, f, c, n, m, eps=1e-6, dtype_state=torch.float32, **kwargs) -> (h, (c_new, n_new, m_new))
    q, k (B, NH, DHQK); v (B, NH, DHHV); i, f (B, NH, 1) or (B, NH); h (B, NH, DHHV)

What every wrapper does before the kernel runs, identically for native and core kernels:

* validation: tensors only, one device, floating dtypes, shapes by ``_spec.check_shapes``; a
  ValueError names the kernel and the argument;
* autocast, as upstream: inside an enabled autocast region of q's device type, q, k, v are cast to
  ``autocast_kernel_dtype`` and the kernel runs with autocast disabled; outside, it runs in the
  inputs' dtype (q, k, v must then share one);
* gates i, f in float32 (float64 when q is float64); states of the training forms in float32
  (float64 when q is float64), of the recurrent forms in ``dtype_state``; an m of shape (B, NH)
  is read as (B, NH, 1).

Core kernels take any S >= 1 (no padding); extra keyword arguments (upstream's Triton tuning knobs)
are accepted and ignored. Native kernels receive them unchanged.
"""

from __future__ import annotations

import importlib
from contextlib import nullcontext
from typing import Callable

import torch

from .. import _spec
from . import _ops

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---------------------------------------------------------------------------------------------
# Validation and input preparation shared by all kernels.


def _check_tensors(kernel: str, tensors: dict[str, torch.Tensor | None]) -> None:
    first_name, device = None, None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{kernel}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"{kernel}: {name} has dtype {t.dtype}; the mLSTM kernels take floating-point tensors "
                "(float32, float16, bfloat16; float64 on CPU)"
            )
        if device is None:
            first_name, device = name, t.device
        elif t.device != device:
            raise ValueError(f"{kernel}: {name} is on {t.device} but {first_name} is on {device}; all inputs must be on one device")


def _check_shapes(kernel: str, tensors: dict[str, torch.Tensor | None], **kwargs) -> _spec.Dims:
    try:
        return _spec.check_shapes({n: None if t is None else tuple(t.shape) for n, t in tensors.items()}, **kwargs)
    except ValueError as e:
        raise ValueError(f"{kernel}: {e}") from None


def _kernel_dtype(kernel: str, q, k, v, autocast_kernel_dtype: torch.dtype) -> tuple[torch.dtype, bool]:
    """(dtype for q, k, v, whether an autocast region is active)."""
    if torch.is_autocast_enabled(q.device.type):
        if autocast_kernel_dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{kernel}: autocast_kernel_dtype must be a floating torch dtype, got {autocast_kernel_dtype!r}")
        return autocast_kernel_dtype, True
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"{kernel}: q, k and v must share one dtype outside an autocast region, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    return q.dtype, False


def _to(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    # Skipping the no-op .to() saves a dispatcher round trip per tensor (it matters for the step).
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _m_3d(m: torch.Tensor | None) -> torch.Tensor | None:
    # m may come as (B, NH) (upstream's JAX layout); the torch kernels use (B, NH, 1).
    return m if m is None or m.dim() == 3 else m.unsqueeze(-1)


def _no_autocast(active: bool, device_type: str):
    return torch.autocast(device_type, enabled=False) if active else nullcontext()


class _Prepared:
    """Validated inputs in the kernel's dtypes, and the context to run the kernel in."""

    __slots__ = ("q", "k", "v", "i", "f", "c", "n", "m", "autocast")

    def __init__(self, q, k, v, i, f, c, n, m, autocast):
        self.q, self.k, self.v, self.i, self.f, self.c, self.n, self.m = q, k, v, i, f, c, n, m
        self.autocast = autocast

    def context(self):
        return _no_autocast(self.autocast, self.q.device.type)


def _prepare(kernel, q, k, v, i, f, c, n, m, autocast_kernel_dtype, state_dtype=None, step=False):
    """Validate and cast. state_dtype None: float32 (float64 when q runs in float64)."""
    state_names = ("c", "n", "m") if step else ("c_initial", "n_initial", "m_initial")
    tensors = {"q": q, "k": k, "v": v, "i": i, "f": f, state_names[0]: c, state_names[1]: n, state_names[2]: m}
    _check_tensors(kernel, tensors)
    if step and (c is None or n is None or m is None):
        raise ValueError(f"{kernel}: the step kernel needs the states c, n and m")
    _check_shapes(kernel, tensors, step=step, state_names=state_names)
    qkv_dtype, autocast = _kernel_dtype(kernel, q, k, v, autocast_kernel_dtype)
    wide = qkv_dtype == torch.float64
    gate_dtype = torch.float64 if wide else torch.float32
    if state_dtype is None:
        state_dtype = gate_dtype
    if step:
        # Gates of a step are (B, NH, 1); (B, NH) is accepted.
        i, f = (g if g.dim() == 3 else g.unsqueeze(-1) for g in (i, f))
    return _Prepared(
        _to(q, qkv_dtype), _to(k, qkv_dtype), _to(v, qkv_dtype), _to(i, gate_dtype), _to(f, gate_dtype),
        _to(c, state_dtype), _to(n, state_dtype), _to(_m_3d(m), state_dtype), autocast,
    )


def _requires_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


_native_cache: dict[tuple[str, str], Callable] = {}


def _native_fn(module: str, name: str) -> Callable:
    """The plain-torch implementation `name` in `module`, imported on first use."""
    fn = _native_cache.get((module, name))
    if fn is None:
        fn = getattr(importlib.import_module(module), name)
        _native_cache[(module, name)] = fn
    return fn


# ---------------------------------------------------------------------------------------------
# Training kernels.

# run(prepared, return_last_states, eps, chunk_size, kwargs) -> h | (h, (c, n, m))
TrainingRun = Callable[[_Prepared, bool, float, int, dict], object]


def _training_kernel(kernel: str, python_name: str, run: TrainingRun, doc: str, default_chunk_size: int = 64):
    stateless = kernel.startswith("parallel--")

    def fn(
        q: torch.Tensor,  # (B, NH, S, DHQK)
        k: torch.Tensor,  # (B, NH, S, DHQK)
        v: torch.Tensor,  # (B, NH, S, DHHV)
        i: torch.Tensor,  # (B, NH, S)
        f: torch.Tensor,  # (B, NH, S)
        c_initial: torch.Tensor | None = None,  # (B, NH, DHQK, DHHV)
        n_initial: torch.Tensor | None = None,  # (B, NH, DHQK)
        m_initial: torch.Tensor | None = None,  # (B, NH, 1)
        return_last_states: bool = False,
        eps: float = _spec.DEFAULT_EPS,
        autocast_kernel_dtype: torch.dtype = torch.bfloat16,
        chunk_size: int = default_chunk_size,
        **kwargs,
    ):
        if stateless and (c_initial is not None or n_initial is not None or m_initial is not None or return_last_states):
            raise ValueError(
                f"{kernel}: the parallel form has no state; pass no initial states and return_last_states=False "
                "(use a chunkwise kernel for state passing)"
            )
        x = _prepare(kernel, q, k, v, i, f, c_initial, n_initial, m_initial, autocast_kernel_dtype)
        with x.context():
            return run(x, return_last_states, eps, chunk_size, kwargs)

    fn.__name__ = fn.__qualname__ = python_name
    fn.__doc__ = doc
    return fn


def _core_chunkwise_run(algorithm: str) -> TrainingRun:
    code = _ops.ALGORITHMS[algorithm]

    def run(x: _Prepared, return_last_states, eps, chunk_size, kwargs):
        _spec.check_chunk_size(algorithm, chunk_size)
        save = _requires_grad(x.q, x.k, x.v, x.i, x.f, x.c, x.n, x.m)
        h, c, n, m, _ = _ops.chunkwise_fwd(
            x.q, x.k, x.v, x.i, x.f, x.c, x.n, x.m, float(eps), chunk_size, code, return_last_states, save
        )
        return (h, (c, n, m)) if return_last_states else h

    return run


def _core_parallel_run(x: _Prepared, return_last_states, eps, chunk_size, kwargs):
    save = _requires_grad(x.q, x.k, x.v, x.i, x.f)
    h, _ = _ops.parallel_fwd(x.q, x.k, x.v, x.i, x.f, float(eps), save)
    return h


def _native_training_run(module: str, name: str) -> TrainingRun:
    def run(x: _Prepared, return_last_states, eps, chunk_size, kwargs):
        return _native_fn(module, name)(
            q=x.q, k=x.k, v=x.v, i=x.i, f=x.f, c_initial=x.c, n_initial=x.n, m_initial=x.m,
            return_last_states=return_last_states, eps=eps, chunk_size=chunk_size, **kwargs,
        )

    return run


_PKG = "mlstm_kernels.torch"

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
    """Chunkwise mLSTM in plain torch, gradients by autograd (readable reference).""",
)
mlstm_chunkwise__native_custbw = _training_kernel(
    "chunkwise--native_custbw",
    "mlstm_chunkwise__native_custbw",
    _native_training_run(f"{_PKG}.chunkwise.native", "mlstm_chunkwise__native_custbw"),
    """Chunkwise mLSTM in plain torch with a hand-written backward.""",
)
mlstm_parallel__native_autograd = _training_kernel(
    "parallel--native_autograd",
    "mlstm_parallel__native_autograd",
    _native_training_run(f"{_PKG}.parallel.native", "mlstm_parallel__native_autograd"),
    """Parallel mLSTM in plain torch, gradients by autograd; no state.""",
)
mlstm_parallel__native_custbw = _training_kernel(
    "parallel--native_custbw",
    "mlstm_parallel__native_custbw",
    _native_training_run(f"{_PKG}.parallel.native", "mlstm_parallel__native_custbw"),
    """Parallel mLSTM in plain torch with a hand-written backward; no state.""",
)
mlstm_parallel__native_stablef_autograd = _training_kernel(
    "parallel--native_stablef_autograd",
    "mlstm_parallel__native_stablef_autograd",
    _native_training_run(f"{_PKG}.parallel.native_stablef", "mlstm_parallel__native_stablef_autograd"),
    """Parallel mLSTM in plain torch, stablef gate matrix, gradients by autograd; no state.""",
)
mlstm_parallel__native_stablef_custbw = _training_kernel(
    "parallel--native_stablef_custbw",
    "mlstm_parallel__native_stablef_custbw",
    _native_training_run(f"{_PKG}.parallel.native_stablef", "mlstm_parallel__native_stablef_custbw"),
    """Parallel mLSTM in plain torch, stablef gate matrix, hand-written backward; no state.""",
)


# ---------------------------------------------------------------------------------------------
# Step kernels.

# run(prepared, eps, kwargs) -> (h, (c_new, n_new, m_new))
StepRun = Callable[[_Prepared, float, dict], object]


def _step_kernel(kernel: str, python_name: str, run: StepRun, doc: str):
    def fn(
        q: torch.Tensor,  # (B, NH, DHQK)
        k: torch.Tensor,  # (B, NH, DHQK)
        v: torch.Tensor,  # (B, NH, DHHV)
        i: torch.Tensor,  # (B, NH, 1)
        f: torch.Tensor,  # (B, NH, 1)
        c: torch.Tensor,  # (B, NH, DHQK, DHHV)
        n: torch.Tensor,  # (B, NH, DHQK)
        m: torch.Tensor,  # (B, NH, 1)
        eps: float = _spec.DEFAULT_EPS,
        dtype_state: torch.dtype = torch.float32,
        autocast_kernel_dtype: torch.dtype = torch.bfloat16,
        **kwargs,
    ):
        x = _prepare(kernel, q, k, v, i, f, c, n, m, autocast_kernel_dtype, state_dtype=dtype_state, step=True)
        with x.context():
            return run(x, eps, kwargs)

    fn.__name__ = fn.__qualname__ = python_name
    fn.__doc__ = doc
    return fn


def _core_step_run(x: _Prepared, eps, kwargs):
    h, c, n, m = _ops.step_fwd(x.q, x.k, x.v, x.i, x.f, x.c, x.n, x.m, float(eps))
    return h, (c, n, m)


def _native_step_run(x: _Prepared, eps, kwargs):
    fn = _native_fn(f"{_PKG}.recurrent.native", "mlstm_recurrent_step__native")
    return fn(q=x.q, k=x.k, v=x.v, i=x.i, f=x.f, c=x.c, n=x.n, m=x.m, eps=eps, dtype_state=x.c.dtype, **kwargs)


mlstm_recurrent_step__fused = _step_kernel(
    "fused",
    "mlstm_recurrent_step__fused",
    _core_step_run,
    """One recurrent step in the core (a single kernel; new state tensors in dtype_state).""",
)
mlstm_recurrent_step__native = _step_kernel(
    "native",
    "mlstm_recurrent_step__native",
    _native_step_run,
    """One recurrent step in plain torch.""",
)


# ---------------------------------------------------------------------------------------------
# Sequence kernels (forward only, for inference).

# run(prepared, return_last_states, eps, kwargs) -> h | (h, (c, n, m)); states already in dtype_state.
SequenceRun = Callable[[_Prepared, bool, float, dict], object]


def _sequence_kernel(kernel: str, python_name: str, run: SequenceRun, doc: str):
    def fn(
        q: torch.Tensor,  # (B, NH, S, DHQK)
        k: torch.Tensor,  # (B, NH, S, DHQK)
        v: torch.Tensor,  # (B, NH, S, DHHV)
        i: torch.Tensor,  # (B, NH, S)
        f: torch.Tensor,  # (B, NH, S)
        c_initial: torch.Tensor | None = None,  # (B, NH, DHQK, DHHV)
        n_initial: torch.Tensor | None = None,  # (B, NH, DHQK)
        m_initial: torch.Tensor | None = None,  # (B, NH, 1)
        return_last_states: bool = False,
        eps: float = _spec.DEFAULT_EPS,
        dtype_state: torch.dtype = torch.float32,
        autocast_kernel_dtype: torch.dtype = torch.bfloat16,
        **kwargs,
    ):
        x = _prepare(kernel, q, k, v, i, f, c_initial, n_initial, m_initial, autocast_kernel_dtype, state_dtype=dtype_state)
        if x.c is None:
            B, NH, S, DHQK = x.q.shape
            DHHV = x.v.shape[-1]
            x.c = x.q.new_zeros((B, NH, DHQK, DHHV), dtype=dtype_state)  # (B, NH, DHQK, DHHV)
            x.n = x.q.new_zeros((B, NH, DHQK), dtype=dtype_state)  # (B, NH, DHQK)
            x.m = x.q.new_zeros((B, NH, 1), dtype=dtype_state)  # (B, NH, 1)
        with x.context():
            return run(x, return_last_states, eps, kwargs)

    fn.__name__ = fn.__qualname__ = python_name
    fn.__doc__ = doc
    return fn


def _core_sequence_run(x: _Prepared, return_last_states, eps, kwargs):
    h, c, n, m = _ops.sequence_fwd(x.q, x.k, x.v, x.i, x.f, x.c, x.n, x.m, float(eps), return_last_states, x.c.dtype)
    return (h, (c, n, m)) if return_last_states else h


def _core_step_loop_run(x: _Prepared, return_last_states, eps, kwargs):
    c, n, m = x.c, x.n, x.m
    h_steps = []
    for t in range(x.q.shape[2]):
        h_t, c, n, m = _ops.step_fwd(
            x.q[:, :, t], x.k[:, :, t], x.v[:, :, t], x.i[:, :, t, None], x.f[:, :, t, None], c, n, m, float(eps)
        )
        h_steps.append(h_t)
    h = torch.stack(h_steps, dim=2)  # (B, NH, S, DHHV)
    return (h, (c, n, m)) if return_last_states else h


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
    """A Python loop over the sequence calling the core step kernel. Forward only.""",
)
mlstm_recurrent_sequence__native_fw = _sequence_kernel(
    "native_sequence__native",
    "mlstm_recurrent_sequence__native_fw",
    _native_sequence_run,
    """A Python loop over the sequence calling the plain-torch step. Forward only.""",
)
