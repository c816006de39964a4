"""The torch kernel functions: the shared upstream-compatible wrappers (``mlstm_kernels._wrappers``)
over the core ops (``_ops``) and the plain-torch references.

torch specifics, on top of what ``_wrappers`` documents for both frameworks:

* inputs are ``torch.Tensor`` on one device; float64 on CPU only;
* ``dtype_state`` is a torch dtype or its name ("bfloat16");
* autocast, as upstream: inside an enabled autocast region of q's device type, q, k, v are cast to
  ``autocast_kernel_dtype`` and the kernel runs with autocast disabled; outside, it runs in the
  inputs' dtype (q, k, v must then share one).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .. import _spec, _wrappers
from . import _ops

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class _Torch(_wrappers.Framework):
    package = "mlstm_kernels.torch"
    words = {"native": "plain torch", "autodiff": "autograd", "loop": "A Python loop"}
    float32, float64, float16, bfloat16 = torch.float32, torch.float64, torch.float16, torch.bfloat16

    def check_arrays(self, kernel, arrays):
        first_name, device = None, None
        for name, t in arrays.items():
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
                raise ValueError(
                    f"{kernel}: {name} is on {t.device} but {first_name} is on {device}; all inputs must be on one device"
                )

    def kernel_dtype(self, kernel, q, k, v, autocast_kernel_dtype):
        if torch.is_autocast_enabled(q.device.type):
            if autocast_kernel_dtype not in _FLOAT_DTYPES:
                raise ValueError(
                    f"{kernel}: autocast_kernel_dtype must be a floating torch dtype, got {autocast_kernel_dtype!r}"
                )
            return autocast_kernel_dtype, True
        if not (q.dtype == k.dtype == v.dtype):
            raise ValueError(
                f"{kernel}: q, k and v must share one dtype outside an autocast region, got {q.dtype}, {k.dtype}, {v.dtype}"
            )
        return q.dtype, False

    def cast(self, x, dtype):
        return x.to(dtype)

    def zeros(self, like, shape, dtype):
        return like.new_zeros(shape, dtype=dtype)

    def floating_dtype(self, dtype):
        # Names as in the backend config ("bfloat16") are read as torch dtypes, as JAX reads them.
        if isinstance(dtype, str) and dtype in _spec.STATE_DTYPES:
            return getattr(torch, dtype)
        return dtype if isinstance(dtype, torch.dtype) and dtype in _FLOAT_DTYPES else None

    def run_context(self, autocast, q):
        return torch.autocast(q.device.type, enabled=False) if autocast else nullcontext()


def _requires_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _core_chunkwise_run(algorithm: str) -> _wrappers.TrainingRun:
    code = _ops.ALGORITHMS[algorithm]

    def run(x: _wrappers.Prepared, return_last_states, eps, chunk_size, kwargs):
        save = _requires_grad(x.q, x.k, x.v, x.i, x.f, x.c, x.n, x.m)
        h, c, n, m, _ = _ops.chunkwise_fwd(
            x.q, x.k, x.v, x.i, x.f, x.c, x.n, x.m, eps, chunk_size, code, return_last_states, save
        )
        return (h, (c, n, m)) if return_last_states else h

    return run


def _core_parallel_run(x: _wrappers.Prepared, return_last_states, eps, chunk_size, kwargs):
    save = _requires_grad(x.q, x.k, x.v, x.i, x.f)
    h, _ = _ops.parallel_fwd(x.q, x.k, x.v, x.i, x.f, eps, save)
    return h


def _core_step_run(x: _wrappers.Prepared, eps, kwargs):
    h, c, n, m = _ops.step_fwd(x.q, x.k, x.v, x.i, x.f, x.c, x.n, x.m, eps)
    return h, (c, n, m)


def _core_sequence_run(x: _wrappers.Prepared, return_last_states, eps, kwargs):
    h, c, n, m = _ops.sequence_fwd(x.q, x.k, x.v, x.i, x.f, x.c, x.n, x.m, eps, return_last_states, x.c.dtype)
    return (h, (c, n, m)) if return_last_states else h


def _core_step_loop_run(x: _wrappers.Prepared, return_last_states, eps, kwargs):
    c, n, m = x.c, x.n, x.m
    h_steps = []
    for t in range(x.q.shape[2]):
        h_t, c, n, m = _ops.step_fwd(
            x.q[:, :, t], x.k[:, :, t], x.v[:, :, t], x.i[:, :, t, None], x.f[:, :, t, None], c, n, m, eps
        )
        h_steps.append(h_t)
    h = torch.stack(h_steps, dim=2)  # (B, NH, S, DHHV)
    return (h, (c, n, m)) if return_last_states else h


_CORE_RUNS = {
    "chunkwise--limit_chunk": _core_chunkwise_run("limit_chunk"),
    "chunkwise--xl_chunk": _core_chunkwise_run("xl_chunk"),
    "parallel--tiled": _core_parallel_run,
    "native_sequence__fused": _core_step_loop_run,
    "fused_sequence": _core_sequence_run,
    "fused": _core_step_run,
}

# The kernel functions under their upstream names (mlstm_chunkwise__xl_chunk, ...; _spec.KERNELS).
registry, _functions = _wrappers.build_kernels(_Torch(), _CORE_RUNS, __name__)
globals().update(_functions)
__all__ = list(_functions)
