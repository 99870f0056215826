"""The cloud's semantic channel of one dataset: ``h(t) = LLM(a(t))`` for every prefix a run needs
(METHOD.md Sec. 1).

:func:`encode_semantics` builds each needed prefix's device abstract ``a(t)``
(:mod:`recbole_scalrec.semantic.abstract`), encodes it with the frozen language model
(:mod:`recbole_scalrec.semantic.encoder`) through the on-disk cache
(:mod:`recbole_scalrec.semantic.cache`), and returns a :class:`SemanticChannel`: the vectors keyed
by prefix id, and the rule that says which vector a prefix is served with.

Which vector a prefix gets (:meth:`SemanticChannel.serve`): an evaluated request (a user's
validation or test prefix) and every encoded prefix get their own ``h``; a training prefix the
LM did not encode (the budget is ``semantic_train_stride``) gets the ``h`` of its user's latest
encoded training prefix at or before it, what a device's cache holds between two cloud calls. A
validation or test request's ``h`` is never served to a training prefix.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from recbole_scalrec.semantic.abstract import AbstractBuilder
from recbole_scalrec.data.item_text import load_item_texts, load_request_texts
from recbole_scalrec.data.requests import needed_prefixes
from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.semantic.cache import SemanticCache
from recbole_scalrec.semantic.encoder import SemanticEncoder
from recbole_scalrec.staleness.snapshot import PrefixTable


def fingerprint(payload: dict) -> str:
    """A short stable hash of a JSON-able dict (cache and checkpoint keys)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class SemanticChannel:
    """``h`` of the needed prefixes and how a prefix is served (see the module docstring)."""

    sequences: UserSequences
    prefixes: dict[str, np.ndarray]  # needed_prefixes(): all, train, grid, stage2, valid, test
    table: PrefixTable  # h of prefixes["all"]
    train_table: PrefixTable  # h of the encoded training prefixes: what a training prefix may read
    encoder: SemanticEncoder
    item_texts: list[str]
    cache_key: dict
    cache_stats: dict | None
    lm_forward_calls: int
    builder: AbstractBuilder | None = None
    cache: SemanticCache | None = None

    @property
    def dim(self) -> int:
        return int(self.table.values.shape[1])

    @property
    def key(self) -> str:
        """Fingerprint of the data, the LM and the abstract settings (the stage-1 checkpoint key's part)."""
        return fingerprint(self.cache_key)

    def fresh(self, prefix_ids: np.ndarray) -> torch.Tensor:
        """Each prefix's own ``h`` (an encoded prefix; anything else is a pipeline bug, ``KeyError``)."""
        return self.table(prefix_ids)

    def latest(self, prefix_ids: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Training prefixes: the latest encoded training prefix's ``h`` at or before each, and
        whether it is the prefix's own."""
        floors = self.sequences.offsets[self.sequences.user_of(prefix_ids)]
        return self.train_table.at_or_before(prefix_ids, floors)

    def extend(self, prefix_ids: np.ndarray, show_progress: bool = False) -> PrefixTable:
        """``h`` of ``prefix_ids`` as well (encoded through the same cache, LM calls counted in
        :attr:`lm_forward_calls`); :attr:`table` then holds the union, which is returned."""
        new = np.setdiff1d(np.asarray(prefix_ids, dtype=np.int64), self.table.ids)
        if len(new) == 0:
            return self.table
        before = self.encoder.forward_calls
        h = self.cache.get_or_compute(new, self.builder.build, self.encoder, show_progress=show_progress)
        self.lm_forward_calls += int(self.encoder.forward_calls - before)
        # only the new prefixes are read (or encoded); the table's own rows stay in memory
        self.table = PrefixTable(np.concatenate([self.table.ids, new]),
                                 torch.cat([self.table.values, torch.as_tensor(h, dtype=self.table.values.dtype)]))
        return self.table

    def serve(self, prefix_ids: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The ``h`` each prefix is served with and whether it is its own: own for the validation
        and test requests, :meth:`latest` for training prefixes."""
        prefix_ids = np.asarray(prefix_ids, dtype=np.int64)
        ends = self.sequences.offsets[self.sequences.user_of(prefix_ids) + 1]
        evaluated = prefix_ids >= ends - 3  # the validation request (end - 3) and the test request (end - 2)
        h = torch.empty((len(prefix_ids), self.dim), dtype=self.table.values.dtype)
        own = np.ones(len(prefix_ids), dtype=bool)
        if evaluated.any():
            h[torch.as_tensor(evaluated)] = self.fresh(prefix_ids[evaluated])
        if (~evaluated).any():
            rows, mine = self.latest(prefix_ids[~evaluated])
            h[torch.as_tensor(~evaluated)] = rows
            own[~evaluated] = mine
        return h, own


def encode_semantics(config, dataset, sequences: UserSequences, rank: int = 0, world: int = 1,
                     barrier: Callable[[], None] | None = None, show_progress: bool = True,
                     all_reduce_sum: Callable[[float], float] | None = None) -> SemanticChannel:
    """Build the abstracts of every needed prefix and encode them (cached on disk); see the module docstring.

    Args:
        config: the run's configuration (abstract, LM and cache keys).
        dataset: the loaded RecBole dataset (item and request texts are read from it).
        sequences: the users' sequences in the run's order.
        rank, world, barrier: several processes share the encoding (each writes its own chunks).
        show_progress: a progress bar over the encoding.
        all_reduce_sum: sums the LM call count over the processes (None: one process).
    """
    item_texts = load_item_texts(config, dataset)
    request_texts = load_request_texts(config, dataset, sequences.rows)
    builder = AbstractBuilder.from_config(config, sequences, item_texts, request_texts)
    prefixes = needed_prefixes(config, sequences)
    encoder = SemanticEncoder.from_config(config)
    cache_key = {"dataset": config["dataset"], "n_inter": int(len(sequences.items)),
                 "data_fingerprint": fingerprint({"items": sequences.items.tolist()}),
                 "encoder": encoder.fingerprint, "abstract": builder.settings()}
    cache = SemanticCache(os.path.join(config["semantic_cache_dir"], config["dataset"]), cache_key)
    h = cache.get_or_compute(prefixes["all"], builder.build, encoder, chunk_size=config["semantic_chunk_size"] or 2048,
                             show_progress=show_progress, rank=rank, world_size=world,
                             barrier=barrier if world > 1 else None)
    table = PrefixTable(prefixes["all"], h)
    # what a training prefix may read: the encoded training prefixes (the stride grid and the
    # snapshots stage 2 and the evaluation need), never a valid or test request's h
    encoded_train = np.intersect1d(prefixes["all"], sequences.train_prefixes())
    calls = float(encoder.forward_calls)
    return SemanticChannel(sequences, prefixes, table, PrefixTable(encoded_train, table(encoded_train)), encoder,
                           item_texts, cache_key, getattr(cache, "stats", None),
                           int(all_reduce_sum(calls) if all_reduce_sum else calls), builder, cache)
