from recbole_scalrec.trainer.trainer import Trainer, load_checkpoint, save_checkpoint

__all__ = ["Trainer", "load_checkpoint", "save_checkpoint"]
