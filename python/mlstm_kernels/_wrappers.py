"""The public kernel functions, written once for the torch and JAX layers.

Every kernel of ``_spec.KERNELS`` gets the upstream signature of its registry:

Training kernels (chunkwise and parallel forms)::

    fn(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False,
       eps=1e-6, autocast_kernel_dtype=<bfloat16>, chunk_size=64, **kwargs)
    -> h (B, NH, S, DHHV)  |  (h, (c_last (B, NH, DHQK, DHHV), n_last (B, NH, DHQK), m_last (B, NH, 1)))

    (chunk_size defaults to 128 for chunkwise--xl_chunk, as upstream)

Sequence kernels: the same plus ``dtype_state=<float32>`` (the dtype of the recurrent states),
without ``chunk_size``. Step kernels::

    fn(q, k, v, i, f, c, n, m, eps=1e-6, dtype_state=<float32>, autocast_kernel_dtype=<bfloat16>, **kwargs)
    -> (h, (c_new, n_new, m_new))
    q, k (B, NH, DHQK); v (B, NH, DHHV); i, f (B, NH, 1) or (B, NH); h (B, NH, DHHV)

What every function does before its kernel runs, identically for native and core kernels and for
both frameworks:

* validation: arrays of the framework, floating dtypes (the framework also checks devices), shapes by
  ``_spec.check_shapes``, ``dtype_state`` (one of ``_spec.STATE_DTYPES``); a ValueError names the
  kernel and the argument. A parallel kernel refuses states; a step kernel needs them;
* dtypes: q, k, v in the kernel dtype (the framework decides it: torch autocast, see its layer);
  gates i, f in float32 (float64 when q, k, v are float64); states of the training forms in float32
  (float64 likewise), of the recurrent forms in ``dtype_state``; an m of shape (B, NH) is read as
  (B, NH, 1), as are step gates of shape (B, NH); a sequence kernel without initial states starts
  from zeros;
* ``eps`` and ``return_last_states`` become a Python float and bool (static under ``jax.jit``);
  ``chunk_size`` is checked against the core algorithm's limits for core chunkwise kernels.

The framework layer supplies a `Framework` adapter (array checks, kernel dtype, casts, zeros, the
context the kernel runs in) and, for core kernels, a run function. Native kernels are looked up by
name in the framework package (``<package>.<module>``, ``_spec.Kernel.native``) on first use and
receive the extra keyword arguments unchanged; core kernels accept and ignore them (upstream's
Triton tuning knobs).
"""

from __future__ import annotations

import importlib
from contextlib import nullcontext
from typing import Any, Callable

from . import _spec

# The framework's array and dtype types (torch.Tensor / jax.Array, torch.dtype / a jnp dtype).
Array = Any
DType = Any


class Prepared:
    """Validated inputs in the kernel's dtypes, and the context to run the kernel in."""

    __slots__ = ("q", "k", "v", "i", "f", "c", "n", "m", "context")

    def __init__(self, q, k, v, i, f, c, n, m, context):
        self.q, self.k, self.v, self.i, self.f, self.c, self.n, self.m = q, k, v, i, f, c, n, m
        self.context = context

    @property
    def states(self):
        return None if self.c is None else (self.c, self.n, self.m)


class Framework:
    """What the shared wrappers need to know of a framework; the torch and JAX layers subclass it."""

    package: str  # where the native implementations live, e.g. "mlstm_kernels.torch"
    words: dict[str, str]  # {native}, {autodiff}, {loop} in the kernels' docstrings
    float32: Any
    float64: Any
    float16: Any
    bfloat16: Any

    def check_arrays(self, kernel: str, arrays: dict) -> None:
        """Type, dtype and device checks of the given (not None) arguments."""
        raise NotImplementedError

    def kernel_dtype(self, kernel: str, q, k, v, autocast_kernel_dtype) -> tuple[Any, bool]:
        """(dtype q, k, v run in, whether an autocast region is active)."""
        raise NotImplementedError

    def cast(self, x, dtype):
        raise NotImplementedError

    def zeros(self, like, shape: tuple[int, ...], dtype):
        raise NotImplementedError

    def floating_dtype(self, dtype):
        """`dtype` as the framework's dtype if it names one of ``_spec.STATE_DTYPES``, else None."""
        raise NotImplementedError

    def run_context(self, autocast: bool, q):
        """The context the kernel runs in (torch: autocast disabled inside an autocast region)."""
        return nullcontext()


def _cast(fw: Framework, x, dtype):
    # Skipping the no-op cast saves a dispatcher round trip per tensor (it matters for the step).
    return x if x is None or x.dtype == dtype else fw.cast(x, dtype)


def _three_dims(x, B: int, NH: int):
    # m (B, NH) -> (B, NH, 1), as are step gates (B, NH).
    return x if x is None or x.ndim == 3 else x.reshape(B, NH, 1)


def check_state_dtype(fw: Framework, kernel: str, dtype_state):
    """The recurrent kernels' ``dtype_state`` as the framework's dtype; ValueError if it is not floating."""
    dtype = fw.floating_dtype(dtype_state)
    if dtype is None:
        raise _spec.state_dtype_error(kernel, dtype_state)
    return dtype


def prepare(fw: Framework, kernel: str, q, k, v, i, f, c, n, m, autocast_kernel_dtype,
            state_dtype=None, step: bool = False) -> Prepared:
    """Validate and cast. state_dtype None: float32 (float64 when q, k, v run in float64)."""
    state_names = ("c", "n", "m") if step else ("c_initial", "n_initial", "m_initial")
    arrays = {"q": q, "k": k, "v": v, "i": i, "f": f, state_names[0]: c, state_names[1]: n, state_names[2]: m}
    fw.check_arrays(kernel, arrays)
    if step and (c is None or n is None or m is None):
        raise ValueError(f"{kernel}: the step kernel needs the states c, n and m")
    try:
        _spec.check_shapes({name: None if x is None else x.shape for name, x in arrays.items()},
                           step=step, state_names=state_names)
    except ValueError as e:
        raise ValueError(f"{kernel}: {e}") from None
    qkv_dtype, autocast = fw.kernel_dtype(kernel, q, k, v, autocast_kernel_dtype)
    gate_dtype = fw.float64 if qkv_dtype == fw.float64 else fw.float32
    if state_dtype is None:
        state_dtype = gate_dtype
    B, NH = q.shape[:2]
    if step:
        i, f = _three_dims(i, B, NH), _three_dims(f, B, NH)

    def gate(x):
        # Every step kernel widens 16-bit gates to float32 exactly as this cast would, so a step keeps
        # them: on CUDA the two casts would be two more kernel launches per token.
        if step and gate_dtype == fw.float32 and x.dtype in (fw.float16, fw.bfloat16):
            return x
        return _cast(fw, x, gate_dtype)

    return Prepared(
        _cast(fw, q, qkv_dtype), _cast(fw, k, qkv_dtype), _cast(fw, v, qkv_dtype),
        gate(i), gate(f),
        _cast(fw, c, state_dtype), _cast(fw, n, state_dtype), _cast(fw, _three_dims(m, B, NH), state_dtype),
        fw.run_context(autocast, q),
    )


# run(prepared, return_last_states, eps, chunk_size, kwargs) -> h | (h, (c, n, m))
TrainingRun = Callable[[Prepared, bool, float, int, dict], object]
# run(prepared, return_last_states, eps, kwargs) -> h | (h, (c, n, m)); states already in dtype_state.
SequenceRun = Callable[[Prepared, bool, float, dict], object]
# run(prepared, eps, kwargs) -> (h, (c_new, n_new, m_new))
StepRun = Callable[[Prepared, float, dict], object]


def _native_training_run(impl: Callable[[], Callable]) -> TrainingRun:
    def run(x: Prepared, return_last_states, eps, chunk_size, kwargs):
        return impl()(
            q=x.q, k=x.k, v=x.v, i=x.i, f=x.f, c_initial=x.c, n_initial=x.n, m_initial=x.m,
            return_last_states=return_last_states, eps=eps, chunk_size=chunk_size, **kwargs,
        )

    return run


def _native_sequence_run(impl: Callable[[], Callable]) -> SequenceRun:
    def run(x: Prepared, return_last_states, eps, kwargs):
        return impl()(
            q=x.q, k=x.k, v=x.v, i=x.i, f=x.f, c_initial=x.c, n_initial=x.n, m_initial=x.m,
            return_last_states=return_last_states, eps=eps, dtype_state=x.c.dtype, **kwargs,
        )

    return run


def _native_step_run(impl: Callable[[], Callable]) -> StepRun:
    def run(x: Prepared, eps, kwargs):
        return impl()(q=x.q, k=x.k, v=x.v, i=x.i, f=x.f, c=x.c, n=x.n, m=x.m, eps=eps, dtype_state=x.c.dtype, **kwargs)

    return run


_NATIVE_RUNS = {"training": _native_training_run, "sequence": _native_sequence_run, "step": _native_step_run}


def build_kernels(fw: Framework, core_runs: dict[str, Callable], module: str) -> tuple[dict, dict]:
    """Every kernel of ``_spec.KERNELS`` for framework `fw`: (the six registry functions, the kernel
    functions by their Python names). `core_runs` maps each core kernel's name to its run function;
    the native kernels are found in the framework package. `module` is where the functions are
    published (their ``__module__``, so that they pickle by reference)."""
    if set(core_runs) != {n for n, k in _spec.KERNELS.items() if k.native is None}:
        raise AssertionError(f"{fw.package}: core runs given for {sorted(core_runs)}")
    by_name: dict[str, Callable] = {}
    for name, spec in _spec.KERNELS.items():
        run = core_runs[name] if spec.native is None else _NATIVE_RUNS[spec.registry](_native_impl(fw, spec))
        fn = _WRAPPERS[spec.registry](fw, spec, run)
        fn.__name__ = fn.__qualname__ = spec.python_name
        fn.__module__ = module
        fn.__doc__ = spec.doc.format(**fw.words)
        by_name[name] = fn
    tables = [{n: by_name[n] for n in names} for names in (_spec.TRAINING_KERNELS, _spec.SEQUENCE_KERNELS, _spec.STEP_KERNELS)]
    return _spec.registry_functions(*tables), {fn.__name__: fn for fn in by_name.values()}


def _native_impl(fw: Framework, spec: _spec.Kernel) -> Callable[[], Callable]:
    """The native implementation, imported on first use (importing the package stays cheap)."""
    module, function = spec.native
    cache: list[Callable] = []

    def impl() -> Callable:
        if not cache:
            cache.append(getattr(importlib.import_module(f"{fw.package}.{module}"), function))
        return cache[0]

    return impl


def _training_kernel(fw: Framework, spec: _spec.Kernel, run: TrainingRun):
    kernel = spec.name

    def fn(
        q: Array,  # (B, NH, S, DHQK)
        k: Array,  # (B, NH, S, DHQK)
        v: Array,  # (B, NH, S, DHHV)
        i: Array,  # (B, NH, S)
        f: Array,  # (B, NH, S)
        c_initial: Array | None = None,  # (B, NH, DHQK, DHHV)
        n_initial: Array | None = None,  # (B, NH, DHQK)
        m_initial: Array | None = None,  # (B, NH, 1)
        return_last_states: bool = False,
        eps: float = _spec.DEFAULT_EPS,
        autocast_kernel_dtype: DType = fw.bfloat16,
        chunk_size: int = spec.default_chunk_size,
        **kwargs,
    ):
        if spec.stateless and (c_initial is not None or n_initial is not None or m_initial is not None
                               or return_last_states):
            raise ValueError(
                f"{kernel}: the parallel form has no state; pass no initial states and return_last_states=False "
                "(use a chunkwise kernel for state passing)"
            )
        x = prepare(fw, kernel, q, k, v, i, f, c_initial, n_initial, m_initial, autocast_kernel_dtype)
        with x.context:
            if spec.chunk_algorithm is not None:
                _spec.check_chunk_size(spec.chunk_algorithm, chunk_size)
            return run(x, bool(return_last_states), float(eps), chunk_size, kwargs)

    return fn


def _sequence_kernel(fw: Framework, spec: _spec.Kernel, run: SequenceRun):
    kernel = spec.name

    def fn(
        q: Array,  # (B, NH, S, DHQK)
        k: Array,  # (B, NH, S, DHQK)
        v: Array,  # (B, NH, S, DHHV)
        i: Array,  # (B, NH, S)
        f: Array,  # (B, NH, S)
        c_initial: Array | None = None,  # (B, NH, DHQK, DHHV)
        n_initial: Array | None = None,  # (B, NH, DHQK)
        m_initial: Array | None = None,  # (B, NH, 1)
        return_last_states: bool = False,
        eps: float = _spec.DEFAULT_EPS,
        dtype_state: DType = fw.float32,
        autocast_kernel_dtype: DType = fw.bfloat16,
        **kwargs,
    ):
        dtype_state = check_state_dtype(fw, kernel, dtype_state)
        x = prepare(fw, kernel, q, k, v, i, f, c_initial, n_initial, m_initial, autocast_kernel_dtype,
                    state_dtype=dtype_state)
        if x.c is None:
            B, NH, S, DHQK = x.q.shape
            DHHV = x.v.shape[-1]
            x.c = fw.zeros(x.q, (B, NH, DHQK, DHHV), dtype_state)  # (B, NH, DHQK, DHHV)
            x.n = fw.zeros(x.q, (B, NH, DHQK), dtype_state)  # (B, NH, DHQK)
            x.m = fw.zeros(x.q, (B, NH, 1), dtype_state)  # (B, NH, 1)
        with x.context:
            return run(x, bool(return_last_states), float(eps), kwargs)

    return fn


def _step_kernel(fw: Framework, spec: _spec.Kernel, run: StepRun):
    kernel = spec.name

    def fn(
        q: Array,  # (B, NH, DHQK)
        k: Array,  # (B, NH, DHQK)
        v: Array,  # (B, NH, DHHV)
        i: Array,  # (B, NH, 1)
        f: Array,  # (B, NH, 1)
        c: Array,  # (B, NH, DHQK, DHHV)
        n: Array,  # (B, NH, DHQK)
        m: Array,  # (B, NH, 1)
        eps: float = _spec.DEFAULT_EPS,
        dtype_state: DType = fw.float32,
        autocast_kernel_dtype: DType = fw.bfloat16,
        **kwargs,
    ):
        dtype_state = check_state_dtype(fw, kernel, dtype_state)
        x = prepare(fw, kernel, q, k, v, i, f, c, n, m, autocast_kernel_dtype, state_dtype=dtype_state, step=True)
        with x.context:
            return run(x, float(eps), kwargs)

    return fn


_WRAPPERS = {"training": _training_kernel, "sequence": _sequence_kernel, "step": _step_kernel}
