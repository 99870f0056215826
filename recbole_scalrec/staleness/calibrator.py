"""Calibrator with bounded correction (METHOD.md Sec. 5, Eqs. 12-14) and the learned shrink."""
from __future__ import annotations

import torch
from torch import nn


def bounded_correction(u: torch.Tensor, z_sem_snap: torch.Tensor, kappa: torch.Tensor, radius: float, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 13: ``delta = rho * ||z_sem_hat|| * kappa * u / max(1, ||u|| + eps)``,
    so ``||delta|| <= rho * ||z_sem_hat|| * kappa``."""
    scale = radius * torch.linalg.vector_norm(z_sem_snap, dim=-1) * kappa
    u_norm = torch.linalg.vector_norm(u, dim=-1)
    return u * (scale / torch.clamp(u_norm + eps, min=1.0)).unsqueeze(-1)


def corrected_semantics(z_sem_snap: torch.Tensor, delta: torch.Tensor, kappa: torch.Tensor,
                        shrink: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 14: ``z_tilde = z_sem_hat + delta``; with a shrink ``a in (0, 1)`` (METHOD.md Sec. 5)
    ``z_tilde = (1 - kappa * a) * z_sem_hat + delta``, so the head can also turn the stale
    semantics down, as far as ``(1 - kappa)`` of themselves."""
    if shrink is None:
        return z_sem_snap + delta
    return (1.0 - kappa * shrink).unsqueeze(-1) * z_sem_snap + delta


def _mlp_input(z_sem_snap: torch.Tensor, z_str: torch.Tensor, cues: torch.Tensor, use_cues: bool) -> torch.Tensor:
    return torch.cat([z_sem_snap, z_str] + ([cues] if use_cues else []), dim=-1)


class Calibrator(nn.Module):
    """Proposal ``u = MLP_psi([z_sem_hat; z_str(t); c])`` (Eq. 12; the cues are optional)."""

    def __init__(self, dim: int, n_cues: int, hidden: int = 128, use_cues: bool = True) -> None:
        super().__init__()
        self.use_cues = use_cues
        in_dim = 2 * dim + (n_cues if use_cues else 0)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, z_sem_snap: torch.Tensor, z_str: torch.Tensor, cues: torch.Tensor) -> torch.Tensor:
        return self.net(_mlp_input(z_sem_snap, z_str, cues, self.use_cues))


class Shrink(nn.Module):
    """The learned shrink ``a = sigmoid(MLP([z_sem_hat; z_str(t); c])) in (0, 1)`` of
    :func:`corrected_semantics`; it starts near 0 (``initial`` = 0.05), so an untrained head
    leaves the cached semantics as they are."""

    def __init__(self, dim: int, n_cues: int, hidden: int = 32, use_cues: bool = True, initial: float = 0.05) -> None:
        super().__init__()
        self.use_cues = use_cues
        self.net = nn.Sequential(nn.Linear(2 * dim + (n_cues if use_cues else 0), hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.constant_(self.net[2].bias, float(torch.logit(torch.tensor(initial))))

    def forward(self, z_sem_snap: torch.Tensor, z_str: torch.Tensor, cues: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(_mlp_input(z_sem_snap, z_str, cues, self.use_cues))).squeeze(-1)
