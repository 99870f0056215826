"""``SCaLRecTrainer``: RecBole's ``Trainer`` for :class:`~recbole_scalrec.model.sequential_recommender.scalrec.SCaLRec`
(METHOD.md Sec. 6-7).

:meth:`SCaLRecTrainer.fit` runs the method's two stages:

1. **stage 1** (:meth:`~SCaLRecTrainer.fit_stage1`): the item table is initialised from the LM and
   ``h`` conditioned (:func:`prepare_stage1`), then the backbone, the item table and ``g_omega`` are
   trained on fresh semantics by the fast stage-1 loop
   (:class:`~recbole_scalrec.trainer.fusion_trainer.FusionTrainer`: the loss of
   :meth:`SCaLRec.calculate_loss`, batches gathered as tensors, 2.5x RecBole's loop here), early
   stopping on validation NDCG@10; optionally reused from a keyed checkpoint
   (:mod:`recbole_scalrec.trainer.stage1_checkpoint`);
2. **stage 2** (:meth:`~SCaLRecTrainer.fit_stage2`): with the stage-1 model frozen, its per-prefix
   states (:class:`~recbole_scalrec.staleness.snapshot.PrefixStates`) are computed once and every staleness head
   of the model is trained by distillation
   (:class:`~recbole_scalrec.trainer.calibration_trainer.CalibrationTrainer`).

:meth:`SCaLRecTrainer.evaluate` is RecBole's evaluator on the fused model (full sort, fresh
semantics); :meth:`SCaLRecTrainer.evaluate_staleness` is the staleness protocol (every method x gap x
setting on the candidate sets, :func:`recbole_scalrec.staleness.protocol.evaluate_staleness`).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from recbole_scalrec import distributed
from recbole_scalrec.model.item_init import ITEM_INIT_MODES, lm_initialise_items
from recbole_scalrec.staleness.protocol import evaluate_staleness
from recbole_scalrec.semantic.channel import SemanticChannel
from recbole_scalrec.staleness.snapshot import PrefixStates, PrefixTable, refresh_gaps
from recbole_scalrec.trainer.calibration_trainer import CalibrationTrainer
from recbole_scalrec.trainer.fusion_trainer import FusionTrainer
from recbole_scalrec.trainer.stage1_checkpoint import CheckpointMismatchError, check_stage1_checkpoint, plain_key
from recbole_scalrec.trainer.trainer import Trainer, save_checkpoint

logger = logging.getLogger(__name__)


def prepare_stage1(config, fusion, train_semantic: PrefixTable, item_texts: list[str], encoder) -> dict:
    """Before stage 1 trains: condition ``h`` with the encoded training prefixes' statistics
    (``semantic_conditioning``) and initialise the item table from the LM (``item_embedding_init``,
    :mod:`recbole_scalrec.model.item_init`); a summary of both for ``results.json``."""
    info = {"semantic_conditioning": fusion.conditioner.fit(train_semantic.values)}
    mode = config["item_embedding_init"] or "random"
    if mode not in ITEM_INIT_MODES:
        raise ValueError(f"item_embedding_init must be one of {ITEM_INIT_MODES}, got {mode!r}.")
    if mode == "lm":
        info["item_embedding_init"] = lm_initialise_items(fusion.backbone, item_texts, encoder,
                                                          config["semantic_cache_dir"], config["dataset"])
    else:
        info["item_embedding_init"] = {"mode": "random"}
    return info


def _prefix_ids(loader) -> np.ndarray:
    dataset = getattr(loader, "_dataset", loader)
    if not hasattr(dataset, "prefix_ids"):
        raise TypeError("SCaLRecTrainer needs dataloaders of an SCaLRecDataset (recbole_scalrec.data.create_dataset).")
    return dataset.prefix_ids()


class SCaLRecTrainer(Trainer):
    """See the module docstring. ``model`` is an ``SCaLRec`` (its ``fusion`` and ``heads``)."""

    def __init__(self, config, model) -> None:
        single = config["single_spec"]
        # stage 1's loop sums gradients over processes itself; RecBole's DDP wrapper is not used
        config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = single
        self.channel: SemanticChannel | None = None
        self.stage1: FusionTrainer | None = None
        self.states: PrefixStates | None = None
        self.stage1_info: dict = {}
        self.stage2_info: dict = {}

    @property
    def item_table(self) -> torch.Tensor:
        return self.model.fusion.item_table.detach()

    def attach(self, channel: SemanticChannel) -> None:
        """The semantics the stages read (the dataset's :class:`SemanticChannel`)."""
        self.channel = channel
        self.stage1 = FusionTrainer(self.config, self.model.fusion, channel.sequences, channel.table,
                                    train_semantic=channel.train_table)

    # ------------------------------------------------------------------ RecBole's entry point
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Stage 1 then stage 2 on the rows of ``train_data`` (early stopping and head selection on
        ``valid_data``'s requests); returns RecBole's ``(best_valid_score, best_valid_result)``, the
        fused model's full-sort validation metrics by RecBole's evaluator."""
        dataset = train_data._dataset
        if getattr(dataset, "semantics", None) is None:
            raise ValueError("the training data carries no semantics: build it with recbole_scalrec.data.create_dataset "
                             "and data_preparation for model SCaLRec.")
        self.attach(dataset.semantics)
        train_ids = np.intersect1d(_prefix_ids(train_data), self.channel.prefixes["train"])
        valid_ids = _prefix_ids(valid_data) if valid_data is not None else self.channel.prefixes["valid"]
        self.fit_stage1(train_ids, valid_ids)
        self.compute_states()
        self.fit_stage2(valid_ids)
        if saved:
            self._save_checkpoint(self.stage1_info.get("epochs_run", 0), verbose=verbose)
        if valid_data is not None:
            self.best_valid_result = self.evaluate(valid_data, load_best_model=False)
            self.best_valid_score = float(self.best_valid_result[self.valid_metric])
        return self.best_valid_score, self.best_valid_result

    # ------------------------------------------------------------------ stage 1
    def fit_stage1(self, train_ids: np.ndarray, valid_ids: np.ndarray, checkpoint: str | None = None,
                   key: str | None = None, key_fields: dict | None = None, saved: bool = False) -> dict:
        """Stage 1 on ``train_ids`` (early stopping on ``valid_ids``); with ``checkpoint`` (and its
        ``key``), a file with the same key is reused and a trained model written there when
        ``saved``. In a process group rank 0 decides and the others receive its weights."""
        fusion, channel = self.model.fusion, self.channel
        decision, state = "train", None
        if checkpoint is not None:
            decision = None
            if distributed.is_main():
                try:
                    state = check_stage1_checkpoint(checkpoint, key, plain_key(key_fields), saved)
                    decision = "reuse" if state is not None else "train"
                except CheckpointMismatchError as exc:
                    if distributed.rank_and_world()[1] == 1:
                        raise
                    decision = str(exc)
            decision = distributed.broadcast_object(decision)
            if decision not in ("reuse", "train"):
                raise CheckpointMismatchError(decision)
        if decision == "reuse":
            if state is not None:
                fusion.load_state_dict(state["state_dict"])
            distributed.broadcast_module(fusion)
            self.stage1_info = dict(state["info"] if state is not None else {}, checkpoint="reused")
            logger.info(f"stage 1: reusing {checkpoint} (same data, semantics and settings)")
        else:
            init_info = {}
            if distributed.is_main():
                init_info = prepare_stage1(self.config, fusion, channel.train_table, channel.item_texts, channel.encoder)
            distributed.broadcast_module(fusion)
            self.stage1_info = dict(self.stage1.fit(train_ids, valid_ids), checkpoint="trained", **init_info)
            if checkpoint is not None and saved and distributed.is_main():
                save_checkpoint({"key": key, "key_fields": plain_key(key_fields), "state_dict": fusion.state_dict(),
                                 "info": {k: v for k, v in self.stage1_info.items() if k != "checkpoint"}}, checkpoint)
        return self.stage1_info

    def full_ranking(self, prefix_ids: np.ndarray) -> dict[str, dict[str, float]]:
        """Full-ranking HR/NDCG of the fused model and of its structure channel alone on ``prefix_ids``."""
        return self.stage1.evaluate(prefix_ids)

    # ------------------------------------------------------------------ stage 2
    def compute_states(self) -> PrefixStates:
        """Freeze the stage-1 model and compute its states on every prefix with semantics."""
        fusion, channel, cfg = self.model.fusion, self.channel, self.config
        for p in fusion.parameters():
            p.requires_grad_(False)
        fusion.eval()
        self.states = PrefixStates.compute(fusion, channel.sequences, channel.table.ids, channel.table.values.numpy(),
                                           cfg["MAX_ITEM_LIST_LENGTH"], cfg["candidate_size"], cfg["density_window"],
                                           bool(cfg["real_timestamps"]), cfg["eval_batch_size"], self.device)
        return self.states

    def fit_stage2(self, valid_ids: np.ndarray) -> dict:
        """Every head of the model trained on the same batches (one pass); per head, its summary."""
        trainer = CalibrationTrainer(self.config, self.states, self.channel.sequences, self.item_table,
                                     self.channel.prefixes["stage2"], valid_ids)
        heads = {method: head.to(self.device) for method, head in self.model.heads.items()}
        self.stage2_info = trainer.fit_all(heads)
        return self.stage2_info

    # ------------------------------------------------------------------ the staleness protocol
    def evaluate_staleness(self, eval_data=None, methods: list[str] | None = None, gaps: list[int] | None = None,
                           prefix_ids: np.ndarray | None = None, refresh_interval: int | None = None,
                           internals: bool = True) -> list[dict]:
        """The staleness protocol on the requests of ``eval_data`` (or ``prefix_ids``): one row per
        method x gap x setting (``eval_gaps`` / ``eval_settings``), or with ``refresh_interval``
        the intermittent-refresh rows; methods default to the fixed ones and the model's heads."""
        from recbole_scalrec.staleness.methods import FIXED_METHODS

        cfg = self.config
        ids = prefix_ids if prefix_ids is not None else _prefix_ids(eval_data)
        common = dict(states=self.states, sequences=self.channel.sequences, item_table=self.item_table, prefix_ids=ids,
                      settings=cfg["eval_settings"], methods=methods or list(FIXED_METHODS) + list(self.model.heads),
                      fusion_weight=cfg["fusion_weight"], heads=dict(self.model.heads.items()),
                      top_m=cfg["spearman_top_m"], batch_size=cfg["eval_batch_size"],
                      repair_size=int(cfg["repair_size"] or 0), temperature=cfg["kd_temperature"], internals=internals)
        if refresh_interval:
            gaps_each = refresh_gaps(self.channel.sequences, ids, refresh_interval)
            return [dict(r, refresh_interval=refresh_interval)
                    for r in evaluate_staleness(gaps=[], gap_override=gaps_each, **common)]
        return evaluate_staleness(gaps=cfg["eval_gaps"] if gaps is None else gaps, **common)
