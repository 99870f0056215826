"""Per-user interaction sequences in time order, and the requests cut from them.

A **prefix** ``S_{<=t}`` of user ``u`` is named by the flat index of its last interaction
in :attr:`UserSequences.items` (``prefix_id = offsets[u] + t - 1``), so every cache,
snapshot and request refers to prefixes by one integer.

Leave-one-out in time order (METHOD.md Sec. 7): a user's last item is the test target,
the second last the validation target, the rest are training targets (each with the
prefix before it, which needs at least one item).

Bad inputs, repaired and counted:

* no timestamp column: each user's interactions keep the order of the ``.inter`` file (a
  warning says so); the abstract then has no time words and the density cue no events per day.
* users with fewer than :data:`MIN_USER_LENGTH` interactions have no validation and test
  request; RecBole's ``user_inter_num_interval: "[3,inf)"`` removes them while loading, and any
  that reach :meth:`UserSequences.from_dataset` anyway (a looser interval) are dropped there with
  a warning (:attr:`UserSequences.n_short_dropped`). :func:`raw_user_count` counts the users of
  the ``.inter`` file, so the pipeline reports how many were filtered.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

MIN_USER_LENGTH = 3  # one training-or-history item, the validation target and the test target


def raw_user_count(config) -> int | None:
    """Distinct users in the ``.inter`` file before RecBole's filters, or None when the file
    (``<data_path>/<dataset>.inter``) or its user column cannot be found."""
    import pandas as pd

    path = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    if not os.path.isfile(path):
        return None
    sep = config["field_separator"] or "\t"
    with open(path, encoding="utf-8") as f:
        header = [h.split(":", 1)[0] for h in f.readline().rstrip("\r\n").split(sep)]
    uid = config["USER_ID_FIELD"]
    if uid not in header:
        return None
    column = pd.read_csv(path, sep=sep, usecols=[header.index(uid)], dtype=str, keep_default_na=False,
                         quoting=3, engine="python" if len(sep) > 1 else "c").iloc[:, 0]
    return int(column[column != ""].nunique())


@dataclass
class UserSequences:
    """CSR layout of all users' item sequences, sorted by time (stable)."""

    items: np.ndarray  # int64 [n_inter] internal item ids
    times: np.ndarray | None  # float64 [n_inter] timestamps (None: file order)
    rows: np.ndarray  # int64 [n_inter] row of each interaction in dataset.inter_feat
    offsets: np.ndarray  # int64 [n_users + 1]
    users: np.ndarray  # int64 [n_users] internal user ids
    n_items: int  # item table size including padding id 0
    n_short_dropped: int = 0  # users dropped for having fewer than MIN_USER_LENGTH interactions

    @classmethod
    def from_dataset(cls, dataset, sort_dtype: type = np.float64) -> "UserSequences":
        """Build from a loaded RecBole dataset (after RecBole's filtering and id remapping).

        Interactions are sorted by (user, timestamp) with a stable sort; without a
        timestamp column the order of the ``.inter`` file is kept (documented in README).
        Users with fewer than ``MIN_USER_LENGTH`` interactions are dropped and counted.

        ``sort_dtype``: the precision the timestamps are sorted at. The pipeline sorts the exact
        (float64) unix seconds. RecBole's own split sorts its float32 copy of them, whose
        resolution is 64 s at 2^30 s (2004) and 128 s past 2^31: interactions less than a minute or two
        apart can swap, so RecBole's last item differs from ours for 16% of ml-100k users.
        ``np.float32`` reproduces RecBole's order (``benchmarks/trainer_speed.py`` uses it to train
        both loops on the same sequences).
        """
        feat = dataset.inter_feat
        uid = np.asarray(feat[dataset.uid_field]).astype(np.int64)
        iid = np.asarray(feat[dataset.iid_field]).astype(np.int64)
        time_field = dataset.time_field
        times = None
        if time_field is not None and time_field in feat.columns:
            times = np.asarray(feat[time_field]).astype(np.float64)
            order = np.lexsort((np.arange(len(uid)), times.astype(sort_dtype), uid))
        else:
            logger.warning("No timestamp column: each user's interactions keep the .inter file order.")
            order = np.argsort(uid, kind="stable")
        uid, iid = uid[order], iid[order]
        if times is not None:
            times = times[order]
        users, counts = np.unique(uid, return_counts=True)
        short = counts < MIN_USER_LENGTH
        if short.any():
            logger.warning(f"{int(short.sum())} user(s) have fewer than {MIN_USER_LENGTH} interactions (no validation "
                           f"and test request) and are dropped; keep user_inter_num_interval: \"[3,inf)\".")
            keep = ~short[np.searchsorted(users, uid)]
            uid, iid, order = uid[keep], iid[keep], order[keep]
            times = None if times is None else times[keep]
            users, counts = users[~short], counts[~short]
        offsets = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(iid, times, order.astype(np.int64), offsets, users.astype(np.int64), dataset.item_num,
                   int(short.sum()))

    # ----------------------------------------------------------------- layout helpers
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def user_of(self, prefix_ids: np.ndarray) -> np.ndarray:
        """Index (into :attr:`users`) of the user owning each flat position."""
        return np.searchsorted(self.offsets, prefix_ids, side="right") - 1

    def prefix_length(self, prefix_ids: np.ndarray) -> np.ndarray:
        """``t`` of each prefix (number of items in it)."""
        return prefix_ids - self.offsets[self.user_of(prefix_ids)] + 1

    def shift_prefix(self, prefix_ids: np.ndarray, gap: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Snapshot prefixes ``t0 = max(1, t - gap)`` (METHOD.md Sec. 2) and a clamped mask."""
        start = self.offsets[self.user_of(prefix_ids)]
        shifted = prefix_ids - np.asarray(gap, dtype=np.int64)
        clamped = shifted < start
        return np.maximum(shifted, start), clamped

    # ----------------------------------------------------------------- requests
    def train_prefixes(self) -> np.ndarray:
        """Prefix ids whose next item is a training target (all but the last two items)."""
        ids = [np.arange(s, e - 3) for s, e in zip(self.offsets[:-1], self.offsets[1:]) if e - s >= 4]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def eval_prefixes(self, split: str) -> np.ndarray:
        """One request per user: the prefix before the validation or the test target."""
        back = {"valid": 3, "test": 2}[split]
        return self.offsets[1:] - back

    def thin_train_prefixes(self, stride: int) -> np.ndarray:
        """Every ``stride``-th training prefix per user, aligned to the last one, plus ``t = 1``.

        Keeping ``t = 1`` and the alignment means ``t - gap`` stays on the grid whenever
        the gap is a multiple of the stride (or clamps to ``t = 1``).
        """
        prefixes = self.train_prefixes()
        if stride <= 1 or len(prefixes) == 0:
            return prefixes
        users = self.user_of(prefixes)
        last = self.offsets[users + 1] - 4
        keep = ((last - prefixes) % stride == 0) | (prefixes == self.offsets[users])
        return prefixes[keep]

    def latest_per_user(self, prefix_ids: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` latest of ``prefix_ids`` of each user (all of a user's when they have fewer),
        sorted; ``k <= 0`` keeps them all."""
        prefix_ids = np.sort(np.asarray(prefix_ids, dtype=np.int64))
        if k <= 0 or len(prefix_ids) == 0:
            return prefix_ids
        users = self.user_of(prefix_ids)
        # rank from the end within each user's run of ids: (last index of the run) - (own index)
        ends = np.searchsorted(users, users, side="right") - 1
        return prefix_ids[ends - np.arange(len(prefix_ids)) < k]

    def prefix_users(self, prefix_ids) -> torch.Tensor:
        """Internal (RecBole) user id of each prefix, for backbones that read the user."""
        return torch.as_tensor(self.users[self.user_of(np.asarray(prefix_ids, dtype=np.int64))], dtype=torch.long)

    def targets(self, prefix_ids: np.ndarray) -> np.ndarray:
        """Next item after each prefix."""
        return self.items[prefix_ids + 1]

    def gather_sequences(self, prefix_ids: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RecBole-style ``(item_seq [B, max_len], item_seq_len [B])``: the last ``max_len``
        items of each prefix, left-aligned, zero-padded at the end."""
        items = self._items_tensor()
        starts = torch.as_tensor(self.offsets[self.user_of(prefix_ids.numpy())], dtype=torch.long)
        length = torch.clamp(prefix_ids - starts + 1, max=max_len)
        first = prefix_ids - length + 1
        pos = torch.arange(max_len, dtype=torch.long)
        idx = first[:, None] + pos[None, :]
        valid = pos[None, :] < length[:, None]
        seq = torch.where(valid, items[idx.clamp(max=len(items) - 1)], torch.zeros((), dtype=torch.long))
        return seq, length

    def _items_tensor(self) -> torch.Tensor:
        if not hasattr(self, "_items_t"):
            self._items_t = torch.as_tensor(self.items, dtype=torch.long)
        return self._items_t

    # ----------------------------------------------------------------- device statistics
    def density(self, prefix_ids: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Distinct items / length over the last ``window`` items of each prefix, and events
        per day over that window when timestamps are real time (METHOD.md Sec. 3, cue 4)."""
        starts = self.offsets[self.user_of(prefix_ids)]
        first = np.maximum(starts, prefix_ids - window + 1)
        distinct = np.empty(len(prefix_ids), dtype=np.float32)
        per_day = None if self.times is None else np.empty(len(prefix_ids), dtype=np.float32)
        for k, (a, b) in enumerate(zip(first, prefix_ids + 1)):
            distinct[k] = len(np.unique(self.items[a:b])) / (b - a)
            if per_day is not None:
                span_days = (self.times[b - 1] - self.times[a]) / 86400.0
                per_day[k] = (b - a) / max(span_days, 1.0 / 24.0)
        return distinct, per_day
