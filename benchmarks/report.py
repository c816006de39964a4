"""Results on disk and on screen: JSON (everything), CSV (one row per point), a printed table, and
plots (SVG + PNG) in the layout of the published mLSTM benchmarks: forward on the left,
forward+backward on the right, log-scale time over the swept size, one line per provider."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .env import header_lines

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


def format_table(doc: dict) -> str:
    """The suite as a text table: one row per swept value, one column per provider that measured
    something; providers with nothing measured are listed underneath with their reason."""
    results, suite = doc["results"], doc["suite"]
    x_name = doc["x_name"]
    providers = list(dict.fromkeys(r["provider"] for r in results))
    measured = [p for p in providers if any(_ok(r) for r in results if r["provider"] == p)]
    modes = list(dict.fromkeys(r["mode"] for r in results))
    xs = sorted({r["x"] for r in results})
    cells: dict[tuple[str, int], str] = {}
    for p in measured:
        for x in xs:
            parts = []
            for mode in modes:
                rec = next((r for r in results if r["provider"] == p and r["x"] == x and r["mode"] == mode), None)
                if rec is None:
                    parts.append("")
                elif not _ok(rec):
                    parts.append(_status_word(rec))
                elif suite == "step":
                    parts.append(f"{_fmt_ms(rec['ms'])} ({rec['state_gb_s']:.0f} GB/s, {rec['pct_of_copy']:.0f}%)")
                else:
                    parts.append(_fmt_ms(rec["ms"]))
            cells[(p, x)] = " / ".join(parts)
    first = results[0] if results else {}
    row_label = {"S": lambda r: f"S={r['S']} B={r['B']}", "DHQK": lambda r: f"DHQK={r['DHQK']} DHHV={r['DHHV']}",
                 "B": lambda r: f"B={r['B']}"}[x_name]
    labels = {r["x"]: row_label(r) for r in results}
    widths = [max([len("shape")] + [len(labels[x]) for x in xs])]
    widths += [max([len(p)] + [len(cells[(p, x)]) for x in xs]) for p in measured]
    unit = " / ".join(modes) + " ms" + (" (state GB/s, % of copy)" if suite == "step" else "")
    lines = header_lines(doc["meta"])
    lines.append(f"suite {suite}, config {doc['config']} (NH={first.get('NH')}), dtype {doc['dtype']}: "
                 f"{unit}; peak memory per point in the JSON/CSV")
    if doc.get("copy_gb_s"):
        lines.append(f"measured device copy bandwidth: {doc['copy_gb_s']:.0f} GB/s (read + write)")
    row = ["shape"] + measured
    lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    for x in xs:
        row = [labels[x]] + [cells[(p, x)] for p in measured]
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    for gate in doc["gate"].values():
        if not gate["ok"]:
            lines.append(f"  GATE FAILED, not timed: {gate['provider']}: {gate['reason']}")
    for p in providers:
        if p not in measured and p not in doc["gate"]:
            rec = next(r for r in results if r["provider"] == p)
            lines.append(f"  not measured: {p}: {rec['status']}: {rec.get('reason', '')}")
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
