"""What each stage-1 speed switch buys: seconds per training step of our loop, side by side.

    python benchmarks/stage1_switches.py [--model SASRec] [--dataset ml-100k] [--steps 30] [--batch-size 256]

One process, one thread (``--nproc 2`` runs two of these per step). The same model, data and batches
are stepped with the switches turned on one after another: none, ``fast_dropout``, + ``fused_gelu``,
+ ``last_position_only``. Rounds alternate between the configurations so that a noisy machine
slows them alike; the median step time over rounds is reported. Last line: one JSON object with
``s_per_step`` per configuration and ``speedup`` of each against none.
"""
import argparse
import json
import time

import numpy as np
import torch
from recbole.utils import init_seed

from recbole_scalrec.config import Config
from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.model.fusion import FusionModel
from recbole_scalrec.quick_start import load_dataset
from recbole_scalrec.trainer.fusion_trainer import FusionTrainer
from recbole_scalrec.utils import get_model

CONFIGS = {
    "none": {"fast_dropout": False, "fused_gelu": False, "last_position_only": False},
    "fast_dropout": {"fast_dropout": True, "fused_gelu": False, "last_position_only": False},
    "+fused_gelu": {"fast_dropout": True, "fused_gelu": True, "last_position_only": False},
    "+last_position_only": {"fast_dropout": True, "fused_gelu": True, "last_position_only": True},
}


def build(args, switches: dict, data, sequences) -> FusionTrainer:
    config = Config(model=args.model, dataset=args.dataset,
                    config_dict={"state": "WARNING", "train_batch_size": args.batch_size, **switches})
    init_seed(config["seed"], config["reproducibility"])
    model = FusionModel(get_model(args.model)(config, data), lm_dim=1)
    return FusionTrainer(config, model, sequences, semantic=None)


def main() -> None:
    parser = argparse.ArgumentParser(description="seconds per stage-1 step with each speed switch")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--steps", type=int, default=30, help="steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = Config(model=args.model, dataset=args.dataset, config_dict={"state": "WARNING"})
    data = load_dataset(config)
    sequences = UserSequences.from_dataset(data)
    trainers = {name: build(args, switches, data, sequences) for name, switches in CONFIGS.items()}
    ids = sequences.train_prefixes()[: args.batch_size * args.steps]
    times = {name: [] for name in CONFIGS}
    for name, trainer in trainers.items():  # warm-up
        trainer.train_epoch(ids[: args.batch_size * 2], np.random.default_rng(0))
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_epoch(ids, np.random.default_rng(1))
            times[name].append((time.perf_counter() - start) / args.steps)
    per_step = {name: float(np.median(t)) for name, t in times.items()}
    for name, s in per_step.items():
        print(f"{name:>22}: {s * 1000:7.1f} ms/step  ({per_step['none'] / s:.2f}x)")
    print(json.dumps({"model": args.model, "dataset": args.dataset, "batch_size": args.batch_size, "threads": 1,
                      "steps": args.steps, "rounds": args.rounds, "s_per_step": per_step,
                      "speedup": {name: per_step["none"] / s for name, s in per_step.items()}}))


if __name__ == "__main__":
    main()
