"""The SCaLRec pipeline, end to end (METHOD.md Sec. 1-8), in RecBole's order:

``Config`` -> :class:`~recbole_scalrec.data.dataset.SCaLRecDataset` (RecBole's sequential dataset in
the protocol's order, with the cloud semantics of every needed prefix: abstracts, LM, on-disk cache)
-> :class:`~recbole_scalrec.model.sequential_recommender.scalrec.SCaLRec` (backbone, ``g_omega``,
staleness heads) -> :class:`~recbole_scalrec.trainer.scalrec_trainer.SCaLRecTrainer` (stage 1 with
its keyed checkpoint, per-prefix states, stage 2) -> the staleness protocol -> results files
(:mod:`recbole_scalrec.results`). The command line is :mod:`recbole_scalrec.cli`; stage timings
:class:`~recbole_scalrec.utils.timer.Timer`.

Reliability:

* bad inputs raise ``ValueError`` (``DataTextError``, ``ConfigError``), ``FileNotFoundError``,
  ``KeyError`` or ``FloatingPointError`` with one message naming the problem and the fix; the CLI
  prints ``error: <message>`` and exits 2 (``SCALREC_DEBUG=1`` shows the traceback);
* determinism: the seed is set before the data, again before the backbone is built, when stage 1
  starts (dropout: ``seed + rank``) and when each stage-2 head starts;
* stage-1 checkpoint ``stage1_checkpoint`` (default ``<results_dir>/stage1.pth``): reused when its key (data, semantics and the
  stage-1 settings, :func:`stage1_key`) matches; refused with the differing settings named when
  it does not and the run would overwrite it (``saved=True``); trained in memory, the file left
  alone, when ``saved=False``; retrained and overwritten when it cannot be read;
* several processes (``nproc`` / ``world_size``): see :mod:`recbole_scalrec.distributed`; the
  semantic precompute and stage 1 are shared by all ranks, the rest runs on rank 0.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from recbole.utils import init_logger, init_seed
from torch import nn

from recbole_scalrec import distributed
from recbole_scalrec.config import Config
from recbole_scalrec.data.dataset import SCaLRecDataset
from recbole_scalrec.data.prepare import ensure_prepared
from recbole_scalrec.data.requests import STAGE2_REQUESTS, needed_prefixes, resolve_real_timestamps  # noqa: F401
from recbole_scalrec.data.sequences import UserSequences, raw_user_count
from recbole_scalrec.model.fusion import FusionModel
from recbole_scalrec.model.sequential_recommender.scalrec import SCaLRec
from recbole_scalrec.model.structure_encoder import check_backbone
from recbole_scalrec.results import write_results
from recbole_scalrec.semantic.channel import fingerprint
from recbole_scalrec.staleness.diagnostics import format_internals
from recbole_scalrec.staleness.methods import FIXED_METHODS, REPAIR_SUFFIX
from recbole_scalrec.staleness.snapshot import PrefixStates
from recbole_scalrec.trainer.scalrec_trainer import SCaLRecTrainer, prepare_stage1  # noqa: F401
from recbole_scalrec.trainer.trainer import load_checkpoint, save_checkpoint
from recbole_scalrec.trainer.stage1_checkpoint import (  # noqa: F401 - public names of this module before
    STAGE1_IRRELEVANT_KEYS, CheckpointMismatchError, check_stage1_checkpoint, stage1_key)
from recbole_scalrec.utils.timer import Timer

logger = logging.getLogger(__name__)


def load_dataset(config) -> SCaLRecDataset:
    """The pipeline's dataset: :class:`~recbole_scalrec.data.dataset.SCaLRecDataset` (RecBole's
    sequential dataset in the protocol's order, never unpickled from a saved file), whatever the
    backbone."""
    return SCaLRecDataset(config)


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
              config_dict: dict | None = None, saved: bool = True, heads_file: str | None = None) -> ScalRecRun:
    """Config -> dataset (with its cloud semantics) -> model -> trainer (stage 1, stage 2); no
    evaluation; see :func:`run_recbole_scalrec`. With ``heads_file`` (a run's ``heads.pth``) the
    trained stage-2 heads are loaded instead of trained (with the run's stage-1 checkpoint, the run
    is rebuilt as it was: :func:`load_run`).

    In a process group (:mod:`recbole_scalrec.distributed`) every rank shares the semantic
    precompute and stage 1; ranks other than 0 return None after stage 1.
    """
    model = structure_encoder_name(model, dataset, config_file_list, config_dict)
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    check_backbone(config["model"])  # before any data or LM work
    config["backbone"] = config["model"]  # the pipeline's model is the structure encoder SCaLRec wraps
    rank, world = distributed.rank_and_world()
    if world > 1:  # RecBole's own distributed set-up is bypassed (see distributed.py)
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        config["local_rank"], config["single_spec"] = local_rank, False
        if torch.distributed.get_backend() == "nccl":
            config["device"] = torch.device("cuda", local_rank)
        if rank != 0:
            config["state"], config["show_progress"] = "error", False
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    timer = Timer()
    results_dir = config["results_dir"] or os.path.join("saved", f"{config['model']}-{config['dataset']}-seed{config['seed']}")

    # --- data: RecBole's dataset in the protocol's order -------------------------------------
    with timer.stage("load"):
        if distributed.is_main():
            ensure_prepared(config["dataset"], os.path.dirname(os.path.normpath(config["data_path"])))
        distributed.barrier()
        data = load_dataset(config)
        sequences = data.sequences
        n_users_raw = raw_user_count(config) if distributed.is_main() else None

    # --- cloud semantics h(t) = LLM(a(t)), cached on disk -------------------------------------
    with timer.stage("semantic_encode"):
        channel = data.encode_semantics(show_progress=distributed.is_main() and bool(config["show_progress"]), rank=rank,
                                        world=world, barrier=distributed.barrier, all_reduce_sum=distributed.all_reduce_sum)
    prefixes = channel.prefixes
    logger.info(f"{sequences.n_users} users, {len(sequences.items)} interactions; {len(prefixes['all'])} prefixes need semantics")
    if n_users_raw is not None and n_users_raw > sequences.n_users:
        logger.warning(f"{n_users_raw - sequences.n_users} of {n_users_raw} users of {config['dataset']}.inter were filtered "
                       f"out (user_inter_num_interval {config['user_inter_num_interval']} and RecBole's other filters).")

    # --- the model and its trainer --------------------------------------------------------------
    init_seed(config["seed"], config["reproducibility"])  # the same initial weights whatever ran before
    scalrec = SCaLRec(config, data).to(config["device"])
    trainer = SCaLRecTrainer(config, scalrec)
    trainer.attach(channel)

    # --- stage 1: fusion backbone on fresh semantics (a keyed checkpoint is reused) ------------
    key_fields = stage1_key(config, channel.key, len(sequences.items))
    with timer.stage("stage1"):
        stage1_info = trainer.fit_stage1(prefixes["train"], prefixes["valid"],
                                         checkpoint=config["stage1_checkpoint"] or os.path.join(results_dir, "stage1.pth"),
                                         key=fingerprint(key_fields), key_fields=key_fields, saved=saved)
        if not distributed.is_main():
            return None  # stage 2 and the evaluation run on rank 0
        full_ranking = trainer.full_ranking(prefixes["test"])

    # --- per-prefix states of the frozen model; stage 2: the staleness heads ---------------------
    with timer.stage("states"):
        states = trainer.compute_states()
    with timer.stage("stage2"):
        if heads_file is None:
            stage2_info = trainer.fit_stage2(prefixes["valid"])  # all heads on the same batches, one validation pass per epoch
        else:
            scalrec.heads.load_state_dict(load_checkpoint(heads_file)["state_dict"])
            scalrec.heads.eval()
            stage2_info = {"loaded": heads_file}
    info = {"stage1": stage1_info, "stage2": stage2_info, "cache": channel.cache_stats,
            "lm_precision": dict(channel.encoder.precision_info, precision=channel.encoder.precision),
            "n_users_raw": n_users_raw, "world_size": world, "semantic": channel.table, "trainer": trainer,
            "dataset": data}
    return ScalRecRun(config, sequences, prefixes, scalrec.fusion, states, dict(scalrec.heads.items()), timer,
                      channel.lm_forward_calls, full_ranking, info)


HEADS_FILE = "heads.pth"  # the trained stage-2 heads of a run folder (tensors only)
# keys RecBole sets while it builds a Config (devices, process group): not read back from a results.json
RUNTIME_KEYS = frozenset({"local_rank", "single_spec", "device", "gpu_id", "use_gpu", "state"})


def load_run(results_dir: str) -> ScalRecRun:
    """A finished run rebuilt from its folder: its configuration (``results.json``), its stage-1
    checkpoint and its trained heads (``heads.pth``); the semantics come from the cache (no LM call
    when it still holds them). Nothing in the folder is written."""
    import json

    with open(os.path.join(results_dir, "results.json"), encoding="utf-8") as f:
        summary = json.load(f)
    heads = os.path.join(results_dir, HEADS_FILE)
    if not os.path.isfile(heads):
        raise FileNotFoundError(f"{heads} is missing: the run was made before heads were saved; run it again.")
    saved_config = {k: v for k, v in summary["config"].items() if k not in RUNTIME_KEYS}
    if saved_config.get("data_path"):  # RecBole stored <data_path>/<dataset>
        saved_config["data_path"] = os.path.dirname(os.path.normpath(saved_config["data_path"]))
    config = dict(saved_config, stage1_checkpoint=summary["config"].get("stage1_checkpoint")
                  or os.path.join(results_dir, "stage1.pth"), results_dir=results_dir, show_progress=False)
    run = build_run(model=summary["model"], dataset=summary["dataset"], config_dict=config, saved=False, heads_file=heads)
    if run.info["stage1"].get("checkpoint") != "reused":
        raise ValueError(f"the stage-1 checkpoint of {results_dir} does not match its results.json; cannot rebuild the run.")
    return run


def run_methods(config) -> list[str]:
    """Every method the protocol evaluates: the fixed ones, the trained heads, and the
    ``+repair`` form of each of ``repair_methods`` that is among them (S2 only)."""
    methods = list(FIXED_METHODS) + list(config["stage2_methods"])
    if (config["repair_size"] or 0) > 0:
        for m in config["repair_methods"] or []:
            if m not in methods:
                raise ValueError(f"repair_methods names {m!r}, which is neither a fixed method nor in stage2_methods.")
            methods.append(m + REPAIR_SUFFIX)
    return methods


def evaluate_run(run: ScalRecRun) -> list[dict]:
    """The staleness protocol on valid and test: every method x gap x setting (+ intermittent refresh)."""
    config, trainer = run.config, run.info["trainer"]
    methods = run_methods(config)
    rows = []
    with run.timer.stage("evaluate"):
        for split in ("valid", "test"):
            ids = run.prefixes[split]
            rows += [dict(r, split=split) for r in trainer.evaluate_staleness(methods=methods, prefix_ids=ids)]
            if config["refresh_interval"]:
                rows += [dict(r, split=split) for r in trainer.evaluate_staleness(
                    methods=methods, prefix_ids=ids, refresh_interval=config["refresh_interval"])]
    return rows


def structure_encoder_name(model, dataset: str | None, config_file_list: list[str] | None,
                           config_dict: dict | None):
    """``model`` as the pipeline takes it: the structure encoder. ``SCaLRec`` (the name or the
    class) is the method wrapping its ``backbone`` key (from ``config_dict``, the files or
    ``properties/model/SCaLRec.yaml``), so ``--model=SCaLRec --backbone=GRU4Rec`` is the run of
    ``--model=GRU4Rec``: the same results folder and ``results.json``."""
    name = model if isinstance(model, str) or model is None else model.__name__
    if name != Config.SCALREC_MODEL:
        return model
    return Config(model=name, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)["backbone"]


def run_recbole_scalrec(model: str | None = None, dataset: str | None = None, config_file_list: list[str] | None = None,
                        config_dict: dict | None = None, saved: bool = True) -> dict[str, Any]:
    """Run stage 1, stage 2 and the staleness evaluation; returns the ``results.json`` dict.

    With ``nproc > 1`` (or ``world_size > 1``) in the configuration, ``nproc`` processes are
    spawned on this machine (:mod:`recbole_scalrec.distributed`) and rank 0's dict is returned
    (None on a machine without rank 0).

    Args:
        model: the structure encoder (a RecBole or plug-in sequential model), default SASRec.
        dataset: a prepared dataset name, default ml-100k.
        config_file_list: yaml files layered over the package defaults.
        config_dict: overrides (highest priority).
        saved: write the results files and the stage-1 checkpoint.
    """
    model = structure_encoder_name(model, dataset, config_file_list, config_dict)
    if isinstance(model, str):
        check_backbone(model)  # before RecBole's Config, which rejects some models with a bare traceback
    if not distributed.rank_and_world()[1] > 1:
        config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
        spec = distributed.spec_from_config(config)
        if spec is not None:
            # prepare the data once per machine before the ranks read it
            ensure_prepared(config["dataset"], os.path.dirname(os.path.normpath(config["data_path"])))
            return distributed.launch(_run_rank, (model, dataset, config_file_list, config_dict, saved), spec)
    return _run_rank(model, dataset, config_file_list, config_dict, saved)


def _run_rank(model, dataset, config_file_list, config_dict, saved) -> dict[str, Any] | None:
    """One process's share of :func:`run_recbole_scalrec` (the whole run without a process group)."""
    run = build_run(model, dataset, config_file_list, config_dict, saved)
    if run is None:  # a rank other than 0
        return None
    rows = evaluate_run(run)
    config = run.config
    n_raw = run.info.get("n_users_raw")
    summary = {
        "dataset": config["dataset"],
        "model": config["model"],
        "seed": config["seed"],
        "candidate_size": config["candidate_size"],
        "config": {k: v for k, v in config.final_config_dict.items() if isinstance(v, (str, int, float, bool, list, type(None)))},
        "timings_s": run.timer.seconds,
        "lm_forward_calls": run.lm_forward_calls,
        "lm_precision": run.info.get("lm_precision"),
        "n_users": run.sequences.n_users,
        "n_users_filtered": None if n_raw is None else int(n_raw - run.sequences.n_users),
        "n_interactions": int(len(run.sequences.items)),
        "n_semantic_prefixes": int(len(run.prefixes["all"])),
        "world_size": run.info.get("world_size", 1),
        "full_ranking": run.full_ranking,
        "stage1": {k: v for k, v in run.info["stage1"].items() if k != "history"},
        "stage2": run.info["stage2"],
    }
    for r in rows:
        if r["split"] == "test" and r["setting"] == "S2" and r["gap"] == 5:
            logger.info(f"test S2 gap 5 {r['method']:>22}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items()))
    for r in rows:  # what each head does, gap by gap
        if r["split"] == "test" and r["gap"] is not None and len(r.get("internals", {})) > 1:
            logger.info(f"test {r['setting']} gap {r['gap']:>2} {r['method']:>22}: {format_internals(r['internals'])}")
    if saved:
        paths = write_results(run.results_dir, summary, rows)
        save_checkpoint({"state_dict": {k: v.detach().cpu() for k, v in nn.ModuleDict(run.heads).state_dict().items()},
                         "methods": list(run.heads)}, os.path.join(run.results_dir, HEADS_FILE))
        logger.info(f"results written to {paths['results.json']}")
        print(open(paths["results.md"], encoding="utf-8").read())
    summary["results"] = [{k: v for k, v in r.items() if k != "ranks"} for r in rows]
    return summary


# the command line (run_recbole_scalrec.py) lives in recbole_scalrec.cli; kept importable from here
from recbole_scalrec.cli import main  # noqa: E402,F401
