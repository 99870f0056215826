"""Sensitivity sweeps of SCaLRec's stage-2 settings (rho, tau, lambda_rel, lambda_reg).

    python -m recbole_scalrec.sweep --dataset foursquare --param correction_radius --values 0.1 0.4 \
        [--model SASRec] [--seed 2020] [--out docs/results/sweeps] [--key=value ...]

Each value is one pipeline run (:func:`recbole_scalrec.quick_start.run_recbole_scalrec`) with
``stage2_methods: [scalrec]`` into ``<out>/<dataset>-<model>-seed<seed>/<param>=<value>/``, all
sharing the stage-1 checkpoint of the default run (``saved/<model>-<dataset>-seed<seed>/stage1.pth``,
trained first when missing) and the semantic cache, so only stage 2 and the evaluation run again.
The figure of merit is the paper's: test, S2, NDCG@10 / HR@10 of ``scalrec`` averaged over
``Δ ∈ {5, 10, 20}`` (``cached_fusion`` alongside as the reference). Prints a table and, as its last
line, one JSON object; writes ``sweep-<param>.json`` and ``sweep-<param>.md`` into the run folder.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

SWEEP_GAPS = (5, 10, 20)
SWEPT_KEYS = ("correction_radius", "kd_temperature", "lambda_rel", "lambda_reg")


def mean_over_gaps(results: list[dict], method: str, metric: str, split: str = "test", setting: str = "S2") -> float:
    """Mean of ``metric`` of ``method`` over :data:`SWEEP_GAPS` (the sweep's figure of merit)."""
    values = [r["metrics"][metric] for r in results
              if r["split"] == split and r["setting"] == setting and r["method"] == method and r["gap"] in SWEEP_GAPS]
    if len(values) != len(SWEEP_GAPS):
        raise ValueError(f"results lack {method} at gaps {SWEEP_GAPS} ({split}, {setting}): evaluate those gaps.")
    return float(np.mean(values))


def run_sweep(param: str, values: list[Any], model: str, dataset: str, seed: int, out: str,
              overrides: dict | None = None, stage1_checkpoint: str | None = None) -> list[dict]:
    """One run per value; returns a row per value with the figures of merit (and the run's summary
    under ``"summary"``)."""
    from recbole_scalrec.quick_start import run_recbole_scalrec

    base = stage1_checkpoint or os.path.join("saved", f"{model}-{dataset}-seed{seed}", "stage1.pth")
    rows = []
    for value in values:
        config = dict(overrides or {}, seed=seed, stage2_methods=["scalrec"], stage1_checkpoint=base,
                      results_dir=os.path.join(out, f"{dataset}-{model}-seed{seed}", f"{param}={value}"))
        config[param] = value
        summary = run_recbole_scalrec(model=model, dataset=dataset, config_dict=config)
        res = summary["results"]
        rows.append({
            param: value,
            "scalrec_ndcg@10": mean_over_gaps(res, "scalrec", "ndcg@10"),
            "scalrec_hit@10": mean_over_gaps(res, "scalrec", "hit@10"),
            "cached_fusion_ndcg@10": mean_over_gaps(res, "cached_fusion", "ndcg@10"),
            "fresh_fusion_ndcg@10": mean_over_gaps(res, "fresh_fusion", "ndcg@10"),
            "stage2_s": summary["timings_s"].get("stage2"),
            "stage1_checkpoint": summary["stage1"].get("checkpoint"),
        })
    return rows


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return float(text)


def main(argv: list[str] | None = None) -> int:
    from recbole_scalrec.config.configurator import parse_cli_overrides

    parser = argparse.ArgumentParser(prog="python -m recbole_scalrec.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--param", required=True, choices=SWEPT_KEYS)
    parser.add_argument("--values", required=True, nargs="+", type=_number)
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="foursquare")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--out", default="saved/sweeps")
    parser.add_argument("--stage1-checkpoint", default=None,
                        help="stage-1 checkpoint to share (default: saved/<model>-<dataset>-seed<seed>/stage1.pth)")
    args, rest = parser.parse_known_args(argv)
    rows = run_sweep(args.param, args.values, args.model, args.dataset, args.seed, args.out, parse_cli_overrides(rest),
                     args.stage1_checkpoint)
    header = f"| {args.param} | SCaLRec NDCG@10 | SCaLRec HR@10 | cached fusion NDCG@10 | fresh fusion NDCG@10 |"
    lines = [f"Test, S2, mean over gaps {list(SWEEP_GAPS)}; {args.dataset}, {args.model}, seed {args.seed}.", "",
             header, "|---|---|---|---|---|"]
    lines += [f"| {r[args.param]} | {r['scalrec_ndcg@10']:.4f} | {r['scalrec_hit@10']:.4f} | "
              f"{r['cached_fusion_ndcg@10']:.4f} | {r['fresh_fusion_ndcg@10']:.4f} |" for r in rows]
    folder = os.path.join(args.out, f"{args.dataset}-{args.model}-seed{args.seed}")
    with open(os.path.join(folder, f"sweep-{args.param}.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, f"sweep-{args.param}.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    print("\n".join(lines))
    print(json.dumps({"param": args.param, "dataset": args.dataset, "model": args.model, "seed": args.seed, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
