"""The trainer of :class:`~recbole_scalrec.model.sequential_recommender.rarec.RARec`: RecBole's
training loop and validation early stopping on NDCG@10 (full ranking), each epoch
``rarec_train_batches`` batches drawn at random (:mod:`~recbole_scalrec.trainer.sampled_epochs`)."""
from __future__ import annotations

from recbole_scalrec.trainer.sampled_epochs import SampledEpochTrainer


class RARecTrainer(SampledEpochTrainer):
    """See the module docstring."""

    batches_key = "rarec_train_batches"
