"""Stage 1: the fused model (Eq. 4) against a structure-only backbone trained the same way.

    python benchmarks/fusion_vs_structure.py [--model SASRec] [--dataset ml-100k] [--epochs 30] [--seed 2020]
                                             [--no-fast-dropout]

The fused model is the pipeline's stage 1 (``build_run`` with no stage-2 heads: cached
semantics and a matching stage-1 checkpoint are reused). The structure-only model is the same
backbone class trained by the same :class:`FusionTrainer` loop on the same training prefixes,
epochs, batch size and early stopping, without the semantic channel. Both are tested by full
ranking (all items) on each user's test request. Last line: one JSON object with
``fused_ndcg@10``, ``structure_only_ndcg@10`` (and HR@10) and ``fused_minus_structure_ndcg@10``.
"""
import argparse
import json

from recbole.utils import init_seed

from recbole_scalrec.model.fusion import FusionModel
from recbole_scalrec.quick_start import build_run, load_dataset
from recbole_scalrec.trainer.fusion_trainer import FusionTrainer
from recbole_scalrec.utils import get_model


def main() -> None:
    parser = argparse.ArgumentParser(description="fused stage-1 model vs structure-only backbone")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--no-fast-dropout", dest="fast_dropout", action="store_false",
                        help="both models with PyTorch's own dropout masks (fast_dropout: False)")
    args = parser.parse_args()
    overrides = {"epochs": args.epochs, "seed": args.seed, "stage2_methods": [], "state": "WARNING",
                 "fast_dropout": args.fast_dropout}
    run = build_run(model=args.model, dataset=args.dataset, config_dict=overrides)
    fused = run.full_ranking["fused"]

    config = run.config
    init_seed(config["seed"], config["reproducibility"])
    backbone = get_model(config["model"])(config, load_dataset(config)).to(config["device"])
    structure = FusionModel(backbone, lm_dim=1).to(config["device"])
    trainer = FusionTrainer(config, structure, run.sequences, semantic=None)
    info = trainer.fit(run.prefixes["train"], run.prefixes["valid"])
    alone = trainer.evaluate(run.prefixes["test"])["structure_only"]

    figures = {
        "model": args.model, "dataset": args.dataset, "seed": args.seed, "n_train_prefixes": int(len(run.prefixes["train"])),
        "fused_ndcg@10": fused["ndcg@10"], "fused_hit@10": fused["hit@10"],
        "structure_only_ndcg@10": alone["ndcg@10"], "structure_only_hit@10": alone["hit@10"],
        "fused_model_structure_channel_ndcg@10": run.full_ranking["structure_only"]["ndcg@10"],
        "fused_minus_structure_ndcg@10": fused["ndcg@10"] - alone["ndcg@10"],
        "fused_epochs": run.info["stage1"].get("epochs_run"), "structure_epochs": info["epochs_run"],
    }
    print(f"test NDCG@10: fused {fused['ndcg@10']:.4f}, structure-only {alone['ndcg@10']:.4f} "
          f"(HR@10 {fused['hit@10']:.4f} vs {alone['hit@10']:.4f})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
