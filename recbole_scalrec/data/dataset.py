"""``SCaLRecDataset``: RecBole's ``SequentialDataset`` in the project's order, carrying the cloud semantics.

What it adds to RecBole's sequential dataset:

* **one order** (``timestamp_sort``): each user's interactions sorted by their exact float64
  timestamps (``exact``, the pipeline's default; ties keep the ``.inter`` order) or as RecBole sorts
  its float32 copy of them (``recbole``). RecBole's own augmentation and leave-one-out split then
  keep that order (both sort stably, and float32 rounding never reverses two times), so the last
  item is the test target and the second last the validation target exactly as in the staleness
  protocol; :attr:`sequences` holds the same order as per-user arrays;
* **the prefix of each row** (field ``prefix_id``, :data:`PREFIX_FIELD`): RecBole's augmented row
  that predicts a user's ``t + 1``-th item from their first ``t`` is the prefix ``S_{<=t}``, named as
  everywhere in the package (:mod:`recbole_scalrec.data.sequences`);
* **the cloud semantics on each row**: once :meth:`SCaLRecDataset.encode_semantics` has run (it
  does when ``build()`` is called for the ``SCaLRec`` model, e.g. by RecBole's ``data_preparation``),
  every interaction a dataloader draws carries ``semantic_h`` (:data:`SEMANTIC_FIELD`, ``[B, d_lm]``,
  the ``h`` that prefix is served with, :meth:`SemanticChannel.serve`) and ``semantic_own``
  (:data:`OWN_FIELD`, whether it is the prefix's own). The vectors are joined per batch, not stored
  per row.

Used as RecBole uses a dataset class: ``create_dataset(config)`` (this package's, which looks here
first) and RecBole's ``data_preparation``. Other models can train on it too (the extra fields are
ignored), which is how the baselines see exactly SCaLRec's split
(:mod:`recbole_scalrec.experiments.baselines`).
"""
from __future__ import annotations

import importlib
import logging
import os

import numpy as np
import torch
from recbole.data.dataset import Dataset, SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from recbole_scalrec.data.requests import resolve_real_timestamps
from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.semantic.channel import SemanticChannel, encode_semantics

logger = logging.getLogger(__name__)

PREFIX_FIELD = "prefix_id"
SEMANTIC_FIELD = "semantic_h"
OWN_FIELD = "semantic_own"
TIMESTAMP_SORTS = ("exact", "recbole")
SEMANTIC_MODELS = frozenset({"SCaLRec"})  # models whose build() encodes the semantics itself


class ProtocolOrder:
    """The protocol's order for a RecBole dataset class (see the module docstring): :attr:`sequences`
    from the loaded table, and the table's rows put in that order before RecBole converts it."""

    def __init__(self, config) -> None:
        super().__init__(config)
        sort = config["timestamp_sort"] or "exact"
        if sort not in TIMESTAMP_SORTS:
            raise ValueError(f"timestamp_sort must be one of {TIMESTAMP_SORTS}, got {sort!r}.")
        self.sequences = UserSequences.from_dataset(self, sort_dtype=np.float32 if sort == "recbole" else np.float64)
        config["real_timestamps"] = resolve_real_timestamps(config, self.sequences)

    def _change_feat_format(self):
        # rows in the protocol's order (and without users too short to be kept, as in ``sequences``);
        # RecBole's stable sorts keep this order from here on
        self.inter_feat = self.inter_feat.iloc[self.sequences.rows].reset_index(drop=True)
        super()._change_feat_format()


class ProtocolOrderDataset(ProtocolOrder, Dataset):
    """RecBole's general ``Dataset`` in the protocol's order: a general model (LightGCN, ...) trained
    on it with RecBole's leave-one-out split (``eval_args`` of ``properties/overall.yaml``) has the
    same training interactions and the same validation and test targets as SCaLRec."""


class SCaLRecDataset(ProtocolOrder, SequentialDataset):
    """See the module docstring."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.semantics: SemanticChannel | None = None

    def encode_semantics(self, **kwargs) -> SemanticChannel:
        """Encode (or read from the cache) ``h`` of every prefix the run needs, once; keyword
        arguments go to :func:`recbole_scalrec.semantic.channel.encode_semantics`."""
        if self.semantics is None:
            if isinstance(self.inter_feat, Interaction):
                raise RuntimeError("encode_semantics() must run before build(): it reads the raw interaction table.")
            self.semantics = encode_semantics(self.config, self, self.sequences, **kwargs)
        return self.semantics

    # ------------------------------------------------------------------ RecBole's build()
    def _change_feat_format(self):
        if self.semantics is None and self.config["model"] in SEMANTIC_MODELS:
            self.encode_semantics(show_progress=bool(self.config["show_progress"]))
        super()._change_feat_format()

    def data_augmentation(self):
        super().data_augmentation()
        offsets = self.sequences.offsets
        targets = np.setdiff1d(np.arange(offsets[-1]), offsets[:-1])  # every interaction but a user's first
        prefix = targets - 1
        if len(prefix) != len(self.inter_feat) or not np.array_equal(
                self.inter_feat[self.iid_field].numpy(), self.sequences.items[targets]):
            raise RuntimeError("RecBole's augmentation did not keep the dataset's order; this is a bug to report.")
        self.inter_feat.update(Interaction({PREFIX_FIELD: torch.as_tensor(prefix, dtype=torch.long)}))
        self.set_field_property(PREFIX_FIELD, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)

    def __getitem__(self, index, join=True):
        data = super().__getitem__(index, join)
        if self.semantics is not None and PREFIX_FIELD in data.interaction:
            h, own = self.semantics.serve(data[PREFIX_FIELD].numpy())
            data.update(Interaction({SEMANTIC_FIELD: h.float(), OWN_FIELD: torch.as_tensor(own)}))
        return data

    def prefix_ids(self) -> np.ndarray:
        """The prefix of each row (after ``build()``)."""
        return self.inter_feat[PREFIX_FIELD].numpy()


def create_dataset(config):
    """RecBole's ``create_dataset`` with this package's dataset classes first (RecBole-GNN pattern):
    ``<model>Dataset`` here, then RecBole's, then the class of the model's type.

    Unlike RecBole's, it never unpickles a saved dataset file (``<checkpoint_dir>/<dataset>-<Class>.pth``
    or ``dataset_save_path``): unpickling runs code, so the dataset is always built from the atomic
    files and such a file is ignored (logged).
    """
    from recbole.utils import ModelType

    name = config["model"] + "Dataset"
    module = importlib.import_module("recbole_scalrec.data.dataset")
    if not hasattr(module, name):
        module = importlib.import_module("recbole.data.dataset")
    if not hasattr(module, name):
        name = {ModelType.SEQUENTIAL: "SequentialDataset", ModelType.KNOWLEDGE: "KnowledgeBasedDataset"}.get(
            config["MODEL_TYPE"], "Dataset")
    saved_file = config["dataset_save_path"] or os.path.join(config["checkpoint_dir"], f"{config['dataset']}-{name}.pth")
    if os.path.exists(saved_file):
        logger.info(f"ignoring the pickled dataset {saved_file} (not unpickled); building from the atomic files")
    return getattr(module, name)(config)
