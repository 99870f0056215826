"""RecBole's scoring methods for models whose ``forward(item_seq, item_seq_len, users)`` is the
user vector, scored by dot product against the model's ``item_table`` (DCCL's patched vector,
PREFER's ``h + e_u``)."""
from __future__ import annotations

import torch


class UserVectorScores:
    """``predict`` (one item per row) and ``full_sort_predict`` (every item) of a RecBole sequential
    model with ``ITEM_SEQ``, ``ITEM_SEQ_LEN``, ``USER_ID``, ``ITEM_ID`` fields and an ``item_table``."""

    def user_vector(self, interaction) -> torch.Tensor:
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], interaction[self.USER_ID])

    def predict(self, interaction) -> torch.Tensor:
        return (self.user_vector(interaction) * self.item_table[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.user_vector(interaction) @ self.item_table.T
