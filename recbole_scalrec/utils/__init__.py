from recbole_scalrec.utils.utils import (
    get_model,
    get_trainer,
    list_sequential_models,
    shared_datasets_dir,
    properties_dir,
)

__all__ = [
    "get_model",
    "get_trainer",
    "list_sequential_models",
    "shared_datasets_dir",
    "properties_dir",
]
