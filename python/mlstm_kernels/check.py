"""``python -m mlstm_kernels check``: run every kernel this machine has against the float64 reference.

For each kernel of the torch registries, each device (CPU; CUDA when a GPU is visible) and each
dtype the kernel is meant for there, a few shapes are run — odd sizes, partial last chunks, initial
states, f with and without a positive bias — and compared with the recurrent (or, for parallel
kernels, the parallel stablef) reference computed in float64 from the same rounded inputs:
forward output h, last states, and the gradients of a random loss on h and the last states with
respect to every input (q, k, v, i, f and the initial states). One table row per kernel, device and
dtype: the largest relative error ‖x - ref‖ / ‖ref‖ of the output, the states and the gradients,
the time of one call (forward + backward for training kernels) and PASS/FAIL against the error
targets of SPEC §6. A kernel the build does not provide on a device is listed as "not available".
Exit status 1 if any row fails.
"""

from __future__ import annotations

import argparse
import math
import struct
import sys
import time
from dataclasses import dataclass, field

# Error targets (relative, per dtype): (output and states, gradients). fp32 must not use TF32;
# bf16 follows SPEC §6; fp16 has 3 more mantissa bits than bf16, so half the bf16 target is loose;
# fp64 is the reference precision itself, the slack covers summation order.
TOLERANCES = {
    "float64": (1e-10, 1e-10),
    "float32": (1e-4, 1e-4),
    "float16": (5e-3, 1e-2),
    "bfloat16": (1e-2, 2e-2),
}


EPS = 1e-6
# The C ABI carries eps as a float32; the float64 reference uses the same rounded value, so that
# float64 rows compare the same function (the difference would be ~2.5e-9 where eps matters).
REFERENCE_EPS = struct.unpack("f", struct.pack("f", EPS))[0]


@dataclass(frozen=True)
class Shape:
    B: int
    NH: int
    S: int
    DHQK: int
    DHHV: int
    states: bool  # pass initial states (and take a loss on the last states)
    f_bias: float  # added to the forget-gate pre-activations
    chunk_size: dict = field(hash=False, compare=False)  # per chunkwise algorithm

    def __str__(self):
        return f"B={self.B} NH={self.NH} S={self.S} DHQK={self.DHQK} DHHV={self.DHHV}"


# Head dims are multiples of 16 so that the same shapes run on CUDA; S leaves a partial last chunk.
SHAPES = (
    Shape(2, 3, 67, 32, 48, states=True, f_bias=3.0, chunk_size={"limit_chunk": 16, "xl_chunk": 32, "native": 16}),
    Shape(1, 2, 130, 16, 16, states=False, f_bias=0.0, chunk_size={"limit_chunk": 64, "xl_chunk": 128, "native": 64}),
)


@dataclass
class Row:
    kernel: str
    device: str
    dtype: str
    status: str = "PASS"  # PASS, FAIL, n/a
    err_out: float | None = None
    err_states: float | None = None
    err_grads: float | None = None
    time_ms: float | None = None
    note: str = ""


def _rel(x, ref) -> float:
    import torch

    x, ref = x.detach().double(), ref.detach().double()
    if not torch.isfinite(x).all():
        return math.inf
    denom = ref.norm().item()
    diff = (x - ref).norm().item()
    return diff / denom if denom > 0 else diff


def _unavailable(error: Exception) -> bool:
    message = str(error)
    return "no CUDA kernel" in message or "no CUDA backend" in message


def _inputs(shape: Shape, dtype, device, seed: int):
    """Leaf tensors in `dtype` (gates and states float32, float64 for float64 runs)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    B, NH, S, DHQK, DHHV = shape.B, shape.NH, shape.S, shape.DHQK, shape.DHHV
    side = torch.float64 if dtype == torch.float64 else torch.float32

    def rand(*size, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*size, generator=g, dtype=torch.float64) * scale + shift).to(device=device, dtype=dt)

    x = {
        "q": rand(B, NH, S, DHQK),
        "k": rand(B, NH, S, DHQK),
        "v": rand(B, NH, S, DHHV),
        "i": rand(B, NH, S, scale=2.0, dt=side),
        "f": rand(B, NH, S, scale=1.5, shift=shape.f_bias, dt=side),
    }
    if shape.states:
        x["c_initial"] = rand(B, NH, DHQK, DHHV, scale=0.5, dt=side)
        x["n_initial"] = rand(B, NH, DHQK, scale=0.5, dt=side)
        x["m_initial"] = rand(B, NH, 1, scale=0.5, dt=side)
    return x


def _reference(form: str, x: dict, eps: float):
    """fp64 reference from the (rounded) inputs: h, (c, n, m) or None, and the fp64 leaves."""
    import torch

    from .torch.reference import mlstm_parallel_reference, mlstm_recurrent_reference

    x64 = {n: t.detach().double().requires_grad_(True) for n, t in x.items()}
    if form == "parallel":
        return mlstm_parallel_reference(x64["q"], x64["k"], x64["v"], x64["i"], x64["f"], eps=eps), None, x64
    h, states = mlstm_recurrent_reference(
        x64["q"], x64["k"], x64["v"], x64["i"], x64["f"],
        x64.get("c_initial"), x64.get("n_initial"), x64.get("m_initial"), eps=eps,
    )
    return h, states, x64


def _loss_weights(h, states, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    w_h = torch.randn(h.shape, generator=g, dtype=torch.float64)
    w_s = None if states is None else [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in states]
    return w_h, w_s


def _loss(h, states, w_h, w_s):
    loss = (h.double() * w_h.to(h.device)).sum()
    if states is not None and w_s is not None:
        for s, w in zip(states, w_s):
            loss = loss + (s.double() * w.to(s.device)).sum()
    return loss


def _sync(device: str):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class _Case:
    """One kernel on one device in one dtype, run over all shapes."""

    def __init__(self, registry: str, kernel: str, fn, device: str, dtype):
        self.registry, self.kernel, self.fn, self.device, self.dtype = registry, kernel, fn, device, dtype
        self.form = "parallel" if kernel.startswith("parallel--") else "recurrent"
        # Step and sequence kernel names are short ("fused"): the table names the registry too.
        self.label = kernel if registry == "training" else f"{registry} {kernel}"
        self.algorithm = "xl_chunk" if "xl_chunk" in kernel else "limit_chunk" if "limit_chunk" in kernel else "native"

    def call(self, x: dict, shape: Shape):
        """Run the kernel; returns (h, states or None)."""
        import torch

        eps = EPS
        if self.registry == "training":
            kw = dict(eps=eps, chunk_size=shape.chunk_size[self.algorithm])
            if self.form == "parallel":
                return self.fn(x["q"], x["k"], x["v"], x["i"], x["f"], **kw), None
            h, states = self.fn(
                x["q"], x["k"], x["v"], x["i"], x["f"],
                x.get("c_initial"), x.get("n_initial"), x.get("m_initial"), return_last_states=True, **kw,
            )
            return h, states
        state_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        if self.registry == "sequence":
            h, states = self.fn(
                x["q"], x["k"], x["v"], x["i"], x["f"], x.get("c_initial"), x.get("n_initial"), x.get("m_initial"),
                return_last_states=True, eps=eps, dtype_state=state_dtype,
            )
            return h, states
        B, NH, DHQK, DHHV = shape.B, shape.NH, shape.DHQK, shape.DHHV
        c = x.get("c_initial", x["q"].new_zeros((B, NH, DHQK, DHHV), dtype=state_dtype))
        n = x.get("n_initial", x["q"].new_zeros((B, NH, DHQK), dtype=state_dtype))
        m = x.get("m_initial", x["q"].new_zeros((B, NH, 1), dtype=state_dtype))
        h, states = self.fn(
            x["q"][:, :, 0], x["k"][:, :, 0], x["v"][:, :, 0], x["i"][:, :, :1], x["f"][:, :, :1], c, n, m,
            eps=eps, dtype_state=state_dtype,
        )
        return h[:, :, None, :], states

    def shapes(self) -> list[Shape]:
        if self.registry != "step":
            return list(SHAPES)
        # A step is one time step of the shape, from its initial states (zeros when absent).
        return [Shape(s.B, s.NH, 1, s.DHQK, s.DHHV, s.states, s.f_bias, s.chunk_size) for s in SHAPES]

    def inputs(self, shape: Shape, seed: int) -> dict:
        x = _inputs(shape, self.dtype, self.device, seed)
        if self.form == "parallel":
            for name in ("c_initial", "n_initial", "m_initial"):
                x.pop(name, None)
        if self.registry == "training":
            for t in x.values():
                t.requires_grad_(True)
        return x

    def run(self, seed: int = 0) -> Row:
        import torch

        row = Row(self.label, self.device, str(self.dtype).replace("torch.", ""))
        tol_out, tol_grad = TOLERANCES[row.dtype]
        try:
            for s_idx, shape in enumerate(self.shapes()):
                x = self.inputs(shape, seed + s_idx)
                ref_h, ref_states, x64 = _reference(self.form, {n: t.detach().cpu() for n, t in x.items()}, REFERENCE_EPS)
                h, states = self.call(x, shape)
                row.err_out = max(row.err_out or 0.0, _rel(h.cpu(), ref_h))
                if states is not None:
                    err = max(_rel(s.cpu(), r) for s, r in zip(states, ref_states))
                    row.err_states = max(row.err_states or 0.0, err)
                if self.registry == "training":
                    w_h, w_s = _loss_weights(ref_h, ref_states, seed + s_idx)
                    grads = torch.autograd.grad(_loss(h, states, w_h, w_s), list(x.values()))
                    ref_grads = torch.autograd.grad(_loss(ref_h, ref_states, w_h, w_s), list(x64.values()))
                    err = max(_rel(g.cpu(), r) for g, r in zip(grads, ref_grads))
                    row.err_grads = max(row.err_grads or 0.0, err)
            # Timed separately, on the first shape, so that first-call costs are not counted.
            row.time_ms = self.time(self.inputs(self.shapes()[0], seed))
        except (ValueError, RuntimeError) as e:
            if _unavailable(e):
                row.status, row.note = "n/a", "not available in this build"
            else:
                row.status, row.note = "FAIL", f"{type(e).__name__}: {e}"
            return row
        if not max(row.err_out or 0.0, row.err_states or 0.0) <= tol_out or not (row.err_grads or 0.0) <= tol_grad:
            row.status = "FAIL"
            row.note = f"targets: out/states {tol_out:.0e}, grads {tol_grad:.0e}"
        return row

    def time(self, x: dict) -> float:
        """Milliseconds of one call (forward + backward for training kernels)."""
        import torch

        _sync(self.device)
        t0 = time.perf_counter()
        h, states = self.call(x, self.shapes()[0])
        if self.registry == "training":
            loss = h.float().sum() + (sum(s.float().sum() for s in states) if states is not None else 0)
            torch.autograd.grad(loss, list(x.values()))
        _sync(self.device)
        return (time.perf_counter() - t0) * 1e3


def _cases(devices: list[str], include_native: bool):
    import torch

    from . import torch as mt

    registries = (
        ("training", mt.get_available_mlstm_kernels(), mt.get_mlstm_kernel),
        ("sequence", mt.get_available_mlstm_sequence_kernels(), mt.get_mlstm_sequence_kernel),
        ("step", mt.get_available_mlstm_step_kernels(), mt.get_mlstm_step_kernel),
    )
    for device in devices:
        core_dtypes = [torch.float32, torch.bfloat16, torch.float16]
        if device == "cpu":
            core_dtypes.append(torch.float64)
        for registry, names, get in registries:
            for name in names:
                native = "native" in name and not name.endswith("__fused")
                if native and not include_native:
                    continue
                # Native kernels are readable references; their low-precision error is plain torch's.
                for dtype in [torch.float32] if native else core_dtypes:
                    yield _Case(registry, name, get(name), device, dtype)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.1e}"


HEADER = f"{'kernel':<34} {'device':<6} {'dtype':<9} {'out':>8} {'states':>8} {'grads':>8} {'ms':>8}  result"


def _format_row(r: Row) -> str:
    if r.status == "n/a":
        return f"{r.kernel:<34} {r.device:<6} {r.dtype:<9} {'':>8} {'':>8} {'':>8} {'':>8}  not available"
    ms = "-" if r.time_ms is None else f"{r.time_ms:.1f}"
    line = (
        f"{r.kernel:<34} {r.device:<6} {r.dtype:<9} {_fmt(r.err_out):>8} {_fmt(r.err_states):>8} "
        f"{_fmt(r.err_grads):>8} {ms:>8}  {r.status}"
    )
    return line + (f"  ({r.note})" if r.note else "")


def _environment() -> str:
    import platform

    import torch

    from . import __version__, _core

    cuda = "none"
    if torch.cuda.is_available():
        cuda = f"{torch.cuda.get_device_name(0)} (torch CUDA {torch.version.cuda})"
    archs = _core.cuda_archs() or "-"
    return (
        f"mlstm_kernels {__version__} (core {_core.version()}, CUDA backend: "
        f"{'yes, archs ' + archs if _core.cuda_compiled() else 'no'}); torch {torch.__version__}; "
        f"python {platform.python_version()}; CPU threads {torch.get_num_threads()}, kernels {_core.cpu_isa()}; GPU: {cuda}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlstm_kernels check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all", help="devices to check (default: all present)")
    parser.add_argument("--kernel", action="append", default=[], help="only kernels whose name contains this (repeatable)")
    parser.add_argument("--no-native", action="store_true", help="skip the plain-torch reference kernels")
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("mlstm_kernels check needs PyTorch (pip install torch)", file=sys.stderr)
        return 2

    devices = ["cpu"] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append("cuda")
        elif args.device == "cuda":
            print("no CUDA device visible", file=sys.stderr)
            return 2

    print(_environment())
    print("relative errors ‖x − ref‖/‖ref‖ against the float64 reference (max over shapes):")
    print("  " + "; ".join(str(s) + (" with states" if s.states else "") for s in SHAPES))
    cases = [c for c in _cases(devices, not args.no_native) if not args.kernel or any(k in c.label for k in args.kernel)]
    print(HEADER)
    print("-" * len(HEADER))
    tty = sys.stderr.isatty()
    rows = []
    start = time.perf_counter()
    for n, case in enumerate(cases, 1):
        if tty:
            progress = f"[{n}/{len(cases)}] {case.label} {case.device} {str(case.dtype).replace('torch.', '')} ..."
            print(f"\r{progress:<100}", end="", file=sys.stderr, flush=True)
        row = case.run()
        rows.append(row)
        if tty:
            print("\r" + " " * 100 + "\r", end="", file=sys.stderr, flush=True)
        print(_format_row(row), flush=True)

    counts = {s: sum(r.status == s for r in rows) for s in ("PASS", "FAIL", "n/a")}
    print("-" * len(HEADER))
    print(
        f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['n/a']} not available "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 1 if counts["FAIL"] else 0
