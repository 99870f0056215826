"""Reliability estimator (METHOD.md Sec. 4, Eq. 11) and its training target (Sec. 6, Eqs. 17-18).

``r = sigmoid(MLP_phi(c))``; the target it regresses on is ``y = exp(-m / m0)`` with the
mismatch ``m = KL(p_T || p_S)`` between the fresh teacher and the stale student over the
request's candidate set.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_scalrec.model.fusion import score_candidates


class CueScaler(nn.Module):
    """Standardises cues with statistics of the training requests (buffers, saved with the model)."""

    def __init__(self, n_cues: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_cues))
        self.register_buffer("std", torch.ones(n_cues))

    @torch.no_grad()
    def fit(self, cues: torch.Tensor) -> None:
        self.mean.copy_(cues.mean(0))
        self.std.copy_(cues.std(0).clamp_min(1e-6))

    def forward(self, cues: torch.Tensor) -> torch.Tensor:
        return (cues - self.mean) / self.std


class ReliabilityEstimator(nn.Module):
    """``r in (0, 1)``: how far the snapshot still agrees with the device evidence (Eq. 11).
    A 2-layer MLP with ReLU on the (standardised) cue vector."""

    def __init__(self, n_cues: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_cues, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, cues: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(cues)).squeeze(-1)


def kl_div(p_log_teacher: torch.Tensor, p_log_student: torch.Tensor) -> torch.Tensor:
    """``KL(p_T || p_S)`` per row from log-probabilities."""
    return (p_log_teacher.exp() * (p_log_teacher - p_log_student)).sum(-1)


def candidate_log_probs(item_table: torch.Tensor, candidates: torch.Tensor, z_str: torch.Tensor, z_sem: torch.Tensor,
                        weight: float | torch.Tensor, tau: float) -> torch.Tensor:
    """``log softmax(s / tau)`` over each request's candidate set, ``s`` from Eq. 4."""
    w = weight.reshape(-1, 1) if torch.is_tensor(weight) else weight
    return F.log_softmax(score_candidates(item_table, candidates, z_str, z_sem, w) / tau, dim=-1)


@torch.no_grad()
def mismatch(req, item_table: torch.Tensor, fusion_weight: float, tau: float) -> torch.Tensor:
    """Eq. 17: ``m = KL(p_T || p_S)`` per request, teacher with ``z_sem(t)``, student with ``z_sem_hat``."""
    teacher = candidate_log_probs(item_table, req.candidates, req.z_str, req.z_sem_fresh, fusion_weight, tau)
    stale = candidate_log_probs(item_table, req.candidates, req.z_str, req.z_sem_snap, fusion_weight, tau)
    return kl_div(teacher, stale)


MISMATCH_EPS = 1e-6  # mismatches below this are float noise of identical distributions (Delta = 0)


def reliability_target(m: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Eq. 18 with a scale: ``y = exp(-m / m0)``; ``m0 = 1`` is the paper's literal ``exp(-m)``.
    A mismatch under :data:`MISMATCH_EPS` counts as none (``y = 1``), so ``y`` stays in (0, 1]."""
    return torch.exp(-torch.where(m > MISMATCH_EPS, m, torch.zeros_like(m)) / scale)


def fit_target_scale(m: torch.Tensor, mode: str | float) -> float:
    """``m0`` from the mismatches of training requests: ``median`` of those above
    :data:`MISMATCH_EPS` (so half the stale requests get a target below ``exp(-1)``; 1 when none
    is), or a positive number taken as it is."""
    if isinstance(mode, str) and mode.lower() == "median":
        positive = m[m > MISMATCH_EPS]
        return float(positive.median()) if len(positive) else 1.0
    try:
        value = float(mode)
    except (TypeError, ValueError):
        raise ValueError(f"reliability_target_scale must be 'median' or a positive number, got {mode!r}.") from None
    if not value > 0:
        raise ValueError(f"reliability_target_scale must be positive, got {value}.")
    return value
