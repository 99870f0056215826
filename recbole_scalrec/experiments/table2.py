"""The paper's Table 2: deployment families compared under the same cache at one staleness gap.

    python -m recbole_scalrec.table2 --dataset redial --seeds 2020 2021 2022 [--gap 5]
        [--rows lightgcn_cloud sasrec_cloud ...] [--runs docs/results/current] [--out docs/table2] [--key=value ...]

Every row is scored on each user's test request at ``t`` by the list it would return to the user,
with one evaluator (:func:`recbole_scalrec.staleness.protocol.metrics_from_ranks`; a target outside
a reranker's candidate set is a miss): HR@5/10 and NDCG@5/10, mean ± std over the seeds. The cloud
snapshot is the one of ``t0 = t - gap`` (METHOD.md Sec. 2, 8).

Rows built here (each a RecBole model trained by RecBole's trainer on SCaLRec's split, or a
SCaLRec run):

* **Cloud** (served from the snapshot, they see ``S_{<=t0}``): ``sasrec_cloud`` and ``surge_cloud``
  (RecBole's SASRec and this package's SURGE, trained normally; full sort over all items from the
  user vector of the prefix ``S_{<=t0}``), ``lightgcn_cloud`` (RecBole's LightGCN trained on the
  graph without each user's training interactions after ``t0``,
  :class:`SnapshotGraphDataset`; full sort).
* **On-device** (``S_{<=t}``, no cloud at request time): ``llrec_device``, a compact GRU with a
  factorised item table distilled from the cloud SASRec
  (:class:`~recbole_scalrec.model.sequential_recommender.llrec.LLRec`; its parameter count and
  per-request latency are recorded), and ``sasrec_device``, the cloud's SASRec itself run on the
  fresh prefix (a device that could hold the full model).
* **Device-cloud**: ``cached_fusion`` (the fused model with the snapshot's candidates and semantics,
  S2) and ``scalrec`` (SCaLRec's estimator and calibrator on them), read from the SCaLRec run
  folders ``<runs>/<dataset>-SASRec-seed<seed>/results.json``; ``fresh_fusion`` (fresh semantics on
  the same candidates) is the bound no deployment reaches.

Each finished (row, seed) is stored in ``<out>/<dataset>/seed-<seed>/<row>.json`` and reused by a
later call with the same gap; ``<out>/<dataset>.json`` and ``<out>/<dataset>.md`` hold the table.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from recbole_scalrec.data.dataset import ProtocolOrderDataset

METRICS = ("ndcg@5", "hit@5", "ndcg@10", "hit@10")
# in this order the rows that share a trained SASRec (cloud, device, LLRec's teacher) follow each other
FAMILIES = {"lightgcn_cloud": "Cloud", "surge_cloud": "Cloud", "sasrec_cloud": "Cloud", "sasrec_device": "On-device",
            "llrec_device": "On-device",
            "cached_fusion": "Device-cloud", "scalrec": "Device-cloud", "fresh_fusion": "Bound (fresh semantics)"}
ROWS = tuple(FAMILIES)
STOCK = {"sasrec_cloud": "SASRec", "surge_cloud": "SURGE", "sasrec_device": "SASRec"}
FROM_RUN = ("cached_fusion", "scalrec", "fresh_fusion")
_FITTED: dict = {}  # the last stock model trained in this process


class SnapshotGraphDataset(ProtocolOrderDataset):
    """The cloud's interaction graph at the snapshot of the test request: RecBole's leave-one-out
    split in the protocol's order, then each user's last ``table2_gap - 1`` training interactions
    removed (with the validation item, which is never trained on, they are the ``gap`` interactions
    after ``t0``). Validation and test targets are unchanged."""

    def build(self):
        train, valid, test = super().build()
        gap = int(self.config["table2_gap"] or 5)
        uid = train.inter_feat[self.uid_field].numpy()
        order = np.argsort(uid, kind="stable")  # each user's rows in time order
        sorted_uid = uid[order]
        first = np.searchsorted(sorted_uid, sorted_uid, side="left")
        last = np.searchsorted(sorted_uid, sorted_uid, side="right") - 1
        from_end = last - np.arange(len(order))
        keep = np.zeros(len(uid), dtype=bool)
        # a user keeps at least one interaction so that the graph has the node
        keep[order] = (from_end >= gap - 1) | (np.arange(len(order)) == first)
        train.inter_feat = train.inter_feat[torch.as_tensor(np.flatnonzero(keep))]
        self.snapshot_removed = int((~keep).sum())
        return [train, valid, test]


def _metrics(ranks: np.ndarray) -> dict[str, float]:
    from recbole_scalrec.staleness.protocol import metrics_from_ranks

    m = metrics_from_ranks(ranks)
    return {k: float(m[k]) for k in METRICS}


def stock_row(row: str, dataset: str, seed: int, gap: int, overrides: dict) -> dict:
    """A row trained here: its metrics on the test requests (and what it saw)."""
    from recbole_scalrec.experiments.baselines import fit_stock_model
    from recbole_scalrec.model.fusion import score_all
    from recbole_scalrec.staleness.protocol import full_ranking_metrics

    if row == "lightgcn_cloud":
        fitted = fit_stock_model("LightGCN", dataset, seed, dict(overrides, table2_gap=gap),
                                 dataset_class=SnapshotGraphDataset)
        result = fitted.trainer.evaluate(fitted.test, load_best_model=False)
        return {"metrics": {k: float(result[k]) for k in METRICS}, "train_s": fitted.train_s,
                "sees": f"training graph without each user's last {gap} interactions before the test request "
                        f"({fitted.data.snapshot_removed} removed)"}
    extra = {}
    if row == "llrec_device":
        teacher = _stock(STOCK["sasrec_cloud"], dataset, seed, overrides)
        fitted = fit_stock_model("LLRec", dataset, seed, overrides, prepare=lambda m: m.set_teacher(teacher.model))
        extra["teacher"] = "SASRec (cloud, trained on the same split)"
    else:
        fitted = _stock(STOCK[row], dataset, seed, overrides)
    seqs = fitted.data.sequences
    test = seqs.eval_prefixes("test")
    served = seqs.shift_prefix(test, gap)[0] if row.endswith("_cloud") else test
    user_vectors, table = _serving(fitted)
    with torch.no_grad():
        seq, length = seqs.gather_sequences(torch.as_tensor(served), fitted.config["MAX_ITEM_LIST_LENGTH"])
        scores = score_all(table(), user_vectors(seq, length, seqs.prefix_users(served)), None, 0.0)
    ranks = full_ranking_metrics(scores, torch.as_tensor(seqs.targets(test)))
    if row.endswith("_device"):
        extra.update(parameters=int(sum(p.numel() for p in fitted.model.parameters())),
                     latency_us_p50=_latency_us(user_vectors, table, seq, length, seqs.prefix_users(served)))
    return {"metrics": _metrics(ranks), "train_s": fitted.train_s,
            "sees": f"S_<=t0 (t0 = t - {gap})" if row.endswith("_cloud") else "S_<=t", **extra}


def _stock(name: str, dataset: str, seed: int, overrides: dict):
    """A stock model trained once per process and setting (the cloud and device rows share it)."""
    from recbole_scalrec.experiments.baselines import fit_stock_model

    key = (name, dataset, seed, json.dumps(overrides, sort_keys=True, default=str))
    if key not in _FITTED:
        _FITTED.clear()
        _FITTED[key] = fit_stock_model(name, dataset, seed, overrides)
    return _FITTED[key]


def _serving(fitted):
    """``(user_vectors(seq, len, users), item_table())`` of a trained model: through the structure
    encoder's calling conventions, or a model's own ``forward`` and ``item_table`` (LLRec)."""
    from recbole_scalrec.model.structure_encoder import StructureEncoder

    model = fitted.model
    if hasattr(model, "item_embedding"):
        encoder = StructureEncoder(model)
        return (lambda seq, length, users: encoder(seq, length, users if encoder.needs_user else None)), \
            (lambda: encoder.item_table)
    return (lambda seq, length, users: model(seq, length)), (lambda: model.item_table)


@torch.no_grad()
def _latency_us(user_vectors, table, seq, length, users, repeats: int = 300) -> float:
    """p50 microseconds of one request (batch 1, this process's threads): user vector and full sort."""
    import time

    times = []
    items = table()
    for i in range(repeats + 20):
        j = i % len(seq)
        start = time.perf_counter()
        torch.topk(user_vectors(seq[j : j + 1], length[j : j + 1], users[j : j + 1]) @ items.T, 10)
        if i >= 20:
            times.append((time.perf_counter() - start) * 1e6)
    return float(np.percentile(times, 50))


def run_row(row: str, runs: str, dataset: str, seed: int, gap: int) -> dict:
    """A row read from the SCaLRec run folder of the seed (test, S2, the gap)."""
    path = os.path.join(runs, f"{dataset}-SASRec-seed{seed}", "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: run python run_recbole_scalrec.py --dataset={dataset} --seed={seed} "
                                f"--results_dir={os.path.dirname(path)} first.")
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    for r in summary["results"]:
        if r["split"] == "test" and r["setting"] == "S2" and r["gap"] == gap and r["method"] == row:
            return {"metrics": {k: float(r["metrics"][k]) for k in METRICS}, "results": path,
                    "sees": "snapshot candidates and semantics of t0, device structure of t"}
    raise KeyError(f"{path} has no test S2 row of {row} at gap {gap}; evaluate that gap (eval_gaps).")


def table(dataset: str, rows: dict[str, dict], seeds: list[int], gap: int) -> str:
    lines = [f"{dataset}, test, gap {gap}, mean ± std over seeds {seeds}", "",
             "| family | row | " + " | ".join(m.upper().replace("HIT", "HR") for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for name, r in rows.items():
        cells = [f"{r['mean'][m]:.4f} ± {r['std'][m]:.4f}" for m in METRICS]
        lines.append(f"| {FAMILIES[name]} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from recbole_scalrec.compat import import_recbole_sequential, patch_scipy_dok_update
    from recbole_scalrec.config.configurator import parse_cli_overrides

    parser = argparse.ArgumentParser(prog="python -m recbole_scalrec.table2", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    parser.add_argument("--gap", type=int, default=5)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--runs", default="docs/results/current", help="folder of the SCaLRec run folders")
    parser.add_argument("--out", default="docs/table2")
    args, rest = parser.parse_known_args(argv)
    overrides = parse_cli_overrides(rest)
    import_recbole_sequential()
    patch_scipy_dok_update()
    per_row: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:
        folder = os.path.join(args.out, args.dataset, f"seed-{seed}")
        os.makedirs(folder, exist_ok=True)
        for row in args.rows:
            path = os.path.join(folder, f"{row}.json")
            stored = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else None
            if stored is None or stored.get("gap") != args.gap or stored.get("overrides") != overrides:
                result = (run_row(row, args.runs, args.dataset, seed, args.gap) if row in FROM_RUN
                          else stock_row(row, args.dataset, seed, args.gap, dict(overrides, seed=seed)))
                stored = dict(result, row=row, seed=seed, gap=args.gap, overrides=overrides)
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(stored, f, indent=1)
            per_row.setdefault(row, {})[seed] = stored
    rows = {}
    for row, by_seed in per_row.items():
        values = {m: [by_seed[s]["metrics"][m] for s in args.seeds] for m in METRICS}
        rows[row] = {"family": FAMILIES[row], "mean": {m: float(np.mean(v)) for m, v in values.items()},
                     "std": {m: float(np.std(v)) for m, v in values.items()}, "per_seed": by_seed}
    text = table(args.dataset, rows, args.seeds, args.gap)
    with open(os.path.join(args.out, f"{args.dataset}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(args.out, f"{args.dataset}.json"), "w", encoding="utf-8") as f:
        json.dump({"dataset": args.dataset, "gap": args.gap, "seeds": args.seeds, "rows": rows}, f, indent=1)
    print(text)
    print(json.dumps({"dataset": args.dataset, "gap": args.gap, "seeds": args.seeds,
                      "rows": {k: {"family": v["family"], "mean": v["mean"], "std": v["std"]} for k, v in rows.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
