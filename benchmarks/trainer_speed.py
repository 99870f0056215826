"""Our training loop vs RecBole's stock trainer, same backbone, data and budget, side by side.

    python benchmarks/trainer_speed.py [--model SASRec] [--dataset ml-100k] [--epochs 3] [--no-compile]

RecBole: ``create_dataset`` + ``data_preparation`` + ``Trainer.fit`` (in a fresh temporary
checkpoint folder, so no saved dataset is unpickled) (its per-batch ``Interaction`` pipeline; our
subclass only changes how checkpoints are written). Ours: :class:`FusionTrainer` in structure-only
mode, batches gathered straight from the per-user sequences as tensors, optionally
``torch.compile``d. Both train the same model class from the same seed on the same training
prefixes (leave-one-out, time order) with CE over all items, batch size and learning rate equal,
for the same number of epochs without early stopping, and are tested by full ranking on the test
requests. Last line: one JSON object with ``recbole_s_per_epoch``, ``ours_s_per_epoch``,
``speedup`` (target >= 1.5) and both test NDCG@10 / HR@10.
"""
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
from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.fusion import FusionModel
from recbole_scalrec.quick_start import load_dataset
from recbole_scalrec.trainer import Trainer
from recbole_scalrec.trainer.fusion_trainer import FusionTrainer
from recbole_scalrec.utils import get_model


def make_config(args, workdir: str) -> Config:
    return Config(model=args.model, dataset=args.dataset, config_dict={
        "epochs": args.epochs, "train_batch_size": args.batch_size, "eval_batch_size": 1024, "state": "WARNING",
        "checkpoint_dir": workdir, "show_progress": False, "eval_step": args.epochs, "stopping_step": args.epochs + 1,
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "compile": args.compile,
    })


def run_recbole(args, workdir: str) -> dict:
    config = make_config(args, workdir)
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(args.model)(config, train.dataset).to(config["device"])
    trainer = Trainer(config, model)
    start = time.perf_counter()
    trainer.fit(train, valid_data=None, saved=False, show_progress=False)
    seconds = time.perf_counter() - start
    result = trainer.evaluate(test, load_best_model=False)
    return {"s_per_epoch": seconds / args.epochs, "ndcg@10": float(result["ndcg@10"]), "hit@10": float(result["hit@10"]),
            "n_train": len(train.dataset)}


def run_ours(args, workdir: str) -> dict:
    config = make_config(args, workdir)
    init_seed(config["seed"], config["reproducibility"])
    data = load_dataset(config)
    sequences = UserSequences.from_dataset(data)
    init_seed(config["seed"], config["reproducibility"])
    model = FusionModel(get_model(args.model)(config, data), lm_dim=1).to(config["device"])
    trainer = FusionTrainer(config, model, sequences, semantic=None)
    train_ids = sequences.train_prefixes()
    rng = np.random.default_rng(config["seed"])
    if args.compile:  # compile outside the timed epochs (a one-off cost, reported)
        start = time.perf_counter()
        trainer.train_epoch(train_ids[: config["train_batch_size"] * 2], rng)
        compile_s = time.perf_counter() - start
    else:
        compile_s = 0.0
    start = time.perf_counter()
    for _ in range(args.epochs):
        trainer.train_epoch(train_ids, rng)
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate(sequences.eval_prefixes("test"))["structure_only"]
    return {"s_per_epoch": seconds / args.epochs, "compile_s": compile_s, "ndcg@10": metrics["ndcg@10"],
            "hit@10": metrics["hit@10"], "n_train": int(len(train_ids))}


def main() -> None:
    parser = argparse.ArgumentParser(description="our training loop vs RecBole's trainer")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        recbole = run_recbole(args, workdir)
        ours = run_ours(args, workdir)
    figures = {
        "model": args.model, "dataset": args.dataset, "epochs": args.epochs, "batch_size": args.batch_size,
        "compile": args.compile, "threads": torch.get_num_threads(),
        "recbole_s_per_epoch": recbole["s_per_epoch"], "ours_s_per_epoch": ours["s_per_epoch"],
        "ours_compile_s": ours["compile_s"], "speedup": recbole["s_per_epoch"] / ours["s_per_epoch"],
        "recbole_ndcg@10": recbole["ndcg@10"], "ours_ndcg@10": ours["ndcg@10"],
        "recbole_hit@10": recbole["hit@10"], "ours_hit@10": ours["hit@10"],
        "recbole_n_train": recbole["n_train"], "ours_n_train": ours["n_train"],
    }
    print(f"RecBole {figures['recbole_s_per_epoch']:.1f} s/epoch (NDCG@10 {recbole['ndcg@10']:.4f}); ours "
          f"{figures['ours_s_per_epoch']:.1f} s/epoch (NDCG@10 {ours['ndcg@10']:.4f}); speedup {figures['speedup']:.2f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
