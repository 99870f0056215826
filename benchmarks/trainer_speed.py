"""Our training loop vs RecBole's stock trainer, same backbone, data and budget, side by side.

    python benchmarks/trainer_speed.py [--model SASRec] [--dataset ml-100k] [--epochs 3] [--nproc 2]
                                       [--compile] [--no-fast-dropout] [--no-fused-gelu]
                                       [--no-last-position]

RecBole: ``create_dataset`` + ``data_preparation`` + ``Trainer.fit`` (in a fresh temporary
checkpoint folder, so no saved dataset is unpickled) (its per-batch ``Interaction`` pipeline; our
subclass only changes how checkpoints are written). Ours: :class:`FusionTrainer` in structure-only
mode, as the pipeline's stage 1 runs it: batches gathered straight from the per-user sequences as
tensors, dropout masks from ``torch.rand`` (``fast_dropout``), RecBole's Python GELU replaced by
torch's fused kernel (``fused_gelu``, same function), SASRec's last layer computed at the read
position only (``last_position_only``, same function), with ``--nproc 2`` two processes of
one thread each on the same cores (gloo; gradients summed, so each step is the one-process step),
optionally ``torch.compile``d. Both train the same model class from the same seed on the same training
prefixes (leave-one-out, time order) with CE over all items, batch size and learning rate equal,
for the same number of epochs without early stopping, and are tested by full ranking on the test
requests by RecBole's own full-sort evaluator (ours also by the pipeline's, which agrees). Our
sequences are sorted here as RecBole sorts them (on float32 timestamps, see
:meth:`UserSequences.from_dataset`), so both loops see the same sequences and test targets.
The stock run has anomaly detection off, as ours (importing this package undoes RecBole's
``set_detect_anomaly(True)``), so the ratio is the loops' own. Last line: one JSON object with
``recbole_s_per_epoch``, ``ours_s_per_epoch``, ``speedup`` (target >= 1.5) and both test NDCG@10 /
HR@10.
"""
import argparse
import copy
import json
import tempfile
import time

import numpy as np
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_scalrec.config import Config
from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.distributed import is_main, launch, rank_and_world, spec_from_config
from recbole_scalrec.model.fusion import FusionModel
from recbole_scalrec.quick_start import load_dataset
from recbole_scalrec.trainer import Trainer
from recbole_scalrec.trainer.fusion_trainer import FusionTrainer
from recbole_scalrec.utils import get_model


def make_config(args, workdir: str) -> Config:
    extra = {"data_path": args.data_path} if args.data_path else {}
    return Config(model=args.model, dataset=args.dataset, config_dict={**extra,
        "epochs": args.epochs, "train_batch_size": args.batch_size, "eval_batch_size": 1024, "state": "WARNING",
        "checkpoint_dir": workdir, "show_progress": False, "eval_step": args.epochs, "stopping_step": args.epochs + 1,
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "compile": args.compile,
        "fast_dropout": args.fast_dropout, "fused_gelu": args.fused_gelu,
        "last_position_only": args.last_position,
    })


def recbole_data(args, workdir: str):
    config = make_config(args, workdir)
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    return config, data_preparation(config, data)


def recbole_test(config, backbone, test) -> dict:
    """RecBole's own full-sort evaluation of a trained backbone on the test split."""
    result = Trainer(config, backbone).evaluate(test, load_best_model=False)
    return {"ndcg@10": float(result["ndcg@10"]), "hit@10": float(result["hit@10"])}


def run_recbole(args, workdir: str) -> dict:
    config, (train, valid, test) = recbole_data(args, workdir)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(args.model)(config, train.dataset).to(config["device"])
    trainer = Trainer(config, model)
    assert not torch.is_anomaly_enabled(), "anomaly detection is on: the comparison would not be the loops' own"
    start = time.perf_counter()
    trainer.fit(train, valid_data=None, saved=False, show_progress=False)
    seconds = time.perf_counter() - start
    return {"s_per_epoch": seconds / args.epochs, **recbole_test(config, model, test), "n_train": len(train.dataset)}


def _ours_rank(args: dict, workdir: str) -> dict:
    """Our loop in one process (or in each rank of ``--nproc`` processes; rank 0 reports)."""
    args = argparse.Namespace(**args)
    config = make_config(args, workdir)
    init_seed(config["seed"], config["reproducibility"])
    data = load_dataset(config)
    sequences = UserSequences.from_dataset(data, sort_dtype=np.float32)  # RecBole's order of near-ties
    init_seed(config["seed"], config["reproducibility"])
    model = FusionModel(get_model(args.model)(config, data), lm_dim=1).to(config["device"])
    trainer = FusionTrainer(config, model, sequences, semantic=None)
    train_ids = sequences.train_prefixes()
    rng = np.random.default_rng(config["seed"])
    if args.compile:  # compile outside the timed epochs (a one-off cost, reported)
        # one full batch and one of the epoch's last (partial) batch size: both graphs exist
        # before timing starts; the warm-up steps are undone so both runs start from the same weights
        state = copy.deepcopy(model.state_dict())
        bs = config["train_batch_size"]
        start = time.perf_counter()
        trainer.train_epoch(train_ids[: bs + (len(train_ids) % bs or bs)], np.random.default_rng(0))
        compile_s = time.perf_counter() - start
        model.load_state_dict(state)
        trainer.optimizer = type(trainer.optimizer)(model.parameters(), **trainer.optimizer.defaults)
    else:
        compile_s = 0.0
    torch.manual_seed(config["seed"] + rank_and_world()[0])  # dropout masks, as FusionTrainer.fit
    start = time.perf_counter()
    for _ in range(args.epochs):
        trainer.train_epoch(train_ids, rng)
    seconds = time.perf_counter() - start
    if not is_main():
        return {}
    ours = trainer.evaluate(sequences.eval_prefixes("test"))["structure_only"]
    rb_config, (_, _, test) = recbole_data(args, workdir)
    return {"s_per_epoch": seconds / args.epochs, "compile_s": compile_s, **recbole_test(rb_config, model.backbone, test),
            "own_eval_ndcg@10": ours["ndcg@10"], "n_train": int(len(train_ids)), "threads": torch.get_num_threads()}


def run_ours(args, workdir: str) -> dict:
    if args.nproc == 1:
        return _ours_rank(vars(args), workdir)
    spec = spec_from_config({"nproc": args.nproc, "use_gpu": False})
    return launch(_ours_rank, (vars(args), workdir), spec)


def main() -> None:
    parser = argparse.ArgumentParser(description="our training loop vs RecBole's trainer")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone in our loop")
    parser.add_argument("--data-path", default=None, help="folder holding <dataset>/ (default: the dataset's yaml)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes of our loop (gloo; the cores are split between them, as the pipeline's nproc)")
    parser.add_argument("--no-fast-dropout", dest="fast_dropout", action="store_false",
                        help="our loop with PyTorch's own dropout masks (fast_dropout: False)")
    parser.add_argument("--no-fused-gelu", dest="fused_gelu", action="store_false",
                        help="our loop with RecBole's Python GELU (fused_gelu: False)")
    parser.add_argument("--no-last-position", dest="last_position", action="store_false",
                        help="our loop with SASRec's full last layer (last_position_only: False)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        recbole = run_recbole(args, workdir)
        ours = run_ours(args, workdir)
    figures = {
        "model": args.model, "dataset": args.dataset, "epochs": args.epochs, "batch_size": args.batch_size,
        "compile": args.compile, "nproc": args.nproc, "fast_dropout": args.fast_dropout,
        "fused_gelu": args.fused_gelu, "last_position_only": args.last_position,
        "recbole_threads": torch.get_num_threads(), "ours_threads_per_process": ours["threads"],
        "recbole_s_per_epoch": recbole["s_per_epoch"], "ours_s_per_epoch": ours["s_per_epoch"],
        "ours_compile_s": ours["compile_s"], "speedup": recbole["s_per_epoch"] / ours["s_per_epoch"],
        "recbole_ndcg@10": recbole["ndcg@10"], "ours_ndcg@10": ours["ndcg@10"],
        "recbole_hit@10": recbole["hit@10"], "ours_hit@10": ours["hit@10"],
        "ours_own_eval_ndcg@10": ours["own_eval_ndcg@10"],
        "recbole_n_train": recbole["n_train"], "ours_n_train": ours["n_train"],
    }
    print(f"RecBole {figures['recbole_s_per_epoch']:.1f} s/epoch (NDCG@10 {recbole['ndcg@10']:.4f}); ours "
          f"{figures['ours_s_per_epoch']:.1f} s/epoch (NDCG@10 {ours['ndcg@10']:.4f}); speedup {figures['speedup']:.2f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
