"""The device's per-request SCaLRec path, exported from a trained head to plain numpy.

At serving time one request arrives at a time (batch 1); PyTorch's per-op dispatch costs
more than the arithmetic there, so the trained estimator and calibrator weights are copied
into numpy and the cues (Eq. 10), reliability (Eq. 11), bounded correction (Eqs. 12-14)
and the Eq. 4 rerank of the candidate set run as a handful of small vector operations. Run it
with single-threaded BLAS (``OPENBLAS_NUM_THREADS=1``): at these sizes waking BLAS threads costs
more than the products.
:meth:`OnDeviceReranker.scores` matches :func:`recbole_scalrec.methods.method_scores`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from recbole_scalrec.cues import SPEARMAN_EPS
from recbole_scalrec.methods import SCaLRecHead


def _mlp_layers(seq: torch.nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
    return [(m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()) for m in linears]


def _fold_scaler(layers, mean: np.ndarray, inv_std: np.ndarray, start: int):
    """Fold the cue standardisation ``(c - mean) * inv_std`` into the first layer's rows
    ``start:`` (those that read the cues), so the raw cues go straight in."""
    (w1, b1), rest = layers[0], layers[1:]
    w1 = w1.copy()
    rows = w1[start : start + len(mean)]
    b1 = b1 - (mean * inv_std) @ rows
    w1[start : start + len(mean)] = rows * inv_std[:, None]
    return [(w1, b1)] + rest


def _mlp(x: np.ndarray, layers) -> np.ndarray:
    (w1, b1), (w2, b2) = layers
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


class OnDeviceReranker:
    """SCaLRec's device-side computation for one request, in numpy (float32)."""

    def __init__(self, head: SCaLRecHead, item_table: torch.Tensor, top_m: int = 20) -> None:
        self.items = item_table.detach().cpu().numpy().astype(np.float32)
        self.top_m = top_m
        mean = head.scaler.mean.cpu().numpy().astype(np.float32)
        inv_std = (head.cue_mask / head.scaler.std).cpu().numpy().astype(np.float32)
        self.use_cues = head.calibrator.use_cues
        self.estimator = _fold_scaler(_mlp_layers(head.estimator.net), mean, inv_std, 0) if head.estimator is not None else None
        cal = _mlp_layers(head.calibrator.net)
        self.calibrator = _fold_scaler(cal, mean, inv_std, cal[0][0].shape[0] - len(mean)) if self.use_cues else cal
        self.radius = head.radius
        self.weight = head.fusion_weight

    def parameter_count(self) -> int:
        layers = (self.estimator or []) + self.calibrator
        return int(sum(w.size + b.size for w, b in layers))

    def cues(self, vectors: np.ndarray, z_str, z_str_snap, z_sem_snap, gap, length, density, per_day) -> np.ndarray:
        """Eq. 10 for one request (same columns as :func:`recbole_scalrec.cues.compute_cues`)."""
        diff = z_str - z_str_snap
        drift = math.sqrt(float(diff @ diff))
        norms = math.sqrt(float(z_str @ z_str) * float(z_str_snap @ z_str_snap))
        cos = float(z_str @ z_str_snap) / max(norms, 1e-8)
        both = vectors @ np.stack((z_sem_snap, z_str), axis=1)  # [N, 2]: semantic, structure scores
        m = min(self.top_m, len(both))
        sub = both[np.argpartition(-both[:, 0], m - 1)[:m]] if m < len(both) else both
        # average ranks of both columns at once (M is small: pairwise counts beat sorting here)
        less = (sub[None, :, :] < sub[:, None, :]).sum(1)
        ties = (sub[None, :, :] == sub[:, None, :]).sum(1)
        ranks = less + (ties + 1) / 2.0
        ranks -= ranks.mean(0)
        cov = float(ranks[:, 0] @ ranks[:, 1])
        denom = math.sqrt(float(ranks[:, 0] @ ranks[:, 0]) * float(ranks[:, 1] @ ranks[:, 1]))
        rho = cov / denom if denom > SPEARMAN_EPS else 0.0
        return np.array([math.log1p(gap), drift, cos, rho, math.log1p(length), density, math.log1p(per_day)],
                        dtype=np.float32)

    def scores(self, candidates: np.ndarray, z_str, z_str_snap, z_sem_snap, gap, length, density, per_day) -> np.ndarray:
        """Eq. 4 scores of ``candidates`` with the calibrated semantics ``z_sem_hat + delta``."""
        vectors = self.items[candidates]
        c = self.cues(vectors, z_str, z_str_snap, z_sem_snap, gap, length, density, per_day)  # scaling folded in
        kappa = 1.0 - 1.0 / (1.0 + math.exp(-float(_mlp(c, self.estimator)[0]))) if self.estimator is not None else 1.0
        x = np.concatenate((z_sem_snap, z_str, c)) if self.use_cues else np.concatenate((z_sem_snap, z_str))
        u = _mlp(x, self.calibrator)
        scale = self.radius * math.sqrt(float(z_sem_snap @ z_sem_snap)) * kappa / max(math.sqrt(float(u @ u)) + 1e-8, 1.0)
        mixed = self.weight * (z_sem_snap + scale * u) + (1.0 - self.weight) * z_str
        return vectors @ mixed

    def rerank(self, candidates: np.ndarray, k: int = 10, **request) -> np.ndarray:
        """Top-``k`` candidate item ids for one request."""
        s = self.scores(candidates, **request)
        top = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        return candidates[top[np.argsort(-s[top])]]
