"""Stock RecBole models on SCaLRec's split, by RecBole's own trainer and evaluator, beside SCaLRec.

    python -m recbole_scalrec.baselines --models SASRec GRU4Rec BERT4Rec LightGCN --dataset foursquare \
        [--seed 2020] [--epochs 30] [--scalrec-results DIR] [--mask-history] [--key=value ...]

Each model is RecBole's class, trained by RecBole's ``Trainer`` (this package's subclass only writes
safe checkpoints) with validation early stopping on NDCG@10 (``epochs``, ``stopping_step``), and
tested by RecBole's evaluator with full ranking over all items. The data are exactly SCaLRec's: the
same atomic files, filters, order and leave-one-out split (a sequential model trains on
:class:`~recbole_scalrec.data.dataset.SCaLRecDataset`, a general one such as LightGCN on
:class:`~recbole_scalrec.data.dataset.ProtocolOrderDataset`), so every user's test target is the one
SCaLRec is tested on.

One difference between RecBole's two families is taken out: for a general model RecBole's
full-sort evaluation removes the user's training items from the ranking, for a sequential model it
does not. Here no model's ranking is masked (the next item may be one the user has seen: on
Foursquare most are); ``--mask-history`` restores RecBole's masking for the general models.

SCaLRec's row is its fused model's full-sort test result (``full_ranking.fused`` of the run's
``results.json``; ``--scalrec-results``, default ``saved/SASRec-<dataset>-seed<seed>``), measured
by the pipeline on the same test requests. Prints one table; the last line is one JSON object with
one entry per model.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

METRICS = ("hit@5", "ndcg@5", "hit@10", "ndcg@10")
NEGATIVE_SAMPLING = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0}


def _trainer_class(mask_history: bool, base=None):
    """``base`` (the model's own trainer, default this package's ``Trainer``) whose full-sort scores are
    not masked by the training history unless asked."""
    from recbole_scalrec.trainer import Trainer

    class BaselineTrainer(base or Trainer):
        """The model's trainer; full-sort scores are not masked by the training history unless asked."""

        def _full_sort_batch_eval(self, batched_data):
            interaction, history_index, positive_u, positive_i = batched_data
            return super()._full_sort_batch_eval(
                (interaction, history_index if mask_history else None, positive_u, positive_i))

    return BaselineTrainer


@dataclass
class FittedModel:
    """A stock RecBole model trained by RecBole's trainer on SCaLRec's split, with what tests it."""

    name: str
    general: bool
    config: Any
    data: Any  # the dataset (its ``sequences`` hold the protocol's order)
    model: Any
    trainer: Any
    test: Any  # RecBole's test dataloader
    train_s: float


def fit_stock_model(name: str, dataset: str, seed: int, overrides: dict, mask_history: bool = False,
                    dataset_class=None, prepare=None, keep: str | None = None) -> FittedModel:
    """Train one stock RecBole model (validation early stopping on NDCG@10) on SCaLRec's data, order
    and split: a sequential model on :class:`SCaLRecDataset`, a general one on
    :class:`ProtocolOrderDataset` (or ``dataset_class``); ``prepare(model)`` runs before training
    (e.g. to hand a distilled model its teacher); the best epoch's weights are loaded. With ``keep``
    (a file path) the trained weights are stored there, and a later call with the same path loads
    them instead of training again (the caller keys the path by everything the training depends on)."""
    from recbole.data import data_preparation
    from recbole.utils import ModelType, init_seed

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.dataset import ProtocolOrderDataset, SCaLRecDataset
    from recbole_scalrec.data.prepare import ensure_prepared
    from recbole_scalrec.trainer.trainer import load_checkpoint
    from recbole_scalrec.utils import get_model, get_trainer

    cfg = {"seed": seed, "metrics": ["Hit", "NDCG"], "topk": [5, 10], "valid_metric": "NDCG@10", "eval_step": 1,
           "show_progress": False, "state": "WARNING", **overrides}
    config = Config(model=name, dataset=dataset, config_dict=cfg)
    ensure_prepared(config["dataset"], os.path.dirname(os.path.normpath(config["data_path"])))
    general = config["MODEL_TYPE"] != ModelType.SEQUENTIAL
    if general and "train_neg_sample_args" not in overrides:  # pairwise models need negatives (ours: CE, none)
        config = Config(model=name, dataset=dataset, config_dict=dict(cfg, train_neg_sample_args=NEGATIVE_SAMPLING))
    init_seed(seed, config["reproducibility"])
    data = (dataset_class or (ProtocolOrderDataset if general else SCaLRecDataset))(config)
    train, valid, test = data_preparation(config, data)
    init_seed(seed, config["reproducibility"])
    model = get_model(name)(config, train.dataset).to(config["device"])
    if prepare is not None:
        prepare(model)
    trainer = _trainer_class(mask_history, get_trainer(config["MODEL_TYPE"], name))(config, model)
    if keep and os.path.isfile(keep):
        stored = load_checkpoint(keep)
        model.load_state_dict(stored["state_dict"])
        seconds = float(stored["train_s"])
        if "phase_log" in stored:  # what a multi-phase trainer recorded of its phases
            trainer.phase_log = stored["phase_log"]
    else:
        start = time.perf_counter()
        trainer.fit(train, valid, saved=True, show_progress=False)
        seconds = time.perf_counter() - start
        model.load_state_dict(load_checkpoint(trainer.saved_model_file)["state_dict"])
        if keep:
            os.makedirs(os.path.dirname(os.path.abspath(keep)), exist_ok=True)
            kept = {"state_dict": model.state_dict(), "train_s": torch.tensor(seconds)}
            if hasattr(trainer, "phase_log"):
                kept["phase_log"] = trainer.phase_log
            torch.save(kept, keep)
    model.eval()
    return FittedModel(name, general, config, data, model, trainer, test, round(seconds, 1))


def train_baseline(name: str, dataset: str, seed: int, overrides: dict, mask_history: bool = False) -> dict:
    """Train and test one stock RecBole model on SCaLRec's split; its metrics, time and epochs."""
    fitted = fit_stock_model(name, dataset, seed, overrides, mask_history)
    result = fitted.trainer.evaluate(fitted.test, load_best_model=False)
    n_test = len(fitted.test.dataset) if not fitted.general else int(fitted.data.sequences.n_users)
    return {"model": name, "family": "general" if fitted.general else "sequential",
            "metrics": {k: float(result[k]) for k in METRICS}, "train_s": fitted.train_s,
            "epochs_run": len(fitted.trainer.train_loss_dict), "n_test": n_test,
            "parameters": int(sum(p.numel() for p in fitted.model.parameters()))}


def scalrec_row(path: str) -> dict | None:
    """SCaLRec's fused full-sort test metrics from a run folder's ``results.json`` (None when absent)."""
    file = os.path.join(path, "results.json")
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        run = json.load(f)
    fused = run["full_ranking"]["fused"]
    return {"model": f"SCaLRec ({run['model']}, fused)", "family": "SCaLRec", "metrics": {k: float(fused[k]) for k in METRICS},
            "n_test": run.get("n_users"), "results": file}


def table(rows: list[dict]) -> str:
    lines = ["| model | family | epochs | train s | HR@5 | NDCG@5 | HR@10 | NDCG@10 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['model']} | {r['family']} | {r.get('epochs_run', '')} | {r.get('train_s', '')} | "
                     + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from recbole_scalrec.compat import import_recbole_sequential, patch_scipy_dok_update
    from recbole_scalrec.config.configurator import parse_cli_overrides

    parser = argparse.ArgumentParser(prog="python -m recbole_scalrec.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["SASRec", "GRU4Rec", "BERT4Rec", "LightGCN"])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap (default: the configuration's, 30)")
    parser.add_argument("--scalrec-results", default=None,
                        help="SCaLRec run folder with results.json (default saved/SASRec-<dataset>-seed<seed>)")
    parser.add_argument("--mask-history", action="store_true",
                        help="RecBole's masking of training items in general models' full-sort ranking")
    args, rest = parser.parse_known_args(argv)
    overrides = parse_cli_overrides(rest)
    if args.epochs:
        overrides["epochs"] = args.epochs
    import_recbole_sequential()
    patch_scipy_dok_update()
    rows = [train_baseline(m, args.dataset, args.seed, overrides, args.mask_history) for m in args.models]
    ours = scalrec_row(args.scalrec_results or os.path.join("saved", f"SASRec-{args.dataset}-seed{args.seed}"))
    print(f"{args.dataset}, seed {args.seed}: test full-sort ranking over all items, one request per user "
          f"(SCaLRec's split; history {'masked for general models' if args.mask_history else 'not masked'})\n")
    print(table(rows + ([ours] if ours else [])))
    if ours is None:
        print("\nSCaLRec: no results.json found; run python run_recbole_scalrec.py --dataset=" + args.dataset
              + f" --seed={args.seed} first, or pass --scalrec-results DIR.")
    n_test = {r["n_test"] for r in rows + ([ours] if ours else []) if r.get("n_test")}
    if len(n_test) > 1:
        print(f"\nwarning: the rows were tested on different numbers of requests {sorted(n_test)}.")
    print(json.dumps({"dataset": args.dataset, "seed": args.seed, "mask_history": args.mask_history,
                      "models": {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in rows},
                      "scalrec": ours}, default=lambda v: float(v) if isinstance(v, np.floating) else str(v)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
