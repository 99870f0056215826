"""Structure-only backbones (SURGE, SASRec, GRU4Rec) under one training budget: full-ranking
HR@10 / NDCG@10 on the test split and seconds per training epoch.

    python benchmarks/backbones.py [--datasets foursquare ml-100k] [--models SURGE SASRec GRU4Rec]
                                   [--epochs 20] [--batch-size 256] [--embedding-size 64]
                                   [--max-len 50] [--threads 2] [--data-path dataset]

Every model gets the same epochs (no early stopping; the checkpoint with the best valid NDCG@10
is tested), batch size, embedding size (``embedding_size`` = ``hidden_size``), maximum sequence
length and full-softmax CE loss, and is evaluated by RecBole's full-sort evaluation through
``recbole_scalrec.trainer.Trainer`` (leave-one-out, time order; ``properties/overall.yaml``).
A dataset whose atomic files are missing is prepared from the shared raw copy as the pipeline does
(``foursquare``, ``redial``; ``ml-100k`` ships with RecBole), or skipped with a message when that
copy is missing too.

Last line: one JSON object with the settings, per dataset and model ``hr@10``, ``ndcg@10``,
``sec_per_epoch``, ``epochs``, and the skipped datasets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_scalrec.config import Config
from recbole_scalrec.data.prepare import ensure_prepared
from recbole_scalrec.trainer import Trainer
from recbole_scalrec.utils import get_model


def run_one(model_name: str, dataset: str, args, workdir: str) -> dict | None:
    """Train and test one model on one dataset; None when the dataset's files are missing."""
    config = Config(model=model_name, dataset=dataset, config_dict={
        "data_path": args.data_path,
        "checkpoint_dir": os.path.join(workdir, "saved"),
        "epochs": args.epochs,
        "stopping_step": args.epochs + 1,  # equal budget: no early stopping
        "eval_step": 1,
        "train_batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "embedding_size": args.embedding_size,
        "hidden_size": args.embedding_size,
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "seed": args.seed,
        "show_progress": False,
        "state": "WARNING",
    })
    try:  # as the pipeline: convert from the shared raw copy when the atomic files are missing
        ensure_prepared(dataset, os.path.dirname(os.path.normpath(config["data_path"])))
    except FileNotFoundError as exc:
        print(f"[skip] {exc}", file=sys.stderr)
        return None
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(model_name)(config, train.dataset).to(config["device"])
    trainer = Trainer(config, model)

    epoch_seconds: list[float] = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*a, **k):
        start = time.perf_counter()
        out = train_epoch(*a, **k)
        epoch_seconds.append(time.perf_counter() - start)
        return out

    trainer._train_epoch = timed_train_epoch
    best_valid, _ = trainer.fit(train, valid, verbose=False, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    return {
        "hr@10": float(result["hit@10"]),
        "ndcg@10": float(result["ndcg@10"]),
        "valid_ndcg@10": float(best_valid),
        "sec_per_epoch": sum(epoch_seconds) / max(len(epoch_seconds), 1),
        "epochs": len(epoch_seconds),
        "params": sum(p.numel() for p in model.parameters()),
        "users": int(data.user_num - 1),
        "items": int(data.item_num - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["foursquare", "ml-100k"])
    parser.add_argument("--models", nargs="+", default=["SURGE", "SASRec", "GRU4Rec"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-batch-size", type=int, default=1024)
    parser.add_argument("--embedding-size", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--data-path", default="dataset",
                        help="folder holding <dataset>/<dataset>.inter (ml-100k: RecBole's shipped copy unless "
                             "it is there too); missing datasets are prepared from the shared raw copies, as the "
                             "pipeline does")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # pandas / torch.amp notices from RecBole

    results: dict[str, dict] = {}
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="backbones-") as workdir:
        cwd = os.getcwd()
        args.data_path = os.path.abspath(args.data_path)
        os.chdir(workdir)  # RecBole's trainer writes log_tensorboard/ into the working directory
        try:
            for dataset in args.datasets:
                for model_name in args.models:
                    figures = run_one(model_name, dataset, args, workdir)
                    if figures is None:
                        skipped.append(dataset)
                        break
                    results.setdefault(dataset, {})[model_name] = figures
                    print(f"[done] {dataset} {model_name}: HR@10 {figures['hr@10']:.4f} "
                          f"NDCG@10 {figures['ndcg@10']:.4f} {figures['sec_per_epoch']:.2f} s/epoch",
                          file=sys.stderr, flush=True)
        finally:
            os.chdir(cwd)

    header = f"{'dataset':<12} {'model':<8} {'HR@10':>7} {'NDCG@10':>8} {'s/epoch':>8} {'epochs':>6} {'params':>9}"
    print(header)
    print("-" * len(header))
    for dataset, by_model in results.items():
        for model_name, f in by_model.items():
            print(f"{dataset:<12} {model_name:<8} {f['hr@10']:>7.4f} {f['ndcg@10']:>8.4f} "
                  f"{f['sec_per_epoch']:>8.2f} {f['epochs']:>6d} {f['params']:>9d}")
    for dataset in skipped:
        print(f"{dataset:<12} skipped: dataset files missing")
    settings = {
        "epochs": args.epochs, "batch_size": args.batch_size, "embedding_size": args.embedding_size,
        "max_len": args.max_len, "threads": args.threads, "seed": args.seed,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    print(json.dumps({"settings": settings, "results": results, "skipped": skipped}))


if __name__ == "__main__":
    main()
