"""The SCaLRec pipeline, end to end (METHOD.md Sec. 1-8).

load data -> device abstracts -> cloud semantics (cached LM outputs) -> stage 1 fusion
backbone -> per-prefix states (z_str, z_sem, candidates) -> stage 2 heads -> staleness
evaluation -> results files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from recbole.data import create_dataset
from recbole.utils import init_logger, init_seed

from recbole_scalrec.abstract import AbstractBuilder
from recbole_scalrec.config import Config
from recbole_scalrec.data.item_text import load_item_texts, load_request_texts
from recbole_scalrec.data.prepare import ensure_prepared
from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.fusion import FusionModel
from recbole_scalrec.methods import FIXED_METHODS, build_head
from recbole_scalrec.protocol import evaluate_staleness
from recbole_scalrec.results import write_results
from recbole_scalrec.semantic_cache import SemanticCache
from recbole_scalrec.semantic_encoder import SemanticEncoder
from recbole_scalrec.snapshot import PrefixStates, PrefixTable, refresh_gaps
from recbole_scalrec.trainer.calibration_trainer import CalibrationTrainer
from recbole_scalrec.trainer.fusion_trainer import FusionTrainer
from recbole_scalrec.trainer.trainer import load_checkpoint, save_checkpoint
from recbole_scalrec.utils import get_model

logger = logging.getLogger(__name__)


class Timer:
    """Wall seconds per pipeline stage (``results.json``'s ``timings_s``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def needed_prefixes(config, sequences: UserSequences) -> dict[str, np.ndarray]:
    """Every prefix whose semantics the run needs: thinned training prefixes, their
    stage-2 snapshots, and each user's valid/test request with its snapshots at every gap."""
    train = sequences.thin_train_prefixes(config["semantic_train_stride"])
    valid, test = sequences.eval_prefixes("valid"), sequences.eval_prefixes("test")
    parts = [train, valid, test]
    parts += [sequences.shift_prefix(train, g)[0] for g in config["stage2_gaps"]]
    for ids in (valid, test):
        parts += [sequences.shift_prefix(ids, g)[0] for g in config["eval_gaps"]]
        if config["refresh_interval"]:
            parts.append(sequences.shift_prefix(ids, refresh_gaps(sequences, ids, config["refresh_interval"]))[0])
    all_ids = np.unique(np.concatenate(parts))
    # stage 1 trains on every encoded training prefix; stage 2 draws requests from the grid,
    # whose snapshots at every stage-2 gap were listed above
    train_all = np.intersect1d(all_ids, sequences.train_prefixes())
    return {"all": all_ids, "train": train_all, "stage2": train, "valid": valid, "test": test}


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage1_key(config, semantic_key: str, n_inter: int) -> dict:
    keys = ("model", "dataset", "seed", "MAX_ITEM_LIST_LENGTH", "fusion_weight", "projection_hidden_size",
            "projection_dropout", "epochs", "train_batch_size", "learning_rate", "stopping_step",
            "semantic_train_stride", "stage2_gaps", "eval_gaps", "hidden_size", "embedding_size", "n_layers", "n_heads",
            "dropout_prob", "hidden_dropout_prob", "attn_dropout_prob", "loss_type", "weight_decay")
    return {"config": {k: config[k] for k in keys if k in config}, "semantic": semantic_key, "n_inter": n_inter}


@dataclass
class ScalRecRun:
    """Everything a finished training run holds: what evaluation and benchmarks need."""

    config: Any
    sequences: UserSequences
    prefixes: dict[str, np.ndarray]
    fusion: FusionModel
    states: PrefixStates
    heads: dict[str, Any]
    timer: Timer
    lm_forward_calls: int
    full_ranking: dict
    info: dict = field(default_factory=dict)

    @property
    def item_table(self) -> torch.Tensor:
        return self.fusion.item_table.detach()

    @property
    def results_dir(self) -> str:
        c = self.config
        return c["results_dir"] or os.path.join("saved", f"{c['model']}-{c['dataset']}-seed{c['seed']}")


def build_run(model: str | None = None, dataset: str | None = None, config_file_list: list[str] | None = None,
              config_dict: dict | None = None, saved: bool = True) -> ScalRecRun:
    """Data, cloud semantics, stage 1 and stage 2 (no evaluation); see :func:`run_recbole_scalrec`."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    timer = Timer()
    device = config["device"]
    results_dir = config["results_dir"] or os.path.join("saved", f"{config['model']}-{config['dataset']}-seed{config['seed']}")

    # --- data -----------------------------------------------------------------------------
    with timer.stage("load"):
        ensure_prepared(config["dataset"], os.path.dirname(os.path.normpath(config["data_path"])))
        data = create_dataset(config)
        sequences = UserSequences.from_dataset(data)
        item_texts = load_item_texts(config, data)
        request_texts = load_request_texts(config, data, sequences.rows)
        builder = AbstractBuilder.from_config(config, sequences, item_texts, request_texts)
        prefixes = needed_prefixes(config, sequences)
    logger.info(f"{sequences.n_users} users, {len(sequences.items)} interactions; {len(prefixes['all'])} prefixes need semantics")

    # --- cloud semantics h(t) = LLM(a(t)), cached on disk -----------------------------------
    with timer.stage("semantic_encode"):
        encoder = SemanticEncoder.from_config(config)
        cache_key = {"dataset": config["dataset"], "n_inter": int(len(sequences.items)),
                     "data_fingerprint": _fingerprint({"items": sequences.items.tolist()}),
                     "encoder": encoder.fingerprint, "abstract": builder.settings()}
        cache = SemanticCache(os.path.join(config["semantic_cache_dir"], config["dataset"]), cache_key)
        h = cache.get_or_compute(prefixes["all"], builder.build, encoder, show_progress=True)
        semantic = PrefixTable(prefixes["all"], h)

    # --- stage 1: fusion backbone on fresh semantics ---------------------------------------
    backbone = get_model(config["model"])(config, data).to(device)
    fusion = FusionModel(backbone, encoder.dim, config["fusion_weight"], config["projection_hidden_size"],
                         config["projection_dropout"]).to(device)
    key1 = _fingerprint(stage1_key(config, _fingerprint(cache_key), len(sequences.items)))
    ckpt = os.path.join(results_dir, "stage1.pth")
    stage1 = FusionTrainer(config, fusion, sequences, semantic)
    with timer.stage("stage1"):
        if os.path.isfile(ckpt) and load_checkpoint(ckpt).get("key") == key1:
            state = load_checkpoint(ckpt, map_location=device)
            fusion.load_state_dict(state["state_dict"])
            stage1_info = state["info"]
            logger.info(f"stage 1: reusing {ckpt} (same data, semantics and settings)")
        else:
            stage1_info = stage1.fit(prefixes["train"], prefixes["valid"])
            if saved:
                save_checkpoint({"key": key1, "state_dict": fusion.state_dict(), "info": stage1_info}, ckpt)
        full_ranking = stage1.evaluate(prefixes["test"])
    for p in fusion.parameters():
        p.requires_grad_(False)
    fusion.eval()

    # --- per-prefix states of the frozen model ----------------------------------------------
    with timer.stage("states"):
        states = PrefixStates.compute(fusion, sequences, prefixes["all"], h, config["MAX_ITEM_LIST_LENGTH"],
                                      config["candidate_size"], config["density_window"], bool(config["real_timestamps"]),
                                      config["eval_batch_size"], device)

    # --- stage 2: estimator + calibrator (and the trained baselines) ------------------------
    heads, stage2_info = {}, {}
    item_table = fusion.item_table.detach()
    trainer2 = CalibrationTrainer(config, states, sequences, item_table, prefixes["stage2"], prefixes["valid"])
    with timer.stage("stage2"):
        for method in config["stage2_methods"]:
            head = build_head(method, config, item_table.shape[1]).to(device)
            stage2_info[method] = trainer2.fit(head, method)
            heads[method] = head
    info = {"stage1": stage1_info, "stage2": stage2_info, "cache": getattr(cache, "stats", None)}
    return ScalRecRun(config, sequences, prefixes, fusion, states, heads, timer, encoder.forward_calls, full_ranking, info)


def evaluate_run(run: ScalRecRun) -> list[dict]:
    """The staleness protocol on valid and test: every method x gap x setting (+ intermittent refresh)."""
    config = run.config
    methods = list(FIXED_METHODS) + list(config["stage2_methods"])
    rows = []
    with run.timer.stage("evaluate"):
        for split in ("valid", "test"):
            ids = run.prefixes[split]
            common = dict(states=run.states, sequences=run.sequences, item_table=run.item_table, prefix_ids=ids,
                          settings=config["eval_settings"], methods=methods, fusion_weight=config["fusion_weight"],
                          heads=run.heads, top_m=config["spearman_top_m"], batch_size=config["eval_batch_size"])
            rows += [dict(r, split=split) for r in evaluate_staleness(gaps=config["eval_gaps"], **common)]
            if config["refresh_interval"]:
                gaps = refresh_gaps(run.sequences, ids, config["refresh_interval"])
                rows += [dict(r, split=split, refresh_interval=config["refresh_interval"])
                         for r in evaluate_staleness(gaps=[], gap_override=gaps, **common)]
    return rows


def run_recbole_scalrec(model: str | None = None, dataset: str | None = None, config_file_list: list[str] | None = None,
                        config_dict: dict | None = None, saved: bool = True) -> dict[str, Any]:
    """Run stage 1, stage 2 and the staleness evaluation; returns the ``results.json`` dict.

    Args:
        model: the structure encoder (a RecBole or plug-in sequential model), default SASRec.
        dataset: a prepared dataset name, default ml-100k.
        config_file_list: yaml files layered over the package defaults.
        config_dict: overrides (highest priority).
        saved: write the results files and the stage-1 checkpoint.
    """
    run = build_run(model, dataset, config_file_list, config_dict, saved)
    rows = evaluate_run(run)
    config = run.config
    summary = {
        "dataset": config["dataset"],
        "model": config["model"],
        "seed": config["seed"],
        "candidate_size": config["candidate_size"],
        "config": {k: v for k, v in config.final_config_dict.items() if isinstance(v, (str, int, float, bool, list, type(None)))},
        "timings_s": run.timer.seconds,
        "lm_forward_calls": run.lm_forward_calls,
        "n_users": run.sequences.n_users,
        "n_interactions": int(len(run.sequences.items)),
        "n_semantic_prefixes": int(len(run.prefixes["all"])),
        "full_ranking": run.full_ranking,
        "stage1": {k: v for k, v in run.info["stage1"].items() if k != "history"},
        "stage2": {m: {k: v for k, v in i.items() if k != "history"} for m, i in run.info["stage2"].items()},
    }
    for r in rows:
        if r["split"] == "test" and r["setting"] == "S2" and r["gap"] == 5:
            logger.info(f"test S2 gap 5 {r['method']:>22}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items()))
    if saved:
        paths = write_results(run.results_dir, summary, rows)
        logger.info(f"results written to {paths['results.json']}")
        print(open(paths["results.md"], encoding="utf-8").read())
    summary["results"] = [{k: v for k, v in r.items() if k != "ranks"} for r in rows]
    return summary


def _documented_keys() -> str:
    """``key  default  # meaning`` of every plug-in yaml key, for ``--help``."""
    from recbole_scalrec.utils import properties_dir

    lines = []
    for name in ("overall.yaml", "model/SCaLRec.yaml"):
        lines.append(f"\n{name}:")
        for raw in (properties_dir() / name).read_text(encoding="utf-8").splitlines():
            if raw and not raw.startswith((" ", "#")) and ":" in raw:
                lines.append("  " + raw)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--model``, ``--dataset``, ``--config_files`` and RecBole-style ``--key=value``."""
    import argparse

    from recbole_scalrec.config.configurator import ConfigError, parse_cli_overrides

    parser = argparse.ArgumentParser(
        prog="run_recbole_scalrec.py",
        description="SCaLRec on a RecBole sequential backbone: stage 1, stage 2 and the staleness evaluation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Any configuration key can be overridden as --key=value (RecBole syntax), e.g. --epochs=1 "
               "--data_path=DIR --seed=7 --item_text_fields=\"['title']\".\nSCaLRec keys (defaults):" + _documented_keys(),
    )
    parser.add_argument("--model", "-m", default="SASRec", help="structure encoder: a RecBole or plug-in sequential model")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (a folder of RecBole atomic files)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = parse_cli_overrides(rest)
    except ConfigError as err:
        parser.error(str(err))
    files = args.config_files.strip().split(" ") if args.config_files else None
    try:
        run_recbole_scalrec(model=args.model, dataset=args.dataset, config_file_list=files, config_dict=overrides)
    except (ValueError, FileNotFoundError, KeyError) as err:
        if os.environ.get("SCALREC_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
