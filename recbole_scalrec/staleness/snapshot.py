"""Cloud snapshots and stale requests (METHOD.md Sec. 2).

:class:`PrefixStates` holds what the frozen stage-1 model gives for each prefix that the
protocol needs: ``z_str``, ``z_sem``, the candidate set ``C`` and device statistics.
:func:`stale_requests` pairs each request at ``t`` with its snapshot at
``t0 = max(1, t - Delta)`` and picks the candidate set of the setting:
S1 reranks the fresh ``C(t)``, S2 the snapshot's ``C(t0)``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.model.fusion import FusionModel, retrieve_candidates


def lookup_rows(sorted_ids: np.ndarray, prefix_ids, what: str) -> torch.Tensor:
    """Rows of ``prefix_ids`` in ``sorted_ids``; a prefix that is not there is a pipeline bug."""
    prefix_ids = np.asarray(prefix_ids, dtype=np.int64)
    rows = np.searchsorted(sorted_ids, prefix_ids)
    if len(prefix_ids) and (rows.max() >= len(sorted_ids) or not np.array_equal(sorted_ids[rows], prefix_ids)):
        raise KeyError(f"Prefixes without {what}; the pipeline must list them in needed_prefixes().")
    return torch.as_tensor(rows, dtype=torch.long)


@dataclass
class PrefixStates:
    """Frozen per-prefix outputs, rows in the order of the sorted unique :attr:`ids`."""

    ids: np.ndarray  # int64 sorted prefix ids
    z_str: torch.Tensor  # [P, d]
    z_sem: torch.Tensor  # [P, d]
    candidates: torch.Tensor  # [P, N] long
    length: torch.Tensor  # [P] prefix length t
    density: torch.Tensor  # [P] distinct / length over the recent window
    per_day: torch.Tensor  # [P] events per day over that window (0 without real time)

    def rows(self, prefix_ids: np.ndarray) -> torch.Tensor:
        return lookup_rows(self.ids, prefix_ids, "precomputed states")

    @classmethod
    @torch.no_grad()
    def compute(
        cls,
        model: FusionModel,
        sequences: UserSequences,
        prefix_ids: np.ndarray,
        semantic: np.ndarray,
        max_len: int,
        candidate_size: int,
        window: int,
        real_time: bool,
        batch_size: int = 1024,
        device: torch.device | str = "cpu",
    ) -> "PrefixStates":
        """Run the frozen backbone and projection on ``prefix_ids`` (``semantic`` is ``h`` of
        each, same order) and retrieve each prefix's candidate set ``C`` (Eq. 4, top-N)."""
        order = np.argsort(prefix_ids)
        ids = np.asarray(prefix_ids, dtype=np.int64)[order]
        h = torch.as_tensor(semantic[order])
        model.eval()
        z_str, z_sem, cands = [], [], []
        for lo in range(0, len(ids), batch_size):
            batch = torch.as_tensor(ids[lo : lo + batch_size])
            seq, length = sequences.gather_sequences(batch, max_len)
            users = sequences.prefix_users(ids[lo : lo + batch_size]).to(device) if model.needs_user else None
            zs = model.structure(seq.to(device), length.to(device), users)
            ze = model.semantic(h[lo : lo + batch_size].to(device))
            cands.append(retrieve_candidates(model.full_scores(zs, ze), candidate_size).cpu())
            z_str.append(zs.cpu())
            z_sem.append(ze.cpu())
        density, per_day = sequences.density(ids, window)
        if per_day is None or not real_time:
            per_day = np.zeros_like(density)
        d = model.item_table.shape[1]
        return cls(
            ids,
            torch.cat(z_str) if z_str else torch.zeros(0, d),
            torch.cat(z_sem) if z_sem else torch.zeros(0, d),
            torch.cat(cands) if cands else torch.zeros(0, candidate_size, dtype=torch.long),
            torch.as_tensor(sequences.prefix_length(ids), dtype=torch.float32),
            torch.as_tensor(density),
            torch.as_tensor(per_day),
        )


@dataclass
class StaleRequests:
    """A batch of requests with their snapshots, ready to score."""

    prefix_ids: np.ndarray
    targets: torch.Tensor  # [B]
    gap: torch.Tensor  # [B] effective gap t - t0 (after clamping)
    clamped: torch.Tensor  # [B] bool
    z_str: torch.Tensor  # fresh z_str(t)
    z_str_snap: torch.Tensor  # z_str(t0)
    z_sem_fresh: torch.Tensor  # z_sem(t): offline teacher / fresh-fusion upper bound
    z_sem_snap: torch.Tensor  # z_sem(t0)
    candidates: torch.Tensor  # [B, N] the candidate set of the setting
    length: torch.Tensor
    density: torch.Tensor
    per_day: torch.Tensor

    def to(self, device) -> "StaleRequests":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return StaleRequests(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in values.items()})

    def __len__(self) -> int:
        return len(self.prefix_ids)


def repair_candidates(req: StaleRequests, item_table: torch.Tensor, k: int) -> StaleRequests:
    """Candidate repair on the device (METHOD.md Sec. 10): the request's candidate set plus the
    ``k`` best items by the fresh structure score ``<z_str(t), v_i>`` that it does not hold yet
    (``O(|I| d)`` per request; padding item 0 never added). Everything else is unchanged."""
    if k <= 0:
        return req
    scores = req.z_str @ item_table.T
    scores[:, 0] = -torch.inf
    scores.scatter_(1, req.candidates, -torch.inf)
    extra = torch.topk(scores, k=min(k, scores.shape[1] - req.candidates.shape[1] - 1), dim=1).indices
    values = {f.name: getattr(req, f.name) for f in fields(req)}
    values["candidates"] = torch.cat([req.candidates, extra], dim=1)
    return StaleRequests(**values)


def refresh_gaps(sequences: UserSequences, prefix_ids: np.ndarray, interval: int) -> np.ndarray:
    """Intermittent cloud (METHOD.md Sec. 2): refreshes at t = 1, 1 + k, 1 + 2k, ...; a
    request at t uses the last refresh at or before t, i.e. gap ``(t - 1) mod k``."""
    return (sequences.prefix_length(np.asarray(prefix_ids)) - 1) % interval


def stale_requests(
    states: PrefixStates,
    sequences: UserSequences,
    prefix_ids: np.ndarray,
    gaps,
    s2: np.ndarray | bool,
) -> StaleRequests:
    """Pair requests at ``prefix_ids`` with their snapshots; ``s2`` picks S2 (stale candidates)
    per request, else S1 (fresh candidates)."""
    prefix_ids = np.asarray(prefix_ids, dtype=np.int64)
    snap_ids, clamped = sequences.shift_prefix(prefix_ids, gaps)
    now = states.rows(prefix_ids)
    then = states.rows(snap_ids)
    s2 = torch.as_tensor(np.broadcast_to(np.asarray(s2, dtype=bool), prefix_ids.shape).copy())
    candidates = torch.where(s2[:, None], states.candidates[then], states.candidates[now])
    return StaleRequests(
        prefix_ids=prefix_ids,
        targets=torch.as_tensor(sequences.targets(prefix_ids), dtype=torch.long),
        gap=torch.as_tensor(prefix_ids - snap_ids, dtype=torch.float32),
        clamped=torch.as_tensor(clamped),
        z_str=states.z_str[now],
        z_str_snap=states.z_str[then],
        z_sem_fresh=states.z_sem[now],
        z_sem_snap=states.z_sem[then],
        candidates=candidates,
        length=states.length[now],
        density=states.density[now],
        per_day=states.per_day[now],
    )


class PrefixTable:
    """Rows of a matrix keyed by prefix id (e.g. the LM outputs ``h`` of the needed prefixes)."""

    def __init__(self, ids: np.ndarray, values: np.ndarray | torch.Tensor) -> None:
        order = np.argsort(ids)
        self.ids = np.asarray(ids, dtype=np.int64)[order]
        self.values = torch.as_tensor(np.asarray(values)[order])

    def __call__(self, prefix_ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.values[lookup_rows(self.ids, prefix_ids, "semantic embeddings")]

    def at_or_before(self, prefix_ids: np.ndarray, floors: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Rows of the latest stored prefix at or before each of ``prefix_ids`` but not before its
        ``floors`` (the user's first prefix), and whether that row is the prefix's own.

        This is what a device's cache holds at ``t``: the semantics of the last prefix the cloud
        encoded. Raises ``KeyError`` when a prefix has no stored prefix between its floor and itself.
        """
        prefix_ids = np.asarray(prefix_ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, prefix_ids, side="right") - 1
        found = self.ids[np.maximum(rows, 0)]
        if len(prefix_ids) and ((rows < 0).any() or (found < np.asarray(floors)).any()):
            raise KeyError("A training prefix has no encoded prefix of its own user at or before it; the encoding "
                           "grid (thin_train_prefixes) keeps every user's first prefix, so list it in needed_prefixes().")
        return self.values[torch.as_tensor(rows, dtype=torch.long)], found == prefix_ids
