"""SemanticEncoder: parity with sentence-transformers, pooling choice, config, errors."""
import json
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from recbole_scalrec.semantic.encoder import SemanticEncoder, default_model_path  # noqa: E402

TEXTS = [
    "Recent items (newest first): Toy Story (1995) [Animation, Children's, Comedy]; time: Tuesday evening",
    "Recent items (newest first): GoldenEye (1995) [Action, Adventure, Thriller]; Heat (1995) [Action, Crime]",
    "hi",
    "",
    "a much longer abstract that has to be truncated " * 60,  # > 256 tokens
    "Recent items (newest first): Casablanca (1942) [Drama, Romance, War]; time: Sunday morning",
]


@pytest.fixture(scope="module")
def encoder():
    return SemanticEncoder(batch_size=4)


def test_parity_with_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(default_model_path()), device="cpu").encode(TEXTS, batch_size=4)
    ours = encoder.encode(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), encoder.dim) == (len(TEXTS), 384)
    assert float(np.abs(ours - ref).max()) <= 1e-5
    # the packed (padding-free) forward path agrees as well
    packed = SemanticEncoder(batch_size=3, packed=True)
    assert packed._packed is not None and encoder._packed is None
    assert float(np.abs(packed.encode(TEXTS) - ref).max()) <= 1e-5


def test_settings_forward_calls_and_order(encoder):
    assert encoder.pooling == "mean" and encoder.normalize is True and encoder.max_length == 256
    assert not encoder.is_decoder
    before = encoder.forward_calls
    full = encoder.encode(TEXTS)
    assert encoder.forward_calls - before == 2  # 6 texts, batches of 4
    rev = encoder.encode(TEXTS[::-1])
    np.testing.assert_allclose(rev[::-1], full, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_pooling_and_normalize_options(encoder):
    raw = SemanticEncoder(pooling="cls", normalize=False)
    assert raw.pooling == "cls" and raw.normalize is False
    assert raw.fingerprint != encoder.fingerprint
    v = raw.encode(TEXTS[:2])
    assert not np.allclose(np.linalg.norm(v, axis=1), 1.0)
    with pytest.raises(ValueError):
        SemanticEncoder(pooling="max")


def test_decoder_detection_picks_last_token():
    from transformers import BertConfig, LlamaConfig

    assert SemanticEncoder._detect_decoder(LlamaConfig(architectures=["LlamaForCausalLM"]))
    assert SemanticEncoder._detect_decoder(LlamaConfig())  # no architectures: by model type
    assert SemanticEncoder._detect_decoder(BertConfig(is_decoder=True))
    assert not SemanticEncoder._detect_decoder(BertConfig(architectures=["BertModel"]))


def test_tiny_local_decoder_last_token(tmp_path):
    """A tiny random Llama saved locally: 'auto' picks last-token pooling, padding is harmless."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in "recent items toy story heat time evening a b c".split():
        vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(tmp_path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    enc = SemanticEncoder(tmp_path, batch_size=3)
    assert enc.is_decoder and enc.pooling == "last" and enc.normalize is False and enc.dim == 32
    texts = ["recent items toy story", "heat", "a b c time evening toy", "story"]
    together = enc.encode(texts)
    alone = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_from_config_and_errors(tmp_path):
    cfg = {"lm_path": None, "lm_pooling": "auto", "lm_normalize": "auto", "lm_max_length": 32,
           "lm_batch_size": 8, "lm_device": None, "device": "cpu", "trust_remote_code": False}
    enc = SemanticEncoder.from_config(cfg)
    assert enc.max_length == 32 and enc.batch_size == 8 and str(enc.device) == "cpu"
    with pytest.raises(FileNotFoundError, match="lm_path"):
        SemanticEncoder(tmp_path / "nope")


def test_fingerprint_stable_and_normalize_auto(tmp_path):
    # a copy of the folder without the Normalize module is not normalised under 'auto'
    src = default_model_path()
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    modules = json.loads((dst / "modules.json").read_text())
    (dst / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    a = SemanticEncoder(dst)
    assert a.normalize is False
    assert a.fingerprint == SemanticEncoder(dst).fingerprint
    assert a.fingerprint != SemanticEncoder(dst, normalize=True).fingerprint


def _cos(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bf16_keeps_the_vectors_and_changes_the_cache_key(encoder):
    bf16 = SemanticEncoder(batch_size=4, precision="bf16")
    assert bf16.precision == "bf16" and bf16.fingerprint != encoder.fingerprint
    texts = [t for t in TEXTS if t]  # an empty text has no direction to compare
    assert _cos(bf16.encode(texts), encoder.encode(texts)).min() >= 0.999
    assert SemanticEncoder(batch_size=4, precision="fp32").fingerprint == encoder.fingerprint  # fp32 caches stay valid
    int8 = SemanticEncoder(batch_size=4, precision="int8")
    assert int8.fingerprint not in (encoder.fingerprint, bf16.fingerprint)
    assert int8.encode(texts).shape == (len(texts), 384)
    with pytest.raises(ValueError, match="lm_precision"):
        SemanticEncoder(precision="fp8")


def test_auto_precision_follows_the_hardware_and_the_probe(monkeypatch):
    import recbole_scalrec.semantic.encoder as se

    monkeypatch.setattr(se, "bf16_capable", lambda device: False)
    plain = SemanticEncoder(precision="auto")
    assert plain.precision == "fp32" and plain.precision_info == {"requested": "auto", "bf16_units": False,
                                                                  "probe_forward_calls": 0}
    monkeypatch.setattr(se, "bf16_capable", lambda device: True)
    fast = SemanticEncoder(precision="auto")
    info = fast.precision_info
    assert fast.precision == "bf16" and info["bf16_min_cos"] >= se.PARITY_COS and info["probe_texts"] == 48
    assert info["probe_forward_calls"] > 0 and fast.forward_calls == 0  # the probe is not counted as the data's
    monkeypatch.setattr(se, "PARITY_COS", 1.01)  # no precision passes: back to fp32
    assert SemanticEncoder(precision="auto").precision == "fp32"
