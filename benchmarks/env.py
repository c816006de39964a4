"""What every results file records about where it was measured: device, driver, CUDA, library
versions and the git commit, so that no number is separated from its context."""

from __future__ import annotations

import datetime
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def run_command(*cmd: str) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def device_slug(device: str) -> str:
    """A short file-name-safe device name: "h100-80gb-hbm3", "cpu"."""
    if device != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name().lower().replace("nvidia", "")
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cuda"


def environment(device: str) -> dict:
    commit = run_command("git", "rev-parse", "HEAD")
    dirty = run_command("git", "status", "--porcelain", "--untracked-files=no")
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "triton": _version("triton"),
        "fla": _version("flash-linear-attention") or _version("fla-core"),
        "numpy": _version("numpy"),
        "device": device,
    }
    try:
        import mlstm_kernels

        env["mlstm_kernels"] = mlstm_kernels.__version__
        env["mlstm_kernels_path"] = str(Path(mlstm_kernels.__file__).parent)
        env["mlstm_kernels_capabilities"] = mlstm_kernels.capabilities()
    except Exception as exc:
        env["mlstm_kernels"] = f"unavailable ({type(exc).__name__}: {exc})"
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(
            gpu=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_sm_count=props.multi_processor_count,
            gpu_l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
        )
        smi = run_command("nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                   "--format=csv,noheader", f"--id={torch.cuda.current_device()}")
        if smi:
            fields = [f.strip() for f in smi.splitlines()[0].split(",")]
            env.update(driver=fields[0], sm_clock_max=fields[1] if len(fields) > 1 else None,
                       mem_clock_max=fields[2] if len(fields) > 2 else None)
        nvcc = run_command("nvcc", "--version")
        if nvcc:
            env["nvcc"] = nvcc.splitlines()[-1]
    else:
        env["threads"] = torch.get_num_threads()
    return env


def header_lines(env: dict) -> list[str]:
    """A few lines for the top of every printed table."""
    where = env.get("gpu") or f"CPU {env.get('cpu')} ({env.get('threads')} threads)"
    lines = [
        f"device: {where}" + (f", driver {env['driver']}" if env.get("driver") else "")
        + (f", CUDA {env['torch_cuda']}" if env.get("torch_cuda") else ""),
        f"torch {env['torch']}, jax {env['jax']}, triton {env['triton']}, fla {env['fla']}, "
        f"mlstm_kernels {env.get('mlstm_kernels')}",
        f"commit {str(env['git_commit'])[:12]}{' (+ uncommitted changes)' if env.get('git_dirty') else ''}, "
        f"{env['date_utc']}",
    ]
    return lines
