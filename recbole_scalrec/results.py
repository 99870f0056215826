"""Writing a run's results: ``results.json``, ``per_request.npz``, ``results.md`` and
``staleness_curves.png`` (formats are contracts other tools read)."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

METRICS = ("hit@5", "ndcg@5", "hit@10", "ndcg@10", "candidate_recall")


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def rows_for_json(rows: list[dict]) -> list[dict]:
    """Result rows without the per-request ranks (those go to ``per_request.npz``)."""
    keep = ("split", "setting", "gap", "method", "n_requests", "n_clamped", "metrics", "internals")
    return [{k: r[k] for k in keep if k in r} for r in rows]


def write_results(results_dir: str, summary: dict[str, Any], rows: list[dict]) -> dict[str, str]:
    """Write every output file; returns their paths."""
    os.makedirs(results_dir, exist_ok=True)
    paths = {name: os.path.join(results_dir, name) for name in
             ("results.json", "per_request.npz", "results.md", "staleness_curves.png")}
    payload = dict(summary, results=rows_for_json(rows))

    def dump_json(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=False, default=str)

    _atomic_write(paths["results.json"], dump_json)
    arrays = {f"{r['split']}/{r['setting']}/{r['gap']}/{r['method']}": np.asarray(r["ranks"], dtype=np.int32) for r in rows}

    def dump_npz(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    _atomic_write(paths["per_request.npz"], dump_npz)
    _atomic_write(paths["results.md"], lambda tmp: open(tmp, "w", encoding="utf-8").write(markdown_report(payload)))
    plot_staleness_curves(payload, paths["staleness_curves.png"])
    return paths


def _table(rows: list[dict], methods: list[str]) -> list[str]:
    lines = ["| method | HR@5 | NDCG@5 | HR@10 | NDCG@10 | cand. recall |", "|---|---|---|---|---|---|"]
    by_method = {r["method"]: r for r in rows}
    for m in methods:
        if m in by_method:
            v = by_method[m]["metrics"]
            lines.append(f"| {m} | " + " | ".join(f"{v[k]:.4f}" for k in METRICS) + " |")
    return lines


def markdown_report(payload: dict) -> str:
    """The Delta = 5 S2 table and the gap table (NDCG@10 per gap) of each split."""
    rows = payload["results"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = [f"# SCaLRec results: {payload['model']} on {payload['dataset']} (seed {payload['seed']})", ""]
    for split in ("test", "valid"):
        main = [r for r in rows if r["split"] == split and r["setting"] == "S2" and r["gap"] == 5]
        if main:
            n, clamped = main[0]["n_requests"], main[0]["n_clamped"]
            out += [f"## {split}: Delta = 5, S2 ({n} requests, {clamped} clamped)", ""] + _table(main, methods) + [""]
        for setting in ("S1", "S2"):
            sub = [r for r in rows if r["split"] == split and r["setting"] == setting and r["gap"] is not None]
            gaps = sorted({r["gap"] for r in sub})
            if not gaps:
                continue
            out += [f"## {split}: NDCG@10 against Delta, {setting}", "",
                    "| method | " + " | ".join(f"Delta={g}" for g in gaps) + " |",
                    "|---|" + "---|" * len(gaps)]
            cell = {(r["method"], r["gap"]): r["metrics"]["ndcg@10"] for r in sub}
            for m in (m for m in methods if any(k[0] == m for k in cell)):  # +repair methods: S2 only
                out.append(f"| {m} | " + " | ".join(f"{cell.get((m, g), float('nan')):.4f}" for g in gaps) + " |")
            out.append("")
    if "full_ranking" in payload:
        out += ["## Full ranking (RecBole-style, all items), test", "", "| model | HR@10 | NDCG@10 |", "|---|---|---|"]
        for name, v in payload["full_ranking"].items():
            out.append(f"| {name} | {v['hit@10']:.4f} | {v['ndcg@10']:.4f} |")
        out.append("")
    return "\n".join(out)


def plot_staleness_curves(payload: dict, path: str, split: str = "test") -> None:
    """NDCG@10 and HR@10 against Delta, S1 and S2 panels, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["results"] if r["split"] == split and r["gap"] is not None]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for col, setting in enumerate(("S1", "S2")):
        for row, metric in enumerate(("ndcg@10", "hit@10")):
            ax = axes[row][col]
            for i, m in enumerate(methods):  # 10 colours, then dashed lines: every method stays distinct
                pts = sorted((r["gap"], r["metrics"][metric]) for r in rows if r["setting"] == setting and r["method"] == m)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m, linestyle="-" if i < 10 else "--")
            ax.set_title(f"{setting}: {metric.upper()}")
            ax.set_xlabel("gap Delta (interactions)")
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{payload['model']} on {payload['dataset']} ({split})")
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
