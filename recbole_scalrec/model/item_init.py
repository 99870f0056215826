"""Item embedding initialisation from the cloud language model (paper Sec. 4.1; METHOD.md Sec. 1).

Each item's text (``item_text_fields``) is encoded once by the same frozen LM as the abstracts
(its pooling: token states averaged for MiniLM), cached on disk like them
(:class:`~recbole_scalrec.semantic.cache.SemanticCache`, ids = item ids), reduced to the
backbone's item dimension ``d`` by PCA, rescaled to the standard deviation of the backbone's own
random initial table, and copied into ``item_embedding`` before stage 1. So ``<z_sem, v_i>`` and
``<z_str, v_i>`` start from an item geometry in which items with similar text are close.

Items without text (and the padding item 0) keep their random initial vector; the log counts
them. Where fewer items have text than ``d + 1``, PCA has fewer than ``d`` components and the
remaining coordinates of those rows keep their random values.

Key ``item_embedding_init``: ``lm`` (default) or ``random`` (the backbone's own initialisation).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from recbole_scalrec.semantic.cache import SemanticCache

logger = logging.getLogger(__name__)

ITEM_INIT_MODES = ("lm", "random")


def item_text_vectors(item_texts: Sequence[str], encoder, cache_dir: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """LM vectors of the items that have text: ``(item_ids [n], vectors [n, d_llm])``, cached.

    The cache key holds the encoder's fingerprint and a hash of every item's text, so another
    text field choice or encoder gets its own cache folder.
    """
    ids = np.asarray([i for i, text in enumerate(item_texts) if i > 0 and text.strip()], dtype=np.int64)
    if len(ids) == 0:
        return ids, np.zeros((0, encoder.dim), dtype=np.float32)
    texts_hash = hashlib.sha256(json.dumps(list(item_texts)).encode()).hexdigest()[:16]
    key = {"kind": "item_text", "dataset": dataset, "n_items": len(item_texts), "texts": texts_hash,
           "encoder": encoder.fingerprint}
    cache = SemanticCache(os.path.join(cache_dir, dataset), key)
    vectors = cache.get_or_compute(ids, lambda batch: [item_texts[int(i)] for i in batch], encoder, show_progress=False)
    return ids, np.asarray(vectors, dtype=np.float32)


def pca_project(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Scores of ``vectors`` on their top ``min(dim, n - 1, d_llm)`` principal components
    (centred; components ordered by variance), ``[n, k]``."""
    x = torch.as_tensor(vectors, dtype=torch.float64)
    x = x - x.mean(0)
    k = max(0, min(dim, x.shape[0] - 1, x.shape[1]))
    if k == 0:
        return np.zeros((x.shape[0], 0), dtype=np.float32)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return (x @ vh[:k].T).numpy().astype(np.float32)


@torch.no_grad()
def init_item_table(embedding: nn.Embedding, item_ids: np.ndarray, projected: np.ndarray) -> dict:
    """Copy ``projected`` (rows of ``item_ids``) into ``embedding``'s first ``k`` columns, scaled so
    that their standard deviation equals that of the table's current (random) rows; returns counts
    and the scale for the log and ``results.json``."""
    weight = embedding.weight
    n_items, d = weight.shape
    k = projected.shape[1]
    random_rows = weight[1:] if n_items > 1 else weight
    target_std = float(random_rows.std()) if random_rows.numel() > 1 else 1.0
    info = {"mode": "lm", "items": int(n_items - 1), "with_text": int(len(item_ids)),
            "without_text": int(n_items - 1 - len(item_ids)), "components": int(k), "target_std": target_std}
    if len(item_ids) == 0 or k == 0:
        info["scale"] = 0.0
        return info
    source_std = float(np.std(projected))
    scale = target_std / source_std if source_std > 0 else 0.0
    rows = torch.as_tensor(item_ids, dtype=torch.long, device=weight.device)
    weight[rows, :k] = torch.as_tensor(projected * scale, dtype=weight.dtype, device=weight.device)
    info["scale"] = scale
    return info


def lm_initialise_items(backbone: nn.Module, item_texts: Sequence[str], encoder, cache_dir: str, dataset: str) -> dict:
    """The whole initialisation on a RecBole backbone's item table (logged): ``item_embedding``, or
    for a backbone scoring with several tables side by side (FPMC's ``[IU; IL]``) the PCA scores split
    over them in order, so the concatenated table starts from the LM's principal directions."""
    from recbole_scalrec.model.structure_encoder import item_tables

    tables = item_tables(backbone)
    if not tables:
        raise TypeError(f"{type(backbone).__name__} has no nn.Embedding `item_embedding` to initialise; "
                        f"set item_embedding_init: random.")
    ids, vectors = item_text_vectors(item_texts, encoder, cache_dir, dataset)
    dims = [t.embedding_dim for t in tables]
    projected = pca_project(vectors, sum(dims))
    bounds = np.cumsum([0] + dims)
    parts = [init_item_table(t, ids, projected[:, lo:hi]) for t, lo, hi in zip(tables, bounds[:-1], bounds[1:])]
    info = dict(parts[0], components=int(sum(p["components"] for p in parts)))
    if len(parts) > 1:
        info["tables"] = parts
    logger.info(f"item table: {info['with_text']} of {info['items']} items initialised from the LM's text vectors "
                f"(PCA to {info['components']} of {sum(dims)} dims, std {info['target_std']:.4g}); "
                f"{info['without_text']} without text keep random vectors")
    return info
