"""The core kernels as torch operators: ``torch.ops.mlstm_kernels.<name>``.

Each operator is a thin adapter: it allocates the outputs, the workspace and the saved buffer with
torch (so they come from the caching allocator, also inside CUDA-graph capture), describes every
tensor to the C ABI by raw pointer, dtype code and element strides, and calls ``_core`` on the
caller's current CUDA stream. No DLPack: that would synchronise streams and refuse tensors that
require grad.

Why ``torch.library.define`` + ``impl`` and not ``torch.library.custom_op``: both give the same
operator (schema, fake function, autograd formula, opcheck, torch.compile), but the dispatcher path
of a ``define``d operator costs about 2.5 µs per call on CPU against about 10 µs for ``custom_op``,
and the step kernel is called once per generated token.

Operators (S is any length >= 1; the last chunk may be partial):
    chunkwise_fwd / chunkwise_bwd   algorithm 0 = limit_chunk, 1 = xl_chunk; optional states
    parallel_fwd / parallel_bwd     no states
    sequence_fwd                    forward only (inference)
    step_fwd                        forward only, one time step, functional (new state tensors)

Tensor layout contract: the innermost dimension must have unit stride; an input whose innermost
dimension is strided is copied to a contiguous tensor first. All other strides pass through
unchanged (views of larger buffers cost nothing). States are c (B, NH, DHQK, DHHV),
n (B, NH, DHQK), m (B, NH, 1); the ABI's m is (B, NH), the same memory.

The forward's ``saved`` output is an opaque uint8 buffer written by the core for its backward. It
is returned as an operator output so that autograd keeps it alive; with ``save_for_backward=False``
(no gradient will be taken) it is empty and the core skips writing it.
"""

from __future__ import annotations

import torch

from .. import _core

_LIB = torch.library.Library("mlstm_kernels", "DEF")


class _DtypeCodes(dict):
    """torch dtype -> the ABI's dtype code; an unsupported dtype raises ValueError on lookup, so hot
    paths can index it directly."""

    def __missing__(self, dtype):
        raise ValueError(f"mlstm_kernels: unsupported dtype {dtype} (float32, float16, bfloat16, float64 on CPU)")


_DTYPE_CODES = _DtypeCodes({
    torch.float32: _core.FLOAT32,
    torch.float16: _core.FLOAT16,
    torch.bfloat16: _core.BFLOAT16,
    torch.float64: _core.FLOAT64,
})

ALGORITHMS = {"limit_chunk": _core.CHUNKWISE_LIMIT, "xl_chunk": _core.CHUNKWISE_XL}

# In a size query the core reads only which optional tensors are present and the dtypes; a
# nonzero placeholder pointer marks a tensor as present without touching memory.
_PRESENT = 1


def _dtype_code(t: torch.Tensor) -> int:
    return _DTYPE_CODES[t.dtype]


def _unit_inner(t: torch.Tensor | None) -> torch.Tensor | None:
    """t itself when its innermost dimension is unit-stride (or of size 1), else a contiguous copy."""
    if t is None or t.stride(-1) == 1 or t.shape[-1] == 1:
        return t
    return t.contiguous()


def _desc(t: torch.Tensor | None):
    """The ABI's (data_ptr, dtype, strides) for t; t must have passed through _unit_inner."""
    if t is None:
        return None
    return (t.data_ptr(), _dtype_code(t), t.stride()[:-1] + (1,))


def _size_desc(t: torch.Tensor | None):
    """Like _desc, for size queries: presence and dtype only (t may be a fake tensor)."""
    if t is None:
        return None
    return (_PRESENT, _dtype_code(t), ())


def _unit_m(m: torch.Tensor | None) -> torch.Tensor | None:
    """m (B, NH, 1) is the ABI's (B, NH): NH is its innermost dimension and must be unit-stride."""
    if m is None or m.stride(1) == 1 or m.shape[1] == 1:
        return m
    return m.contiguous()


def _desc_m(m: torch.Tensor):
    # (B, NH, 1) described as the ABI's (B, NH), without creating a view; m passed through _unit_m.
    return (m.data_ptr(), _dtype_code(m), (m.stride(0), 1))


def _desc_step(t: torch.Tensor):
    # (B, NH, D) described as the ABI's (B, NH, S=1, D); the S stride is never used.
    return (t.data_ptr(), _dtype_code(t), (t.stride(0), t.stride(1), 0, 1))


def _device(t: torch.Tensor):
    if t.is_cuda:
        # The raw handle of the current stream in one call, as torch's generated code reads it:
        # torch.cuda.current_stream(device) builds a Stream object on each call first.
        index = t.get_device()
        return (_core.DEVICE_CUDA, index, torch._C._cuda_getCurrentRawStream(index))
    if t.is_cpu:
        return (_core.DEVICE_CPU, 0, 0)
    raise ValueError(f"mlstm_kernels: tensors on device '{t.device}' are not supported (cpu or cuda)")


def _size_device(t: torch.Tensor):
    """The device for a size query of a fake or meta tensor: kind only; meta tensors ask as CPU."""
    if t.device.type == "cuda":
        return (_core.DEVICE_CUDA, t.device.index or 0, 0)
    return (_core.DEVICE_CPU, 0, 0)


def _state_dtype(q: torch.Tensor, c_initial: torch.Tensor | None) -> torch.dtype:
    """States of the training forms: those given, else float32 (float64 for float64 inputs)."""
    if c_initial is not None:
        return c_initial.dtype
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _int(x) -> int:
    # Under torch.compile shapes may be symbolic; the core's size query needs concrete values.
    return int(x)


def _args(cls, q, v, S, eps, chunk_size=0, algorithm=0, fake=False):
    a = cls()
    a.device = _size_device(q) if fake else _device(q)
    B, NH, DHQK, DHHV = q.shape[0], q.shape[1], q.shape[-1], v.shape[-1]
    a.shape = (_int(B), _int(NH), _int(S), _int(DHQK), _int(DHHV))
    a.eps = eps
    a.chunk_size = chunk_size
    a.algorithm = algorithm
    return a


def _set(a, describe, **tensors):
    # Absent tensors stay at the argument struct's default (null pointer).
    for name, t in tensors.items():
        if t is not None:
            setattr(a, name, describe(t))


def _bytes(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(n, dtype=torch.uint8, device=like.device)


def _workspace(a, n: int, like: torch.Tensor) -> torch.Tensor | None:
    """Allocates the scratch buffer the core asked for (none for 0 bytes) and points `a` at it; the
    caller keeps the returned tensor alive until the core call returns."""
    if n == 0:
        return None
    workspace = _bytes(n, like)
    a.workspace = workspace.data_ptr()
    return workspace


def _output(like: torch.Tensor, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Every output the core writes is allocated here: contiguous, on like's device, uninitialised.
    The real and the fake implementations both use it, so their layouts agree (and a test can
    poison all outputs in one place)."""
    # Sizes unpacked: torch parses them about 0.5 µs faster than one tuple (the step allocates four).
    return torch.empty(*shape, dtype=like.dtype if dtype is None else dtype, device=like.device)


def _empty_states(q: torch.Tensor, DHHV: int, dtype: torch.dtype):
    B, NH, DHQK = q.shape[0], q.shape[1], q.shape[-1]
    return (
        _output(q, (B, NH, DHQK, DHHV), dtype),  # (B, NH, DHQK, DHHV)
        _output(q, (B, NH, DHQK), dtype),  # (B, NH, DHQK)
        _output(q, (B, NH, 1), dtype),  # (B, NH, 1)
    )


def _no_states(q: torch.Tensor, dtype: torch.dtype):
    # Placeholders for state outputs that were not requested: the schema has a fixed output count.
    return tuple(q.new_empty((0,), dtype=dtype) for _ in range(3))


# ---------------------------------------------------------------------------------------------
# Forward of the chunkwise and parallel forms.

_LIB.define(
    "chunkwise_fwd(Tensor q, Tensor k, Tensor v, Tensor i, Tensor f, Tensor? c_initial, Tensor? n_initial, "
    "Tensor? m_initial, float eps, int chunk_size, int algorithm, bool return_last_states, "
    "bool save_for_backward) -> (Tensor h, Tensor c_last, Tensor n_last, Tensor m_last, Tensor saved)"
)
_LIB.define(
    "parallel_fwd(Tensor q, Tensor k, Tensor v, Tensor i, Tensor f, float eps, bool save_for_backward) "
    "-> (Tensor h, Tensor saved)"
)


def _train_fwd(core_fn, sizes_fn, q, k, v, i, f, c0, n0, m0, eps, chunk_size, algorithm, return_last_states, save):
    q, k, v, i, f, c0, n0 = (_unit_inner(t) for t in (q, k, v, i, f, c0, n0))
    m0 = _unit_m(m0)
    B, NH, S, DHHV = q.shape[0], q.shape[1], q.shape[2], v.shape[-1]
    state_dtype = _state_dtype(q, c0)
    h = _output(q, (B, NH, S, DHHV))  # (B, NH, S, DHHV)
    last = _empty_states(q, DHHV, state_dtype) if return_last_states else _no_states(q, state_dtype)
    a = _args(_core.FwdArgs, q, v, S, eps, chunk_size, algorithm)
    _set(a, _desc, q=q, k=k, v=v, i=i, f=f, c_initial=c0, n_initial=n0, h=h)
    _set(a, _desc_m, m_initial=m0)
    if return_last_states:
        _set(a, _desc, c_last=last[0], n_last=last[1])
        _set(a, _desc_m, m_last=last[2])
    workspace_bytes, saved_bytes = sizes_fn(a)
    workspace = _workspace(a, workspace_bytes, q)
    saved = _bytes(saved_bytes if save else 0, q)
    if save:
        a.saved = saved.data_ptr()
    core_fn(a)
    return (h, *last, saved)


def _train_fwd_fake(sizes_fn, q, v, c0, chunk_size, algorithm, return_last_states, save, **presence):
    B, NH, S, DHHV = q.shape[0], q.shape[1], q.shape[2], v.shape[-1]
    state_dtype = _state_dtype(q, c0)
    h = _output(q, (B, NH, S, DHHV))
    last = _empty_states(q, DHHV, state_dtype) if return_last_states else _no_states(q, state_dtype)
    a = _args(_core.FwdArgs, q, v, S, 0.0, chunk_size, algorithm, fake=True)
    _set(a, _size_desc, q=q, **presence)
    _, saved_bytes = sizes_fn(a)
    return (h, *last, _bytes(saved_bytes if save else 0, q))


def _chunkwise_fwd(q, k, v, i, f, c_initial, n_initial, m_initial, eps, chunk_size, algorithm, return_last_states, save_for_backward):
    return _train_fwd(
        _core.chunkwise_fwd, _core.chunkwise_fwd_sizes, q, k, v, i, f, c_initial, n_initial, m_initial,
        eps, chunk_size, algorithm, return_last_states, save_for_backward,
    )


def _chunkwise_fwd_fake(q, k, v, i, f, c_initial, n_initial, m_initial, eps, chunk_size, algorithm, return_last_states, save_for_backward):
    return _train_fwd_fake(
        _core.chunkwise_fwd_sizes, q, v, c_initial, chunk_size, algorithm, return_last_states, save_for_backward,
        i=i, c_initial=c_initial, n_initial=n_initial, m_initial=m_initial,
    )


def _parallel_fwd(q, k, v, i, f, eps, save_for_backward):
    h, *_, saved = _train_fwd(
        _core.parallel_fwd, _core.parallel_fwd_sizes, q, k, v, i, f, None, None, None,
        eps, 0, 0, False, save_for_backward,
    )
    return h, saved


def _parallel_fwd_fake(q, k, v, i, f, eps, save_for_backward):
    h, *_, saved = _train_fwd_fake(_core.parallel_fwd_sizes, q, v, None, 0, 0, False, save_for_backward, i=i)
    return h, saved


# ---------------------------------------------------------------------------------------------
# Backward of the chunkwise and parallel forms: exact gradients of the forward function, including
# the initial states and gradients arriving on the last states.

_LIB.define(
    "chunkwise_bwd(Tensor q, Tensor k, Tensor v, Tensor i, Tensor f, Tensor? c_initial, Tensor? n_initial, "
    "Tensor? m_initial, Tensor h, Tensor saved, Tensor dh, Tensor? dc_last, Tensor? dn_last, Tensor? dm_last, "
    "float eps, int chunk_size, int algorithm) "
    "-> (Tensor dq, Tensor dk, Tensor dv, Tensor di, Tensor df, Tensor dc_initial, Tensor dn_initial, Tensor dm_initial)"
)
_LIB.define(
    "parallel_bwd(Tensor q, Tensor k, Tensor v, Tensor i, Tensor f, Tensor h, Tensor saved, Tensor dh, float eps) "
    "-> (Tensor dq, Tensor dk, Tensor dv, Tensor di, Tensor df)"
)


def _train_grads(q, k, v, i, c0, n0, m0):
    dq, dk, dv = _output(q, q.shape), _output(k, k.shape), _output(v, v.shape)
    di, df = _output(i, i.shape), _output(i, i.shape)
    if c0 is None:
        dstates = _no_states(q, _state_dtype(q, None))
    else:
        dstates = (_output(c0, c0.shape), _output(n0, n0.shape), _output(m0, m0.shape))
    return (dq, dk, dv, di, df, *dstates)


def _train_bwd(core_fn, sizes_fn, q, k, v, i, f, c0, n0, m0, h, saved, dh, dc_last, dn_last, dm_last, eps, chunk_size, algorithm):
    q, k, v, i, f, c0, n0, h, dh, dc_last, dn_last = (
        _unit_inner(t) for t in (q, k, v, i, f, c0, n0, h, dh, dc_last, dn_last)
    )
    grads = _train_grads(q, k, v, i, c0, n0, m0)
    m0, dm_last = _unit_m(m0), _unit_m(dm_last)
    dq, dk, dv, di, df, dc0, dn0, dm0 = grads
    a = _args(_core.BwdArgs, q, v, q.shape[2], eps, chunk_size, algorithm)
    _set(a, _desc, q=q, k=k, v=v, i=i, f=f, c_initial=c0, n_initial=n0, h=h, dh=dh,
         dc_last=dc_last, dn_last=dn_last, dq=dq, dk=dk, dv=dv, di=di, df=df)
    _set(a, _desc_m, m_initial=m0, dm_last=dm_last)
    if c0 is not None:
        _set(a, _desc, dc_initial=dc0, dn_initial=dn0)
        _set(a, _desc_m, dm_initial=dm0)
    workspace_bytes, _ = sizes_fn(a)
    workspace = _workspace(a, workspace_bytes, q)
    a.saved = saved.data_ptr()
    core_fn(a)
    return grads


def _chunkwise_bwd(q, k, v, i, f, c_initial, n_initial, m_initial, h, saved, dh, dc_last, dn_last, dm_last, eps, chunk_size, algorithm):
    return _train_bwd(
        _core.chunkwise_bwd, _core.chunkwise_bwd_sizes, q, k, v, i, f, c_initial, n_initial, m_initial,
        h, saved, dh, dc_last, dn_last, dm_last, eps, chunk_size, algorithm,
    )


def _chunkwise_bwd_fake(q, k, v, i, f, c_initial, n_initial, m_initial, h, saved, dh, dc_last, dn_last, dm_last, eps, chunk_size, algorithm):
    return _train_grads(q, k, v, i, c_initial, n_initial, m_initial)


def _parallel_bwd(q, k, v, i, f, h, saved, dh, eps):
    return _train_bwd(
        _core.parallel_bwd, _core.parallel_bwd_sizes, q, k, v, i, f, None, None, None,
        h, saved, dh, None, None, None, eps, 0, 0,
    )[:5]


def _parallel_bwd_fake(q, k, v, i, f, h, saved, dh, eps):
    return _train_grads(q, k, v, i, None, None, None)[:5]


# ---------------------------------------------------------------------------------------------
# Autograd: the forward operators' gradient is the matching backward operator.


def _chunkwise_setup_context(ctx, inputs, output):
    q, k, v, i, f, c0, n0, m0, eps, chunk_size, algorithm, return_last_states, save = inputs
    h, _, _, _, saved = output
    ctx.save_for_backward(q, k, v, i, f, c0, n0, m0, h, saved)
    ctx.config = (eps, chunk_size, algorithm, return_last_states, save)


def _last_state_grads(q, v, state_dtype, dc_last, dn_last, dm_last):
    """All three last-state gradients or none: a loss on some of the states gives zeros for the rest."""
    if dc_last is None and dn_last is None and dm_last is None:
        return None, None, None
    B, NH, DHQK, DHHV = q.shape[0], q.shape[1], q.shape[-1], v.shape[-1]
    shapes = ((B, NH, DHQK, DHHV), (B, NH, DHQK), (B, NH, 1))
    return tuple(
        q.new_zeros(shape, dtype=state_dtype) if g is None else g.to(state_dtype)
        for g, shape in zip((dc_last, dn_last, dm_last), shapes)
    )


def _check_saved(ctx, op: str) -> None:
    if not ctx.config[-1]:
        raise RuntimeError(
            f"mlstm_kernels::{op}: backward needs the forward to run with save_for_backward=True "
            "(the kernels set it when any input requires grad)"
        )


def _chunkwise_backward(ctx, dh, dc_last, dn_last, dm_last, _dsaved):
    _check_saved(ctx, "chunkwise_fwd")
    q, k, v, i, f, c0, n0, m0, h, saved = ctx.saved_tensors
    eps, chunk_size, algorithm, return_last_states, _ = ctx.config
    dh = torch.zeros_like(h) if dh is None else dh.to(h.dtype)
    dlast = (None, None, None)
    if return_last_states:
        dlast = _last_state_grads(q, v, _state_dtype(q, c0), dc_last, dn_last, dm_last)
    dq, dk, dv, di, df, dc0, dn0, dm0 = torch.ops.mlstm_kernels.chunkwise_bwd(
        q, k, v, i, f, c0, n0, m0, h, saved, dh, *dlast, eps, chunk_size, algorithm
    )
    if c0 is None:
        dc0 = dn0 = dm0 = None
    return dq, dk, dv, di, df, dc0, dn0, dm0, None, None, None, None, None


def _parallel_setup_context(ctx, inputs, output):
    q, k, v, i, f, eps, save = inputs
    h, saved = output
    ctx.save_for_backward(q, k, v, i, f, h, saved)
    ctx.config = (eps, save)


def _parallel_backward(ctx, dh, _dsaved):
    _check_saved(ctx, "parallel_fwd")
    q, k, v, i, f, h, saved = ctx.saved_tensors
    eps, _ = ctx.config
    dh = torch.zeros_like(h) if dh is None else dh.to(h.dtype)
    dq, dk, dv, di, df = torch.ops.mlstm_kernels.parallel_bwd(q, k, v, i, f, h, saved, dh, eps)
    return dq, dk, dv, di, df, None, None


# ---------------------------------------------------------------------------------------------
# Recurrent forms (inference): a whole sequence in one kernel, and one step.

_LIB.define(
    "sequence_fwd(Tensor q, Tensor k, Tensor v, Tensor i, Tensor f, Tensor? c_initial, Tensor? n_initial, "
    "Tensor? m_initial, float eps, bool return_last_states, ScalarType state_dtype) "
    "-> (Tensor h, Tensor c_last, Tensor n_last, Tensor m_last)"
)
# Functional: returns new state tensors (the ABI could update in place; a functional operator
# stays correct under torch.compile and CUDA graphs without aliasing annotations).
_LIB.define(
    "step_fwd(Tensor q, Tensor k, Tensor v, Tensor i, Tensor f, Tensor c, Tensor n, Tensor m, float eps) "
    "-> (Tensor h, Tensor c_new, Tensor n_new, Tensor m_new)"
)


def _sequence_fwd(q, k, v, i, f, c_initial, n_initial, m_initial, eps, return_last_states, state_dtype):
    q, k, v, i, f, c0, n0 = (_unit_inner(t) for t in (q, k, v, i, f, c_initial, n_initial))
    m0 = _unit_m(m_initial)
    B, NH, S, DHHV = q.shape[0], q.shape[1], q.shape[2], v.shape[-1]
    h = _output(q, (B, NH, S, DHHV))  # (B, NH, S, DHHV)
    last = _empty_states(q, DHHV, state_dtype) if return_last_states else _no_states(q, state_dtype)
    a = _args(_core.FwdArgs, q, v, S, eps)
    _set(a, _desc, q=q, k=k, v=v, i=i, f=f, c_initial=c0, n_initial=n0, h=h)
    _set(a, _desc_m, m_initial=m0)
    if return_last_states:
        _set(a, _desc, c_last=last[0], n_last=last[1])
        _set(a, _desc_m, m_last=last[2])
    workspace_bytes, _ = _core.sequence_fwd_sizes(a)
    workspace = _workspace(a, workspace_bytes, q)
    _core.sequence_fwd(a)
    return (h, *last)


def _sequence_fwd_fake(q, k, v, i, f, c_initial, n_initial, m_initial, eps, return_last_states, state_dtype):
    B, NH, S, DHHV = q.shape[0], q.shape[1], q.shape[2], v.shape[-1]
    h = _output(q, (B, NH, S, DHHV))
    last = _empty_states(q, DHHV, state_dtype) if return_last_states else _no_states(q, state_dtype)
    return (h, *last)


def _step_outputs(q, v, c):
    DHHV = v.shape[-1]
    return (_output(q, (q.shape[0], q.shape[1], DHHV)), *_empty_states(q, DHHV, c.dtype))  # h (B, NH, DHHV), c, n, m


def _step_fwd(q, k, v, i, f, c, n, m, eps):
    # q, k (B, NH, DHQK); v (B, NH, DHHV); i, f (B, NH, 1); c (B, NH, DHQK, DHHV); n (B, NH, DHQK); m (B, NH, 1)
    # The ABI sees the step as a sequence of length 1: q (B, NH, 1, DHQK), i (B, NH, 1), m (B, NH).
    # A decode loop runs this once per token, so everything goes to the core in one call, without a
    # FwdArgs filled field by field or a size query (the step needs no workspace).
    q, k, v, c, n, m = _unit_inner(q), _unit_inner(k), _unit_inner(v), _unit_inner(c), _unit_inner(n), _unit_m(m)
    h, c_new, n_new, m_new = _step_outputs(q, v, c)
    # (data_ptr, dtype, strides) as _desc_step (q, k, v, h), _desc and _desc_m (m) would build them, written
    # out because the twelve helper calls cost ≈2 µs more.
    code, shape, unit = _DTYPE_CODES, q.shape, (1,)
    sq, sk, sv, sh = q.stride(), k.stride(), v.stride(), h.stride()
    _core.step_fwd_direct(
        _device(q), (shape[0], shape[1], 1, shape[-1], v.shape[-1]), eps,
        (q.data_ptr(), code[q.dtype], (sq[0], sq[1], 0, 1)),
        (k.data_ptr(), code[k.dtype], (sk[0], sk[1], 0, 1)),
        (v.data_ptr(), code[v.dtype], (sv[0], sv[1], 0, 1)),
        (i.data_ptr(), code[i.dtype], i.stride()[:-1] + unit),
        (f.data_ptr(), code[f.dtype], f.stride()[:-1] + unit),
        (c.data_ptr(), code[c.dtype], c.stride()[:-1] + unit),
        (n.data_ptr(), code[n.dtype], n.stride()[:-1] + unit),
        (m.data_ptr(), code[m.dtype], (m.stride(0), 1)),
        (h.data_ptr(), code[h.dtype], (sh[0], sh[1], 0, 1)),
        (c_new.data_ptr(), code[c_new.dtype], c_new.stride()[:-1] + unit),
        (n_new.data_ptr(), code[n_new.dtype], n_new.stride()[:-1] + unit),
        (m_new.data_ptr(), code[m_new.dtype], (m_new.stride(0), 1)),
    )
    return h, c_new, n_new, m_new


def _step_fwd_fake(q, k, v, i, f, c, n, m, eps):
    return _step_outputs(q, v, c)


# ---------------------------------------------------------------------------------------------
# Registration: one table, the same implementation for CPU and CUDA (the core dispatches by the
# device kind in the arguments).

_OPS = {
    "chunkwise_fwd": (_chunkwise_fwd, _chunkwise_fwd_fake),
    "chunkwise_bwd": (_chunkwise_bwd, _chunkwise_bwd_fake),
    "parallel_fwd": (_parallel_fwd, _parallel_fwd_fake),
    "parallel_bwd": (_parallel_bwd, _parallel_bwd_fake),
    "sequence_fwd": (_sequence_fwd, _sequence_fwd_fake),
    "step_fwd": (_step_fwd, _step_fwd_fake),
}

for _name, (_impl, _fake) in _OPS.items():
    _LIB.impl(_name, _impl, "CPU")
    _LIB.impl(_name, _impl, "CUDA")
    torch.library.register_fake(f"mlstm_kernels::{_name}", _fake, lib=_LIB)

torch.library.register_autograd(
    "mlstm_kernels::chunkwise_fwd", _chunkwise_backward, setup_context=_chunkwise_setup_context, lib=_LIB
)
torch.library.register_autograd(
    "mlstm_kernels::parallel_fwd", _parallel_backward, setup_context=_parallel_setup_context, lib=_LIB
)

chunkwise_fwd = torch.ops.mlstm_kernels.chunkwise_fwd
chunkwise_bwd = torch.ops.mlstm_kernels.chunkwise_bwd
parallel_fwd = torch.ops.mlstm_kernels.parallel_fwd
parallel_bwd = torch.ops.mlstm_kernels.parallel_bwd
sequence_fwd = torch.ops.mlstm_kernels.sequence_fwd
step_fwd = torch.ops.mlstm_kernels.step_fwd
