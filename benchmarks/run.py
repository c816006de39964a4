"""The benchmark CLI: `python -m benchmarks.run [--suite ...] [--config ...] [options]` from the
repository root. See benchmarks/README.md for what each suite measures.

For each suite and config: our kernels pass the fp64 correctness gate or are not timed; every
provider is measured point by point (a progress line each); results go to
`<suite>_<config>_<device>_<date>.{json,csv,svg,png}` and a table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import configs, gate, providers, report, timing, workloads
from .env import REPO, device_slug, environment


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Correctness-gated benchmarks of the mLSTM kernels and their peers.",
    )
    ap.add_argument("--suite", nargs="+", choices=list(configs.SUITES) + ["all"],
                    help="suites to run (default: consttoken; with --quick: all)")
    ap.add_argument("--config", nargs="+", choices=list(configs.CONFIGS),
                    help="head configs (default: A; with --quick: tiny)")
    ap.add_argument("--dtype", choices=list(workloads.DTYPES), default="bf16", help="q/k/v/gate dtype (default bf16)")
    ap.add_argument("--providers", help="comma-separated provider ids or globs, e.g. 'ours:*,torch:sdpa_flash' "
                                        "or 'ours:chunkwise--xl_chunk@chunk_size=256' (default: all for the suite)")
    ap.add_argument("--upstream-path", metavar="DIR",
                    help="directory holding upstream's mlstm_kernels (e.g. pip install --target DIR mlstm_kernels)")
    ap.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available (cpu with --quick)")
    ap.add_argument("--repeats", type=int, help="timed runs per point (default 30 on GPU, 3 on CPU)")
    ap.add_argument("--warmup", type=int, help="untimed runs per point (default 5 on GPU, 1 on CPU)")
    ap.add_argument("--out", type=Path, help="output directory (default benchmarks/results; with --quick a temp dir)")
    ap.add_argument("--no-plot", action="store_true", help="write no plots")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny shapes on the CPU, all suites, few repeats")
    ap.add_argument("--list", action="store_true", help="list suites, configs and providers, then exit")
    ap.add_argument("--commit", help="git commit to record: the tree the run used (for a copied tree; overrides git)")
    return ap.parse_args(argv)


def list_everything() -> None:
    print("suites:")
    for s in configs.SUITES.values():
        print(f"  {s.name:11s} {s.description} (modes: {', '.join(s.modes)})")
    print("configs:")
    for c in configs.CONFIGS.values():
        print(f"  {c.name:5s} NH={c.NH} DHQK={c.DHQK} DHHV={c.DHHV}; attention peer {c.NH_ATTN}x{c.DH_ATTN}  {c.note}")
    print("providers (id: suites):")
    for p in providers.DEFAULT_PROVIDERS:
        limit = f", S <= {p.max_S}" if p.max_S else ""
        print(f"  {p.id:45s} {', '.join(p.suites)}{limit}{'  ' + p.note if p.note else ''}")


class Progress:
    """One line per measured point, flushed, so a long GPU run shows where it is."""

    def __init__(self, suite: str, config: str):
        self.prefix = f"[{suite}/{config}]"
        self.started = time.perf_counter()
        self.said: set[tuple[str, str, str]] = set()

    def line(self, provider: str, mode: str, point: configs.Point, rec: dict) -> None:
        # A provider that is unavailable, failed its gate or is skipped says so once, not per point.
        if rec["status"] in ("unavailable", "gate_failed", "skipped"):
            key = (provider, rec["status"], rec.get("reason", ""))
            if key in self.said:
                return
            self.said.add(key)
        if "NH_ATTN" in rec:
            shape = f"B={point.B} S={point.S} heads {point.NH_ATTN}x{point.DH_ATTN}"
        else:
            shape = f"B={point.B} S={point.S} DHQK={point.DHQK} DHHV={point.DHHV}"
        if rec["status"] == "ok":
            peak = f"  peak {rec['peak_mem_mb']:.0f} MiB" if rec.get("peak_mem_mb") is not None else ""
            extra = f"  {rec['state_gb_s']:.0f} GB/s ({rec['pct_of_copy']:.0f}% of copy)" if "state_gb_s" in rec else ""
            wall = f", {rec['ms_wall']:.3f} ms back-to-back" if rec.get("ms_wall") is not None else ""
            what = f"{rec['ms']:9.3f} ms (n={rec['n_runs']}{wall}){extra}{peak}"
        else:
            what = f"{rec['status'].upper()}: {rec.get('reason', '')}"
        elapsed = time.perf_counter() - self.started
        print(f"{self.prefix} {elapsed:6.1f}s {provider:42s} {mode:4s} {shape:38s} {what}", flush=True)


def run_suite(suite_name: str, config: configs.HeadConfig, args, settings: timing.Settings, env: dict,
              copy_gb_s: float | None, gate_verdicts: dict) -> dict:
    """Gate and measure every provider of one suite and config; `gate_verdicts` carries gate
    results across suites (a kernel is gated once per way of calling it)."""
    suite = configs.SUITES[suite_name]
    points = configs.points(suite_name, config, args.quick)
    dtype = workloads.DTYPES[args.dtype]
    device = settings.device
    selection = [s.strip() for s in args.providers.split(",") if s.strip()] if args.providers else None
    chosen = providers.select(selection, suite_name)
    progress = Progress(suite_name, config.name)
    results: list[dict] = []
    gates: dict[str, dict] = {}
    gate_point = gate.GATE_POINT_QUICK if args.quick else gate.GATE_POINT

    def record(provider: providers.Provider, point: configs.Point, mode: str, rec: dict) -> None:
        row = {"suite": suite_name, "config": config.name, "provider": provider.label,
               "family": provider.family, "mode": mode, "dtype": args.dtype, **point.as_dict(), **rec}
        if provider.family != "torch":
            row.pop("NH_ATTN"), row.pop("DH_ATTN")
        if rec["status"] == "ok":
            if suite.kind == "training" or suite.kind == "sequence":
                row["tokens_per_s"] = point.B * point.S / (rec["ms"] * 1e-3)
            if suite.kind == "step":
                row["state_gb_s"] = workloads.step_state_bytes(point) / (rec["ms"] * 1e-3) / 1e9
                row["pct_of_copy"] = 100 * row["state_gb_s"] / copy_gb_s if copy_gb_s else None
        results.append(row)
        progress.line(provider.label, mode, point, row)

    work = [(p, m) for p in points for m in suite.modes]
    for provider in chosen:
        limited = [(p, m) for p, m in work if provider.max_S is None or args.quick or p.S <= provider.max_S]
        for p, m in work:
            if (p, m) not in limited:
                record(provider, p, m, {"status": "skipped",
                                        "reason": f"{provider.note}: measured for S <= {provider.max_S} only"})
        if provider.family == "upstream":
            job = {"settings": settings.as_dict(), "dtype": args.dtype, "suite_kind": suite.kind}
            providers.run_upstream(provider, limited, job, args.upstream_path,
                                   lambda p, m, rec, prov=provider: record(prov, p, m, rec))
            continue
        fn, reason = providers.resolve(provider)
        if fn is None:
            for p, m in limited:
                record(provider, p, m, {"status": "unavailable", "reason": reason})
            continue
        if provider.gated:
            key = (provider.label, suite.kind, suite.modes)
            cached = key in gate_verdicts
            if not cached:
                gate_verdicts[key] = gate.run_gate(fn, provider.registry, provider.name, suite.kind, suite.modes,
                                                   dtype, device, provider.kwargs, gate_point)
            verdict = gate_verdicts[key]
            gates[provider.label] = {"provider": provider.label, **verdict}
            worst = max((c["rel"] for c in verdict["checks"]), default=float("nan"))
            print(f"{progress.prefix} gate{' (earlier verdict)' if cached else ''} {provider.label}: "
                  f"{'ok' if verdict['ok'] else 'FAILED'} "
                  f"(worst relative error {worst:.2e}){'' if verdict['ok'] else ': ' + verdict['reason']}", flush=True)
        for p, m in limited:
            if provider.gated and not verdict["modes"][m]["ok"]:
                record(provider, p, m, {"status": "gate_failed", "reason": verdict["modes"][m]["reason"]})
                continue
            if suite.kind == "step":
                wl = workloads.step(fn, p, dtype, device, provider.kwargs)
            elif provider.registry == "attention":
                wl = workloads.sdpa(p, dtype, device, m, force_flash=provider.name == "sdpa_flash")
            elif provider.registry == "fla":
                wl = workloads.fla(fn, "head" if provider.name == "chunk_simple_gla" else "key", p, dtype, device, m)
            elif suite.kind == "sequence":
                wl = workloads.sequence(fn, p, dtype, device, provider.kwargs)
            else:
                wl = workloads.training(fn, p, dtype, device, m, provider.kwargs)
            record(provider, p, m, timing.measure(wl, settings))

    return {
        "suite": suite_name,
        "description": suite.description,
        "config": config.name,
        "heads": {"NH": config.NH, "DHQK": config.DHQK, "DHHV": config.DHHV,
                  "NH_ATTN": config.NH_ATTN, "DH_ATTN": config.DH_ATTN},
        "x_name": suite.x_name,
        "modes": list(suite.modes),
        "dtype": args.dtype,
        "quick": args.quick,
        "settings": settings.as_dict(),
        "copy_gb_s": copy_gb_s,
        "meta": env,
        "gate": gates,
        "gate_point": gate_point.as_dict(),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        list_everything()
        return 0
    device = args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    suites = args.suite or (["all"] if args.quick else ["consttoken"])
    suites = list(configs.SUITES) if "all" in suites else list(dict.fromkeys(suites))
    config_names = args.config or (["tiny"] if args.quick else ["A"])
    gpu = device == "cuda"
    settings = timing.Settings(
        device=device,
        warmup=args.warmup if args.warmup is not None else (5 if gpu else 1),
        repeats=args.repeats if args.repeats is not None else (30 if gpu else 3),
        min_repeats=30 if gpu else 1,
        max_seconds=20.0 if gpu else 2.0,
    )
    if args.out is not None:
        out_dir = args.out
    elif args.quick:
        out_dir = Path(tempfile.mkdtemp(prefix="mlstm-bench-"))
    else:
        out_dir = REPO / "benchmarks" / "results"
    env = environment(device)
    if args.commit:  # the caller names the tree (a copied tree may carry a stale .git)
        env["git_commit"] = args.commit
        env["git_dirty"] = False
    copy_gb_s = None
    if "step" in suites:
        copy_gb_s = timing.copy_bandwidth_gbps(device)
        print(f"device copy bandwidth: {copy_gb_s:.0f} GB/s", flush=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = device_slug(device)
    written: list[Path] = []
    gate_verdicts: dict = {}
    docs: list[dict] = []
    for suite_name in suites:
        for config_name in config_names:
            doc = run_suite(suite_name, configs.CONFIGS[config_name], args, settings, env, copy_gb_s, gate_verdicts)
            docs.append(doc)
            base = f"{suite_name}_{config_name}_{slug}_{stamp}"
            written += report.write_files(doc, out_dir, base)
            if not args.no_plot:
                plots, note = report.plot(doc, out_dir, base)
                written += plots
                if note:
                    print(f"note: {note}")
            print()
            print(report.format_table(doc))
            print(flush=True)
    print("wrote:")
    for path in written:
        print(f"  {path}")
    # Our kernels must pass their gate and run wherever they claim support; peers may fail freely.
    measured = sum(r["status"] == "ok" for doc in docs for r in doc["results"])
    ours_bad = [f"{doc['suite']}/{doc['config']} {r['provider']} {r['mode']} {r['x']}: {r['status']}"
                for doc in docs for r in doc["results"]
                if r["family"] == "ours" and r["status"] in ("gate_failed", "failed", "oom")]
    print(f"summary: {measured} points measured; {len(ours_bad)} points where our kernels failed the gate or crashed")
    for line in ours_bad:
        print(f"  {line}")
    return 1 if ours_bad else 0


if __name__ == "__main__":
    sys.exit(main())
