"""The core's kernels as XLA custom calls: registration, buffer sizes, vmap, and the custom VJP.

Data flow: jnp arrays -> ``jax.ffi.ffi_call`` of a target registered from ``mlstm_kernels._jax_ffi``
(one XLA FFI handler per C ABI kernel and platform) -> the C ABI -> the CPU or CUDA backend. The
calling convention of the targets is documented at the top of ``python/src/jax_ffi_module.cpp``.

Buffers. The core never allocates: each call gets a workspace (scratch) and, for a forward that a
backward will follow, a saved buffer, both as extra uint8 results that XLA allocates. Their sizes
come from the core's ``*_sizes`` queries at trace time. A jitted function does not know yet on which
platform it will run, so the sizes are the largest over the platforms this process can run the
kernel on (CPU, and CUDA where a GPU is visible); each handler checks the buffers it gets.

vmap. Every call folds a vmapped axis into B (the kernels are independent over B), so a batched call
is one kernel launch of size (V*B, ...) with buffers sized for V*B. The saved buffer of a folded
forward is one opaque blob (not batched); the matching backward folds the same way. When only the
cotangents are batched (e.g. ``jax.jacrev``), the backward runs once per cotangent with the
forward's saved buffer.

Gradients. ``core_train`` (chunkwise and parallel forms) is a ``jax.custom_vjp`` whose backward is
the core's backward: exact gradients for q, k, v, i, f, the initial states and cotangents arriving
on the last states. The sequence and step forms have no backward in the core; differentiating them
raises a ValueError naming a differentiable alternative.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap

_DTYPE_CODES = {
    np.dtype(jnp.float32): 0,
    np.dtype(jnp.float16): 1,
    np.dtype(jnp.bfloat16): 2,
    np.dtype(jnp.float64): 3,
}
_DEVICE_CPU, _DEVICE_CUDA = 0, 1
ALGORITHMS = {"limit_chunk": 0, "xl_chunk": 1}

_TARGET_PREFIX = "mlstm_kernels_"


@functools.cache
def _module():
    """The FFI module, with its handlers registered with JAX (once per process)."""
    try:
        from .. import _jax_ffi
    except ImportError as e:
        raise ImportError(
            "mlstm_kernels was built without its JAX FFI module (jaxlib was not importable at build time); "
            "install jax and jaxlib, then rebuild mlstm_kernels to use the core kernels from JAX"
        ) from e
    for platform, targets in _jax_ffi.registrations().items():
        for name, capsule in targets.items():
            jax.ffi.register_ffi_target(name, capsule, platform=platform)
    return _jax_ffi


def _dtype_code(name: str, dtype) -> int:
    code = _DTYPE_CODES.get(np.dtype(dtype))
    if code is None:
        raise ValueError(f"{name} has dtype {np.dtype(dtype)}; the core takes float32, float16, bfloat16 (float64 on CPU)")
    return code


@functools.cache
def _device_kinds() -> tuple[tuple[int, int], ...]:
    """(device kind, index) of every platform a call in this process may run on."""
    kinds = [(_DEVICE_CPU, 0)]
    try:
        has_jax_gpu = any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        has_jax_gpu = False
    if has_jax_gpu and _module().cuda_device_count() > 0:
        kinds.append((_DEVICE_CUDA, 0))
    return tuple(kinds)


@functools.lru_cache(maxsize=1024)
def _fwd_sizes(form, shape, qkv, gate, state, eps, chunk_size, algorithm, has_initial, has_last) -> tuple[int, int]:
    mod = _module()
    ws = saved = 0
    for kind, index in _device_kinds():
        w, s = mod.fwd_sizes(form, kind, index, shape, qkv, gate, state, eps, chunk_size, algorithm, has_initial, has_last)
        ws, saved = max(ws, w), max(saved, s)
    return ws, saved


@functools.lru_cache(maxsize=1024)
def _bwd_workspace(form, shape, qkv, gate, state, eps, chunk_size, algorithm, has_initial, has_dlast) -> int:
    mod = _module()
    return max(
        mod.bwd_workspace_bytes(form, kind, index, shape, qkv, gate, state, eps, chunk_size, algorithm, has_initial, has_dlast)
        for kind, index in _device_kinds()
    )


@dataclass(frozen=True)
class Config:
    """Static configuration of one core call (hashable: it keys the cached call builders)."""

    form: str  # "parallel", "chunkwise", "sequence", "step"
    eps: float
    chunk_size: int = 0
    algorithm: int = 0
    return_last: bool = False
    state_dtype: str = "float32"  # of the last states when no initial states are given


def _shape(q, v) -> tuple[int, int, int, int, int]:
    if q.ndim == 3:  # step: q (B, NH, DHQK), v (B, NH, DHHV)
        B, NH, DHQK = q.shape
        return B, NH, 1, DHQK, v.shape[-1]
    B, NH, S, DHQK = q.shape
    return B, NH, S, DHQK, v.shape[-1]


def _state_structs(shape, dtype):
    B, NH, _, DHQK, DHHV = shape
    return (
        jax.ShapeDtypeStruct((B, NH, DHQK, DHHV), dtype),  # c (B, NH, DHQK, DHHV)
        jax.ShapeDtypeStruct((B, NH, DHQK), dtype),  # n (B, NH, DHQK)
        jax.ShapeDtypeStruct((B, NH, 1), dtype),  # m (B, NH, 1)
    )


def _bytes(n: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((n,), jnp.uint8)


def _attrs(cfg: Config) -> dict:
    return dict(eps=np.float32(cfg.eps), chunk_size=np.int32(cfg.chunk_size), algorithm=np.int32(cfg.algorithm))


# ---- vmap: fold the mapped axis into B --------------------------------------------------------


def _fold(x, batched, axis_size):
    """(V, B, ...) -> (V*B, ...); an unbatched x is broadcast over V first."""
    if x is None:
        return None
    if not batched:
        x = jnp.broadcast_to(x, (axis_size,) + x.shape)
    return x.reshape((axis_size * x.shape[1],) + x.shape[2:])


def _unfold(x, axis_size):
    return None if x is None else x.reshape((axis_size, x.shape[0] // axis_size) + x.shape[1:])


def _tree_fold(tree, batched, axis_size):
    return jax.tree.map(lambda x, b: _fold(x, b, axis_size), tree, batched)


def _tree_unfold(tree, axis_size):
    return jax.tree.map(lambda x: _unfold(x, axis_size), tree)


def _any_batched(tree) -> bool:
    return any(jax.tree.leaves(tree))


# ---- forward -----------------------------------------------------------------------------------


@functools.cache
def _forward_fn(cfg: Config, save: bool):
    """fn(q, k, v, i, f, states) -> (h, last_states | None, saved); states is None or (c, n, m)."""
    target = f"{_TARGET_PREFIX}{cfg.form}_fwd"

    @custom_vmap
    def fn(q, k, v, i, f, states):
        shape = _shape(q, v)
        state_dtype = states[0].dtype if states is not None else jnp.dtype(cfg.state_dtype)
        ws, saved = _fwd_sizes(
            cfg.form, shape, _dtype_code("q", q.dtype), _dtype_code("i", i.dtype), _dtype_code("state", state_dtype),
            cfg.eps, cfg.chunk_size, cfg.algorithm, states is not None, cfg.return_last,
        )
        results = [jax.ShapeDtypeStruct(v.shape[:-1] + (shape[4],), q.dtype), _bytes(saved if save else 0), _bytes(ws)]
        if cfg.return_last:
            results += _state_structs(shape, state_dtype)
        args = [q, k, v, i, f] + (list(states) if states is not None else [])
        # The step updates its state in place: c, n, m (arguments 5..7) become the new c, n, m
        # (results 3..5) without a copy whenever XLA can donate them.
        aliases = {5: 3, 6: 4, 7: 5} if cfg.form == "step" and states is not None and cfg.return_last else None
        out = jax.ffi.ffi_call(target, results, input_output_aliases=aliases)(*args, **_attrs(cfg))
        last = tuple(out[3:6]) if cfg.return_last else None
        return out[0], last, out[1]

    @fn.def_vmap
    def _batched(axis_size, in_batched, q, k, v, i, f, states):
        args = _tree_fold((q, k, v, i, f, states), tuple(in_batched), axis_size)
        h, last, saved = fn(*args)
        out = (_unfold(h, axis_size), _tree_unfold(last, axis_size), saved)
        return out, (True, jax.tree.map(lambda _: True, last), False)

    return fn


def forward(cfg: Config, q, k, v, i, f, states=None, *, save: bool = False):
    """Run the core forward of ``cfg.form``. Returns ``(h, last_states | None, saved)``.

    q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S) — for the step without the S axis
    and with i, f (B, NH, 1); states (c (B, NH, DHQK, DHHV), n (B, NH, DHQK), m (B, NH, 1)) or None.
    """
    _module()
    return _forward_fn(cfg, save)(q, k, v, i, f, states)


# ---- backward ----------------------------------------------------------------------------------


@functools.cache
def _backward_fn(cfg: Config):
    """fn(q, k, v, i, f, states, h, saved, dh, dlast) -> (dq, dk, dv, di, df, dstates | None)."""
    target = f"{_TARGET_PREFIX}{cfg.form}_bwd"

    @custom_vmap
    def fn(q, k, v, i, f, states, h, saved, dh, dlast):
        shape = _shape(q, v)
        state_dtype = states[0].dtype if states is not None else jnp.dtype(cfg.state_dtype)
        ws = _bwd_workspace(
            cfg.form, shape, _dtype_code("q", q.dtype), _dtype_code("i", i.dtype), _dtype_code("state", state_dtype),
            cfg.eps, cfg.chunk_size, cfg.algorithm, states is not None, dlast is not None,
        )
        results = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v, i, f)] + [_bytes(ws)]
        if states is not None:
            results += [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in states]
        args = [q, k, v, i, f, h, saved, dh]
        args += list(states) if states is not None else []
        args += list(dlast) if dlast is not None else []
        out = jax.ffi.ffi_call(target, results)(*args, **_attrs(cfg))
        dstates = tuple(out[6:9]) if states is not None else None
        return tuple(out[:5]) + (dstates,)

    @fn.def_vmap
    def _batched(axis_size, in_batched, q, k, v, i, f, states, h, saved, dh, dlast):
        primals, primals_batched = (q, k, v, i, f, states, h), tuple(in_batched[:7])
        saved_batched, cts_batched = in_batched[7], (in_batched[8], in_batched[9])
        if saved_batched:
            raise NotImplementedError("mlstm_kernels: a batched saved buffer cannot be folded into B")
        all_batched = lambda out: jax.tree.map(lambda _: True, out)  # noqa: E731
        if _any_batched(primals_batched):
            # The forward was folded the same way, so `saved` belongs to the folded batch.
            q, k, v, i, f, states, h = _tree_fold(primals, primals_batched, axis_size)
            dh, dlast = _tree_fold((dh, dlast), cts_batched, axis_size)
            out = fn(q, k, v, i, f, states, h, saved, dh, dlast)
            return _tree_unfold(out, axis_size), all_batched(out)
        # Only the cotangents vary (e.g. jacrev): one backward per cotangent with the same saved buffer.
        cts = jax.tree.map(
            lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + x.shape), (dh, dlast), cts_batched
        )
        out = jax.lax.map(lambda ct: fn(q, k, v, i, f, states, h, saved, *ct), cts)
        return out, all_batched(out)

    return fn


# ---- training kernels: forward + exact backward as one differentiable function -----------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def core_train(cfg: Config, q, k, v, i, f, states):
    """Differentiable core kernel of the chunkwise or parallel form: ``(h, last_states | None)``."""
    h, last, _ = forward(cfg, q, k, v, i, f, states, save=False)
    return h, last


def _core_train_fwd(cfg: Config, q, k, v, i, f, states):
    h, last, saved = forward(cfg, q, k, v, i, f, states, save=True)
    return (h, last), (q, k, v, i, f, states, h, saved)


def _core_train_bwd(cfg: Config, residuals, cotangents):
    q, k, v, i, f, states, h, saved = residuals
    dh, dlast = cotangents
    dh = dh.astype(h.dtype)
    dq, dk, dv, di, df, dstates = _backward_fn(cfg)(q, k, v, i, f, states, h, saved, dh, dlast)
    return dq, dk, dv, di, df, dstates


core_train.defvjp(_core_train_fwd, _core_train_bwd)


# ---- inference-only kernels ---------------------------------------------------------------------


def _no_backward(message: str):
    """Wraps a forward-only function so that differentiating it raises ``message``."""

    def decorate(fn):
        wrapped = jax.custom_vjp(fn, nondiff_argnums=(0,))

        def fwd(*args):
            raise ValueError(message)

        def bwd(*args):
            raise ValueError(message)

        wrapped.defvjp(fwd, bwd)
        return wrapped

    return decorate


@_no_backward(
    "mlstm_kernels: the core's sequence kernel is forward only (inference); for gradients use "
    "'native_sequence__native' or a chunkwise training kernel"
)
def core_sequence(cfg: Config, q, k, v, i, f, states):
    """The recurrence over the whole sequence in one core kernel: ``(h, last_states | None)``."""
    h, last, _ = forward(cfg, q, k, v, i, f, states)
    return h, last


@_no_backward(
    "mlstm_kernels: the core's step kernel is forward only (inference); for gradients use the 'native' step kernel"
)
def core_step(cfg: Config, q, k, v, i, f, states):
    """One recurrent step in the core: ``(h, (c_new, n_new, m_new))``; the states are updated in place."""
    h, last, _ = forward(cfg, q, k, v, i, f, states)
    return h, last


@_no_backward(
    "mlstm_kernels: the loop of core steps is forward only (inference); for gradients use "
    "'native_sequence__native' or a chunkwise training kernel"
)
def core_step_loop(cfg: Config, q, k, v, i, f, states):
    """``lax.scan`` over the sequence calling the core step kernel: ``(h, last_states)``.

    q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S); states given (c, n, m).
    """

    def step(carry, x):
        q_t, k_t, v_t, i_t, f_t = x
        h_t, carry = forward(cfg, q_t, k_t, v_t, i_t[..., None], f_t[..., None], carry)[:2]
        return carry, h_t

    time_major = [jnp.moveaxis(x, 2, 0) for x in (q, k, v, i, f)]  # (S, B, NH, ...)
    last, h = jax.lax.scan(step, states, time_major)
    return jnp.moveaxis(h, 0, 2), last  # h (B, NH, S, DHHV)
