"""Worker for upstream's Triton `mlstm_kernels`, run as
`python -m benchmarks.upstream_worker JOB.json` with the upstream install directory first on
PYTHONPATH (it has the same import name as this project, so it cannot share a process with it).

Reads the job (kernel, points, modes, dtype, timing settings), measures each point with the same
workloads and timer as the in-process providers, and prints one `RESULT {json}` line per point as
soon as it is done; a problem that stops every point (wrong directory, unknown kernel) is one
`FATAL {json}` line. Nothing else on stdout is parsed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def emit(tag: str, payload: dict) -> None:
    print(f"{tag} {json.dumps(payload)}", flush=True)


def main(job_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    upstream_dir = Path(job["upstream_path"]).resolve()
    try:
        import mlstm_kernels
        import mlstm_kernels.torch as mk
    except Exception as exc:
        emit("FATAL", {"reason": f"importing upstream mlstm_kernels from {upstream_dir} failed: "
                                 f"{type(exc).__name__}: {exc}"})
        return 0
    where = Path(mlstm_kernels.__file__).resolve()
    if upstream_dir not in where.parents:
        emit("FATAL", {"reason": f"'import mlstm_kernels' found {where.parent}, not the package in {upstream_dir}"})
        return 0

    import torch

    from .configs import Point
    from .timing import Settings, measure
    from .workloads import DTYPES, sequence, step, training

    registry, name = job["registry"], job["name"]
    lookups = {
        "training": ("get_mlstm_kernel", "get_available_mlstm_kernels"),
        "step": ("get_mlstm_step_kernel", "get_available_mlstm_step_kernels"),
        "sequence": ("get_mlstm_sequence_kernel", "get_available_mlstm_sequence_kernels"),
    }[registry]
    try:
        fn = getattr(mk, lookups[0])(name)
    except Exception as exc:
        available = getattr(mk, lookups[1], lambda: [])()
        emit("FATAL", {"reason": f"upstream has no {registry} kernel '{name}' ({type(exc).__name__}); "
                                 f"available: {', '.join(available)}"})
        return 0

    version = getattr(mlstm_kernels, "__version__", None)
    settings = Settings(**job["settings"])
    dtype = DTYPES[job["dtype"]]
    kwargs = dict(job["kwargs"])
    for index, item in enumerate(job["work"]):
        point, mode = Point(**item["point"]), item["mode"]
        if job["suite_kind"] == "step":
            workload = step(fn, point, dtype, settings.device, kwargs)
        elif job["suite_kind"] == "sequence":
            workload = sequence(fn, point, dtype, settings.device, kwargs)
        else:
            workload = training(fn, point, dtype, settings.device, mode, kwargs)
        record = measure(workload, settings)
        record["index"] = index
        record["upstream_version"] = version
        emit("RESULT", record)
        if settings.device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
