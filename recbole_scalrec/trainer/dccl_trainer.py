"""The trainer of :class:`~recbole_scalrec.model.sequential_recommender.dccl.DCCL`: DCCL's phases,
each run by RecBole's training loop with validation early stopping.

Phase order: ``cloud`` (skipped when the shared model came trained), then ``dccl_cycles`` times
``patch`` and ``distill``, then a last ``patch`` (the devices patch the refined model). Each phase
has its own optimizer over its own parameters (``learning_rate`` for the shared model,
``dccl_patch_learning_rate`` for the patches) and its own epoch cap; it starts from the validation
score of the state it was handed and keeps that state unless an epoch beats it. What each phase did
is kept in :attr:`DCCLTrainer.phase_log` (start and best validation score, the score of every
validated epoch, epochs run, and for a patch phase how far the patches move the user vectors and how
many validation top-10 lists they change).
"""
from __future__ import annotations

import torch

from recbole_scalrec.trainer.trainer import Trainer, load_checkpoint


class DCCLTrainer(Trainer):
    """See the module docstring."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.phase_epochs = {"cloud": int(config["epochs"]), "patch": int(config["dccl_patch_epochs"] or 5),
                             "distill": int(config["dccl_distill_epochs"] or 5)}
        self.phase_lr = {"cloud": float(config["learning_rate"]), "distill": float(config["learning_rate"]),
                         "patch": float(config["dccl_patch_learning_rate"] or config["learning_rate"])}
        self.cycles = int(config["dccl_cycles"] if config["dccl_cycles"] is not None else 1)
        self.phase_log: list[dict] = []
        self._epoch_scores: list[float] = []  # the running phase's validation score after each validated epoch

    def phases(self) -> list[str]:
        return ([] if self.model.cloud_trained else ["cloud"]) + ["patch", "distill"] * self.cycles + ["patch"]

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        result = (self.best_valid_score, self.best_valid_result)
        for phase in self.phases():
            result = self._fit_phase(phase, train_data, valid_data, verbose, show_progress, callback_fn)
        self.model.cloud_trained = True
        self._save_checkpoint(len(self.phase_log), verbose=verbose)
        return result

    def _fit_phase(self, phase: str, train_data, valid_data, verbose: bool, show_progress: bool, callback_fn):
        params = self.model.set_phase(phase)
        self.optimizer = self._build_optimizer(params=params, learning_rate=self.phase_lr[phase])
        self.epochs, self.start_epoch, self.cur_step = self.phase_epochs[phase], 0, 0
        self.eval_step = min(self.config["eval_step"], self.epochs)
        self.train_loss_dict = {}
        if valid_data is not None:
            start, result = self._valid_epoch(valid_data, show_progress=show_progress)
        else:
            start, result = (-float("inf") if self.valid_metric_bigger else float("inf")), None
        self.best_valid_score, self.best_valid_result = start, result
        self._epoch_scores = []  # the start score above went through _valid_epoch too; it is no epoch's
        self._save_checkpoint(-1, verbose=False)  # the state handed over stays unless an epoch beats it
        best = super().fit(train_data, valid_data, verbose=verbose, saved=True, show_progress=show_progress,
                           callback_fn=callback_fn)
        self.model.load_state_dict(load_checkpoint(self.saved_model_file)["state_dict"])
        entry = {"phase": phase, "valid_start": float(start), "valid_best": float(best[0]),
                 "valid_per_epoch": list(self._epoch_scores), "epochs_run": len(self.train_loss_dict)}
        if phase == "patch" and valid_data is not None:
            entry.update(self.patch_effect(valid_data))
        self.phase_log.append(entry)
        self.logger.info(f"DCCL phase {phase}: {entry}")
        return best

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self._epoch_scores.append(float(score))
        return score, result

    @torch.no_grad()
    def patch_effect(self, valid_data) -> dict:
        """On the validation requests: mean and max of ``||B_u A_u h|| / ||h||`` and the share of
        top-10 lists the patches change."""
        model = self.model
        model.eval()
        norms, changed = [], []
        for batched in valid_data:
            interaction = batched[0].to(self.device)
            seq, length = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
            users = interaction[model.USER_ID]
            h = model.shared_vector(seq, length, users)
            table = model.item_table
            norms.append(model.patch.correction_norm(h, users))
            plain = torch.topk(h @ table.T, 10, dim=1).indices.sort(1).values
            patched = torch.topk(model.patch(h, users) @ table.T, 10, dim=1).indices.sort(1).values
            changed.append((plain != patched).any(1).float())
        norms, changed = torch.cat(norms), torch.cat(changed)
        return {"patch_relative_norm_mean": float(norms.mean()), "patch_relative_norm_max": float(norms.max()),
                "share_top10_changed_by_patch": float(changed.mean())}
