"""DCCL (Yao et al., "Device-Cloud Collaborative Learning for Recommendation", KDD 2021,
arXiv 2104.06624): the paper's on-device family in Table 2 (METHOD.md Sec. 8).

The mechanism kept: the cloud trains one shared model; each device tunes a small *patch* of that
model on its own local history only (DCCL's model patching, MPDA), with the shared weights frozen;
the patched models are then distilled back into the shared cloud model (DCCL's MoMoDistill: the
cloud model learns to match the patched models' predictions on the users' data), and the next
cycle's devices patch the refined model. At request time the device runs the shared model with its
own patch on the fresh sequence ``S_{<=t}``; no cloud is called.

The patch of user ``u`` is a low-rank residual on the shared model's user representation,

    z_u(t) = h(t) + B_u A_u h(t),    A_u in R^{r x d},  B_u in R^{d x r},  B_u = 0 at the start,

so an untuned patch leaves the shared model unchanged and each device holds ``2 r d`` numbers.
Phases, run by :class:`~recbole_scalrec.trainer.dccl_trainer.DCCLTrainer` with RecBole's training
loop and validation early stopping in each: ``cloud`` (the shared model trained on all users, CE;
skipped when :meth:`DCCL.set_cloud` hands over a trained one), then ``dccl_cycles`` times
``patch`` (only the patches train, each on its own user's training prefixes, CE plus
``dccl_patch_reg`` times the patch's squared norm) and ``distill`` (only the shared model trains:
``(1 - w) CE + w tau^2 KL(softmax(patched / tau) || softmax(shared / tau))`` over all items, the
patched teacher frozen as it was at the phase's start), and a last ``patch`` on the refined model.

Substitutions, each named: (1) the shared model is a RecBole sequential model (``dccl_cloud``,
SASRec by default) instead of DCCL's own DIN-style backbone, and in Table 2 it is the cloud SASRec
of the ``sasrec_cloud`` row, copied before it is refined; (2) DCCL patches every layer of the
backbone with low-rank factors, here one low-rank patch acts on the backbone's output (the user
representation), which keeps the per-device parameter count small and the shared weights frozen on
the device; (3) every device's patch is tuned at once in one batched training (each batch row
updates only its own user's patch, which is what a device tuning on its own history computes).
Keys: ``properties/model/DCCL.yaml``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_scalrec.model.user_vector import UserVectorScores

PHASES = ("cloud", "patch", "distill")


class UserPatch(nn.Module):
    """Per-user low-rank residuals ``z = h + B_u A_u h`` (``B_u`` starts at zero)."""

    def __init__(self, n_users: int, dim: int, rank: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.dim, self.rank = dim, rank
        self.down = nn.Embedding(n_users, rank * dim)
        self.up = nn.Embedding(n_users, dim * rank)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.up.weight)

    def forward(self, h: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        a = self.down(users).view(-1, self.rank, self.dim)
        b = self.up(users).view(-1, self.dim, self.rank)
        return h + torch.bmm(b, torch.bmm(a, h.unsqueeze(-1))).squeeze(-1)

    def squared_norm(self, users: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``||A_u||^2 + ||B_u||^2``."""
        return (self.down(users).pow(2).sum(1) + self.up(users).pow(2).sum(1)).mean()

    def correction_norm(self, h: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """``||B_u A_u h|| / ||h||`` per row: how much each user's patch moves its representation."""
        return (self.forward(h, users) - h).norm(dim=1) / h.norm(dim=1).clamp_min(1e-12)


class DCCL(UserVectorScores, SequentialRecommender):
    """See the module docstring. ``phase`` (one of :data:`PHASES`) says what :meth:`calculate_loss`
    trains; :meth:`trainable` lists the parameters of a phase."""

    input_type = InputType.POINTWISE
    serves_users = True  # the device's user vector needs the user's own patch

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        from recbole_scalrec.model.structure_encoder import StructureEncoder
        from recbole_scalrec.utils import get_model

        self.USER_ID = config["USER_ID_FIELD"]
        self.cloud = get_model(config["dccl_cloud"] or "SASRec")(config, dataset)
        self._encoder = [StructureEncoder(self.cloud)]  # the shared model's calling conventions
        dim = self._encoder[0].item_table.shape[1]
        self.patch = UserPatch(dataset.user_num, dim, int(config["dccl_patch_rank"] or 4))
        self.patch_reg = float(config["dccl_patch_reg"] or 0.0)
        self.kd_weight = float(config["dccl_kd_weight"] if config["dccl_kd_weight"] is not None else 0.5)
        self.kd_temperature = float(config["dccl_kd_temperature"] or 1.0)
        self.phase = "cloud"
        self.cloud_trained = False
        self._teacher: list[nn.Module] = []  # the patched model frozen for a distillation phase

    def set_cloud(self, trained: nn.Module) -> None:
        """Start from an already trained shared model (its weights are copied; ``trained`` is not changed)."""
        self.cloud.load_state_dict(trained.state_dict())
        self.cloud_trained = True

    def set_phase(self, phase: str) -> list[nn.Parameter]:
        """Switch to ``phase``; only its parameters keep ``requires_grad``, and they are returned."""
        if phase not in PHASES:
            raise ValueError(f"DCCL phase {phase!r}: use one of {PHASES}.")
        self.phase = phase
        shared = phase in ("cloud", "distill")
        for p in self.cloud.parameters():
            p.requires_grad_(shared)
        for p in self.patch.parameters():
            p.requires_grad_(not shared)
        self._teacher = []
        if phase == "distill":
            teacher = copy.deepcopy(self).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self._teacher = [teacher]
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def item_table(self) -> torch.Tensor:
        return self._encoder[0].item_table

    def shared_vector(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        encoder = self._encoder[0]
        return encoder(item_seq, item_seq_len, users if encoder.needs_user else None)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """The device's user vector: the shared model's, with the user's patch (patched in every
        phase but ``cloud``)."""
        h = self.shared_vector(item_seq, item_seq_len, users)
        return h if self.phase == "cloud" else self.patch(h, users)

    def calculate_loss(self, interaction) -> torch.Tensor:
        seq, length, users = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], interaction[self.USER_ID]
        target = interaction[self.POS_ITEM_ID]
        table = self.item_table
        h = self.shared_vector(seq, length, users)
        if self.phase == "cloud":
            return F.cross_entropy(h @ table.T, target)
        if self.phase == "patch":
            loss = F.cross_entropy(self.patch(h, users) @ table.T, target)
            return loss + self.patch_reg * self.patch.squared_norm(users) if self.patch_reg else loss
        student = h @ table.T  # distill: the shared model, unpatched, learns the patched models' predictions
        with torch.no_grad():
            teacher = self._teacher[0]
            tau = self.kd_temperature
            soft = teacher(seq, length, users) @ teacher.item_table.T / tau
        kd = F.kl_div(F.log_softmax(student / tau, dim=1), F.log_softmax(soft, dim=1), log_target=True,
                      reduction="batchmean") * tau * tau
        return (1.0 - self.kd_weight) * F.cross_entropy(student, target) + self.kd_weight * kd

    def on_device_parameters(self) -> int:
        """Numbers one device holds: the shared model and its own patch."""
        return int(sum(p.numel() for p in self.cloud.parameters())) + 2 * self.patch.dim * self.patch.rank
