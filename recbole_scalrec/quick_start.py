"""The SCaLRec pipeline, end to end (METHOD.md Sec. 1-8).

load data -> device abstracts -> cloud semantics (cached LM outputs) -> stage 1 fusion
backbone -> per-prefix states (z_str, z_sem, candidates) -> stage 2 heads -> staleness
evaluation -> results files.

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
from recbole.utils import init_logger, init_seed

from recbole_scalrec import distributed
from recbole_scalrec.abstract import AbstractBuilder
from recbole_scalrec.config import Config
from recbole_scalrec.data.item_text import load_item_texts, load_request_texts
from recbole_scalrec.data.prepare import ensure_prepared
from recbole_scalrec.data.sequences import UserSequences, raw_user_count
from recbole_scalrec.fusion import FusionModel
from recbole_scalrec.item_init import ITEM_INIT_MODES, lm_initialise_items
from recbole_scalrec.diagnostics import format_internals
from recbole_scalrec.methods import FIXED_METHODS, REPAIR_SUFFIX, build_head
from recbole_scalrec.model.structure_encoder import backbone_dataset, check_backbone
from recbole_scalrec.protocol import evaluate_staleness
from recbole_scalrec.results import write_results
from recbole_scalrec.semantic_cache import SemanticCache
from recbole_scalrec.semantic_encoder import SemanticEncoder
from recbole_scalrec.snapshot import PrefixStates, PrefixTable, refresh_gaps
from recbole_scalrec.trainer.calibration_trainer import CalibrationTrainer
from recbole_scalrec.trainer.fusion_trainer import TRAIN_PREFIXES, FusionTrainer
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


def load_dataset(config):
    """RecBole's filtered dataset, always built from the atomic files.

    ``recbole.data.create_dataset`` first unpickles ``<checkpoint_dir>/<dataset>-<Class>.pth`` (or
    ``dataset_save_path``) whenever such a file exists, whoever wrote it; unpickling runs code, so
    the pipeline never does that: it builds the dataset class RecBole would pick, and a saved file
    is ignored (logged).
    """
    import importlib

    from recbole.utils import ModelType

    module = importlib.import_module("recbole.data.dataset")
    name = config["model"] + "Dataset"
    if not hasattr(module, name):
        name = {ModelType.SEQUENTIAL: "SequentialDataset", ModelType.KNOWLEDGE: "KnowledgeBasedDataset"}.get(
            config["MODEL_TYPE"], "Dataset")
    saved_file = config["dataset_save_path"] or os.path.join(config["checkpoint_dir"], f"{config['dataset']}-{name}.pth")
    if os.path.exists(saved_file):
        logger.info(f"ignoring the pickled dataset {saved_file} (not unpickled); building from the atomic files")
    return getattr(module, name)(config)


STAGE2_REQUESTS = ("grid", "latest", "holdout")


def needed_prefixes(config, sequences: UserSequences) -> dict[str, np.ndarray]:
    """Every prefix whose semantics the run needs: thinned training prefixes, their
    stage-2 snapshots, and each user's valid/test request with its snapshots at every gap.

    Stage 2 draws its requests (``stage2_requests``) from the encoding grid: all of it (``grid``),
    each user's ``stage2_latest_per_user`` latest grid prefixes (``latest``: the requests nearest in
    time and length to the evaluated ones), or those same prefixes held out of stage 1
    (``holdout``: the teacher has not fitted them, as on a new request). The grid's snapshots at
    every stage-2 gap are listed, so neither choice encodes anything more.
    """
    train = sequences.thin_train_prefixes(config["semantic_train_stride"])
    valid, test = sequences.eval_prefixes("valid"), sequences.eval_prefixes("test")
    parts = [train, valid, test]
    parts += [sequences.shift_prefix(train, g)[0] for g in config["stage2_gaps"]]
    for ids in (valid, test):
        parts += [sequences.shift_prefix(ids, g)[0] for g in config["eval_gaps"]]
        if config["refresh_interval"]:
            parts.append(sequences.shift_prefix(ids, refresh_gaps(sequences, ids, config["refresh_interval"]))[0])
    all_ids = np.unique(np.concatenate(parts))
    # stage 1 trains on every training prefix ("all"; one without its own h takes its user's latest
    # encoded training prefix's h) or on the encoded ones only ("encoded")
    mode = config["stage1_train_prefixes"] or "all"
    if mode not in TRAIN_PREFIXES:
        raise ValueError(f"stage1_train_prefixes must be one of {TRAIN_PREFIXES}, got {mode!r}.")
    stage1 = sequences.train_prefixes() if mode == "all" else np.intersect1d(all_ids, sequences.train_prefixes())
    requests = config["stage2_requests"] or "grid"
    if requests not in STAGE2_REQUESTS:
        raise ValueError(f"stage2_requests must be one of {STAGE2_REQUESTS}, got {requests!r}.")
    stage2 = train if requests == "grid" else sequences.latest_per_user(train, int(config["stage2_latest_per_user"] or 0))
    if requests == "holdout":
        stage1 = np.setdiff1d(stage1, stage2)
    return {"all": all_ids, "train": stage1, "grid": train, "stage2": stage2, "valid": valid, "test": test}


def resolve_real_timestamps(config, sequences: UserSequences) -> bool:
    """``real_timestamps: auto``: the timestamps are taken as unix seconds when every one lies in
    [1e8, 4.1e9] (1973 to 2100); an order index (0, 1, 2, ...) or milliseconds are not, and such
    data gets no time words and no events-per-day cue (one log line says so)."""
    value = config["real_timestamps"]
    if isinstance(value, bool):
        return value
    if str(value).lower() != "auto":
        raise ValueError(f"real_timestamps must be True, False or auto, got {value!r}.")
    if sequences.times is None or len(sequences.times) == 0:
        return False
    low, high = float(sequences.times.min()), float(sequences.times.max())
    real = 1e8 <= low and high <= 4.1e9
    if not real:
        logger.info(f"real_timestamps auto: timestamps span [{low:.6g}, {high:.6g}], not unix seconds; no time words "
                    f"in the abstract and no events-per-day cue (set real_timestamps: True if they are times).")
    return real


def _plain_key(value: Any) -> Any:
    """``value`` as JSON types (what a ``weights_only`` checkpoint may hold)."""
    return json.loads(json.dumps(value, default=str))


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CheckpointMismatchError(ValueError):
    """A checkpoint in the results folder was made for other data or settings."""


def _key_differences(stored: dict | None, wanted: dict) -> str:
    if not isinstance(stored, dict):
        return "its settings are not recorded (written by an older version)"
    diffs = []
    for name in sorted(set(stored.get("config", {})) | set(wanted["config"])):
        a, b = stored.get("config", {}).get(name, "<absent>"), wanted["config"].get(name, "<absent>")
        if a != b:
            diffs.append(f"{name}: checkpoint {a!r}, now {b!r}")
    if stored.get("n_inter") != wanted["n_inter"]:
        diffs.append(f"interactions: checkpoint {stored.get('n_inter')}, now {wanted['n_inter']}")
    if stored.get("semantic") != wanted["semantic"]:
        diffs.append("semantics: another dataset file, semantic encoder or abstract setting")
    return "; ".join(diffs) or "its key differs"


def check_stage1_checkpoint(path: str, key: str, fields: dict, saved: bool) -> dict | None:
    """The checkpoint's state when it can be reused, else None (train).

    Raises:
        CheckpointMismatchError: the file was trained for other data or settings and this run
            would overwrite it (``saved``); the message names what differs and how to proceed.
    """
    if not os.path.isfile(path):
        return None
    try:
        state = load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint of ours is rebuilt
        logger.warning(f"stage 1: {path} cannot be read ({exc}); training again and overwriting it.")
        return None
    if state.get("key") == key:
        return state
    why = _key_differences(state.get("key_fields"), fields)
    if not saved:
        logger.warning(f"stage 1: {path} was trained with other settings ({why}); training in memory, file untouched.")
        return None
    raise CheckpointMismatchError(
        f"The stage-1 checkpoint {path} was trained for other data or settings ({why}); refusing to overwrite it. "
        f"Pass another --results_dir for this setting, or delete {path} to retrain here."
    )


# Configuration keys that cannot change the stage-1 weights: where files go, logging and progress,
# processes and devices, the LM's batching, and everything of stage 2 and the evaluation. Every
# other key (the backbone's own keys such as SASRec's inner_size or SURGE's pool_length, data
# filters, training budget, fusion settings) is part of the stage-1 checkpoint key, so a key not
# listed here errs on the side of retraining.
STAGE1_IRRELEVANT_KEYS = frozenset({
    "results_dir", "stage1_checkpoint", "checkpoint_dir", "data_path", "semantic_cache_dir", "semantic_chunk_size",
    "show_progress", "state", "log_wandb", "wandb_project", "save_dataset", "dataset_save_path", "save_dataloaders",
    "dataloaders_save_path", "benchmark_filename", "config_files", "gpu_id", "use_gpu", "device", "worker", "nproc",
    "world_size", "offset", "ip", "port", "dist_timeout", "local_rank", "single_spec", "lm_batch_size", "lm_device",
    "eval_batch_size", "eval_step", "metrics", "topk", "valid_metric", "valid_metric_bigger", "metric_decimal_place",
    "loss_decimal_place", "eval_settings", "refresh_interval", "candidate_size", "spearman_top_m", "density_window",
    "estimator_hidden_size", "calibrator_hidden_size", "calibrator_use_cues", "correction_radius", "kd_temperature",
    "lambda_rel", "lambda_reg", "stage2_s2_prob", "stage2_epochs", "stage2_batch_size", "stage2_learning_rate",
    "stage2_stopping_step", "stage2_tie_tolerance", "stage2_methods", "valid_neg_sample_args", "test_neg_sample_args",
    "correction_shrink", "reliability_target_scale", "repair_size", "repair_methods",
})
# the stage-2 request keys change stage 1 only when its requests are held out of stage 1
STAGE2_REQUEST_KEYS = frozenset({"stage2_requests", "stage2_latest_per_user"})


def stage1_key(config, semantic_key: str, n_inter: int) -> dict:
    """What the stage-1 weights depend on: every configuration key but :data:`STAGE1_IRRELEVANT_KEYS`
    (the gaps only when stage 1 trains on the encoded prefixes, whose set they change; the stage-2
    request keys only when those requests are held out of stage 1), the
    semantics' fingerprint and the interaction count."""
    skip = set(STAGE1_IRRELEVANT_KEYS)
    if (config["stage1_train_prefixes"] or "all") == "all":
        skip |= {"eval_gaps", "stage2_gaps"}
    if (config["stage2_requests"] or "grid") != "holdout":
        skip |= STAGE2_REQUEST_KEYS
    values = {k: v for k, v in config.final_config_dict.items() if k not in skip}
    return {"config": _plain_key(values), "semantic": semantic_key, "n_inter": n_inter}


def prepare_stage1(config, fusion: FusionModel, train_semantic: PrefixTable, item_texts: list[str],
                   encoder: SemanticEncoder) -> dict:
    """Before stage 1 trains: condition ``h`` with the encoded training prefixes' statistics
    (``semantic_conditioning``) and initialise the item table from the LM (``item_embedding_init``,
    :mod:`recbole_scalrec.item_init`); a summary of both for ``results.json``."""
    info = {"semantic_conditioning": fusion.conditioner.fit(train_semantic.values)}
    mode = config["item_embedding_init"] or "random"
    if mode not in ITEM_INIT_MODES:
        raise ValueError(f"item_embedding_init must be one of {ITEM_INIT_MODES}, got {mode!r}.")
    if mode == "lm":
        info["item_embedding_init"] = lm_initialise_items(fusion.backbone, item_texts, encoder,
                                                          config["semantic_cache_dir"], config["dataset"])
    else:
        info["item_embedding_init"] = {"mode": "random"}
    return info


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
    """Data, cloud semantics, stage 1 and stage 2 (no evaluation); see :func:`run_recbole_scalrec`.

    In a process group (:mod:`recbole_scalrec.distributed`) every rank shares the semantic
    precompute and stage 1; ranks other than 0 return None after stage 1.
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    check_backbone(config["model"])  # before any data or LM work
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
    device = config["device"]
    results_dir = config["results_dir"] or os.path.join("saved", f"{config['model']}-{config['dataset']}-seed{config['seed']}")

    # --- data -----------------------------------------------------------------------------
    with timer.stage("load"):
        if distributed.is_main():
            ensure_prepared(config["dataset"], os.path.dirname(os.path.normpath(config["data_path"])))
        distributed.barrier()
        data = load_dataset(config)
        if (config["timestamp_sort"] or "exact") not in ("exact", "recbole"):
            raise ValueError(f"timestamp_sort must be 'exact' or 'recbole', got {config['timestamp_sort']!r}.")
        sequences = UserSequences.from_dataset(data, sort_dtype=np.float32 if config["timestamp_sort"] == "recbole" else np.float64)
        config["real_timestamps"] = resolve_real_timestamps(config, sequences)
        n_users_raw = raw_user_count(config) if distributed.is_main() else None
        item_texts = load_item_texts(config, data)
        request_texts = load_request_texts(config, data, sequences.rows)
        builder = AbstractBuilder.from_config(config, sequences, item_texts, request_texts)
        prefixes = needed_prefixes(config, sequences)
    logger.info(f"{sequences.n_users} users, {len(sequences.items)} interactions; {len(prefixes['all'])} prefixes need semantics")
    if n_users_raw is not None and n_users_raw > sequences.n_users:
        logger.warning(f"{n_users_raw - sequences.n_users} of {n_users_raw} users of {config['dataset']}.inter were filtered "
                       f"out (user_inter_num_interval {config['user_inter_num_interval']} and RecBole's other filters).")

    # --- cloud semantics h(t) = LLM(a(t)), cached on disk -----------------------------------
    with timer.stage("semantic_encode"):
        encoder = SemanticEncoder.from_config(config)
        cache_key = {"dataset": config["dataset"], "n_inter": int(len(sequences.items)),
                     "data_fingerprint": _fingerprint({"items": sequences.items.tolist()}),
                     "encoder": encoder.fingerprint, "abstract": builder.settings()}
        cache = SemanticCache(os.path.join(config["semantic_cache_dir"], config["dataset"]), cache_key)
        h = cache.get_or_compute(prefixes["all"], builder.build, encoder, chunk_size=config["semantic_chunk_size"] or 2048,
                                 show_progress=distributed.is_main() and bool(config["show_progress"]), rank=rank, world_size=world,
                                 barrier=distributed.barrier if world > 1 else None)
        semantic = PrefixTable(prefixes["all"], h)
        lm_forward_calls = int(distributed.all_reduce_sum(encoder.forward_calls))

    # --- stage 1: fusion backbone on fresh semantics ---------------------------------------
    init_seed(config["seed"], config["reproducibility"])  # the same initial weights whatever ran before
    backbone = get_model(config["model"])(config, backbone_dataset(config["model"], config, data)).to(device)
    fusion = FusionModel(backbone, encoder.dim, config["fusion_weight"], config["projection_hidden_size"],
                         config["projection_dropout"], conditioning=config["semantic_conditioning"] or "none").to(device)
    key_fields = stage1_key(config, _fingerprint(cache_key), len(sequences.items))
    key1 = _fingerprint(key_fields)
    ckpt = config["stage1_checkpoint"] or os.path.join(results_dir, "stage1.pth")
    # what stage 1 may read for a training prefix: the encoded training prefixes (the stride grid and
    # the snapshots stage 2 and the evaluation need), never a valid or test request's h
    encoded_train = np.intersect1d(prefixes["all"], sequences.train_prefixes())
    train_semantic = PrefixTable(encoded_train, semantic(encoded_train))
    stage1 = FusionTrainer(config, fusion, sequences, semantic, train_semantic=train_semantic)
    with timer.stage("stage1"):
        # only rank 0 reads and writes the checkpoint; the decision and the weights are broadcast
        decision, state = None, None
        if distributed.is_main():
            try:
                state = check_stage1_checkpoint(ckpt, key1, _plain_key(key_fields), saved)
                decision = "reuse" if state is not None else "train"
            except CheckpointMismatchError as exc:
                if world == 1:
                    raise
                decision = str(exc)
        decision = distributed.broadcast_object(decision)
        if decision not in ("reuse", "train"):
            raise CheckpointMismatchError(decision)
        if decision == "reuse":
            if state is not None:
                fusion.load_state_dict(state["state_dict"])
            distributed.broadcast_module(fusion)
            stage1_info = dict(state["info"] if state is not None else {}, checkpoint="reused")
            logger.info(f"stage 1: reusing {ckpt} (same data, semantics and settings)")
        else:
            init_info = {}
            if distributed.is_main():
                init_info = prepare_stage1(config, fusion, train_semantic, item_texts, encoder)
            distributed.broadcast_module(fusion)
            stage1_info = dict(stage1.fit(prefixes["train"], prefixes["valid"]), checkpoint="trained", **init_info)
            if saved and distributed.is_main():
                save_checkpoint({"key": key1, "key_fields": _plain_key(key_fields), "state_dict": fusion.state_dict(),
                                 "info": {k: v for k, v in stage1_info.items() if k != "checkpoint"}}, ckpt)
        if not distributed.is_main():
            return None  # stage 2 and the evaluation run on rank 0
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
    heads = {}
    item_table = fusion.item_table.detach()
    trainer2 = CalibrationTrainer(config, states, sequences, item_table, prefixes["stage2"], prefixes["valid"])
    with timer.stage("stage2"):
        for method in config["stage2_methods"]:
            torch.manual_seed(config["seed"])  # a head's initial weights must not depend on what ran before it
            heads[method] = build_head(method, config, item_table.shape[1]).to(device)
        stage2_info = trainer2.fit_all(heads)  # all heads on the same batches, one validation pass per epoch
    info = {"stage1": stage1_info, "stage2": stage2_info, "cache": getattr(cache, "stats", None),
            "lm_precision": dict(encoder.precision_info, precision=encoder.precision),
            "n_users_raw": n_users_raw, "world_size": world, "semantic": semantic}
    return ScalRecRun(config, sequences, prefixes, fusion, states, heads, timer, lm_forward_calls, full_ranking, info)


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
    config = run.config
    methods = run_methods(config)
    rows = []
    with run.timer.stage("evaluate"):
        for split in ("valid", "test"):
            ids = run.prefixes[split]
            common = dict(states=run.states, sequences=run.sequences, item_table=run.item_table, prefix_ids=ids,
                          settings=config["eval_settings"], methods=methods, fusion_weight=config["fusion_weight"],
                          heads=run.heads, top_m=config["spearman_top_m"], batch_size=config["eval_batch_size"],
                          repair_size=int(config["repair_size"] or 0), temperature=config["kd_temperature"])
            rows += [dict(r, split=split) for r in evaluate_staleness(gaps=config["eval_gaps"], **common)]
            if config["refresh_interval"]:
                gaps = refresh_gaps(run.sequences, ids, config["refresh_interval"])
                rows += [dict(r, split=split, refresh_interval=config["refresh_interval"])
                         for r in evaluate_staleness(gaps=[], gap_override=gaps, **common)]
    return rows


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
    except (ValueError, FileNotFoundError, KeyError, FloatingPointError) as err:
        # bad inputs (data, configuration, checkpoints, NaN from the LM): one line, no traceback
        if os.environ.get("SCALREC_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
