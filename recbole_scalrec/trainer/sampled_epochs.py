"""RecBole's training loop with each epoch cut to a fixed number of batches of RecBole's shuffled
training loader (a fresh random draw of training prefixes every epoch): the trainer of models whose
every batch is a forward and backward pass through a language model (RARec, TransRec), where an
epoch over every training prefix takes hours on a CPU. What was trained is kept in
:attr:`SampledEpochTrainer.phase_log` (one entry per epoch: prompts trained on, loss, validation
score)."""
from __future__ import annotations

from itertools import islice

from recbole_scalrec.trainer.trainer import Trainer


class FirstBatches:
    """The first ``n`` batches of a RecBole data loader (all of them when ``n <= 0``); every other
    attribute is the loader's."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n = loader, n

    def __iter__(self):
        return islice(iter(self.loader), self.n) if self.n > 0 else iter(self.loader)

    def __len__(self) -> int:
        return min(self.n, len(self.loader)) if self.n > 0 else len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class SampledEpochTrainer(Trainer):
    """See the module docstring; ``batches_key`` names the config key of the batches per epoch."""

    batches_key = ""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.batches_per_epoch = int(config[self.batches_key] or 0)
        self.phase_log: list[dict] = []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        cut = FirstBatches(train_data, self.batches_per_epoch)
        loss = super()._train_epoch(cut, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.phase_log.append({"epoch": int(epoch_idx), "prompts": int(len(cut) * self.config["train_batch_size"]),
                               "loss": float(sum(loss) if isinstance(loss, tuple) else loss)})
        self.logger.info(f"{self.config['model']} epoch {epoch_idx}: {self.phase_log[-1]}")
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self._log_valid(score)
        return score, result

    def _log_valid(self, score: float) -> None:
        if self.phase_log and "valid_score" not in self.phase_log[-1]:
            self.phase_log[-1]["valid_score"] = float(score)
