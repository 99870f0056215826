"""RecBole's ``Trainer`` with safe, atomic checkpoints that load on torch >= 2.6.

RecBole 1.2.1 pickles its whole ``Config`` into each checkpoint and reads it back with a
bare ``torch.load``, which torch >= 2.6 refuses (``weights_only=True`` by default). Here a
checkpoint holds only tensors and plain Python values, is written to a temporary file and
renamed into place (a reader never sees a half-written file), and is read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from recbole.trainer import Trainer as RecBoleTrainer


def _plain(value: Any) -> Any:
    """A value made of plain Python types only (what ``weights_only`` loading accepts)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def save_checkpoint(state: dict, path: str) -> None:
    """Write ``state`` atomically (temporary file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling code."""
    return torch.load(path, map_location=map_location, weights_only=True)


class Trainer(RecBoleTrainer):
    """RecBole's trainer, unchanged except for how checkpoints are written and read and that each
    process trains into a file of its own."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        # RecBole names the file by model and the second training started: two runs started in the
        # same second (e.g. two table rows side by side) would overwrite and load each other's weights
        root, ext = os.path.splitext(self.saved_model_file)
        self.saved_model_file = f"{root}-{os.getpid()}{ext}"

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": _plain(self.config.final_config_dict),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        save_checkpoint(state, saved_model_file)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")

    def resume_checkpoint(self, resume_file):
        checkpoint = load_checkpoint(str(resume_file), map_location=self.device)
        self.saved_model_file = str(resume_file)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            raise ValueError(
                f"Checkpoint {resume_file} was trained for model {checkpoint['config']['model']}, "
                f"not {self.config['model']}: pass the matching --model or another checkpoint."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
