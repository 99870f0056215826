"""What the staleness heads do, per request (recorded in ``results.json`` and the log).

For every trained head, on every split, setting and gap of the protocol:

* ``y``: the reliability target ``exp(-m / m0)`` (Eq. 18, the head's ``m0``) of the request,
* ``r`` and ``kappa = 1 - r`` (Eq. 11; ``kappa = 1`` without an estimator),
* ``shrink``: the learned ``a`` (``(1 - kappa a) z_sem_hat + delta``, METHOD.md Sec. 5),
* ``correction``: ``||z_used - z_sem_hat|| / ||z_sem_hat||``, how far the semantics the method
  scores with moved from the cached ones (``|1 - g|`` for the learned gate),
* ``weight``: the fusion weight it used (per request for dynamic fusion);

each as mean and quartiles; and for every method, ``changed_top10``: the share of requests whose
top-10 list (its items or their order) differs from cached fusion's on the same request.
"""
from __future__ import annotations

import numpy as np
import torch

from recbole_scalrec.staleness.estimator import reliability_target

QUANTITIES = ("y", "r", "kappa", "shrink", "correction", "weight")


def top_items(scores: torch.Tensor, candidates: torch.Tensor, k: int = 10) -> torch.Tensor:
    """The ``k`` best candidate item ids of each request, best first ``[B, k]``."""
    order = torch.topk(scores, k=min(k, scores.shape[1]), dim=1).indices
    return candidates.gather(1, order)


def changed(top: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per request: does the top list differ (items or order) from the reference list?"""
    width = min(top.shape[1], reference.shape[1])
    return (top[:, :width] != reference[:, :width]).any(1)


def adjustment_internals(adj, z_sem_snap: torch.Tensor, mismatch: torch.Tensor, target_scale: float) -> dict[str, np.ndarray]:
    """Per-request :data:`QUANTITIES` of one head's :class:`recbole_scalrec.staleness.methods.Adjustment`."""
    n = len(z_sem_snap)
    norm = torch.linalg.vector_norm(z_sem_snap, dim=-1).clamp_min(1e-12)
    out = {
        "y": reliability_target(mismatch, target_scale),
        "correction": torch.linalg.vector_norm(adj.z_sem - z_sem_snap, dim=-1) / norm,
        "weight": adj.weight.reshape(-1) if torch.is_tensor(adj.weight) else torch.full((n,), float(adj.weight)),
    }
    if adj.reliability is not None:
        out["r"] = adj.reliability
    if adj.kappa is not None:
        out["kappa"] = adj.kappa
    if adj.shrink is not None:
        out["shrink"] = adj.shrink
    return {k: v.detach().float().cpu().numpy() for k, v in out.items()}


def summarise(values: np.ndarray) -> dict[str, float]:
    """Mean and quartiles of one quantity over the requests of a row."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"mean": float("nan"), "q25": float("nan"), "q50": float("nan"), "q75": float("nan")}
    q25, q50, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"mean": float(values.mean()), "q25": float(q25), "q50": float(q50), "q75": float(q75)}


def format_internals(internals: dict) -> str:
    """One log line: ``changed_top10 0.31, r 0.62 [0.55 0.63 0.70], ...`` (mean [quartiles])."""
    parts = [f"changed_top10 {internals['changed_top10']:.3f}"] if "changed_top10" in internals else []
    for name in QUANTITIES:
        if name in internals:
            s = internals[name]
            parts.append(f"{name} {s['mean']:.3g} [{s['q25']:.3g} {s['q50']:.3g} {s['q75']:.3g}]")
    return ", ".join(parts)
