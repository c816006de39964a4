"""Results on disk and on screen: JSON (everything), CSV (one row per point), a printed table, and
plots (SVG + PNG) in the layout of the published mLSTM benchmarks: forward on the left,
forward+backward on the right, log-scale time over the swept size, one line per provider.

As a command, it refreshes the README's benchmark section from the newest results file of each suite
and config in benchmarks/results/ (headline plot and table, and a list of the newest files)::

    python -m benchmarks.report            # rewrite the section between the README's markers
    python -m benchmarks.report --check    # exit 1 if the README is not up to date
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from .env import REPO, header_lines, run_command

CSV_COLUMNS = [
    "suite", "config", "provider", "family", "mode", "dtype", "B", "NH", "S", "DHQK", "DHHV",
    "NH_ATTN", "DH_ATTN", "x", "status", "ms", "ms_p20", "ms_p80", "ms_wall", "n_runs", "n_input_sets",
    "peak_mem_mb", "tokens_per_s", "state_gb_s", "pct_of_copy", "reason",
]


def write_files(doc: dict, out_dir: Path, base: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{base}.json", out_dir / f"{base}.csv"
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for rec in doc["results"]:
            writer.writerow(rec)
    return [json_path, csv_path]


def _ok(rec: dict) -> bool:
    return rec["status"] == "ok"


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def _status_word(rec: dict) -> str:
    return {"oom": "OOM", "skipped": "-", "gate_failed": "GATE", "unavailable": "n/a",
            "unsupported": "unsup"}.get(rec["status"], "FAIL")


class _Grid:
    """A suite's results as a grid: one row per swept value, one column per provider that measured
    something; each cell holds every mode ("fw / fwbw"), a status word where a point did not run."""

    def __init__(self, doc: dict):
        results, suite = doc["results"], doc["suite"]
        self.providers = list(dict.fromkeys(r["provider"] for r in results))
        self.measured = [p for p in self.providers if any(_ok(r) for r in results if r["provider"] == p)]
        self.modes = list(dict.fromkeys(r["mode"] for r in results))
        self.xs = sorted({r["x"] for r in results})
        self.cells: dict[tuple[str, int], str] = {}
        for p in self.measured:
            for x in self.xs:
                parts = []
                for mode in self.modes:
                    rec = next((r for r in results if r["provider"] == p and r["x"] == x and r["mode"] == mode), None)
                    if rec is None:
                        parts.append("")
                    elif not _ok(rec):
                        parts.append(_status_word(rec))
                    elif suite == "step":
                        parts.append(f"{_fmt_ms(rec['ms'])} ({rec['state_gb_s']:.0f} GB/s, {rec['pct_of_copy']:.0f}%)")
                    else:
                        parts.append(_fmt_ms(rec["ms"]))
                self.cells[(p, x)] = " / ".join(parts)
        row_label = {"S": lambda r: f"S={r['S']} B={r['B']}", "DHQK": lambda r: f"DHQK={r['DHQK']} DHHV={r['DHHV']}",
                     "B": lambda r: f"B={r['B']}"}[doc["x_name"]]
        self.labels = {r["x"]: row_label(r) for r in results}
        self.unit = " / ".join(self.modes) + " ms" + (" (state GB/s, % of copy)" if suite == "step" else "")

    def rows(self) -> list[list[str]]:
        """The header row, then one row per swept value."""
        return [["shape"] + self.measured] + [[self.labels[x]] + [self.cells[(p, x)] for p in self.measured]
                                               for x in self.xs]


def format_table(doc: dict) -> str:
    """The suite as a text table (see `_Grid`); providers with nothing measured are listed
    underneath with their reason."""
    results = doc["results"]
    grid = _Grid(doc)
    rows = grid.rows()
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    first = results[0] if results else {}
    lines = header_lines(doc["meta"])
    lines.append(f"suite {doc['suite']}, config {doc['config']} (NH={first.get('NH')}), dtype {doc['dtype']}: "
                 f"{grid.unit}; peak memory per point in the JSON/CSV")
    if doc.get("copy_gb_s"):
        lines.append(f"measured device copy bandwidth: {doc['copy_gb_s']:.0f} GB/s (read + write)")
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    for gate in doc["gate"].values():
        if not gate["ok"]:
            lines.append(f"  GATE FAILED, not timed: {gate['provider']}: {gate['reason']}")
    for p in grid.providers:
        if p not in grid.measured and p not in doc["gate"]:
            rec = next(r for r in results if r["provider"] == p)
            lines.append(f"  not measured: {p}: {rec['status']}: {rec.get('reason', '')}")
    return "\n".join(lines)


def markdown_table(doc: dict) -> str:
    """The suite's grid as a Markdown table."""
    grid = _Grid(doc)
    header, *body = grid.rows()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def plot(doc: dict, out_dir: Path, base: str) -> tuple[list[Path], str]:
    """SVG and PNG plots; returns the files and a note (why nothing was plotted, if so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not importable: no plots (pip install matplotlib)"
    results, suite = doc["results"], doc["suite"]
    providers = [p for p in dict.fromkeys(r["provider"] for r in results)
                 if any(_ok(r) for r in results if r["provider"] == p)]
    if not providers:
        return [], "nothing was measured: no plots"
    meta = doc["meta"]
    where = meta.get("gpu") or "CPU"
    title = f"mLSTM {suite}, config {doc['config']} ({where}, {doc['dtype']})"
    x_label = {"S": "sequence length S", "DHQK": "head dim DHQK", "B": "batch size B"}[doc["x_name"]]

    def series(provider: str, mode: str, key: str):
        recs = sorted((r for r in results if r["provider"] == provider and r["mode"] == mode and _ok(r)),
                      key=lambda r: r["x"])
        return [r["x"] for r in recs], [r[key] for r in recs]

    if suite == "step":
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        panels = [(axes[0], "fw", "ms", "time per step [ms]", True),
                  (axes[1], "fw", "pct_of_copy", "state read+write, % of copy bandwidth", False)]
    elif len(doc["modes"]) == 2:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        panels = [(axes[0], "fw", "ms", "forward time [ms]", True),
                  (axes[1], "fwbw", "ms", "forward + backward time [ms]", True)]
    else:
        fig, axes = plt.subplots(1, 1, figsize=(6.5, 4.8))
        panels = [(axes, doc["modes"][0], "ms", "time [ms]", True)]
    markers = "osD^v<>ph*x+"
    for ax, mode, key, y_label, log_y in panels:
        for n, provider in enumerate(providers):
            xs, ys = series(provider, mode, key)
            if xs:
                ax.plot(xs, ys, marker=markers[n % len(markers)], label=provider)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        else:
            ax.axhline(100, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = panels[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{title}\ntorch {meta.get('torch')}, commit {str(meta.get('git_commit'))[:10]}, "
                 f"{meta.get('date_utc')}", fontsize=10)
    fig.tight_layout(rect=(0, 0.08 + 0.03 * ((len(labels) - 1) // 4), 1, 1))
    paths = [out_dir / f"{base}.svg", out_dir / f"{base}.png"]
    for path in paths:
        fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return paths, ""


# ---------------------------------------------------------------------------------------------
# The README's benchmark section.

README_BEGIN = "<!-- benchmark-report:begin (python -m benchmarks.report writes this part) -->"
README_END = "<!-- benchmark-report:end -->"
HEADLINE = ("consttoken", "A")


def latest_results(results_dir: Path) -> dict[tuple[str, str], tuple[Path, dict]]:
    """The newest full (not --quick) results file of each (suite, config). A GPU run wins over a
    CPU run of the same suite and config, whatever their dates."""
    latest: dict[tuple[str, str], tuple[Path, dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or "suite" not in doc or "results" not in doc or doc.get("quick"):
            continue
        key = (doc["suite"], doc["config"])
        rank = (doc["meta"].get("device") == "cuda", doc["meta"].get("date_utc", ""), path.name)
        if key not in latest or rank > latest[key][2]:
            latest[key] = (path, doc, rank)
    return {key: (path, doc) for key, (path, doc, _) in sorted(latest.items())}


def kernel_commits_since(doc: dict) -> list[str] | None:
    """One line per commit after the one `doc` was measured at that changed the kernels it ran
    (cpp/, less the other device's backend); None when git cannot tell (no checkout, unknown
    commit)."""
    commit = doc["meta"].get("git_commit")
    if not commit or run_command("git", "cat-file", "-e", f"{commit}^{{commit}}") is None:
        return None
    other_backend = "cpp/src/cpu" if doc["meta"].get("device") == "cuda" else "cpp/src/cuda"
    log = run_command("git", "log", "--oneline", f"{commit}..HEAD", "--", "cpp", f":(exclude){other_backend}")
    return None if log is None else [line for line in log.splitlines() if line]


def _measured_where(doc: dict) -> str:
    meta = doc["meta"]
    where = meta.get("gpu") or f"CPU {meta.get('cpu')}"
    driver = f", driver {meta['driver']}" if meta.get("driver") else ""
    cuda = f", CUDA {meta['torch_cuda']}" if meta.get("torch_cuda") else ""
    return f"{where}{driver}{cuda}, torch {meta.get('torch')}, {str(meta.get('date_utc', ''))[:10]}"


def _commit_note(doc: dict) -> str:
    commit = doc["meta"].get("git_commit")
    short = str(commit)[:10] if commit else "unknown"
    dirty = " plus uncommitted changes" if doc["meta"].get("git_dirty") else ""
    later = kernel_commits_since(doc)
    if later is None:
        return f"commit {short}{dirty}"
    if not later:
        return f"commit {short}{dirty} (the kernels have not changed since)"
    return (f"commit {short}{dirty}. **These numbers are from an older kernel version: {len(later)} later "
            f"commit{'s' if len(later) > 1 else ''} changed the core** (`git log {short}..HEAD -- cpp`)")


def _gate_note(doc: dict) -> str:
    failed = [g["provider"] for g in doc["gate"].values() if not g["ok"]]
    if not doc["gate"]:
        return "No kernel of ours was gated in this run."
    if not failed:
        return "Each kernel of ours passed the float64 correctness gate before it was timed."
    return f"Failed the float64 correctness gate and were not timed: {', '.join(failed)}."


def _link(path: Path, repo: Path) -> str:
    return Path(os.path.relpath(path.resolve(), repo)).as_posix()


def readme_section(latest: dict[tuple[str, str], tuple[Path, dict]], repo: Path, replot: bool = True) -> str:
    """The Markdown between the README's markers: the headline suite's plot and table, then the
    newest file of every suite and config."""
    lines = [README_BEGIN, ""]
    if not latest:
        lines += ["No full benchmark results in `benchmarks/results/` yet.", "", README_END]
        return "\n".join(lines)
    headline = HEADLINE if HEADLINE in latest else next(iter(latest))
    path, doc = latest[headline]
    heads = doc["heads"]
    settings = doc.get("settings", {})
    lines.append(f"**{doc['suite']}, config {doc['config']}** ({doc['description']}; NH={heads['NH']}, "
                 f"DHQK={heads['DHQK']}, DHHV={heads['DHHV']}, {doc['dtype']}). Measured on {_measured_where(doc)}, "
                 f"{_commit_note(doc)}. Median of {settings.get('repeats', '?')} runs. {_gate_note(doc)}")
    lines.append("")
    png = path.with_suffix(".png")
    if not png.exists() and replot:
        plot(doc, path.parent, path.stem)
    if png.exists():
        lines += [f"![{doc['suite']} config {doc['config']}]({_link(png, repo)})", ""]
    grid = _Grid(doc)
    lines += [f"Time ({grid.unit}); `-` not measured at that size, `FAIL`/`OOM`/`n/a` as in the results file:",
              "", markdown_table(doc), ""]
    for p in grid.providers:
        if p not in grid.measured:
            rec = next(r for r in doc["results"] if r["provider"] == p)
            reason = " ".join(str(rec.get("reason", "")).split())
            reason = reason if len(reason) <= 160 else reason[:157] + "..."
            lines.append(f"Not measured: `{p}`: {rec['status']}" + (f" ({reason})" if reason else "") + "  ")
    if len(grid.providers) > len(grid.measured):
        lines.append("")
    lines += ["Newest results per suite and config (JSON with every point, CSV, plots next to each):", "",
              "| suite | config | device | commit | file |", "|---|---|---|---|---|"]
    for (suite, config), (p, d) in latest.items():
        commit = str(d["meta"].get("git_commit") or "unknown")[:10]
        later = kernel_commits_since(d)
        stale = f" (older kernels: {len(later)} core commits since)" if later else ""
        lines.append(f"| {suite} | {config} | {_measured_where(d)} | {commit}{stale} | "
                     f"[{p.name}]({_link(p, repo)}) |")
    lines += ["", README_END]
    return "\n".join(lines)


def refresh_readme(readme: Path, section: str) -> str:
    """The README text with `section` between the markers (appended under a heading if absent)."""
    text = readme.read_text()
    if README_BEGIN in text and README_END in text:
        before, rest = text.split(README_BEGIN, 1)
        after = rest.split(README_END, 1)[1]
        return before + section + after
    return text.rstrip("\n") + "\n\n## Benchmarks\n\n" + section + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                 description="Refresh the README's benchmark plot and table from the newest results.")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results", help="results directory")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md", help="the README to update")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if the README is out of date")
    args = ap.parse_args(argv)
    latest = latest_results(args.results)
    repo = args.readme.resolve().parent
    section = readme_section(latest, repo, replot=not args.check)
    old = args.readme.read_text()
    new = refresh_readme(args.readme, section)
    if args.check:
        print("README benchmark section is " + ("up to date" if new == old else "out of date: run python -m benchmarks.report"))
        return 0 if new == old else 1
    if new != old:
        args.readme.write_text(new)
    for (suite, config), (path, _) in latest.items():
        print(f"{suite}/{config}: {path.name}")
    print(f"{args.readme}: {'updated' if new != old else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
