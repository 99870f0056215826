"""Sensitivity sweeps of SCaLRec's stage-2 settings (rho, tau, lambda_rel, lambda_reg; the paper's Fig. 4).

    python -m recbole_scalrec.sweep --dataset redial --param correction_radius --values 0.05 0.1 0.2 0.5 1.0 \
        [--model SASRec] [--seeds 2020 2021 2022] [--out docs/results/sweeps] [--key=value ...]
    python -m recbole_scalrec.sweep ... --seeds 2020 2021 --reuse   # merge seeds run in separate processes
    python -m recbole_scalrec.sweep --plot docs/results/sweeps/redial-SASRec --figure docs/figures/sweep-redial.png

Each (value, seed) is one pipeline run (:func:`recbole_scalrec.quick_start.run_recbole_scalrec`) with
``stage2_methods: [scalrec]`` into ``<out>/<dataset>-<model>-seed<seed>/<param>=<value>/``; the runs
of a seed share the stage-1 checkpoint of that seed's default run
(``saved/<model>-<dataset>-seed<seed>/stage1.pth``, trained first when missing) and the semantic
cache, so only stage 2 and the evaluation run again. The figure of merit is the paper's: test, S2,
NDCG@10 / HR@10 of ``scalrec`` averaged over ``Δ ∈ {5, 10, 20}`` (``cached_fusion`` and
``fresh_fusion`` alongside as references), mean ± std over the seeds. Prints a table and, as its last
line, one JSON object; writes ``sweep-<param>.json`` and ``sweep-<param>.md`` into
``<out>/<dataset>-<model>/``. ``--plot FOLDER --figure PNG`` draws one panel per swept key found there.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

SWEEP_GAPS = (5, 10, 20)
SWEPT_KEYS = ("correction_radius", "kd_temperature", "lambda_rel", "lambda_reg")  # the paper's Fig. 4
# stage-2 choices whose defaults are picked on validation (the ``valid_`` figures of a sweep)
CHOICE_KEYS = ("stage2_batch_size", "stage2_stopping_step", "stage2_epochs", "stage2_learning_rate", "stage2_requests",
               "stage2_latest_per_user", "reliability_target_scale", "correction_shrink", "estimator_hidden_size")


def mean_over_gaps(results: list[dict], method: str, metric: str, split: str = "test", setting: str = "S2") -> float:
    """Mean of ``metric`` of ``method`` over :data:`SWEEP_GAPS` (the sweep's figure of merit)."""
    values = [r["metrics"][metric] for r in results
              if r["split"] == split and r["setting"] == setting and r["method"] == method and r["gap"] in SWEEP_GAPS]
    if len(values) != len(SWEEP_GAPS):
        raise ValueError(f"results lack {method} at gaps {SWEEP_GAPS} ({split}, {setting}): evaluate those gaps.")
    return float(np.mean(values))


def _finished_run(results_dir: str, config: dict) -> dict | None:
    """The ``results.json`` of a run folder made with ``config``'s values (None: absent or another run)."""
    path = os.path.join(results_dir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    made = summary.get("config", {})
    same = all(made.get(k) == v for k, v in config.items() if k not in ("results_dir", "stage1_checkpoint"))
    return summary if same else None


def run_sweep(param: str, values: list[Any], model: str, dataset: str, seed: int, out: str,
              overrides: dict | None = None, stage1_checkpoint: str | None = None, reuse: bool = False) -> list[dict]:
    """One run per value at one seed; returns a row per value with the figures of merit. With
    ``reuse`` a value whose folder already holds the ``results.json`` of the same settings is read,
    not run again (seeds run in separate processes, then merged by one call)."""
    from recbole_scalrec.quick_start import run_recbole_scalrec

    base = stage1_checkpoint or os.path.join("saved", f"{model}-{dataset}-seed{seed}", "stage1.pth")
    rows = []
    for value in values:
        config = dict(overrides or {}, seed=seed, stage2_methods=["scalrec"], stage1_checkpoint=base,
                      results_dir=os.path.join(out, f"{dataset}-{model}-seed{seed}", f"{param}={value}"))
        config[param] = value
        summary = _finished_run(config["results_dir"], config) if reuse else None
        if summary is None:
            summary = run_recbole_scalrec(model=model, dataset=dataset, config_dict=config)
        res = summary["results"]
        rows.append({
            param: value,
            "scalrec_ndcg@10": mean_over_gaps(res, "scalrec", "ndcg@10"),
            "scalrec_hit@10": mean_over_gaps(res, "scalrec", "hit@10"),
            "cached_fusion_ndcg@10": mean_over_gaps(res, "cached_fusion", "ndcg@10"),
            "fresh_fusion_ndcg@10": mean_over_gaps(res, "fresh_fusion", "ndcg@10"),
            "valid_scalrec_ndcg@10": mean_over_gaps(res, "scalrec", "ndcg@10", split="valid"),
            "valid_cached_fusion_ndcg@10": mean_over_gaps(res, "cached_fusion", "ndcg@10", split="valid"),
            "stage2_s": summary["timings_s"].get("stage2"),
            "stage1_checkpoint": summary["stage1"].get("checkpoint"),
        })
    return rows


def merge_seeds(param: str, per_seed: dict[int, list[dict]]) -> list[dict]:
    """One row per value: the mean and std over seeds of each figure, and the per-seed rows."""
    seeds = sorted(per_seed)
    rows = []
    for k, first in enumerate(per_seed[seeds[0]]):
        row = {param: first[param], "seeds": seeds}
        for name in ("scalrec_ndcg@10", "scalrec_hit@10", "cached_fusion_ndcg@10", "fresh_fusion_ndcg@10",
                     "valid_scalrec_ndcg@10", "valid_cached_fusion_ndcg@10"):
            values = [per_seed[s][k][name] for s in seeds]
            row[name] = float(np.mean(values))
            row[name.replace("@10", "@10_std")] = float(np.std(values))
        row["per_seed"] = {str(s): per_seed[s][k] for s in seeds}
        rows.append(row)
    return rows


def draw_sweeps(folder: str, path: str) -> list[str]:
    """One panel per ``sweep-<param>.json`` in ``folder``: SCaLRec's NDCG@10 (mean ± std over seeds)
    against the value, cached and fresh fusion as references; returns the keys drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [k for k in SWEPT_KEYS if os.path.isfile(os.path.join(folder, f"sweep-{k}.json"))]
    if not params:
        raise FileNotFoundError(f"no sweep-<param>.json in {folder}; run the sweeps first.")
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.4), squeeze=False)
    for ax, param in zip(axes[0], params):
        with open(os.path.join(folder, f"sweep-{param}.json"), encoding="utf-8") as f:
            rows = sorted(json.load(f), key=lambda r: r[param])
        x = [r[param] for r in rows]
        y = np.array([r["scalrec_ndcg@10"] for r in rows])
        err = np.array([r.get("scalrec_ndcg@10_std", 0.0) for r in rows])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="SCaLRec")
        for name, style in (("cached_fusion_ndcg@10", "--"), ("fresh_fusion_ndcg@10", ":")):
            ax.plot(x, [r[name] for r in rows], style, label=name.split("_ndcg")[0].replace("_", " "))
        ax.set_xscale("log" if min(x) > 0 and max(x) / min(x) >= 20 else "linear")
        ax.set_xlabel(param)
        ax.set_ylabel("test NDCG@10, S2, mean over Δ ∈ {5, 10, 20}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return params


def _value(text: str) -> Any:
    """A command-line value as RecBole reads one (number, bool, string)."""
    from recbole_scalrec.config.configurator import _convert_value

    return _convert_value(text)


def main(argv: list[str] | None = None) -> int:
    from recbole_scalrec.config.configurator import parse_cli_overrides

    parser = argparse.ArgumentParser(prog="python -m recbole_scalrec.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--param", choices=SWEPT_KEYS + CHOICE_KEYS)
    parser.add_argument("--values", nargs="+", type=_value)
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="foursquare")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=2020, help="one seed (--seeds takes several)")
    parser.add_argument("--out", default="saved/sweeps")
    parser.add_argument("--stage1-checkpoint", default=None,
                        help="stage-1 checkpoint to share (default: saved/<model>-<dataset>-seed<seed>/stage1.pth); one seed only")
    parser.add_argument("--reuse", action="store_true",
                        help="read a value's finished run folder (same settings) instead of running it again")
    parser.add_argument("--plot", default=None, help="draw the sweeps found in this folder (with --figure)")
    parser.add_argument("--figure", default=None, help="PNG path of the drawing")
    args, rest = parser.parse_known_args(argv)
    if args.plot:
        drawn = draw_sweeps(args.plot, args.figure or os.path.join(args.plot, "sweeps.png"))
        print(json.dumps({"folder": args.plot, "figure": args.figure, "params": drawn}))
        return 0
    if not args.param or not args.values:
        parser.error("--param and --values are required (or --plot FOLDER to draw).")
    seeds = args.seeds or [args.seed]
    if args.stage1_checkpoint and len(seeds) > 1:
        parser.error("--stage1-checkpoint names one seed's stage 1; give one seed with it.")
    overrides = parse_cli_overrides(rest)
    per_seed = {seed: run_sweep(args.param, args.values, args.model, args.dataset, seed, args.out, overrides,
                                args.stage1_checkpoint, args.reuse) for seed in seeds}
    rows = merge_seeds(args.param, per_seed)
    header = (f"| {args.param} | valid SCaLRec NDCG@10 | valid cached | SCaLRec NDCG@10 | SCaLRec HR@10 | "
              f"cached fusion NDCG@10 | fresh fusion NDCG@10 |")
    lines = [f"S2, mean over gaps {list(SWEEP_GAPS)}; {args.dataset}, {args.model}, seeds {seeds} (mean ± std); test "
             f"unless marked valid (choose on valid).", "", header, "|---|---|---|---|---|---|---|"]
    lines += [f"| {r[args.param]} | {r['valid_scalrec_ndcg@10']:.4f} | {r['valid_cached_fusion_ndcg@10']:.4f} | "
              f"{r['scalrec_ndcg@10']:.4f} ± {r['scalrec_ndcg@10_std']:.4f} | "
              f"{r['scalrec_hit@10']:.4f} ± {r['scalrec_hit@10_std']:.4f} | {r['cached_fusion_ndcg@10']:.4f} | "
              f"{r['fresh_fusion_ndcg@10']:.4f} |" for r in rows]
    folder = os.path.join(args.out, f"{args.dataset}-{args.model}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"sweep-{args.param}.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, f"sweep-{args.param}.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    print("\n".join(lines))
    print(json.dumps({"param": args.param, "dataset": args.dataset, "model": args.model, "seeds": seeds, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
