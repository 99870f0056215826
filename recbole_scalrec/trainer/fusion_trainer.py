"""Stage 1 (METHOD.md Sec. 6): train the backbone, the item table and ``g_omega`` jointly on
fresh semantics with cross-entropy over all items (Eq. 4 logits).

Batches are gathered straight from the per-user sequences as tensors (no RecBole
``Interaction`` objects); dropout masks come from :class:`~recbole_scalrec.trainer.dropout.UniformDropout`
(key ``fast_dropout``), RecBole's Python GELU by the fused kernel
(:func:`~recbole_scalrec.trainer.activation.use_fused_gelu`, key ``fused_gelu``) and SASRec's last
layer runs at the read position only (:mod:`~recbole_scalrec.trainer.last_position`, key
``last_position_only``): each the same function, cheaper; early stopping on validation
full-ranking NDCG@10 of the fused model.

Training prefixes (key ``stage1_train_prefixes``): ``all`` (default) trains on every training
prefix each epoch, as RecBole trains a backbone alone; ``encoded`` only on those whose ``h(t)``
was encoded (the older behaviour, for comparison). The LM encodes only every
``semantic_train_stride``-th training prefix (the budget), so under ``all`` a prefix without its
own ``h(t)`` is handled by ``stage1_missing_semantics``:

* ``latest`` (default): the ``h`` of the latest encoded training prefix of the same user at or
  before it (the stride grid plus the snapshots stage 2 and the evaluation encode anyway), what a
  device's cache holds between two cloud refreshes every ``semantic_train_stride`` steps. The
  fusion then learns from most prefixes with semantics up to ``stride - 1`` steps old, which is
  the situation it serves under staleness, and the item table and backbone see every target;
* ``structure_only``: those prefixes are trained with the structure logits ``<z_str, v_i>`` alone.

``benchmarks/semantic_value.py`` measures both (``--missing-semantics``).

Seeding: the batch order comes from ``numpy.random.default_rng(seed)``; dropout draws from
torch's generator, seeded with ``seed + rank`` when :meth:`FusionTrainer.fit` starts.

Several processes (``torch.distributed`` initialised, see :mod:`recbole_scalrec.distributed`):
every rank draws the same global batches; rank ``r`` computes the loss of the global batch's
samples ``r, r + w, ...``, scaled by the *global* batch size, and the gradients are summed over
the ranks before each step, so every rank takes the step one process would take on the whole
batch (up to float summation order and dropout masks). Validation runs on every rank; rank 0's
score decides early stopping.
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from recbole_scalrec.data.requests import TRAIN_PREFIXES  # noqa: F401 - re-exported
from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.distributed import all_reduce_grads, all_reduce_sum, broadcast_object, rank_and_world
from recbole_scalrec.model.fusion import FusionModel
from recbole_scalrec.staleness.protocol import full_ranking_metrics, metrics_from_ranks
from recbole_scalrec.staleness.snapshot import PrefixTable
from recbole_scalrec.trainer.activation import use_fused_gelu
from recbole_scalrec.trainer.dropout import use_uniform_dropout
from recbole_scalrec.trainer.last_position import use_last_position_forward

logger = logging.getLogger(__name__)

MISSING_SEMANTICS = ("latest", "structure_only")


class FusionTrainer:
    """Trains a :class:`FusionModel` on the training prefixes (``stage1_train_prefixes``).

    With ``semantic=None`` it trains the backbone alone (structure-only logits ``<z_str, v_i>``),
    the same loop RecBole's stock trainer is compared with in ``benchmarks/trainer_speed.py``.
    """

    def __init__(self, config, model: FusionModel, sequences: UserSequences, semantic: PrefixTable | None,
                 train_semantic: PrefixTable | None = None) -> None:
        self.config = config
        self.model = model
        self.sequences = sequences
        self.semantic = semantic  # own h(t) of every evaluated prefix
        self.train_semantic = train_semantic if train_semantic is not None else semantic  # the encoding grid
        self.missing = config["stage1_missing_semantics"] or "latest"
        if self.missing not in MISSING_SEMANTICS:
            raise ValueError(f"stage1_missing_semantics must be one of {MISSING_SEMANTICS}, got {self.missing!r}.")
        self.device = torch.device(config["device"])  # RecBole resolved it (a GPU only when one is visible)
        self.max_len = config["MAX_ITEM_LIST_LENGTH"]
        if config["fast_dropout"]:
            use_uniform_dropout(model)
        if config["fused_gelu"]:
            use_fused_gelu(model)
        if config["last_position_only"]:
            use_last_position_forward(model)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"] or 0.0)
        # torch.compile wraps the backbone's forward only; parameters and state_dict keys stay the model's.
        self._structure = torch.compile(model.structure) if config["compile"] else model.structure
        self.history: list[dict] = []
        self.own_counts = np.zeros(2, dtype=np.int64)  # [prefixes with their own h, prefixes seen] this epoch

    def _batch(self, prefix_ids: np.ndarray, train: bool = False):
        """Sequences, ``h`` (None without semantics), targets, which rows have their own ``h``, and
        the users (None unless the backbone reads them).

        Evaluated prefixes always have their own ``h``; a training prefix takes the latest encoded
        one at or before it (see the module docstring)."""
        ids = torch.as_tensor(prefix_ids)
        seq, length = self.sequences.gather_sequences(ids, self.max_len)
        h, own = None, None
        if self.semantic is not None:
            if train:
                floors = self.sequences.offsets[self.sequences.user_of(prefix_ids)]
                h, own = self.train_semantic.at_or_before(prefix_ids, floors)
                own = torch.as_tensor(own, device=self.device)
            else:
                h = self.semantic(prefix_ids)
        target = torch.as_tensor(self.sequences.targets(prefix_ids))
        users = self.sequences.prefix_users(prefix_ids).to(self.device) if self.model.needs_user else None
        return (seq.to(self.device), length.to(self.device), None if h is None else h.to(self.device),
                target.to(self.device), own, users)

    def _z_sem(self, h: torch.Tensor | None) -> torch.Tensor | None:
        return None if h is None else self.model.semantic(h)

    def train_epoch(self, train_ids: np.ndarray, generator: np.random.Generator) -> float:
        """One pass over ``train_ids`` (this rank's share of each global batch); mean loss."""
        self.model.train()
        rank, world = rank_and_world()
        params = [p for p in self.model.parameters() if p.requires_grad]
        order = generator.permutation(len(train_ids))
        bs = self.config["train_batch_size"]
        total, n = 0.0, 0
        starts = range(0, len(order), bs)
        if self.config["show_progress"] and rank == 0:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="stage 1", unit="batch", leave=False, disable=None)
        for lo in starts:
            batch = order[lo : lo + bs]
            mine, weight = batch[rank::world], 1.0
            if len(mine) == 0:  # a last batch smaller than the world: a zero-weight sample keeps grads aligned
                mine, weight = batch[:1], 0.0
            seq, length, h, target, own, users = self._batch(train_ids[mine], train=True)
            if own is not None and weight:
                self.own_counts += np.array([int(own.sum()), len(own)])
            logits = self.model.train_logits(self._structure(seq, length, users), h, own, self.missing == "structure_only")
            loss_sum = (F.cross_entropy(logits, target, reduction="sum")
                        + self.model.regularisation(seq, target) * len(mine)) * weight
            self.optimizer.zero_grad(set_to_none=True)
            (loss_sum / len(batch)).backward()
            all_reduce_grads(params)
            self.optimizer.step()
            total += loss_sum.item()
            n += len(batch)
        return all_reduce_sum(total) / max(n, 1)

    @torch.no_grad()
    def evaluate(self, prefix_ids: np.ndarray) -> dict[str, dict[str, float]]:
        """Full-ranking HR/NDCG@{5,10} of the fused model and of its structure channel alone."""
        self.model.eval()
        ranks = {"fused": [], "structure_only": []} if self.semantic is not None else {"structure_only": []}
        for lo in range(0, len(prefix_ids), self.config["eval_batch_size"]):
            seq, length, h, target, _, users = self._batch(prefix_ids[lo : lo + self.config["eval_batch_size"]])
            z_str = self.model.structure(seq, length, users)
            if h is not None:
                ranks["fused"].append(full_ranking_metrics(self.model.full_scores(z_str, self._z_sem(h)), target))
            ranks["structure_only"].append(full_ranking_metrics(self.model.full_scores(z_str, None), target))
        return {k: metrics_from_ranks(np.concatenate(v)) for k, v in ranks.items()}

    def fit(self, train_ids: np.ndarray, valid_ids: np.ndarray) -> dict:
        """Train with early stopping on valid fused NDCG@10; the best weights are restored."""
        generator = np.random.default_rng(self.config["seed"])
        rank, _ = rank_and_world()
        torch.manual_seed(self.config["seed"] + rank)  # dropout masks
        best, best_state, bad = -1.0, None, 0
        for epoch in range(self.config["epochs"]):
            start = time.perf_counter()
            self.own_counts = np.zeros(2, dtype=np.int64)
            loss = self.train_epoch(train_ids, generator)
            train_s = time.perf_counter() - start
            valid = self.evaluate(valid_ids)
            score = broadcast_object(valid["fused" if "fused" in valid else "structure_only"]["ndcg@10"])
            own, seen = (int(all_reduce_sum(float(c))) for c in self.own_counts)
            self.history.append({"epoch": epoch, "loss": loss, "train_s": train_s, "valid_ndcg@10": score,
                                 "valid_structure_ndcg@10": valid["structure_only"]["ndcg@10"],
                                 "prefixes_seen": seen, "prefixes_with_own_semantics": own})
            logger.info(f"stage 1 epoch {epoch}: loss {loss:.4f} ({train_s:.1f}s, {len(train_ids)} prefixes"
                        + (f", {own} with their own h" if seen else "") + f"), valid NDCG@10 {score:.4f}, "
                        f"structure channel {valid['structure_only']['ndcg@10']:.4f}")
            if score > best:
                best, best_state, bad = score, copy.deepcopy(self.model.state_dict()), 0
            else:
                bad += 1
                if bad >= self.config["stopping_step"]:
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return {"best_valid_ndcg@10": best, "epochs_run": len(self.history), "n_train_prefixes": int(len(train_ids)),
                "missing_semantics": self.missing if self.semantic is not None else None, "history": self.history}
