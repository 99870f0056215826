"""LSC4Rec (Lv et al., "Collaboration of Large Language Models and Small Recommendation Models for
Device-Cloud Recommendation", KDD 2025, arXiv 2501.05647): the paper's device-cloud family in
Table 2 (METHOD.md Sec. 8).

The mechanism kept: the cloud's language-model recommender returns, from the behaviour it saw
(``S_{<=t0}``), a candidate list in its own order; the device's small recommendation model (SRM)
scores those candidates on the fresh sequence ``S_{<=t}``; the two are fused per candidate as a
linearly normalised cloud rank plus a weighted SRM score,

    s(c) = -(j_c + 1) / N + w * std_C(<z_srm(t), v_c>),

``j_c`` the 0-based position of ``c`` in the cloud's list of ``N`` and ``std_C`` the SRM's logits
standardised over the list (LSC4Rec's reference fusion adds ``w (p - 1/2)`` with the SRM's sigmoid
probability ``p`` and a few fixed ``w``; our SRM is trained with cross-entropy, so its logits are
standardised instead, and ``w`` is learned: picked on the validation requests from
``lsc4rec_weight_grid``). The device also computes LSC4Rec's request trigger, the mean distance
between each candidate's SRM rank and cloud rank, and says which requests would ask the cloud for a
new list at a request ratio of ``lsc4rec_request_ratio`` (threshold: that quantile of the
validation requests); under the fixed staleness gap of Table 2 the trigger is counted, not used.

Substitutions, each named: (1) the cloud's list is the project's cloud candidate set
``C(t0)`` in its cloud order, produced by the project's cloud language model (all-MiniLM-L6-v2 over
the text abstract of ``S_{<=t0}``, projected into item space) fused with the cloud's structure
encoder (METHOD.md Eq. 4), instead of a fine-tuned T5 generating item ids by beam search: it is the
same cache every device-cloud row of the table is served, and it is frozen on the device as
LSC4Rec's is; (2) the SRM is a RecBole sequential model (``lsc4rec_srm``, SASRec by default)
trained on its own with RecBole's trainer (LSC4Rec's independent-training phase); the collaborative
phase, which fine-tunes the SRM on the LLM's candidate lists, and the real-time retraining are not
run. Keys: ``properties/model/LSC4Rec.yaml``.
"""
from __future__ import annotations

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_scalrec.model.fusion import score_candidates


def list_ranks(scores: torch.Tensor) -> torch.Tensor:
    """0-based position of each candidate when ``scores`` ``[B, N]`` are sorted descending."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    return torch.argsort(order, dim=1, stable=True)


class LSC4Rec(SequentialRecommender):
    """See the module docstring. ``srm`` hands the model an already trained SRM (for example the
    same RecBole training another row of the table made); without it the SRM is built from
    ``lsc4rec_srm`` and trained through :meth:`calculate_loss`."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset, srm: SequentialRecommender | None = None) -> None:
        super().__init__(config, dataset)
        from recbole_scalrec.model.structure_encoder import StructureEncoder
        from recbole_scalrec.utils import get_model

        self.srm = srm if srm is not None else get_model(config["lsc4rec_srm"] or "SASRec")(config, dataset)
        self._encoder = [StructureEncoder(self.srm)]  # calling conventions of the SRM, outside the module tree
        self.weight_grid = [float(w) for w in (config["lsc4rec_weight_grid"] or [1.0])]
        self.request_ratio = float(config["lsc4rec_request_ratio"] or 0.05)
        self.register_buffer("srm_weight", torch.tensor(self.weight_grid[0]))
        self.register_buffer("trigger_threshold", torch.tensor(float("inf")))

    # --- the SRM, trained on its own (RecBole's calling conventions) ---
    def calculate_loss(self, interaction) -> torch.Tensor:
        return self.srm.calculate_loss(interaction)

    def predict(self, interaction) -> torch.Tensor:
        return self.srm.predict(interaction)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.srm.full_sort_predict(interaction)

    def srm_logits(self, candidates: torch.Tensor, item_seq: torch.Tensor, item_seq_len: torch.Tensor,
                   users: torch.Tensor | None = None) -> torch.Tensor:
        """``<z_srm(t), v_c>`` on the candidates, through the one scoring function."""
        encoder = self._encoder[0]
        z = encoder(item_seq, item_seq_len, users if encoder.needs_user else None)
        return score_candidates(encoder.item_table, candidates, z, z, 0.0)

    # --- the device's fusion and trigger ---
    def fuse(self, cloud_ranks: torch.Tensor, srm_logits: torch.Tensor, weight: float | torch.Tensor | None = None
             ) -> torch.Tensor:
        """``s(c) = -(j_c + 1)/N + w std_C(srm)`` (module docstring); ``cloud_ranks`` ``[B, N]`` 0-based."""
        w = self.srm_weight if weight is None else weight
        n = cloud_ranks.shape[1]
        centred = srm_logits - srm_logits.mean(1, keepdim=True)
        standard = centred / centred.std(1, keepdim=True).clamp(min=1e-6)
        return -(cloud_ranks.float() + 1.0) / n + w * standard

    @staticmethod
    def trigger_statistic(cloud_ranks: torch.Tensor, srm_logits: torch.Tensor) -> torch.Tensor:
        """LSC4Rec's request score of each request: mean ``|rank_SRM(c) - rank_cloud(c)|`` over its list."""
        return (list_ranks(srm_logits) - cloud_ranks).abs().float().mean(1)

    def fit_fusion(self, cloud_ranks: torch.Tensor, srm_logits: torch.Tensor, candidates: torch.Tensor,
                   targets: torch.Tensor) -> dict:
        """Learn ``w`` on validation requests (best NDCG@10 over the grid) and the trigger's threshold
        (the ``1 - lsc4rec_request_ratio`` quantile of their request scores). Returns what was picked."""
        from recbole_scalrec.staleness.protocol import metrics_from_ranks, target_ranks

        by_weight = {}
        for w in self.weight_grid:
            ranks = target_ranks(self.fuse(cloud_ranks, srm_logits, w), candidates, targets).numpy()
            by_weight[w] = float(metrics_from_ranks(ranks)["ndcg@10"])
        best = max(self.weight_grid, key=by_weight.get)  # the first of equals
        self.srm_weight.fill_(best)
        stat = self.trigger_statistic(cloud_ranks, srm_logits).numpy()
        self.trigger_threshold.fill_(float(np.quantile(stat, 1.0 - self.request_ratio)) if len(stat) else float("inf"))
        return {"srm_weight": best, "valid_ndcg@10_by_weight": by_weight,
                "trigger_threshold": float(self.trigger_threshold), "request_ratio": self.request_ratio}

    def triggered(self, cloud_ranks: torch.Tensor, srm_logits: torch.Tensor) -> torch.Tensor:
        """Which requests the trigger would send to the cloud (counted, not acted on)."""
        return self.trigger_statistic(cloud_ranks, srm_logits) >= self.trigger_threshold
