"""RecBole ``Config`` with the plug-in's yaml defaults layered in.

Priority, lowest first: RecBole's internal defaults < ``properties/overall.yaml`` <
``properties/model/SCaLRec.yaml`` < ``properties/model/<Model>.yaml`` <
``properties/dataset/<dataset>.yaml`` < user ``config_file_list`` < ``config_dict``
(the CLI passes its ``--key=value`` overrides here).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import recbole
from recbole.config import Config as RecBoleConfig

from recbole_scalrec.utils.utils import get_model, properties_dir


class ConfigError(ValueError):
    """A malformed command line or configuration value."""


def _convert_value(text: str) -> Any:
    """Turn a command-line string into a Python value the way RecBole does."""
    converted = RecBoleConfig._convert_config_dict(None, {"v": text})  # uses no instance state
    return converted["v"]


def parse_cli_overrides(argv: list[str]) -> dict[str, Any]:
    """Parse ``--key=value`` arguments (RecBole's syntax) into a typed dict.

    Raises:
        ConfigError: naming the malformed argument and the expected form.
    """
    overrides: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg or not arg[2:].split("=", 1)[0]:
            raise ConfigError(
                f"Malformed argument {arg!r}: write overrides as --key=value, e.g. --epochs=1 "
                f"or --item_text_fields=\"['title']\"."
            )
        key, value = arg[2:].split("=", 1)
        if key in overrides:
            raise ConfigError(f"--{key} is given twice on the command line.")
        overrides[key] = _convert_value(value)
    return overrides


# sequential models that read item features (``selected_features`` / ``item_attribute``) from the .item file
FEATURE_MODELS = frozenset({"FDSA", "GRU4RecF", "SASRecF", "S3Rec"})


class Config(RecBoleConfig):
    """RecBole configuration that knows the plug-in's models and yaml defaults.

    For a model of :data:`FEATURE_MODELS` the item columns it reads (``selected_features``, and
    ``item_attribute`` for S3Rec; set per dataset in ``properties/dataset/``) are added to
    ``load_col``, which otherwise loads the interactions only.
    """

    SCALREC_MODEL = "SCaLRec"

    def _load_cmd_line(self) -> dict:
        # The CLI (``run_recbole_scalrec.py``) parses the command line itself and passes the
        # overrides in ``config_dict``; reading ``sys.argv`` here too would count them twice.
        return {}

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model", "SASRec")
        if isinstance(model, str):
            model_name, model_class = model, get_model(model)
        else:
            model_name, model_class = model.__name__, model
        if dataset is None:
            dataset = self.external_config_dict.get("dataset", "ml-100k")
        return model_name, model_class, dataset

    def backbone_name(self, model: str) -> str:
        """The structure encoder: ``model`` itself, or for ``SCaLRec`` its ``backbone`` key (the
        user's, else ``properties/model/SCaLRec.yaml``'s default)."""
        if model != self.SCALREC_MODEL:
            return model
        name = self.external_config_dict.get("backbone")
        if name is None:
            import yaml

            with open(properties_dir() / "model" / f"{self.SCALREC_MODEL}.yaml", encoding="utf-8") as f:
                name = (yaml.safe_load(f) or {}).get("backbone") or "SASRec"
        return str(name)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        root = properties_dir()
        backbone = self.backbone_name(model)
        # SCaLRec wraps a backbone: the backbone's own RecBole defaults come first, under ours
        recbole_yaml = Path(recbole.__file__).parent / "properties" / "model" / f"{backbone}.yaml"
        paths = [recbole_yaml] if backbone != model else []
        paths += [root / "overall.yaml", root / "model" / f"{self.SCALREC_MODEL}.yaml", root / "model" / f"{backbone}.yaml",
                  root / "dataset" / f"{dataset}.yaml"]
        for path in paths:
            if path.is_file():
                self._update_internal_config_dict(str(path))
        if backbone != model:
            self.internal_config_dict["backbone"] = backbone

    def _set_default_parameters(self):
        user_data_path = self.external_config_dict.get("data_path")
        super()._set_default_parameters()
        # RecBole pins ml-100k to its shipped example; honour a user --data_path that holds it.
        if self.dataset == "ml-100k" and user_data_path is not None:
            candidate = os.path.join(user_data_path, self.dataset)
            if os.path.isfile(os.path.join(candidate, f"{self.dataset}.inter")):
                self.final_config_dict["data_path"] = candidate
        if self.backbone_name(self.model) in FEATURE_MODELS:
            self._load_item_features()

    def _load_item_features(self) -> None:
        cfg = self.final_config_dict
        load_col = cfg.get("load_col")
        if not isinstance(load_col, dict):
            return  # None: RecBole loads every column already
        wanted = list(cfg.get("selected_features") or [])
        if self.backbone_name(self.model) == "S3Rec" and cfg.get("item_attribute"):
            wanted.append(cfg["item_attribute"])
        item_cols = list(load_col.get("item") or [cfg["ITEM_ID_FIELD"]])
        item_cols += [c for c in wanted if c not in item_cols]
        cfg["load_col"] = dict(load_col, item=item_cols)
