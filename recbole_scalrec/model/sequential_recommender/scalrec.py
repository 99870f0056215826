"""SCaLRec as a RecBole model: a sequential backbone (the structure encoder), the semantic
projection ``g_omega`` and the staleness heads (METHOD.md Sec. 1-6).

    from recbole_scalrec.config import Config
    config = Config(model="SCaLRec", dataset="ml-100k", config_dict={"backbone": "GRU4Rec"})

* ``backbone`` (key, default ``SASRec``): any sequential model :mod:`recbole_scalrec.model.structure_encoder`
  can call (24 of RecBole 1.2.1's 31, and this package's SURGE); its own yaml defaults are layered
  in by :class:`recbole_scalrec.config.Config`.
* :meth:`SCaLRec.calculate_loss` is the stage-1 loss: cross-entropy over all items of the fused
  logits (Eq. 4) with the semantics each row is served with, plus the backbone's own regularisers
  (:meth:`FusionModel.regularisation`). The backbone's ``loss_type`` is not used: the fusion's loss
  is the method's.
* :meth:`SCaLRec.predict` / :meth:`SCaLRec.full_sort_predict`: the fused scores with the row's
  (fresh) semantics, so RecBole's evaluator ranks with the stage-1 model.
* The staleness heads (``stage2_methods``: SCaLRec's estimator and calibrator, the learned gate,
  dynamic fusion, the ablations) are submodules in :attr:`SCaLRec.heads`, trained by stage 2 of
  :class:`recbole_scalrec.trainer.SCaLRecTrainer` and used by its ``evaluate_staleness``.

The semantics reach the model through RecBole's data path: the
:class:`~recbole_scalrec.data.dataset.SCaLRecDataset` attaches ``semantic_h`` (and ``semantic_own``)
to every interaction a dataloader draws.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_scalrec.data.dataset import OWN_FIELD, SEMANTIC_FIELD
from recbole_scalrec.model.fusion import FusionModel
from recbole_scalrec.staleness.methods import build_head
from recbole_scalrec.model.structure_encoder import backbone_dataset, check_backbone


class SCaLRec(SequentialRecommender):
    """See the module docstring. ``dataset`` must carry the semantics (``dataset.semantics``, a
    :class:`~recbole_scalrec.semantic.channel.SemanticChannel`): build it with
    :func:`recbole_scalrec.data.create_dataset` and RecBole's ``data_preparation``."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        from recbole_scalrec.utils import get_model

        name = config["backbone"] or "SASRec"
        if name == type(self).__name__:
            raise ValueError("backbone must be a sequential model, not SCaLRec itself (e.g. --backbone=SASRec).")
        check_backbone(name)
        channel = getattr(dataset, "semantics", None)
        if channel is None:
            raise ValueError(
                "SCaLRec needs the cloud semantics of the dataset: build it with "
                "recbole_scalrec.data.create_dataset(config) (an SCaLRecDataset) and RecBole's data_preparation, "
                "which encodes them.")
        self.backbone_name = name
        backbone = get_model(name)(config, backbone_dataset(name, config, dataset))
        self.fusion = FusionModel(backbone, channel.dim, config["fusion_weight"], config["projection_hidden_size"],
                                  config["projection_dropout"], conditioning=config["semantic_conditioning"] or "none")
        self.missing = config["stage1_missing_semantics"] or "latest"
        self.heads = nn.ModuleDict()
        rng = torch.get_rng_state()  # the heads' seeding must not move the stream the rest of the run draws from
        for method in config["stage2_methods"] or []:
            torch.manual_seed(config["seed"])  # a head's initial weights do not depend on which others exist
            self.heads[method] = build_head(method, config, self.fusion.item_table.shape[1])
        torch.set_rng_state(rng)

    # ------------------------------------------------------------------ the fused model
    def _structure(self, interaction) -> torch.Tensor:
        user = interaction[self.USER_ID] if self.fusion.needs_user else None
        return self.fusion.structure(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], user)

    def _semantics(self, interaction) -> torch.Tensor:
        if SEMANTIC_FIELD not in interaction.interaction:
            raise KeyError(f"the batch has no {SEMANTIC_FIELD!r}: SCaLRec reads the semantics an SCaLRecDataset attaches.")
        return interaction[SEMANTIC_FIELD]

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, h: torch.Tensor,
                user: torch.Tensor | None = None) -> torch.Tensor:
        """The fused user vector ``lambda * g_omega(h) + (1 - lambda) * z_str`` (``[B, d]``; its
        inner product with an item row is Eq. 4's score)."""
        z_str = self.fusion.structure(item_seq, item_seq_len, user)
        lam = self.fusion.fusion_weight
        return lam * self.fusion.semantic(h) + (1.0 - lam) * z_str

    def calculate_loss(self, interaction) -> torch.Tensor:
        """Stage 1: CE of the fused logits over all items plus the backbone's regularisers."""
        own = interaction[OWN_FIELD] if OWN_FIELD in interaction.interaction else None
        targets = interaction[self.POS_ITEM_ID]
        logits = self.fusion.train_logits(self._structure(interaction), self._semantics(interaction), own,
                                          self.missing == "structure_only")
        return F.cross_entropy(logits, targets) + self.fusion.regularisation(interaction[self.ITEM_SEQ], targets)

    def _user_vector(self, interaction) -> torch.Tensor:
        user = interaction[self.USER_ID] if self.fusion.needs_user else None
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], self._semantics(interaction), user)

    def predict(self, interaction) -> torch.Tensor:
        items = self.fusion.item_table[interaction[self.ITEM_ID]]
        return (self._user_vector(interaction) * items).sum(-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self._user_vector(interaction) @ self.fusion.item_table.T
