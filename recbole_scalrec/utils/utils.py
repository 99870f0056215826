"""Model and trainer look-up in the RecBole-GNN pattern: this package first, then RecBole."""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import pkgutil
from pathlib import Path

from recbole.utils import ModelType

from recbole_scalrec.compat import import_recbole_sequential

SHARED_DATA_ENV = "SCALREC_SHARED_DATA"


def properties_dir() -> Path:
    """Folder of the packaged yaml defaults (``properties/`` in the source tree)."""
    try:  # installed: shipped as the package data ``recbole_scalrec.properties``
        import recbole_scalrec.properties as props

        return Path(props.__file__).resolve().parent
    except ModuleNotFoundError:  # editable install / source tree: top-level ``properties/``
        return Path(__file__).resolve().parents[2] / "properties"


def shared_datasets_dir() -> Path:
    """Where the raw shared datasets live: ``$SCALREC_SHARED_DATA``, else ``../shared/datasets``
    relative to the working directory, else ``<repo>/../shared/datasets`` (source checkout)."""
    if os.environ.get(SHARED_DATA_ENV):
        return Path(os.environ[SHARED_DATA_ENV]).expanduser()
    default = Path("../shared/datasets")
    if not default.is_dir():
        beside_repo = Path(__file__).resolve().parents[3] / "shared" / "datasets"
        if beside_repo.is_dir():
            return beside_repo
    return default


_SUBMODULES = ("sequential_recommender",)
# The structure encoder is a sequential model; RecBole's general models are found too (the
# baselines compare with them, e.g. LightGCN). Its other families are not searched (its
# exlib_recommender package would also import optional xgboost/lightgbm).
_RECBOLE_SUBMODULES = ("sequential_recommender", "general_recommender")


WRAPPERS = frozenset({"SCaLRec"})  # the method's own model class, which wraps a structure encoder


def list_sequential_models() -> list[str]:
    """Names of the sequential models that can be the structure encoder (plug-in and RecBole;
    the ``SCaLRec`` model class, which wraps one, and this package's models the structure encoder
    refuses, the Table 2 baselines, are not listed)."""
    from recbole_scalrec.model.structure_encoder import REFUSED

    names, ours = set(), set()
    for pkg in ("recbole_scalrec.model.sequential_recommender", "recbole.model.sequential_recommender"):
        module = import_recbole_sequential() if pkg.startswith("recbole.") else importlib.import_module(pkg)
        found = {n for n in getattr(module, "__all__", dir(module)) if n[:1].isupper()}
        for info in pkgutil.iter_modules(module.__path__):
            sub = importlib.import_module(f"{pkg}.{info.name}")
            found.update(
                n for n, obj in vars(sub).items()
                if isinstance(obj, type) and obj.__module__ == sub.__name__ and n.lower() == info.name
            )
        names |= found
        if not pkg.startswith("recbole."):
            ours = found
    return sorted(names - WRAPPERS - (ours & set(REFUSED)))


def get_model(model_name: str):
    """Model class by name: ``recbole_scalrec.model`` first, then ``recbole.model``.

    Raises:
        ValueError: with close matches when no model has this name.
    """
    import_recbole_sequential()
    file_name = model_name.lower()
    for package, submodules in (("recbole_scalrec.model", _SUBMODULES), ("recbole.model", _RECBOLE_SUBMODULES)):
        for submodule in submodules:
            path = f"{package}.{submodule}.{file_name}"
            if importlib.util.find_spec(path) is not None:
                module = importlib.import_module(path)
                if hasattr(module, model_name):
                    return getattr(module, model_name)
    known = list_sequential_models()
    close = difflib.get_close_matches(model_name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown --model={model_name!r}.{hint} Sequential models available: {', '.join(known)}."
    )


def get_trainer(model_type: ModelType, model_name: str):
    """Trainer class: ``<model_name>Trainer`` here, then in RecBole, else our compatible default."""
    ours = importlib.import_module("recbole_scalrec.trainer")
    if hasattr(ours, model_name + "Trainer"):
        return getattr(ours, model_name + "Trainer")
    recbole_trainer = importlib.import_module("recbole.trainer")
    if hasattr(recbole_trainer, model_name + "Trainer"):
        return getattr(recbole_trainer, model_name + "Trainer")
    if model_type == ModelType.KNOWLEDGE:
        return recbole_trainer.KGTrainer
    if model_type == ModelType.TRADITIONAL:
        return recbole_trainer.TraditionalTrainer
    return ours.Trainer
