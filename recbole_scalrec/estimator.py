"""Reliability estimator (METHOD.md Sec. 4, Eq. 11): ``r = sigmoid(MLP_phi(c))``."""
from __future__ import annotations

import torch
from torch import nn


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
