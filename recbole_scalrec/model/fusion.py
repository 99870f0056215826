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


CONDITIONING_MODES = ("none", "center", "whiten")


class SemanticConditioner(nn.Module):
    """Conditions ``h(t)`` before ``g_omega``: ``(h - mu) @ W`` with statistics of the training
    prefixes' LM outputs (METHOD.md Sec. 1; a frozen LM's abstracts share their fixed wording,
    so raw ``h`` of different users sit close together and differ in a few directions).

    * ``none``: ``mu = 0``, ``W = I`` (the raw LM output);
    * ``center``: ``mu`` = the mean of ``h``, ``W = I``;
    * ``whiten``: also ``W = U diag((lambda + eps)^-1/2) U^T`` (ZCA whitening of the covariance
      ``U diag(lambda) U^T``, ``eps`` = ``eps_ratio`` times the mean eigenvalue, so directions
      with no variance are not blown up), rescaled so the whitened vectors have the raw ``h``'s
      mean norm around ``mu``.

    The statistics are buffers: they are saved in, and restored from, the stage-1 checkpoint.
    """

    def __init__(self, dim: int, mode: str = "none", eps_ratio: float = 0.1) -> None:
        super().__init__()
        if mode not in CONDITIONING_MODES:
            raise ValueError(f"semantic_conditioning must be one of {CONDITIONING_MODES}, got {mode!r}.")
        self.mode = mode
        self.eps_ratio = float(eps_ratio)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("transform", torch.eye(dim))

    @torch.no_grad()
    def fit(self, h: torch.Tensor) -> dict:
        """Set the statistics from ``h`` (``[n, dim]``, the training prefixes' LM outputs); a summary."""
        h = torch.as_tensor(h, dtype=torch.float64)
        if self.mode == "none" or len(h) < 2:
            return {"mode": self.mode, "n": int(len(h))}
        mean = h.mean(0)
        centred = h - mean
        transform = torch.eye(h.shape[1], dtype=torch.float64)
        info = {"mode": self.mode, "n": int(len(h)), "raw_mean_norm": float(h.norm(dim=1).mean()),
                "centred_mean_norm": float(centred.norm(dim=1).mean())}
        if self.mode == "whiten":
            cov = centred.T @ centred / (len(h) - 1)
            eigval, eigvec = torch.linalg.eigh(cov)
            eigval = eigval.clamp(min=0.0)
            eps = self.eps_ratio * float(eigval.mean())
            transform = eigvec @ torch.diag((eigval + eps).rsqrt()) @ eigvec.T
            whitened_norm = (centred @ transform).norm(dim=1).mean()
            transform = transform * (info["raw_mean_norm"] / float(whitened_norm))
            top = eigval.flip(0)
            info["top10_variance_share"] = float(top[:10].sum() / top.sum())
        self.mean.copy_(mean.to(self.mean.dtype))
        self.transform.copy_(transform.to(self.transform.dtype))
        return info

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return h
        centred = h - self.mean
        return centred if self.mode == "center" else centred @ self.transform


class FusionModel(nn.Module):
    """A RecBole sequential backbone ``f_theta`` plus ``g_omega`` (stage 1, METHOD.md Sec. 6).

    The backbone is called through :class:`~recbole_scalrec.model.structure_encoder.StructureEncoder`,
    whatever its calling convention; a model that cannot serve is refused with the reason.
    """

    def __init__(self, backbone: nn.Module, lm_dim: int, fusion_weight: float = 0.5, hidden: int = 256, dropout: float = 0.2,
                 conditioning: str = "none") -> None:
        from recbole_scalrec.model.structure_encoder import StructureEncoder

        super().__init__()
        self.backbone = backbone
        self.encoder = StructureEncoder(backbone)  # a plain object: the parameters stay the backbone's
        self.fusion_weight = fusion_weight
        dim = self.encoder.dim
        self.conditioner = SemanticConditioner(lm_dim, conditioning)
        self.projection = SemanticProjection(lm_dim, dim, hidden, dropout)

    @property
    def item_table(self) -> torch.Tensor:
        return self.encoder.item_table

    @property
    def needs_user(self) -> bool:
        """Whether the backbone reads the user of each prefix (Caser, HGN, ...)."""
        return self.encoder.needs_user

    def structure(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """``z_str(t) = f_theta(S_{<=t})`` (``user``: the internal user id of each prefix)."""
        z = self.encoder(item_seq, item_seq_len, user)
        if z.dim() != 2 or z.shape[1] != self.item_table.shape[1]:
            raise ValueError(
                f"{type(self.backbone).__name__}.forward returned shape {tuple(z.shape)}; the fusion needs "
                f"[batch, {self.item_table.shape[1]}] (one structure embedding in item space per prefix)."
            )
        return z

    def semantic(self, h: torch.Tensor) -> torch.Tensor:
        """``z_sem(t) = g_omega(h(t))``, ``h`` conditioned first (:class:`SemanticConditioner`)."""
        return self.projection(self.conditioner(h))

    def full_scores(self, z_str: torch.Tensor, z_sem: torch.Tensor | None) -> torch.Tensor:
        return score_all(self.item_table, z_str, z_sem, self.fusion_weight)

    def train_logits(self, z_str: torch.Tensor, h: torch.Tensor | None, own: torch.Tensor | None = None,
                     structure_only_missing: bool = False) -> torch.Tensor:
        """Stage-1 logits over all items (Eq. 4) for prefixes served with ``h`` (None: structure
        only); with ``structure_only_missing`` a row whose ``h`` is not its own (``own`` False)
        gets the structure logits ``<z_str, v_i>`` alone (``stage1_missing_semantics: structure_only``)."""
        logits = self.full_scores(z_str, None if h is None else self.semantic(h))
        if own is not None and structure_only_missing and not bool(own.all()):
            logits = torch.where(own[:, None], logits, self.full_scores(z_str, None))
        return logits

    def regularisation(self, item_seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | float:
        """The backbone's own regularisers, added to the stage-1 loss: SURGE's ``embed_l2`` /
        ``layer_l2`` (its ``regularisation(item_ids)``, on the items of the batch); 0 for a backbone
        without one (RecBole's sequential models put no regulariser in a CE loss)."""
        own = getattr(self.backbone, "regularisation", None)
        return 0.0 if own is None else own(torch.cat([item_seq.flatten(), targets.flatten()]))
