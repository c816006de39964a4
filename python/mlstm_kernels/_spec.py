"""Framework-neutral facts shared by the torch and JAX layers: the kernel table (names, upstream
names, docs, defaults), upstream aliases, limits, shape validation, the registry functions and the
backend module's configuration. Written once here so the two layers cannot drift; the public
kernel signatures built from the table are in ``_wrappers``.

Shapes (head-before-time, row-major):
    q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S)
    c (B, NH, DHQK, DHHV); n (B, NH, DHQK); m (B, NH, 1)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Mapping, NamedTuple, Sequence, get_args

DEFAULT_EPS = 1e-6
DEFAULT_CHUNK_SIZE = 64

# Chunk-size limits of the core's chunkwise algorithms (powers of two).
CHUNK_SIZE_LIMITS = {"limit_chunk": (16, 128), "xl_chunk": (16, 4096)}

@dataclass(frozen=True)
class Kernel:
    """One public kernel, the same in both frameworks.

    `doc` may name the framework through {native} (its array library), {autodiff} (its automatic
    differentiation) and {loop} (how it loops over time in Python). `native` is where a plain
    framework implementation lives, relative to the framework package (module, function); core
    kernels have none. `chunk_algorithm` names the core algorithm whose chunk-size limits apply.
    """

    registry: str  # "training", "sequence" or "step"
    name: str  # canonical registry name
    python_name: str  # the function's name at its upstream import path
    doc: str
    native: tuple[str, str] | None = None
    chunk_algorithm: str | None = None
    default_chunk_size: int = DEFAULT_CHUNK_SIZE

    @property
    def stateless(self) -> bool:
        return self.name.startswith("parallel--")


def _k(registry, name, python_name, doc, native_module=None, **kw):
    native = (native_module, python_name) if native_module else None
    return Kernel(registry, name, python_name, doc, native, **kw)


# Every kernel of SPEC §3, in registry order.
KERNELS: dict[str, Kernel] = {k.name: k for k in (
    _k("training", "chunkwise--native_autograd", "mlstm_chunkwise__native_autograd",
       "Chunkwise mLSTM in {native}, gradients by {autodiff} (readable reference).", "chunkwise.native"),
    _k("training", "chunkwise--native_custbw", "mlstm_chunkwise__native_custbw",
       "Chunkwise mLSTM in {native} with the hand-written exact backward.", "chunkwise.native"),
    _k("training", "chunkwise--limit_chunk", "mlstm_chunkwise__limit_chunk",
       """Chunkwise mLSTM in the core, one level of tiling: a whole L x L chunk per block (L = chunk_size
    in 16..128, a power of two). Any S >= 1. Exact gradients, including initial and last states.""",
       chunk_algorithm="limit_chunk"),
    _k("training", "chunkwise--xl_chunk", "mlstm_chunkwise__xl_chunk",
       """Chunkwise mLSTM in the core, two-level (TFLA) tiling: large chunks for the state recurrence,
    tiles inside a chunk (chunk_size in 16..4096, a power of two; default 128 as upstream). Any S >= 1.
    Exact gradients, including initial and last states.""",
       chunk_algorithm="xl_chunk", default_chunk_size=128),
    _k("training", "parallel--native_autograd", "mlstm_parallel__native_autograd",
       "Parallel mLSTM in {native} (subtractive gate matrix), gradients by {autodiff}; no state.",
       "parallel.native"),
    _k("training", "parallel--native_custbw", "mlstm_parallel__native_custbw",
       "Parallel mLSTM in {native} (subtractive gate matrix) with the hand-written backward; no state.",
       "parallel.native"),
    _k("training", "parallel--native_stablef_autograd", "mlstm_parallel__native_stablef_autograd",
       "Parallel mLSTM in {native}, stablef gate matrix, gradients by {autodiff}; no state.",
       "parallel.native_stablef"),
    _k("training", "parallel--native_stablef_custbw", "mlstm_parallel__native_stablef_custbw",
       "Parallel mLSTM in {native}, stablef gate matrix, hand-written backward; no state.",
       "parallel.native_stablef"),
    _k("training", "parallel--tiled", "mlstm_parallel__tiled",
       "Parallel (stablef) mLSTM in the core, tiled over the S x S gate matrix; no state."),
    _k("sequence", "native_sequence__native", "mlstm_recurrent_sequence__native_fw",
       "{loop} over the sequence calling the {native} step (differentiable by {autodiff}).",
       "recurrent.native"),
    _k("sequence", "native_sequence__fused", "mlstm_recurrent_sequence__native_fused_fw",
       "{loop} over the sequence calling the core step kernel. Forward only."),
    _k("sequence", "fused_sequence", "mlstm_recurrent_sequence__fused_fw",
       "The recurrence over the whole sequence in one core kernel (states kept on chip). Forward only."),
    _k("step", "native", "mlstm_recurrent_step__native",
       "One recurrent step in {native} (differentiable by {autodiff}).", "recurrent.native"),
    _k("step", "fused", "mlstm_recurrent_step__fused",
       "One recurrent step in the core (a single kernel; new states in dtype_state). Forward only."),
)}

# Canonical kernel names per registry (SPEC §3). Each framework maps them to callables.
TRAINING_KERNELS = tuple(n for n, k in KERNELS.items() if k.registry == "training")
SEQUENCE_KERNELS = tuple(n for n, k in KERNELS.items() if k.registry == "sequence")
STEP_KERNELS = tuple(n for n, k in KERNELS.items() if k.registry == "step")

# Upstream (Triton library) names accepted everywhere a name is, with a one-time warning.
ALIASES = {
    "training": {
        "chunkwise--triton_limit_chunk": "chunkwise--limit_chunk",
        "chunkwise--triton_xl_chunk": "chunkwise--xl_chunk",
        "parallel--triton_limit_headdim": "parallel--tiled",
    },
    "sequence": {"native_sequence__triton": "native_sequence__fused"},
    "step": {"triton": "fused"},
}

_warned_aliases: set[tuple[str, str]] = set()


def _unknown_kernel(registry: str, name: str, available: Sequence[str]) -> ValueError:
    known = list(available) + [a for a, t in ALIASES.get(registry, {}).items() if t in available]
    return ValueError(f"Unknown {registry} kernel '{name}'. Available: {', '.join(known)}")


def check_kernel_name(registry: str, name: str) -> None:
    """Raise the ValueError of an unknown name now; resolving (and any alias warning) comes later."""
    available = tuple(n for n, k in KERNELS.items() if k.registry == registry)
    if name not in available and ALIASES.get(registry, {}).get(name) not in available:
        raise _unknown_kernel(registry, name, available)


def resolve_kernel_name(registry: str, name: str, available: Sequence[str]) -> str:
    """Canonical name for `name` in `registry` ("training", "sequence", "step").

    Upstream aliases resolve with a one-time warning; unknown names raise ValueError listing
    what exists.
    """
    if name in available:
        return name
    alias_target = ALIASES.get(registry, {}).get(name)
    if alias_target is not None and alias_target in available:
        if (registry, name) not in _warned_aliases:
            _warned_aliases.add((registry, name))
            warnings.warn(
                f"mlstm_kernels: {registry} kernel name '{name}' is the upstream Triton name; "
                f"using our equivalent '{alias_target}'",
                UserWarning,
                stacklevel=3,
            )
        return alias_target
    raise _unknown_kernel(registry, name, available)


def check_chunk_size(algorithm: str, chunk_size: int) -> None:
    lo, hi = CHUNK_SIZE_LIMITS[algorithm]
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
        raise ValueError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < lo or chunk_size > hi or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size: {algorithm} needs a power of two in [{lo}, {hi}], got {chunk_size}")


def registry_functions(training: Mapping, sequence: Mapping, step: Mapping) -> dict:
    """The six registry functions of a framework layer, over its name -> callable tables.

    Both layers expose the same names with the same alias handling; the tables must list exactly
    the canonical names above.
    """
    for kind, table, names in (("training", training, TRAINING_KERNELS), ("sequence", sequence, SEQUENCE_KERNELS),
                               ("step", step, STEP_KERNELS)):
        if tuple(table) != names:
            raise AssertionError(f"{kind} kernel table {tuple(table)} != canonical names {names}")

    def get_available_mlstm_kernels() -> list[str]:
        """Canonical names of the training kernels (chunkwise and parallel forms)."""
        return list(training)

    def get_mlstm_kernel(name: str):
        """The training kernel `name` (an upstream name resolves to our equivalent with a warning)."""
        return training[resolve_kernel_name("training", name, tuple(training))]

    def get_available_mlstm_sequence_kernels() -> list[str]:
        """Canonical names of the sequence kernels (recurrent forward over a whole sequence)."""
        return list(sequence)

    def get_mlstm_sequence_kernel(name: str):
        """The sequence kernel `name` (an upstream name resolves to our equivalent with a warning)."""
        return sequence[resolve_kernel_name("sequence", name, tuple(sequence))]

    def get_available_mlstm_step_kernels() -> list[str]:
        """Canonical names of the step kernels (one recurrent time step)."""
        return list(step)

    def get_mlstm_step_kernel(name: str):
        """The step kernel `name` (an upstream name resolves to our equivalent with a warning)."""
        return step[resolve_kernel_name("step", name, tuple(step))]

    return {f.__name__: f for f in (get_available_mlstm_kernels, get_mlstm_kernel, get_available_mlstm_sequence_kernels,
                                    get_mlstm_sequence_kernel, get_available_mlstm_step_kernels, get_mlstm_step_kernel)}


class Dims(NamedTuple):
    # A NamedTuple, not a frozen dataclass: every public call builds one (0.6 µs against 0.2 µs).
    B: int
    NH: int
    S: int
    DHQK: int
    DHHV: int


def check_shapes(
    shapes: Mapping[str, Sequence[int] | None],
    *,
    step: bool = False,
    state_names: Sequence[str] = ("c_initial", "n_initial", "m_initial"),
) -> Dims:
    """Validate the shapes of q, k, v, i, f and optional c/n/m (initial) states; return the dims.

    `shapes` maps argument names to shapes (None for absent optional tensors). For `step=True`
    q, k are (B, NH, DHQK), v is (B, NH, DHHV), i, f are (B, NH, 1) or (B, NH).
    `state_names` are the keys of the c, n, m states in `shapes` (a step kernel calls them c, n, m).
    Raises ValueError naming the argument and the expected shape.
    """
    # Every public call runs this (the step once per token): tuples and plain loops, no dicts, and a
    # shape that is already a tuple (torch.Size is one) is compared as it is.
    q, k, v, i, f = shapes["q"], shapes["k"], shapes["v"], shapes["i"], shapes["f"]
    if step:
        if len(q) != 3:
            raise ValueError(f"q must have shape (B, NH, DHQK), got {tuple(q)}")
        B, NH, DHQK = q
        S = 1
        if len(v) != 3:
            raise ValueError(f"v must have shape (B, NH, DHHV), got {tuple(v)}")
        DHHV = v[2]
        qk, vh = (B, NH, DHQK), (B, NH, DHHV)
        gate_ok = ((B, NH, 1), (B, NH))
    else:
        if len(q) != 4:
            raise ValueError(f"q must have shape (B, NH, S, DHQK), got {tuple(q)}")
        B, NH, S, DHQK = q
        if len(v) != 4:
            raise ValueError(f"v must have shape (B, NH, S, DHHV), got {tuple(v)}")
        DHHV = v[3]
        qk, vh = (B, NH, S, DHQK), (B, NH, S, DHHV)
        gate_ok = ((B, NH, S),)
    for name, shp, exp in (("q", q, qk), ("k", k, qk), ("v", v, vh)):
        if shp != exp and tuple(shp) != exp:
            raise ValueError(f"{name} must have shape {exp} (from q and v), got {tuple(shp)}")
    for name, shp in (("i", i), ("f", f)):
        if shp not in gate_ok and tuple(shp) not in gate_ok:
            raise ValueError(f"{name} must have shape {gate_ok[0]}, got {tuple(shp)}")
    if min(B, NH, S, DHQK, DHHV) < 1:
        for dim_name, value in (("B", B), ("NH", NH), ("S", S), ("DHQK", DHQK), ("DHHV", DHHV)):
            if value < 1:
                raise ValueError(f"{dim_name} must be >= 1, got {value} (shapes: q {tuple(q)}, v {tuple(v)})")
    c_name, n_name, m_name = state_names
    c, n, m = shapes.get(c_name), shapes.get(n_name), shapes.get(m_name)
    if c is None and n is None and m is None:
        return Dims(B, NH, S, DHQK, DHHV)
    if c is None or n is None or m is None:
        present = [name for name, x in ((c_name, c), (n_name, n), (m_name, m)) if x is not None]
        raise ValueError(f"{c_name}, {n_name} and {m_name} must be given together (got only {', '.join(present)})")
    for name, shp, exp in ((c_name, c, (B, NH, DHQK, DHHV)), (n_name, n, (B, NH, DHQK)), (m_name, m, (B, NH, 1))):
        if shp != exp and tuple(shp) != exp and not (name == m_name and tuple(shp) == (B, NH)):
            raise ValueError(f"{name} must have shape {exp}, got {tuple(shp)}")
    return Dims(B, NH, S, DHQK, DHHV)


# The dtypes the recurrent states of the sequence and step kernels may have (``dtype_state``): every
# floating dtype the kernels compute in; the core takes float64 on CPU only.
STATE_DTYPES = ("float32", "float16", "bfloat16", "float64")


def state_dtype_error(kernel: str, dtype_state) -> ValueError:
    return ValueError(
        f"{kernel}: dtype_state must be a floating dtype, one of {', '.join(STATE_DTYPES[:3])} "
        f"({STATE_DTYPES[3]} on CPU), got {dtype_state!r}"
    )


# ---------------------------------------------------------------------------------------------
# The backend module's configuration (upstream's fields, defaults and validation), shared by
# mlstm_kernels.torch.backend_module and mlstm_kernels.jax.backend_module.

ChunkwiseKernelType = Literal[
    "chunkwise--native_autograd",
    "chunkwise--native_custbw",
    "chunkwise--limit_chunk",
    "chunkwise--xl_chunk",
    "parallel--native_autograd",
    "parallel--native_custbw",
    "parallel--native_stablef_autograd",
    "parallel--native_stablef_custbw",
    "parallel--tiled",
    # upstream names
    "chunkwise--triton_limit_chunk",
    "chunkwise--triton_xl_chunk",
    "parallel--triton_limit_headdim",
]
SequenceKernelType = Literal[
    "native_sequence__native",
    "native_sequence__fused",
    "fused_sequence",
    # upstream name
    "native_sequence__triton",
]
StepKernelType = Literal["native", "fused", "triton"]
DtypeType = Literal["float32", "bfloat16", "float16"]
BackendModeType = Literal["train", "train_with_padding", "inference"]

BACKEND_MODES = get_args(BackendModeType)
BACKEND_DTYPES = get_args(DtypeType)

# The typing names are spelled out for type checkers; they must list exactly the registries' names.
for _registry, _type in (("training", ChunkwiseKernelType), ("sequence", SequenceKernelType), ("step", StepKernelType)):
    assert set(get_args(_type)) == {n for n, k in KERNELS.items() if k.registry == _registry} | set(ALIASES[_registry])


def check_backend_mode(mode: str) -> None:
    if mode not in BACKEND_MODES:
        raise ValueError(f"Unknown mode {mode!r}: mode must be one of {', '.join(BACKEND_MODES)}")


@dataclass
class mLSTMBackendConfig:
    """Configuration of ``mLSTMBackend`` (torch and JAX alike), validated on construction."""

    chunkwise_kernel: ChunkwiseKernelType = "chunkwise--native_autograd"
    """The training kernel "<form>--<kernel>"; used in train modes and for the chunks in inference."""
    sequence_kernel: SequenceKernelType = "native_sequence__native"
    """The sequence kernel used in inference for the tail that does not fill a chunk."""
    step_kernel: StepKernelType = "native"
    """The step kernel used in inference when S == 1."""
    mode: BackendModeType = "train"
    """"train", "train_with_padding" or "inference"."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Chunk size of the chunkwise kernel (also the padding multiple and the inference split)."""
    return_last_states: bool = False
    """Whether the train modes return (h, (c, n, m)); inference always does."""
    autocast_kernel_dtype: DtypeType = "bfloat16"
    """The dtype q, k, v are cast to inside an enabled torch autocast region (JAX has none: there
    the kernels run in the inputs' dtype)."""
    eps: float = DEFAULT_EPS
    """Added to the denominator max(|n·q̂|, exp(-m))."""
    inference_state_dtype: DtypeType = "float32"
    """The dtype of the recurrent states of the sequence and step kernels in inference."""

    def __post_init__(self):
        if self.return_last_states and "parallel" in self.chunkwise_kernel:
            raise ValueError("return_last_states=True is not supported with parallel kernels.")
        if self.return_last_states and self.mode == "train_with_padding":
            raise ValueError("return_last_states=True is not supported with train_with_padding mode.")
        check_backend_mode(self.mode)
        for field in ("autocast_kernel_dtype", "inference_state_dtype"):
            if getattr(self, field) not in BACKEND_DTYPES:
                raise ValueError(f"{field} must be one of {', '.join(BACKEND_DTYPES)}; got {getattr(self, field)!r}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {self.chunk_size!r}")
        # Unknown kernel names fail here, naming what exists; upstream names resolve (with their
        # one-time warning) when the backend looks the kernels up.
        check_kernel_name("training", self.chunkwise_kernel)
        check_kernel_name("sequence", self.sequence_kernel)
        check_kernel_name("step", self.step_kernel)


def check_backend_inputs(mode: str, arrays: Mapping[str, object]) -> Dims:
    """Validate the shapes the caller gave the backend module, before it slices or pads anything.

    `arrays` maps q, k, v, i, f, c_initial, n_initial, m_initial to arrays (None for absent states).
    Raises TypeError for a non-array and ValueError naming the mode, the argument and the expected
    shape. The kernels check dtypes and devices themselves; shapes must be checked here because the
    modes read S from q and cut the sequence into parts first.
    """
    shapes = {}
    for name, x in arrays.items():
        if x is not None and not hasattr(x, "shape"):
            raise TypeError(f"{mode}: {name} must be an array, got {type(x).__name__}")
        shapes[name] = None if x is None else tuple(x.shape)
    q = shapes["q"]
    if mode == "inference" and len(q) == 4 and q[2] == 0:
        raise ValueError(f"inference: the sequence is empty (S={q[2]}); need S >= 1")
    try:
        return check_shapes(shapes)
    except ValueError as e:
        raise ValueError(f"{mode}: {e}") from None


def training_kernel_has_states(name: str) -> bool:
    """Whether the training kernel `name` (ours or upstream's) takes and returns states (chunkwise)."""
    return not KERNELS[resolve_kernel_name("training", name, TRAINING_KERNELS)].stateless


def inference_segments(S: int, chunk_size: int, training_has_states: bool) -> list[tuple[str, int, int]]:
    """How the backend's inference mode covers a sequence of length S: a list of (registry, start,
    stop) with registry "step", "training" or "sequence", in order, states passed from one to the next.

    S == 1 goes to the step kernel. Otherwise, as upstream, the training kernel takes the largest
    multiple of chunk_size and the sequence kernel the tail. A parallel training kernel has no
    states to pass on (training_has_states=False): the sequence kernel then takes the whole sequence.
    """
    if S == 1:
        return [("step", 0, 1)]
    S_chunks = (S // chunk_size) * chunk_size if training_has_states else 0
    segments = [("training", 0, S_chunks)] if S_chunks else []
    return segments + ([("sequence", S_chunks, S)] if S_chunks < S else [])
