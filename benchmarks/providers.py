"""Who is measured: our kernels (through the registries of `mlstm_kernels.torch`), the plain torch
references (small S only), and the peers — torch SDPA flash attention, FLA's gated linear attention,
and upstream's Triton `mlstm_kernels` (installed in a separate directory and run in a subprocess,
since it has the same import name).

A provider id is `<family>:<name>`; training kernels use their registry name
(`ours:chunkwise--xl_chunk`), step and sequence kernels are prefixed with their registry
(`ours:step:fused`, `upstream:sequence:native_sequence__triton`). Keyword arguments for the kernel
follow an `@`: `ours:chunkwise--xl_chunk@chunk_size=256`.

A provider that is missing or crashes is recorded as such, with the reason; it never stops a run.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .configs import Point
from .env import REPO

# Families: "ours" (gated before timing), "upstream" (subprocess), "torch" (SDPA), "fla".
# Registries: "training", "step", "sequence" (mLSTM interfaces), "attention", "fla".


@dataclass(frozen=True)
class Provider:
    id: str
    family: str
    registry: str
    name: str
    suites: tuple[str, ...]
    kwargs: dict = field(default_factory=dict, hash=False)
    # Plain torch references materialise O(S²) or per-chunk tensors, and parallel forms cost O(S²):
    # measured up to this S only.
    max_S: int | None = None
    note: str = ""

    @property
    def gated(self) -> bool:
        return self.family == "ours"

    @property
    def label(self) -> str:
        if not self.kwargs:
            return self.id
        return self.id + "@" + ",".join(f"{k}={v}" for k, v in self.kwargs.items())


def _ours(name: str, suites: tuple[str, ...], registry: str = "training", **kw) -> Provider:
    prefix = "" if registry == "training" else registry + ":"
    return Provider(f"ours:{prefix}{name}", "ours", registry, name, suites, **kw)


def _upstream(name: str, suites: tuple[str, ...], registry: str = "training", **kw) -> Provider:
    prefix = "" if registry == "training" else registry + ":"
    return Provider(f"upstream:{prefix}{name}", "upstream", registry, name, suites, **kw)


TRAINING_SUITES = ("consttoken", "headdim")

DEFAULT_PROVIDERS: tuple[Provider, ...] = (
    _ours("chunkwise--xl_chunk", TRAINING_SUITES + ("sequence",)),
    _ours("chunkwise--limit_chunk", TRAINING_SUITES),
    _ours("parallel--tiled", TRAINING_SUITES, max_S=8192, note="quadratic in S"),
    _ours("chunkwise--native_autograd", TRAINING_SUITES, max_S=2048, note="plain torch"),
    _ours("parallel--native_stablef_autograd", TRAINING_SUITES, max_S=1024, note="plain torch"),
    _ours("fused", ("step",), registry="step"),
    _ours("native", ("step",), registry="step", note="plain torch"),
    _ours("fused_sequence", ("sequence",), registry="sequence"),
    _ours("native_sequence__fused", ("sequence",), registry="sequence"),
    _ours("native_sequence__native", ("sequence",), registry="sequence", max_S=1024, note="plain torch"),
    Provider("torch:sdpa_flash", "torch", "attention", "sdpa_flash", ("consttoken",),
             note="causal softmax attention, NH_ATTN x DH_ATTN heads at the same token count"),
    Provider("torch:sdpa", "torch", "attention", "sdpa", ("consttoken",),
             note="as torch:sdpa_flash, with the backend torch picks (cuDNN on recent Hopper builds)"),
    Provider("fla:chunk_simple_gla", "fla", "fla", "chunk_simple_gla", TRAINING_SUITES),
    Provider("fla:chunk_gla", "fla", "fla", "chunk_gla", TRAINING_SUITES),
    _upstream("chunkwise--triton_limit_chunk", TRAINING_SUITES),
    _upstream("chunkwise--triton_xl_chunk", TRAINING_SUITES),
    _upstream("triton", ("step",), registry="step"),
    _upstream("native_sequence__triton", ("sequence",), registry="sequence"),
)


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_spec(spec: str) -> Provider:
    """A provider from an explicit id (with optional `@k=v,...` kernel arguments)."""
    ident, _, args = spec.partition("@")
    kwargs = {}
    for item in filter(None, args.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"provider argument '{item}' in '{spec}' is not key=value")
        kwargs[key.strip()] = _parse_value(value.strip())
    for p in DEFAULT_PROVIDERS:
        if p.id == ident:
            return replace(p, kwargs=kwargs)
    family, _, rest = ident.partition(":")
    if family not in ("ours", "upstream") or not rest:
        raise ValueError(f"unknown provider '{ident}'; known: {', '.join(p.id for p in DEFAULT_PROVIDERS)}")
    registry, _, name = rest.partition(":")
    if registry not in ("step", "sequence"):
        registry, name = "training", rest
    suites = {"training": TRAINING_SUITES + ("sequence",), "step": ("step",), "sequence": ("sequence",)}[registry]
    return Provider(ident, family, registry, name, suites, kwargs=kwargs)


def select(selection: list[str] | None, suite: str) -> list[Provider]:
    """The providers for `suite`: all defaults, or those matching the `--providers` entries (ids,
    globs such as `ours:*`, or explicit ids with `@` arguments)."""
    if not selection:
        return [p for p in DEFAULT_PROVIDERS if suite in p.suites]
    chosen: list[Provider] = []
    for entry in selection:
        if "@" not in entry and any(ch in entry for ch in "*?["):
            matches = [p for p in DEFAULT_PROVIDERS if fnmatch.fnmatch(p.id, entry)]
        else:
            matches = [parse_spec(entry)]
        chosen += [p for p in matches if suite in p.suites and p not in chosen]
    return chosen


def resolve(provider: Provider) -> tuple[Callable | None, str]:
    """The callable for an in-process provider, or None and the reason it is unavailable."""
    try:
        if provider.family == "ours":
            import mlstm_kernels.torch as mk

            getter = {"training": mk.get_mlstm_kernel, "step": mk.get_mlstm_step_kernel,
                      "sequence": mk.get_mlstm_sequence_kernel}[provider.registry]
            return getter(provider.name), ""
        if provider.family == "torch":
            import torch.nn.functional as F

            return F.scaled_dot_product_attention, ""
        if provider.family == "fla":
            if provider.name == "chunk_simple_gla":
                from fla.ops.simple_gla import chunk_simple_gla as fn
            else:
                from fla.ops.gla import chunk_gla as fn
            return fn, ""
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None, f"no in-process adapter for family '{provider.family}'"


# ---- upstream, in a subprocess ---------------------------------------------------------------

WORKER_TIMEOUT_S = 1800
MAX_WORKER_CRASHES = 2


def run_upstream(provider: Provider, work: list[tuple[Point, str]], job: dict, upstream_path: str | None,
                 on_result: Callable[[Point, str, dict], None]) -> None:
    """Measure `work` (points and modes) with upstream's kernel in a worker subprocess whose
    sys.path puts `upstream_path` first. The worker streams one result per line, so a Triton
    compiler abort loses only the point it happened on; after repeated crashes the rest is
    recorded as skipped. `on_result(point, mode, record)` receives every outcome."""
    if not upstream_path:
        for point, mode in work:
            on_result(point, mode, {"status": "unavailable", "reason": "no --upstream-path given"})
        return
    upstream_dir = Path(upstream_path).resolve()
    if not (upstream_dir / "mlstm_kernels" / "torch").is_dir():
        for point, mode in work:
            on_result(point, mode, {"status": "unavailable",
                                    "reason": f"{upstream_dir} holds no mlstm_kernels/torch package"})
        return

    remaining = list(work)
    crashes = 0
    while remaining:
        if crashes >= MAX_WORKER_CRASHES:
            for point, mode in remaining:
                on_result(point, mode, {"status": "failed", "reason": "skipped: the upstream worker crashed repeatedly"})
            return
        with tempfile.TemporaryDirectory(prefix="mlstm-upstream-") as tmp:
            job_file = Path(tmp) / "job.json"
            stderr_file = Path(tmp) / "stderr.txt"
            job_file.write_text(json.dumps({
                **job, "upstream_path": str(upstream_dir), "registry": provider.registry,
                "name": provider.name, "kwargs": provider.kwargs,
                "work": [{"point": p.as_dict(), "mode": m} for p, m in remaining],
            }))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(upstream_dir)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
            with open(stderr_file, "w") as err:
                proc = subprocess.Popen([sys.executable, "-m", "benchmarks.upstream_worker", str(job_file)],
                                        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
                timer = threading.Timer(WORKER_TIMEOUT_S, proc.kill)
                timer.start()
                fatal = None
                try:
                    for line in proc.stdout:
                        tag, _, payload = line.partition(" ")
                        if tag == "RESULT":
                            rec = json.loads(payload)
                            index = rec.pop("index")
                            point, mode = remaining[index]
                            on_result(point, mode, rec)
                            remaining[index] = None
                        elif tag == "FATAL":
                            fatal = json.loads(payload)["reason"]
                    rc = proc.wait()
                finally:
                    timer.cancel()
            remaining = [w for w in remaining if w is not None]
            if fatal is not None:
                for point, mode in remaining:
                    on_result(point, mode, {"status": "unavailable", "reason": fatal})
                return
            if not remaining:
                return
            tail = stderr_file.read_text(errors="replace").strip().splitlines()[-5:]
            how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
            point, mode = remaining.pop(0)
            on_result(point, mode, {"status": "failed",
                                    "reason": f"upstream worker died ({how}): {' | '.join(tail)[-400:]}"})
            crashes += 1
