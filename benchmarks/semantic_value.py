"""What the semantic channel buys: stock RecBole backbone vs our structure loop vs the fused model.

    python benchmarks/semantic_value.py --dataset redial --model SASRec --seeds 2020 2021 2022
        [--epochs N] [--train-prefixes all|encoded] [--item-init lm|random]
        [--conditioning none|center|whiten] [--missing-semantics latest|structure_only]
        [--fusion-weight LAMBDA] [--lm-precision auto|fp32|bf16|int8] [--fused-only] [--seed-dir DIR]

Side by side in one run, per seed, on one split and one order (each user's interactions sorted as
RecBole sorts them, ``timestamp_sort: recbole``, so the stock model and ours see the same training
targets and test requests) and scored by one evaluator (full ranking over all items on each user's
test request, :func:`recbole_scalrec.staleness.protocol.full_ranking_metrics`):

(a) ``stock``: RecBole's own backbone class trained by RecBole's ``Trainer`` (``create_dataset``,
    ``data_preparation``, ``fit`` with validation early stopping on NDCG@10, the same ``epochs``
    cap and ``stopping_step`` as our stage 1) on all training prefixes;
(b) ``structure``: our stage-1 loop with structure-only logits on all training prefixes;
(c) ``fused``: the pipeline's stage 1 (fresh semantics, Eq. 4), with the levers as configured;
(d) ``semantic``: the fused model's semantic channel alone, ``<z_sem(t), v_i>``;
(e) ``zero_shot``: no training at all, cos(centred h(t), centred LM(item text)); and ``popularity``
    (training-target counts).

Then, on the candidate protocol (METHOD.md Sec. 2), fresh minus cached fusion at gaps 5, 10, 20,
S1 and S2, relative to fresh. The flags turn each lever off (stage 1 on all prefixes, the LM item
table, conditioned ``h``), or set the fusion weight of Eq. 4, so a run with a flag against one
without shows what that lever buys.
``--fused-only`` skips (a) and (b), which no lever changes (their fields are then null).
``--seed-dir DIR`` writes each finished seed to ``DIR/seed-<seed>.json`` (metrics and per-user ranks)
and reads a seed found there, made with the same flags, instead of training it again: seeds can run
in separate processes, and a run that stops keeps the seeds it finished. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_scalrec.config import Config
from recbole_scalrec.data.prepare import ensure_prepared
from recbole_scalrec.model.fusion import FusionModel, score_all
from recbole_scalrec.model.item_init import item_text_vectors
from recbole_scalrec.staleness.protocol import evaluate_staleness, full_ranking_metrics, metrics_from_ranks
from recbole_scalrec.quick_start import build_run
from recbole_scalrec.semantic.encoder import SemanticEncoder
from recbole_scalrec.trainer import Trainer
from recbole_scalrec.trainer.trainer import load_checkpoint
from recbole_scalrec.trainer.fusion_trainer import FusionTrainer
from recbole_scalrec.utils import get_model

GAPS = (5, 10, 20)


def overrides(args, seed: int, workdir: str) -> dict:
    cfg = {"seed": seed, "timestamp_sort": "recbole", "stage2_methods": [], "eval_gaps": [0, *GAPS],
           "stage1_train_prefixes": args.train_prefixes, "item_embedding_init": args.item_init,
           "semantic_conditioning": args.conditioning, "stage1_missing_semantics": args.missing_semantics,
           "results_dir": os.path.join(workdir, f"run-{seed}"), "checkpoint_dir": workdir, "show_progress": False}
    if args.epochs:
        cfg["epochs"] = args.epochs
    if args.fusion_weight is not None:
        cfg["fusion_weight"] = args.fusion_weight
    if args.lm_precision is not None:
        cfg["lm_precision"] = args.lm_precision
    return cfg


def ranked(scores: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    return full_ranking_metrics(scores, torch.as_tensor(targets, dtype=torch.long))


def stock(args, seed: int, workdir: str, sequences, test_ids: np.ndarray) -> dict:
    """(a) RecBole's backbone and trainer; tested on our test requests (same order) by our evaluator."""
    config = Config(model=args.model, dataset=args.dataset, config_dict={
        **overrides(args, seed, workdir), "valid_metric": "NDCG@10", "metrics": ["Hit", "NDCG"], "topk": [10],
        "eval_step": 1, "state": "WARNING"})
    init_seed(seed, config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    init_seed(seed, config["reproducibility"])
    model = get_model(args.model)(config, train.dataset).to(config["device"])
    start = time.perf_counter()
    trainer = Trainer(config, model)
    trainer.fit(train, valid, saved=True, show_progress=False)  # saved: the best epoch's weights, in workdir
    seconds = time.perf_counter() - start
    model.load_state_dict(load_checkpoint(trainer.saved_model_file)["state_dict"])
    model.eval()
    with torch.no_grad():
        seq, length = sequences.gather_sequences(torch.as_tensor(test_ids), config["MAX_ITEM_LIST_LENGTH"])
        scores = score_all(model.item_embedding.weight, model(seq, length), None, 0.0)
    ranks = ranked(scores, sequences.targets(test_ids))
    return {"metrics": metrics_from_ranks(ranks), "ranks": ranks, "train_s": seconds,
            "epochs_run": len(trainer.train_loss_dict)}


def structure(args, seed: int, workdir: str, run) -> dict:
    """(b) Our loop, structure-only logits, every training prefix, early stopping."""
    config = Config(model=args.model, dataset=args.dataset, config_dict=overrides(args, seed, workdir))
    from recbole_scalrec.quick_start import load_dataset

    init_seed(seed, config["reproducibility"])
    data = load_dataset(config)
    init_seed(seed, config["reproducibility"])
    model = FusionModel(get_model(args.model)(config, data), lm_dim=1).to(config["device"])
    trainer = FusionTrainer(config, model, run.sequences, semantic=None)
    start = time.perf_counter()
    info = trainer.fit(run.sequences.train_prefixes(), run.prefixes["valid"])
    test = run.prefixes["test"]
    with torch.no_grad():
        model.eval()
        seq, length = run.sequences.gather_sequences(torch.as_tensor(test), config["MAX_ITEM_LIST_LENGTH"])
        ranks = ranked(model.full_scores(model.structure(seq, length), None), run.sequences.targets(test))
    return {"metrics": metrics_from_ranks(ranks), "ranks": ranks, "train_s": time.perf_counter() - start,
            "epochs_run": info["epochs_run"]}


def fused_parts(run) -> dict:
    """(c) fused and (d) semantic channel alone, full ranking on test."""
    test = run.prefixes["test"]
    rows = run.states.rows(test)
    targets = run.sequences.targets(test)
    z_str, z_sem = run.states.z_str[rows], run.states.z_sem[rows]
    fused = ranked(run.fusion.full_scores(z_str, z_sem), targets)
    semantic = ranked(score_all(run.item_table, z_sem, None, 0.0), targets)  # <z_sem, v_i> alone
    return {"fused": {"metrics": metrics_from_ranks(fused), "ranks": fused},
            "semantic": {"metrics": metrics_from_ranks(semantic), "ranks": semantic}}


def training_free(run, item_texts) -> dict:
    """(e) zero-shot LM retrieval and popularity, full ranking on test."""
    config = run.config
    encoder = SemanticEncoder.from_config(config)
    ids, vectors = item_text_vectors(item_texts, encoder, config["semantic_cache_dir"], config["dataset"])
    test = run.prefixes["test"]
    targets = run.sequences.targets(test)
    semantic = run.info["semantic"]  # h(t) of every encoded prefix
    h = semantic(test).to(torch.float64)
    grid_mean = semantic(run.prefixes["grid"]).to(torch.float64).mean(0)
    items = torch.as_tensor(vectors, dtype=torch.float64)
    items = torch.nn.functional.normalize(items - items.mean(0), dim=1)
    user = torch.nn.functional.normalize(h - grid_mean, dim=1)
    scores = torch.full((len(test), run.sequences.n_items), -torch.inf, dtype=torch.float64)
    scores[:, torch.as_tensor(ids)] = user @ items.T
    zero = ranked(scores, targets)
    counts = np.bincount(run.sequences.targets(run.sequences.train_prefixes()), minlength=run.sequences.n_items)
    pop = torch.as_tensor(counts, dtype=torch.float64).repeat(len(test), 1)
    pop[:, 0] = -torch.inf
    popular = ranked(pop, targets)
    return {"zero_shot": {"metrics": metrics_from_ranks(zero), "ranks": zero},
            "popularity": {"metrics": metrics_from_ranks(popular), "ranks": popular}}


def staleness_gaps(run) -> dict:
    """Fresh minus cached fusion on the candidate protocol, relative to fresh, per setting and gap."""
    rows = evaluate_staleness(states=run.states, sequences=run.sequences, item_table=run.item_table,
                              prefix_ids=run.prefixes["test"], gaps=list(GAPS), settings=["S1", "S2"],
                              methods=["fresh_fusion", "cached_fusion"], fusion_weight=run.config["fusion_weight"],
                              batch_size=run.config["eval_batch_size"])
    ndcg = {(r["setting"], r["gap"], r["method"]): r["metrics"]["ndcg@10"] for r in rows}
    out = {}
    for setting in ("S1", "S2"):
        out[setting] = {str(g): (ndcg[(setting, g, "fresh_fusion")] - ndcg[(setting, g, "cached_fusion")])
                        / max(ndcg[(setting, g, "fresh_fusion")], 1e-12) for g in GAPS}
        out[setting + "_fresh"] = {str(g): ndcg[(setting, g, "fresh_fusion")] for g in GAPS}
    return out


def one_seed(args, seed: int, workdir: str) -> dict:
    cfg = overrides(args, seed, workdir)
    run = build_run(model=args.model, dataset=args.dataset, config_dict=cfg, saved=False)
    from recbole_scalrec.data.item_text import load_item_texts
    from recbole_scalrec.quick_start import load_dataset

    data = load_dataset(run.config)
    item_texts = load_item_texts(run.config, data)
    out = {"seed": seed, "stage1": {k: v for k, v in run.info["stage1"].items() if k != "history"},
           "stage1_s": run.timer.seconds.get("stage1")}
    out.update(fused_parts(run))
    out.update(training_free(run, item_texts))
    out["staleness"] = staleness_gaps(run)
    if not args.fused_only:
        out["structure"] = structure(args, seed, workdir, run)
        out["stock"] = stock(args, seed, workdir, run.sequences, run.prefixes["test"])
    return out


def lever_args(args) -> dict:
    """The flags that change a seed's result (what a stored seed must match)."""
    keys = ("dataset", "model", "epochs", "train_prefixes", "item_init", "conditioning", "missing_semantics", "fused_only")
    out = {k: getattr(args, k) for k in keys + (("fusion_weight",) if args.fusion_weight is not None else ())}
    out["lm_precision"] = args.lm_precision or "auto"  # the yaml's default
    return out


def save_seed(path: str, args, result: dict) -> None:
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, (np.integer, np.floating)):
            return value.item()
        return value

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"args": lever_args(args), "result": plain(result)}, f)
    os.replace(path + ".tmp", path)


def load_seed(path: str, args) -> dict | None:
    """A stored seed made with the same flags, ranks back as arrays; None when absent or made otherwise."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        stored = json.load(f)
    made = dict(stored["args"])
    made.setdefault("lm_precision", "fp32")  # seeds stored before the key existed ran the LM at fp32
    if made != lever_args(args):
        raise SystemExit(f"{path} was made with {made}, not {lever_args(args)}: use another --seed-dir "
                         f"(or the flags it was made with).")
    result = stored["result"]
    for value in result.values():
        if isinstance(value, dict) and "ranks" in value:
            value["ranks"] = np.asarray(value["ranks"])
    return result


def paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Wilcoxon signed-rank p over users of NDCG@10 per request (rank -> 1/log2(rank+1) within top 10)."""
    from scipy.stats import wilcoxon

    def gain(r):
        return np.where((r >= 1) & (r <= 10), 1.0 / np.log2(np.maximum(r, 1) + 1.0), 0.0)

    d = gain(a) - gain(b)
    return float(wilcoxon(d).pvalue) if np.any(d) else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    parser.add_argument("--epochs", type=int, default=0, help="cap on epochs for every trained model (0: the yaml's)")
    parser.add_argument("--train-prefixes", default="all", choices=["all", "encoded"])
    parser.add_argument("--item-init", default="lm", choices=["lm", "random"])
    parser.add_argument("--conditioning", default="whiten", choices=["none", "center", "whiten"])
    parser.add_argument("--missing-semantics", default="latest", choices=["latest", "structure_only"])
    parser.add_argument("--fusion-weight", type=float, default=None, help="lambda of Eq. 4 (default: the yaml's)")
    parser.add_argument("--lm-precision", default=None, choices=["auto", "fp32", "bf16", "int8"],
                        help="the LM's precision (default: the yaml's); records made before lm_precision existed are fp32")
    parser.add_argument("--fused-only", action="store_true", help="skip the stock and structure-only baselines")
    parser.add_argument("--seed-dir", default=None, help="keep each finished seed in DIR/seed-<seed>.json and reuse it")
    args = parser.parse_args()
    config = Config(model=args.model, dataset=args.dataset)
    ensure_prepared(args.dataset, os.path.dirname(os.path.normpath(config["data_path"])))
    names = ("stock", "structure", "fused", "semantic", "zero_shot", "popularity")[2 * args.fused_only:]
    per_seed = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            path = os.path.join(args.seed_dir, f"seed-{seed}.json") if args.seed_dir else None
            stored = load_seed(path, args) if path else None
            per_seed.append(stored if stored is not None else one_seed(args, seed, workdir))
            if path and stored is None:
                save_seed(path, args, per_seed[-1])
            s = per_seed[-1]
            print(f"seed {seed}: " + ", ".join(f"{k} {s[k]['metrics']['ndcg@10']:.4f}" for k in names), flush=True)
    print(f"\n{args.dataset} / {args.model}, seeds {args.seeds}; levers: train_prefixes={args.train_prefixes}, "
          f"item_init={args.item_init}, conditioning={args.conditioning}, missing_semantics={args.missing_semantics}"
          + (f", fusion_weight={args.fusion_weight}" if args.fusion_weight is not None else "")
          + (f", lm_precision={args.lm_precision}" if args.lm_precision is not None else ""))
    print(f"{'model':<12}{'HR@10':>18}{'NDCG@10':>18}")
    summary = {}
    for n in names:
        hr = [s[n]["metrics"]["hit@10"] for s in per_seed]
        nd = [s[n]["metrics"]["ndcg@10"] for s in per_seed]
        summary[n] = float(np.mean(nd))
        print(f"{n:<12}{np.mean(hr):>10.4f} ± {np.std(hr):.4f}{np.mean(nd):>10.4f} ± {np.std(nd):.4f}")

    def pooled(name):
        return np.concatenate([s[name]["ranks"] for s in per_seed])

    tests = {f"{a}_vs_{b}_p": paired_p(pooled(a), pooled(b))
             for a, b in (("fused", "stock"), ("fused", "structure"), ("structure", "stock"), ("semantic", "zero_shot"))
             if a in names and b in names}
    for name, p in tests.items():
        print(f"{name[:-2].replace('_vs_', ' vs ')}, paired Wilcoxon over (seed, user) NDCG@10: p = {p:.3g}")
    gaps = {st: {str(g): float(np.mean([s["staleness"][st][str(g)] for s in per_seed])) for g in GAPS} for st in ("S1", "S2")}
    for st in ("S1", "S2"):
        print(f"fresh - cached fusion, {st}, relative to fresh: " + ", ".join(f"gap {g}: {v:+.3f}" for g, v in gaps[st].items()))
    for s in per_seed if not args.fused_only else ():
        print(f"seed {s['seed']}: stage-1 epochs {s['stage1'].get('epochs_run')}, {s['stage1'].get('n_train_prefixes')} "
              f"training prefixes; stock epochs {s['stock']['epochs_run']} ({s['stock']['train_s']:.0f} s), "
              f"structure epochs {s['structure']['epochs_run']} ({s['structure']['train_s']:.0f} s), "
              f"stage 1 {s['stage1_s']:.0f} s; item init {s['stage1'].get('item_embedding_init')}")
    print(json.dumps({
        "dataset": args.dataset, "model": args.model, "seeds": args.seeds,
        "levers": {"train_prefixes": args.train_prefixes, "item_init": args.item_init,
                   "conditioning": args.conditioning, "missing_semantics": args.missing_semantics, "epochs": args.epochs,
                   **{k: getattr(args, k) for k in ("fusion_weight", "lm_precision") if getattr(args, k) is not None}},
        "stock_ndcg@10": summary.get("stock"), "structure_ndcg@10": summary.get("structure"),
        "fused_ndcg@10": summary["fused"],
        "fused_over_stock": summary["fused"] / summary["stock"] if "stock" in summary else None, **tests,
        "semantic_ndcg@10": summary["semantic"], "zero_shot_ndcg@10": summary["zero_shot"],
        "popularity_ndcg@10": summary["popularity"],
        "s1_fresh_minus_cached": gaps["S1"], "s2_fresh_minus_cached": gaps["S2"],
    }))


if __name__ == "__main__":
    main()
