"""Calibrator with bounded correction (METHOD.md Sec. 5, Eqs. 12-14)."""
from __future__ import annotations

import torch
from torch import nn


def bounded_correction(u: torch.Tensor, z_sem_snap: torch.Tensor, kappa: torch.Tensor, radius: float, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 13: ``delta = rho * ||z_sem_hat|| * kappa * u / max(1, ||u|| + eps)``,
    so ``||delta|| <= rho * ||z_sem_hat|| * kappa``."""
    scale = radius * torch.linalg.vector_norm(z_sem_snap, dim=-1) * kappa
    u_norm = torch.linalg.vector_norm(u, dim=-1)
    return u * (scale / torch.clamp(u_norm + eps, min=1.0)).unsqueeze(-1)


class Calibrator(nn.Module):
    """Proposal ``u = MLP_psi([z_sem_hat; z_str(t); c])`` (Eq. 12; the cues are optional)."""

    def __init__(self, dim: int, n_cues: int, hidden: int = 128, use_cues: bool = True) -> None:
        super().__init__()
        self.use_cues = use_cues
        in_dim = 2 * dim + (n_cues if use_cues else 0)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, z_sem_snap: torch.Tensor, z_str: torch.Tensor, cues: torch.Tensor) -> torch.Tensor:
        parts = [z_sem_snap, z_str] + ([cues] if self.use_cues else [])
        return self.net(torch.cat(parts, dim=-1))
