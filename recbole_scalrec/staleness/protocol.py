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
from recbole_scalrec.staleness.diagnostics import adjustment_internals, changed, summarise, top_items
from recbole_scalrec.staleness.estimator import mismatch
from recbole_scalrec.staleness.methods import Adjustment, StalenessHead, adjusted_scores, adjustment, request_cues, split_method
from recbole_scalrec.staleness.snapshot import PrefixStates, StaleRequests, repair_candidates, stale_requests

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


def tied_with_target(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row, how many items other than the target have exactly the target's score."""
    return (scores == scores.gather(1, targets[:, None])).sum(1) - 1


def full_ranking_metrics(scores: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = KS,
                         ties: torch.Generator | None = None) -> np.ndarray:
    """Ranks of targets over all items (RecBole's full-sort evaluation of sequential models:
    history not masked); returns ranks for :func:`metrics_from_ranks`. A target scored ``-inf`` is
    not in the list the model returns (e.g. an item no generated identifier names): it ranks last,
    as the number of items, whatever else is ``-inf``.

    A target tied with other items ranks first among them, unless ``ties`` (a seeded generator) is
    given: then it takes a uniformly drawn place among them, as an arbitrary order of the tied items
    would give. Learned scores are all but never tied; a generative ranker's are (every item a
    generated attribute names gets the same score), and ranking its target first among hundreds
    of equals would credit it with an order it does not have."""
    target_score = scores.gather(1, targets[:, None])
    ranks = (scores > target_score).sum(1) + 1
    if ties is not None:
        equal = tied_with_target(scores, targets) + 1  # the target and the items tied with it
        ranks = ranks + (torch.rand(len(ranks), generator=ties) * equal.cpu()).long().to(ranks.device)
    return torch.where(target_score.squeeze(1) == -torch.inf, scores.shape[1], ranks).cpu().numpy()


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
    repair_size: int = 0,
    temperature: float = 4.0,
    internals: bool = True,
) -> list[dict]:
    """Rank every request's target under every method, gap and setting.

    Returns rows ``{"setting", "gap", "method", "n_requests", "n_clamped", "metrics", "ranks",
    "internals"}`` (``internals``: :mod:`recbole_scalrec.staleness.diagnostics`; ``temperature`` is the
    ``tau`` of its reliability target). ``gap_override`` (per-request gaps, e.g. intermittent
    refresh) replaces ``gaps``. A ``<method>+repair`` method is ranked in S2 only, on the snapshot's
    candidates repaired with ``repair_size`` fresh structure items (METHOD.md Sec. 10).
    ``internals=False`` skips the diagnostics (rows get ``{}``), e.g. for model selection.
    """
    methods = list(methods)
    for head in (heads or {}).values():
        head.eval()
    rows = []
    gap_list = [None] if gap_override is not None else list(gaps)
    for setting in settings:
        if setting not in ("S1", "S2"):
            raise ValueError(f"Unknown setting {setting!r}; eval_settings takes S1 and/or S2.")
        here = [m for m in methods if setting == "S2" or not split_method(m)[1]]
        if any(split_method(m)[1] for m in here) and repair_size <= 0:
            raise ValueError("A +repair method needs repair_size > 0.")
        for gap in gap_list:
            ranks = {m: [] for m in here}
            moved = {m: [] for m in here}
            inner = {m: {} for m in here}
            clamped = 0
            for lo in range(0, len(prefix_ids), batch_size):
                batch = prefix_ids[lo : lo + batch_size]
                g = gap_override[lo : lo + batch_size] if gap_override is not None else gap
                plain = stale_requests(states, sequences, batch, g, s2=setting == "S2")
                clamped += int(plain.clamped.sum())
                views = _RequestViews(plain, item_table, top_m, repair_size, fusion_weight, temperature, heads)
                reference = top_items(views.scores("cached_fusion", False), plain.candidates) if internals else None
                for m in here:
                    base, repaired = split_method(m)
                    req = views.request(repaired)
                    scores = views.scores(base, repaired)
                    ranks[m].append(target_ranks(scores, req.candidates, req.targets).numpy())
                    if not internals:
                        continue
                    moved[m].append(changed(top_items(scores, req.candidates), reference).numpy())
                    if heads and base in heads:
                        adj = views.adjustment(base, repaired)
                        values = adjustment_internals(adj, req.z_sem_snap, views.mismatch(repaired),
                                                      float(heads[base].target_scale))
                        for name, v in values.items():
                            inner[m].setdefault(name, []).append(v)
            for m in here:
                r = np.concatenate(ranks[m]) if ranks[m] else np.zeros(0, dtype=np.int64)
                summary = {}
                if internals:
                    summary["changed_top10"] = float(np.concatenate(moved[m]).mean()) if moved[m] else 0.0
                    summary.update({name: summarise(np.concatenate(v)) for name, v in inner[m].items()})
                rows.append({"setting": setting, "gap": gap, "method": m, "n_requests": int(len(r)),
                             "n_clamped": clamped, "metrics": metrics_from_ranks(r), "ranks": r, "internals": summary})
    return rows


class _RequestViews:
    """One request batch as the methods see it: plain or repaired (built on first use), with the
    cues, adjustments and mismatches of each computed once."""

    def __init__(self, plain: StaleRequests, item_table: torch.Tensor, top_m: int, repair_size: int,
                 fusion_weight: float, temperature: float, heads: dict[str, StalenessHead] | None) -> None:
        self.plain, self.item_table, self.top_m, self.repair_size = plain, item_table, top_m, repair_size
        self.fusion_weight, self.temperature, self.heads = fusion_weight, temperature, heads
        self._req, self._cues, self._adj, self._m = {False: plain}, {}, {}, {}

    def request(self, repaired: bool) -> StaleRequests:
        if repaired not in self._req:
            self._req[repaired] = repair_candidates(self.plain, self.item_table, self.repair_size)
        return self._req[repaired]

    def cues(self, repaired: bool) -> torch.Tensor | None:
        if repaired not in self._cues:
            self._cues[repaired] = request_cues(self.request(repaired), self.item_table, self.top_m) if self.heads else None
        return self._cues[repaired]

    def adjustment(self, base: str, repaired: bool) -> Adjustment:
        key = (base, repaired)
        if key not in self._adj:
            self._adj[key] = adjustment(base, self.request(repaired), self.fusion_weight, self.heads, self.cues(repaired))
        return self._adj[key]

    def scores(self, base: str, repaired: bool) -> torch.Tensor:
        return adjusted_scores(self.adjustment(base, repaired), self.request(repaired), self.item_table)

    def mismatch(self, repaired: bool) -> torch.Tensor:
        if repaired not in self._m:
            self._m[repaired] = mismatch(self.request(repaired), self.item_table, self.fusion_weight, self.temperature)
        return self._m[repaired]


def mean_ndcg10(rows: list[dict], method: str, min_gap: int = 0) -> float:
    """Model-selection score: NDCG@10 of ``method`` averaged over the rows' settings and gaps of at
    least ``min_gap`` (stage 2 selects over gaps > 0: at gap 0 doing nothing is best)."""
    values = [r["metrics"]["ndcg@10"] for r in rows if r["method"] == method and (r["gap"] is None or r["gap"] >= min_gap)]
    return float(np.mean(values)) if values else -math.inf
