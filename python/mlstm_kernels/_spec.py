"""Framework-neutral facts shared by the torch and JAX layers: kernel names, upstream aliases,
defaults, limits and shape validation. Written once here so the two layers cannot drift.

Shapes (head-before-time, row-major):
    q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S)
    c (B, NH, DHQK, DHHV); n (B, NH, DHQK); m (B, NH, 1)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

DEFAULT_EPS = 1e-6
DEFAULT_CHUNK_SIZE = 64

# Chunk-size limits of the core's chunkwise algorithms (powers of two).
CHUNK_SIZE_LIMITS = {"limit_chunk": (16, 128), "xl_chunk": (16, 4096)}

# Canonical kernel names per registry (SPEC §3). Each framework maps them to callables.
TRAINING_KERNELS = (
    "chunkwise--native_autograd",
    "chunkwise--native_custbw",
    "chunkwise--limit_chunk",
    "chunkwise--xl_chunk",
    "parallel--native_autograd",
    "parallel--native_custbw",
    "parallel--native_stablef_autograd",
    "parallel--native_stablef_custbw",
    "parallel--tiled",
)
SEQUENCE_KERNELS = ("native_sequence__native", "native_sequence__fused", "fused_sequence")
STEP_KERNELS = ("native", "fused")

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
    known = list(available) + [a for a, t in ALIASES.get(registry, {}).items() if t in available]
    raise ValueError(f"Unknown {registry} kernel '{name}'. Available: {', '.join(known)}")


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


@dataclass(frozen=True)
class Dims:
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
    q, k, v, i, f = (shapes[n] for n in ("q", "k", "v", "i", "f"))
    if step:
        if len(q) != 3:
            raise ValueError(f"q must have shape (B, NH, DHQK), got {tuple(q)}")
        B, NH, DHQK = q
        S = 1
        if len(v) != 3:
            raise ValueError(f"v must have shape (B, NH, DHHV), got {tuple(v)}")
        DHHV = v[2]
        expected = {"q": (B, NH, DHQK), "k": (B, NH, DHQK), "v": (B, NH, DHHV)}
        gate_ok = ((B, NH, 1), (B, NH))
    else:
        if len(q) != 4:
            raise ValueError(f"q must have shape (B, NH, S, DHQK), got {tuple(q)}")
        B, NH, S, DHQK = q
        if len(v) != 4:
            raise ValueError(f"v must have shape (B, NH, S, DHHV), got {tuple(v)}")
        DHHV = v[3]
        expected = {"q": (B, NH, S, DHQK), "k": (B, NH, S, DHQK), "v": (B, NH, S, DHHV)}
        gate_ok = ((B, NH, S),)
    for name, exp in expected.items():
        if tuple(shapes[name]) != exp:
            raise ValueError(f"{name} must have shape {exp} (from q and v), got {tuple(shapes[name])}")
    for name, shp in (("i", i), ("f", f)):
        if tuple(shp) not in gate_ok:
            raise ValueError(f"{name} must have shape {gate_ok[0]}, got {tuple(shp)}")
    for dim_name, value in (("B", B), ("NH", NH), ("S", S), ("DHQK", DHQK), ("DHHV", DHHV)):
        if value < 1:
            raise ValueError(f"{dim_name} must be >= 1, got {value} (shapes: q {tuple(q)}, v {tuple(v)})")
    c_name, n_name, m_name = state_names
    state_expected = {
        c_name: (B, NH, DHQK, DHHV),
        n_name: (B, NH, DHQK),
        m_name: (B, NH, 1),
    }
    present = [n for n in state_expected if shapes.get(n) is not None]
    if present and len(present) != 3:
        raise ValueError(f"{c_name}, {n_name} and {m_name} must be given together (got only {', '.join(present)})")
    for name in present:
        shp = tuple(shapes[name])
        exp = state_expected[name]
        if shp != exp and not (name == m_name and shp == (B, NH)):
            raise ValueError(f"{name} must have shape {exp}, got {shp}")
    return Dims(B, NH, S, DHQK, DHHV)
