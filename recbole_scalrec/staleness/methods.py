"""The methods compared under staleness (METHOD.md Sec. 8), one code path.

Every method reduces to the semantic vector and the fusion weight it hands to
:func:`recbole_scalrec.model.fusion.score_candidates`, on the same requests and candidate sets:

==========================  ========================================  ===========
method                      semantic vector                           weight
==========================  ========================================  ===========
fresh_fusion                ``z_sem(t)`` (upper bound, offline only)  lambda
cached_fusion               ``z_sem_hat``                             lambda
structure_only              (unused)                                  0
semantic_only               ``z_sem_hat``                             1
learned_gate                ``g * z_sem_hat``, ``g in (0, 1)``        lambda
dynamic_fusion              ``z_sem_hat``                             ``lambda(c)``
scalrec (+ ablations)       ``(1 - kappa a) z_sem_hat + delta``       lambda
scalrec_literal             ``z_sem_hat + delta`` (Eqs. 12-14 as      lambda
                            printed, ``y = exp(-m)``)
==========================  ========================================  ===========

``<method>+repair`` (METHOD.md Sec. 10) is the same method on the S2 candidate set repaired on
the device (:func:`recbole_scalrec.staleness.snapshot.repair_candidates`); :func:`split_method` names both parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recbole_scalrec.staleness.calibrator import Calibrator, Shrink, bounded_correction, corrected_semantics
from recbole_scalrec.staleness.cues import CUE_NAMES, compute_cues
from recbole_scalrec.staleness.estimator import CueScaler, ReliabilityEstimator
from recbole_scalrec.model.fusion import score_candidates
from recbole_scalrec.staleness.snapshot import StaleRequests

FIXED_METHODS = ("fresh_fusion", "cached_fusion", "structure_only", "semantic_only")
TRAINED_METHODS = (
    "learned_gate",
    "dynamic_fusion",
    "scalrec",
    "scalrec_literal",
    "scalrec_no_estimator",
    "scalrec_no_rel_loss",
    "scalrec_no_reg_loss",
    "scalrec_no_spearman",
)
METHODS = FIXED_METHODS + TRAINED_METHODS
SPEARMAN = CUE_NAMES.index("spearman")
REPAIR_SUFFIX = "+repair"


def split_method(name: str) -> tuple[str, bool]:
    """``("scalrec", True)`` for ``"scalrec+repair"``; ``(name, False)`` otherwise."""
    if name.endswith(REPAIR_SUFFIX):
        return name[: -len(REPAIR_SUFFIX)], True
    return name, False


@dataclass
class Adjustment:
    """What a method feeds Eq. 4, plus what its loss needs."""

    z_sem: torch.Tensor
    weight: float | torch.Tensor
    reliability: torch.Tensor | None = None
    proposal: torch.Tensor | None = None
    kappa: torch.Tensor | None = None
    shrink: torch.Tensor | None = None


class StalenessHead(nn.Module):
    """Base of the trained device-side heads: standardised cues in, an :class:`Adjustment` out.

    ``target_scale_mode`` is how stage 2 sets ``m0`` of the reliability target (Eq. 18), kept in
    the buffer ``target_scale``; heads without an estimator keep it only for the diagnostics.
    """

    lambda_rel: float = 0.0
    lambda_reg: float = 0.0

    def __init__(self, n_cues: int, fusion_weight: float, use_spearman: bool = True,
                 target_scale: str | float = 1.0) -> None:
        super().__init__()
        self.scaler = CueScaler(n_cues)
        self.fusion_weight = fusion_weight
        self.target_scale_mode = target_scale
        self.register_buffer("target_scale", torch.tensor(1.0))
        mask = torch.ones(n_cues)
        if not use_spearman:
            mask[SPEARMAN] = 0.0
        self.register_buffer("cue_mask", mask)

    def scaled(self, cues: torch.Tensor) -> torch.Tensor:
        return self.scaler(cues) * self.cue_mask

    def adjust(self, req: StaleRequests, cues: torch.Tensor) -> Adjustment:  # pragma: no cover - abstract
        raise NotImplementedError


class SCaLRecHead(StalenessHead):
    """Estimator (Eq. 11) + calibrator with bounded correction (Eqs. 12-14); with ``shrink`` the
    corrected semantics are ``(1 - kappa * a) * z_sem_hat + delta`` (METHOD.md Sec. 5)."""

    def __init__(self, dim: int, n_cues: int, fusion_weight: float, radius: float = 0.2, estimator_hidden: int = 32,
                 calibrator_hidden: int = 128, calibrator_cues: bool = True, use_estimator: bool = True,
                 use_spearman: bool = True, lambda_rel: float = 1.0, lambda_reg: float = 1e-3, shrink: bool = False,
                 target_scale: str | float = 1.0) -> None:
        super().__init__(n_cues, fusion_weight, use_spearman, target_scale)
        self.radius = radius
        self.estimator = ReliabilityEstimator(n_cues, estimator_hidden) if use_estimator else None
        self.calibrator = Calibrator(dim, n_cues, calibrator_hidden, calibrator_cues)
        self.shrink = Shrink(dim, n_cues, estimator_hidden, calibrator_cues) if shrink else None
        self.lambda_rel = lambda_rel if use_estimator else 0.0
        self.lambda_reg = lambda_reg

    def adjust(self, req: StaleRequests, cues: torch.Tensor) -> Adjustment:
        c = self.scaled(cues)
        r = self.estimator(c) if self.estimator is not None else None
        kappa = 1.0 - r if r is not None else torch.ones(len(c), device=c.device)
        u = self.calibrator(req.z_sem_snap, req.z_str, c)
        delta = bounded_correction(u, req.z_sem_snap, kappa, self.radius)
        a = self.shrink(req.z_sem_snap, req.z_str, c) if self.shrink is not None else None
        return Adjustment(corrected_semantics(req.z_sem_snap, delta, kappa, a), self.fusion_weight, r, u, kappa, a)


class GateHead(StalenessHead):
    """Learned gate: the calibrator's architecture with a scalar ``g in (0, 1)`` output."""

    def __init__(self, dim: int, n_cues: int, fusion_weight: float, hidden: int = 128,
                 target_scale: str | float = 1.0) -> None:
        super().__init__(n_cues, fusion_weight, target_scale=target_scale)
        self.net = nn.Sequential(nn.Linear(2 * dim + n_cues, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def adjust(self, req: StaleRequests, cues: torch.Tensor) -> Adjustment:
        g = torch.sigmoid(self.net(torch.cat([req.z_sem_snap, req.z_str, self.scaled(cues)], -1)))
        return Adjustment(g * req.z_sem_snap, self.fusion_weight)


class DynamicFusionHead(StalenessHead):
    """Dynamic fusion: an MLP on the cues predicts the per-request fusion weight."""

    def __init__(self, n_cues: int, fusion_weight: float, hidden: int = 32, target_scale: str | float = 1.0) -> None:
        super().__init__(n_cues, fusion_weight, target_scale=target_scale)
        self.net = nn.Sequential(nn.Linear(n_cues, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        # start at the stage-1 weight
        nn.init.zeros_(self.net[2].weight)
        nn.init.constant_(self.net[2].bias, float(torch.logit(torch.tensor(fusion_weight).clamp(1e-3, 1 - 1e-3))))

    def adjust(self, req: StaleRequests, cues: torch.Tensor) -> Adjustment:
        return Adjustment(req.z_sem_snap, torch.sigmoid(self.net(self.scaled(cues))))


def build_head(method: str, config, dim: int) -> StalenessHead:
    """A fresh, untrained head for a trained method, from the SCaLRec yaml keys.

    ``scalrec_literal`` is Eqs. 12-14 and 18 as the paper prints them (no shrink, ``m0 = 1``);
    ``scalrec`` and its ablations take ``correction_shrink`` and ``reliability_target_scale``.
    """
    n = len(CUE_NAMES)
    lam = config["fusion_weight"]
    scale = config["reliability_target_scale"] or 1.0
    if method == "learned_gate":
        return GateHead(dim, n, lam, config["calibrator_hidden_size"], target_scale=scale)
    if method == "dynamic_fusion":
        return DynamicFusionHead(n, lam, config["estimator_hidden_size"], target_scale=scale)
    if method not in TRAINED_METHODS:
        raise ValueError(f"Unknown method {method!r}; trained methods are {', '.join(TRAINED_METHODS)}.")
    literal = method == "scalrec_literal"
    return SCaLRecHead(
        dim, n, lam,
        shrink=False if literal else bool(config["correction_shrink"]),
        target_scale=1.0 if literal else scale,
        radius=config["correction_radius"],
        estimator_hidden=config["estimator_hidden_size"],
        calibrator_hidden=config["calibrator_hidden_size"],
        calibrator_cues=config["calibrator_use_cues"],
        use_estimator=method != "scalrec_no_estimator",
        use_spearman=method != "scalrec_no_spearman",
        lambda_rel=0.0 if method == "scalrec_no_rel_loss" else config["lambda_rel"],
        lambda_reg=0.0 if method == "scalrec_no_reg_loss" else config["lambda_reg"],
    )


def request_cues(req: StaleRequests, item_table: torch.Tensor, top_m: int) -> torch.Tensor:
    """Cues of a request batch (Eq. 10) over its candidate set."""
    return compute_cues(req.gap, req.z_str, req.z_str_snap, req.z_sem_snap, item_table[req.candidates],
                        req.length, req.density, req.per_day, top_m=top_m)


def adjustment(method: str, req: StaleRequests, fusion_weight: float, heads: dict[str, StalenessHead] | None = None,
               cues: torch.Tensor | None = None) -> Adjustment:
    """The :class:`Adjustment` of ``method`` on a request batch."""
    if method == "fresh_fusion":
        return Adjustment(req.z_sem_fresh, fusion_weight)
    if method == "cached_fusion":
        return Adjustment(req.z_sem_snap, fusion_weight)
    if method == "structure_only":
        return Adjustment(req.z_sem_snap, 0.0)
    if method == "semantic_only":
        return Adjustment(req.z_sem_snap, 1.0)
    if heads is None or method not in heads:
        raise KeyError(f"Method {method!r} needs a trained head; train stage 2 first.")
    return heads[method].adjust(req, cues)


def adjusted_scores(adj: Adjustment, req: StaleRequests, item_table: torch.Tensor) -> torch.Tensor:
    """Eq. 4 on ``req.candidates`` with what an :class:`Adjustment` hands it."""
    weight = adj.weight.reshape(-1, 1) if torch.is_tensor(adj.weight) else adj.weight
    return score_candidates(item_table, req.candidates, req.z_str, adj.z_sem, weight)


def method_scores(method: str, req: StaleRequests, item_table: torch.Tensor, fusion_weight: float,
                  heads: dict[str, StalenessHead] | None = None, cues: torch.Tensor | None = None) -> torch.Tensor:
    """Scores of ``req.candidates`` under ``method``: the one reranking path of every method."""
    return adjusted_scores(adjustment(method, req, fusion_weight, heads, cues), req, item_table)
