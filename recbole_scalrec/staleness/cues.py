"""Device-side staleness cues (METHOD.md Sec. 3, Eq. 10), computed on tensors in batches.

Cue vector, in this column order (:data:`CUE_NAMES`):

1. ``log_gap``       ``log(1 + Delta)``
2. ``drift``         ``||z_str(t) - z_str(t0)||_2``
3. ``drift_cos``     ``cos(z_str(t), z_str(t0))``
4. ``spearman``      Spearman correlation of ``<z_sem_hat, v_i>`` and ``<z_str(t), v_i>`` over
                     the top-M candidates under the semantic score (average ranks for ties)
5. ``log_len``       ``log(1 + prefix length)``
6. ``density``       distinct items / length over the recent window
7. ``log_per_day``   ``log(1 + events per day)`` over that window (0 without real timestamps)
"""
from __future__ import annotations

import torch

SPEARMAN_EPS = 1e-12
CUE_NAMES = ("log_gap", "drift", "drift_cos", "spearman", "log_len", "density", "log_per_day")


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) along the last dim, ties sharing their average rank; O(M log M).

    After one sort, a value's tie group spans ``[first, last]`` in the sorted row, found by
    binary search on both sides; its average rank is ``(first + last) / 2 + 1``.
    """
    if torch.onnx.is_in_onnx_export():  # ONNX has no searchsorted: count pairwise (the same ranks)
        below = (x.unsqueeze(-2) < x.unsqueeze(-1)).to(x.dtype).sum(-1)
        ties = (x.unsqueeze(-2) == x.unsqueeze(-1)).to(x.dtype).sum(-1)  # includes the value itself
        return below + (ties + 1.0) / 2.0
    ordered = torch.sort(x, dim=-1).values
    first = torch.searchsorted(ordered, x, right=False)
    past_last = torch.searchsorted(ordered, x, right=True)
    return (first + past_last + 1).to(x.dtype) / 2.0


def batched_spearman(x: torch.Tensor, y: torch.Tensor, eps: float = SPEARMAN_EPS) -> torch.Tensor:
    """Spearman's rho of each row pair of ``x`` and ``y`` (``[B, M]``) with average ranks for
    ties, as ``scipy.stats.spearmanr``; a constant row gives 0 (scipy: nan)."""
    rx = average_ranks(x)
    ry = average_ranks(y)
    rx = rx - rx.mean(dim=-1, keepdim=True)
    ry = ry - ry.mean(dim=-1, keepdim=True)
    cov = (rx * ry).sum(-1)
    denom = torch.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    return torch.where(denom > eps, cov / denom.clamp_min(eps), torch.zeros_like(cov))


def compute_cues(
    gap: torch.Tensor,
    z_str: torch.Tensor,
    z_str_snap: torch.Tensor,
    z_sem_snap: torch.Tensor,
    candidate_vectors: torch.Tensor,
    prefix_len: torch.Tensor,
    density: torch.Tensor,
    per_day: torch.Tensor,
    top_m: int = 20,
    use_spearman: bool = True,
) -> torch.Tensor:
    """The cue vector ``c`` of each request, ``[B, len(CUE_NAMES)]`` (Eq. 10).

    ``candidate_vectors`` are the item vectors of the candidate set being reranked ``[B, N, d]``.
    With ``use_spearman=False`` (the w/o-Spearman ablation) that column is zero.
    """
    drift = torch.linalg.vector_norm(z_str - z_str_snap, dim=-1)
    drift_cos = torch.nn.functional.cosine_similarity(z_str, z_str_snap, dim=-1)
    if use_spearman:
        sem = torch.einsum("bnd,bd->bn", candidate_vectors, z_sem_snap)
        top = torch.topk(sem, k=min(top_m, sem.shape[1]), dim=1).indices
        top_vectors = torch.gather(candidate_vectors, 1, top[..., None].expand(-1, -1, candidate_vectors.shape[-1]))
        sem_top = torch.gather(sem, 1, top)
        str_top = torch.einsum("bmd,bd->bm", top_vectors, z_str)
        rho = batched_spearman(sem_top, str_top)
    else:
        rho = torch.zeros_like(drift)
    return torch.stack(
        [torch.log1p(gap.float()), drift, drift_cos, rho, torch.log1p(prefix_len.float()), density.float(), torch.log1p(per_day.float())],
        dim=-1,
    )
