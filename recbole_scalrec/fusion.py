"""Fusion of the semantic and structure channels (METHOD.md Sec. 1, Eq. 4).

``s(i) = lambda * <z_sem, v_i> + (1 - lambda) * <z_str, v_i>`` with one item table ``v``
shared by both channels (the backbone's ``item_embedding``).

:func:`score_candidates` is the ONE scoring/reranking function: every method of the
protocol (fresh/cached fusion, structure/semantic only, gate, dynamic fusion, SCaLRec and
its ablations) is expressed as the semantic vector and fusion weight it passes to it.
"""
from __future__ import annotations

import torch
from torch import nn


def score_candidates(
    item_table: torch.Tensor,
    candidates: torch.Tensor,
    z_str: torch.Tensor,
    z_sem: torch.Tensor,
    fusion_weight: float | torch.Tensor,
) -> torch.Tensor:
    """Eq. 4 on a candidate set: ``[B, N]`` scores of ``candidates`` (``[B, N]`` item ids).

    ``fusion_weight`` is a float or a ``[B, 1]`` tensor (per-request lambda).
    """
    mixed = fusion_weight * z_sem + (1.0 - fusion_weight) * z_str  # <., v> is linear
    vectors = item_table[candidates]  # [B, N, d]
    return torch.einsum("bnd,bd->bn", vectors, mixed)


def score_all(item_table: torch.Tensor, z_str: torch.Tensor, z_sem: torch.Tensor | None, fusion_weight: float) -> torch.Tensor:
    """Eq. 4 over the whole item table ``[B, n_items]``; padding item 0 scores ``-inf``."""
    mixed = z_str if z_sem is None else fusion_weight * z_sem + (1.0 - fusion_weight) * z_str
    scores = mixed @ item_table.T
    scores[:, 0] = -torch.inf
    return scores


def retrieve_candidates(scores: torch.Tensor, size: int) -> torch.Tensor:
    """``C(t)``: the top-``size`` items by score (padding excluded by its ``-inf``)."""
    return torch.topk(scores, k=min(size, scores.shape[1] - 1), dim=1).indices


class SemanticProjection(nn.Module):
    """``g_omega``: LM space -> item space, a 2-layer MLP (METHOD.md Sec. 1)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class FusionModel(nn.Module):
    """A RecBole sequential backbone ``f_theta`` plus ``g_omega`` (stage 1, METHOD.md Sec. 6)."""

    def __init__(self, backbone: nn.Module, lm_dim: int, fusion_weight: float = 0.5, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        if not isinstance(getattr(backbone, "item_embedding", None), nn.Embedding):
            raise TypeError(
                f"{type(backbone).__name__} has no nn.Embedding `item_embedding`: the fusion scores items with the "
                f"backbone's item table. Use a RecBole sequential model that scores by <z, item_embedding>."
            )
        self.backbone = backbone
        self.fusion_weight = fusion_weight
        dim = backbone.item_embedding.embedding_dim
        self.projection = SemanticProjection(lm_dim, dim, hidden, dropout)

    @property
    def item_table(self) -> torch.Tensor:
        return self.backbone.item_embedding.weight

    def structure(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``z_str(t) = f_theta(S_{<=t})``."""
        z = self.backbone(item_seq, item_seq_len)
        if z.dim() != 2 or z.shape[1] != self.item_table.shape[1]:
            raise ValueError(
                f"{type(self.backbone).__name__}.forward returned shape {tuple(z.shape)}; the fusion needs "
                f"[batch, {self.item_table.shape[1]}] (one structure embedding in item space per prefix)."
            )
        return z

    def semantic(self, h: torch.Tensor) -> torch.Tensor:
        """``z_sem(t) = g_omega(h(t))``."""
        return self.projection(h)

    def full_scores(self, z_str: torch.Tensor, z_sem: torch.Tensor | None) -> torch.Tensor:
        return score_all(self.item_table, z_str, z_sem, self.fusion_weight)
