"""Evaluation protocol under staleness (METHOD.md Sec. 7).

Leave-one-out per user in time order; every method reranks the same candidate set of each
request (S1: fresh ``C(t)``, S2: the snapshot's ``C(t0)``); a target outside the set is a
miss — no target is ever inserted. Ties in score are broken in the target's favour
(rank = 1 + number of candidates scored strictly higher).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.methods import StalenessHead, method_scores, request_cues
from recbole_scalrec.snapshot import PrefixStates, stale_requests

KS = (5, 10)
MISS = 0  # rank value of a target outside the candidate set


def target_ranks(scores: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target among its candidates, :data:`MISS` (0) when absent."""
    hit = candidates == targets[:, None]
    present = hit.any(1)
    target_score = torch.where(hit, scores, torch.full_like(scores, -torch.inf)).max(1).values
    rank = (scores > target_score[:, None]).sum(1) + 1
    return torch.where(present, rank, torch.zeros_like(rank))


def metrics_from_ranks(ranks: np.ndarray, ks: Iterable[int] = KS) -> dict[str, float]:
    """HR@K and NDCG@K (one relevant item: ``1 / log2(rank + 1)``) and candidate recall."""
    ranks = np.asarray(ranks)
    found = ranks > 0
    out: dict[str, float] = {}
    for k in ks:
        top = found & (ranks <= k)
        out[f"hit@{k}"] = float(top.mean()) if len(ranks) else 0.0
        gains = np.where(top, 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0)
        out[f"ndcg@{k}"] = float(gains.mean()) if len(ranks) else 0.0
    out["candidate_recall"] = float(found.mean()) if len(ranks) else 0.0
    return out


def full_ranking_metrics(scores: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = KS) -> np.ndarray:
    """Ranks of targets over all items (RecBole's full-sort evaluation of sequential models:
    history not masked); returns ranks for :func:`metrics_from_ranks`."""
    target_score = scores.gather(1, targets[:, None])
    return ((scores > target_score).sum(1) + 1).cpu().numpy()


@torch.no_grad()
def evaluate_staleness(
    states: PrefixStates,
    sequences: UserSequences,
    item_table: torch.Tensor,
    prefix_ids: np.ndarray,
    gaps: Iterable[int],
    settings: Iterable[str],
    methods: Iterable[str],
    fusion_weight: float,
    heads: dict[str, StalenessHead] | None = None,
    top_m: int = 20,
    batch_size: int = 1024,
    gap_override: np.ndarray | None = None,
) -> list[dict]:
    """Rank every request's target under every method, gap and setting.

    Returns rows ``{"setting", "gap", "method", "n_requests", "n_clamped", "metrics", "ranks"}``.
    ``gap_override`` (per-request gaps, e.g. intermittent refresh) replaces ``gaps``.
    """
    methods = list(methods)
    for head in (heads or {}).values():
        head.eval()
    rows = []
    gap_list = [None] if gap_override is not None else list(gaps)
    for setting in settings:
        if setting not in ("S1", "S2"):
            raise ValueError(f"Unknown setting {setting!r}; eval_settings takes S1 and/or S2.")
        for gap in gap_list:
            ranks = {m: [] for m in methods}
            clamped = 0
            for lo in range(0, len(prefix_ids), batch_size):
                batch = prefix_ids[lo : lo + batch_size]
                g = gap_override[lo : lo + batch_size] if gap_override is not None else gap
                req = stale_requests(states, sequences, batch, g, s2=setting == "S2")
                clamped += int(req.clamped.sum())
                cues = request_cues(req, item_table, top_m) if heads else None
                for m in methods:
                    scores = method_scores(m, req, item_table, fusion_weight, heads, cues)
                    ranks[m].append(target_ranks(scores, req.candidates, req.targets).numpy())
            for m in methods:
                r = np.concatenate(ranks[m]) if ranks[m] else np.zeros(0, dtype=np.int64)
                rows.append({"setting": setting, "gap": gap, "method": m, "n_requests": int(len(r)),
                             "n_clamped": clamped, "metrics": metrics_from_ranks(r), "ranks": r})
    return rows


def mean_ndcg10(rows: list[dict], method: str) -> float:
    """Model-selection score: NDCG@10 of ``method`` averaged over the rows' gaps and settings."""
    values = [r["metrics"]["ndcg@10"] for r in rows if r["method"] == method]
    return float(np.mean(values)) if values else -math.inf
