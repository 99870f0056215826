"""Which prefixes a run asks the cloud about, and what its timestamps are (METHOD.md Sec. 2, 6, 7).

:func:`needed_prefixes` lists every prefix whose semantics ``h(t)`` the run needs (stage 1,
stage 2, the evaluated requests and their snapshots); :func:`resolve_real_timestamps` decides
whether the timestamps are unix seconds (time words, events-per-day cue). Both are read by the
dataset (:class:`recbole_scalrec.data.dataset.SCaLRecDataset`) and the pipeline.
"""
from __future__ import annotations

import logging

import numpy as np

from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.staleness.snapshot import refresh_gaps

logger = logging.getLogger(__name__)

TRAIN_PREFIXES = ("all", "encoded")  # stage1_train_prefixes
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
