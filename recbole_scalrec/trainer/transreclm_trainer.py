"""The trainer of :class:`~recbole_scalrec.model.sequential_recommender.transreclm.TransRecLM`:
RecBole's training loop, each epoch ``transrec_train_batches`` batches drawn at random
(:mod:`~recbole_scalrec.trainer.sampled_epochs`), and early stopping on the validation requests'
identifier likelihood: the score is minus the mean negative log-likelihood per token of each
validation target's identifier (the facets taken in turn over the rows), teacher-forced. Ranking
the validation requests by constrained generation every epoch would cost the LM several passes per
user and facet."""
from __future__ import annotations

import torch

from recbole_scalrec.trainer.sampled_epochs import SampledEpochTrainer


class TransRecLMTrainer(SampledEpochTrainer):
    """See the module docstring."""

    batches_key = "transrec_train_batches"

    @torch.no_grad()
    def _valid_epoch(self, valid_data, show_progress=False):
        model = self.model
        model.eval()
        total, rows = 0.0, 0
        for batched in valid_data:
            interaction = batched[0].to(self.device)
            targets = interaction[model.ITEM_ID]
            facets = [model.facets[(rows + j) % len(model.facets)] for j in range(len(targets))]
            total += float(model.target_nll(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN], targets,
                                            facets)) * len(targets)
            rows += len(targets)
        score = -total / max(rows, 1)
        self._log_valid(score)
        return score, {"valid_identifier_nll": -score}
