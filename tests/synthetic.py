"""Tiny synthetic RecBole atomic datasets for fast tests."""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np

GENRES = ["jazz", "rock", "folk", "opera", "blues", "punk", "soul", "metal"]


def write_synthetic_dataset(root: str, name: str = "tiny", n_users: int = 40, n_items: int = 30, min_len: int = 8,
                            max_len: int = 25, seed: int = 0, with_time: bool = True) -> str:
    """Write ``<root>/<name>/<name>.inter`` and ``.item``; users drift through genre clusters so
    the next item is predictable from text and sequence. Returns ``root``."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    genre_of = np.arange(n_items) % len(GENRES)
    with open(os.path.join(folder, f"{name}.item"), "w") as f:
        f.write("item_id:token\ttitle:token_seq\tgenre:token\n")
        for i in range(n_items):
            f.write(f"i{i}\tsong number {i}\t{GENRES[genre_of[i]]}\n")
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token" + ("\ttimestamp:float" if with_time else "") + "\n")
        for u in range(n_users):
            length = int(rng.integers(min_len, max_len + 1))
            genre = int(rng.integers(len(GENRES)))
            t = 1_600_000_000 + int(rng.integers(0, 10_000_000))
            for _ in range(length):
                if rng.random() < 0.15:
                    genre = int(rng.integers(len(GENRES)))
                pool = np.flatnonzero(genre_of == genre)
                item = int(rng.choice(pool))
                t += int(rng.integers(600, 86_400))
                f.write(f"u{u}\ti{item}" + (f"\t{t}" if with_time else "") + "\n")
    return root


def tiny_config_dict(root: str, **extra) -> dict:
    """Overrides for a fast run on the synthetic dataset."""
    cfg = {
        "data_path": root,
        "item_text_fields": ["title", "genre"],
        "epochs": 2,
        "train_batch_size": 64,
        "eval_batch_size": 64,
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "n_heads": 1,
        "MAX_ITEM_LIST_LENGTH": 10,
        "candidate_size": 10,
        "repair_size": 5,
        "semantic_train_stride": 1,
        "stage2_epochs": 2,
        "stage2_batch_size": 64,
        "spearman_top_m": 5,
        "lm_batch_size": 32,
        "lm_precision": "fp32",  # the auto probe is tested on its own (test_semantic_encoder)
        "show_progress": False,
        "state": "WARNING",
    }
    cfg.update(extra)
    return cfg


def write_tiny_lm(folder: str) -> str:
    """A 1-layer, 16-wide BERT with random (seeded) weights and MiniLM's tokenizer: a fast local
    language model for runs whose assertions do not depend on the semantics' quality."""
    import torch
    from transformers import BertConfig, BertModel

    from recbole_scalrec.semantic.encoder import default_model_path

    os.makedirs(folder, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(default_model_path() / name, os.path.join(folder, name))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def write_tiny_causal_lm(folder: str) -> str:
    """A 2-layer, 16-wide Llama with random (seeded) weights and MiniLM's tokenizer: a fast local
    causal LM for the LLM-based rows."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from recbole_scalrec.semantic.encoder import default_model_path

    os.makedirs(folder, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(default_model_path() / name, os.path.join(folder, name))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


class FakeEncoder:
    """Deterministic text -> vector map (hash-seeded), counting forward calls like the real one."""

    dim = 8
    fingerprint = "fake-v1"

    def __init__(self, fail_after=None, nan_for=()):
        self.forward_calls = 0
        self.fail_after = fail_after
        self.nan_for = set(nan_for)

    def encode(self, texts, show_progress=False):
        if self.fail_after is not None and self.forward_calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.forward_calls += 1
        out = np.stack([
            np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).standard_normal(self.dim)
            for t in texts
        ]).astype(np.float32)
        for j, t in enumerate(texts):
            if t in self.nan_for:
                out[j] = np.nan
        return out


def tiny_run_config(root, **extra) -> dict:
    """The synthetic dataset and the tiny LM written under ``root``, and the overrides of a fast run
    that keeps its cache, checkpoints and results there (``results_dir``: ``root/run``)."""
    root = str(root)
    write_synthetic_dataset(os.path.join(root, "data"), "tiny")
    paths = {"semantic_cache_dir": os.path.join(root, "cache"), "results_dir": os.path.join(root, "run"),
             "checkpoint_dir": os.path.join(root, "saved")}
    return tiny_config_dict(os.path.join(root, "data"), lm_path=write_tiny_lm(os.path.join(root, "lm")), lm_max_length=32,
                            **dict(paths, **extra))
