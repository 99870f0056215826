from recbole_scalrec.trainer.trainer import Trainer, load_checkpoint, save_checkpoint
from recbole_scalrec.trainer.dccl_trainer import DCCLTrainer
from recbole_scalrec.trainer.prefer_trainer import PREFERTrainer
from recbole_scalrec.trainer.rarec_trainer import RARecTrainer
from recbole_scalrec.trainer.transreclm_trainer import TransRecLMTrainer


def __getattr__(name: str):
    """``SCaLRecTrainer`` on first use (it imports the whole method)."""
    if name == "SCaLRecTrainer":
        from recbole_scalrec.trainer.scalrec_trainer import SCaLRecTrainer

        return SCaLRecTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Trainer", "SCaLRecTrainer", "DCCLTrainer", "PREFERTrainer", "RARecTrainer", "TransRecLMTrainer", "load_checkpoint", "save_checkpoint"]
