"""The stage-1 checkpoint's reuse policy: what the stage-1 weights depend on, and when a file may
be reused, retrained or must not be overwritten.

A checkpoint records its key (:func:`stage1_key`: every configuration key that can change the
weights, the semantics' fingerprint and the interaction count). :func:`check_stage1_checkpoint`
reuses a file with the same key; a file made for other settings is refused when the run would
overwrite it, with the differing settings named (:class:`CheckpointMismatchError`).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from recbole_scalrec.trainer.trainer import load_checkpoint

logger = logging.getLogger(__name__)


def plain_key(value: Any) -> Any:
    """``value`` as JSON types (what a ``weights_only`` checkpoint may hold)."""
    return json.loads(json.dumps(value, default=str))


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
    if config["model"] != "SCaLRec":
        skip.add("backbone")  # the model is the backbone; SCaLRec's key holds both names
    values = {k: v for k, v in config.final_config_dict.items() if k not in skip}
    return {"config": plain_key(values), "semantic": semantic_key, "n_inter": n_inter}
