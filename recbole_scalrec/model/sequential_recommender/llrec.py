"""A compact on-device recommender distilled from a cloud teacher, in the spirit of LLRec
(Wang et al., "Next Point-of-Interest Recommendation on Resource-Constrained Mobile Devices",
WWW 2020): the paper's on-device family in Table 2 (METHOD.md Sec. 8).

What is kept of the mechanism: the device model is small (a one-layer GRU over the sequence and a
factorised item table ``E = A B`` with ``A`` ``[n_items, r]`` and ``B`` ``[r, d]``, so the table costs
``(n_items + d) r`` numbers instead of ``n_items d``), it runs on the fresh sequence ``S_{<=t}`` with no
cloud at request time, and it is trained with cross-entropy plus distillation from a cloud model
(``tau^2 KL(softmax(teacher / tau) || softmax(student / tau))`` over all items, weight
``llrec_kd_weight``). What is substituted: the original compresses a recurrent POI model by
tensor-train factorisation and learns from a cloud teacher of its own design; here the item table is
a rank-``r`` product and the teacher is RecBole's SASRec trained on the same split
(:meth:`LLRec.set_teacher`; without a teacher the model trains on CE alone). Keys:
``properties/model/LLRec.yaml``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn


class LLRec(SequentialRecommender):
    """See the module docstring."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        d, r = config["embedding_size"], config["llrec_item_rank"]
        self.item_factors = nn.Embedding(self.n_items, r, padding_idx=0)
        self.item_basis = nn.Linear(r, d, bias=False)
        self.gru = nn.GRU(d, config["hidden_size"], batch_first=True)
        self.out = nn.Linear(config["hidden_size"], d, bias=False) if config["hidden_size"] != d else nn.Identity()
        self.dropout = nn.Dropout(config["dropout_prob"])
        self.kd_weight = float(config["llrec_kd_weight"] or 0.0)
        self.kd_temperature = float(config["llrec_kd_temperature"] or 1.0)
        self._teacher: list[nn.Module] = []  # held outside the module tree: not trained, not saved

    def set_teacher(self, teacher: nn.Module) -> None:
        """The frozen cloud model whose full-item logits the device model is distilled from."""
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher = [teacher.eval()]

    @property
    def item_table(self) -> torch.Tensor:
        """``E = A B`` ``[n_items, d]``."""
        return self.item_basis(self.item_factors.weight)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        emb = self.dropout(self.item_basis(self.item_factors(item_seq)))
        states, _ = self.gru(emb)
        return self.out(self.gather_indexes(states, item_seq_len - 1))

    def calculate_loss(self, interaction) -> torch.Tensor:
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        logits = self.forward(seq, length) @ self.item_table.T
        loss = F.cross_entropy(logits, interaction[self.POS_ITEM_ID])
        if self._teacher and self.kd_weight > 0:
            teacher = self._teacher[0]
            with torch.no_grad():
                target = teacher.full_sort_predict(interaction) / self.kd_temperature
            tau = self.kd_temperature
            kd = F.kl_div(F.log_softmax(logits / tau, dim=1), F.log_softmax(target, dim=1), log_target=True,
                          reduction="batchmean") * tau * tau
            loss = (1.0 - self.kd_weight) * loss + self.kd_weight * kd
        return loss

    def predict(self, interaction) -> torch.Tensor:
        z = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (z * self.item_table[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]) @ self.item_table.T
