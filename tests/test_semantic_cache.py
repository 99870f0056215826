"""SemanticCache: round trip, resume, corruption, key mismatch, warm runs, NaN, ranks."""
import hashlib
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from recbole_scalrec.semantic.cache import SemanticCache  # noqa: E402
from synthetic import FakeEncoder  # noqa: E402


def texts_fn(ids):
    return [f"abstract {int(i)}" for i in ids]


KEY = {"dataset": "ml-100k", "encoder": FakeEncoder.fingerprint, "abstract_length": 10}
IDS = np.random.default_rng(0).permutation(np.arange(1000, 1050, dtype=np.int64))


def test_round_trip_and_warm_run(tmp_path):
    enc = FakeEncoder()
    cache = SemanticCache(str(tmp_path), KEY)
    cold = cache.get_or_compute(IDS, texts_fn, enc, chunk_size=16)
    assert cold.shape == (50, 8) and cold.dtype == np.float32
    np.testing.assert_array_equal(cold, enc.encode(texts_fn(IDS)))
    assert cache.stats["computed"] == 50 and len(cache.chunk_files()) == 4
    assert (cache.path / "key.json").exists()

    warm_enc = FakeEncoder()
    cache2 = SemanticCache(str(tmp_path), KEY)
    sub = IDS[[5, 0, 17, 42]]
    warm = cache2.get_or_compute(sub, texts_fn, warm_enc)
    assert warm_enc.forward_calls == 0 and cache2.stats == {"hits": 4, "computed": 0, "corrupted": 0, "duplicates": 0}
    np.testing.assert_array_equal(warm, cold[[5, 0, 17, 42]])
    # new ids: only those are encoded
    more = np.concatenate([IDS[:3], [7, 8]])
    cache2.get_or_compute(more, texts_fn, warm_enc)
    assert cache2.stats["computed"] == 2 and warm_enc.forward_calls == 1


def test_resume_after_interrupted_run(tmp_path):
    reference = SemanticCache(str(tmp_path / "a"), KEY).get_or_compute(IDS, texts_fn, FakeEncoder(), chunk_size=16)
    cache = SemanticCache(str(tmp_path / "b"), KEY)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute(IDS, texts_fn, FakeEncoder(fail_after=1), chunk_size=16)
    assert len(cache.chunk_files()) == 1
    assert not list(cache.path.glob(".tmp-*"))
    enc = FakeEncoder()
    resumed = SemanticCache(str(tmp_path / "b"), KEY)
    out = resumed.get_or_compute(IDS, texts_fn, enc, chunk_size=16)
    assert resumed.stats["hits"] == 16 and resumed.stats["computed"] == 34 and enc.forward_calls == 3
    np.testing.assert_array_equal(out, reference)
    names = lambda c: sorted(p.name for p in c.chunk_files())  # noqa: E731
    assert names(resumed) == names(SemanticCache(str(tmp_path / "a"), KEY))


def test_resume_with_real_encoder(tmp_path):
    from recbole_scalrec.semantic.encoder import SemanticEncoder

    enc = SemanticEncoder(batch_size=4)
    ids = np.arange(10, dtype=np.int64)
    key = {"dataset": "toy", "encoder": enc.fingerprint}
    full = SemanticCache(str(tmp_path / "a"), key).get_or_compute(ids, texts_fn, enc, chunk_size=4)

    calls = {"n": 0}

    def failing_texts(chunk):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return texts_fn(chunk)

    with pytest.raises(RuntimeError):
        SemanticCache(str(tmp_path / "b"), key).get_or_compute(ids, failing_texts, enc, chunk_size=4)
    before = enc.forward_calls
    out = SemanticCache(str(tmp_path / "b"), key).get_or_compute(ids, texts_fn, enc, chunk_size=4)
    np.testing.assert_array_equal(out, full)
    warm = SemanticCache(str(tmp_path / "b"), key)
    mid = enc.forward_calls
    np.testing.assert_array_equal(warm.get_or_compute(ids, texts_fn, enc), full)
    assert enc.forward_calls == mid and mid > before


@pytest.mark.parametrize("damage", ["garbage", "checksum", "nan"])
def test_corrupted_chunk_is_rebuilt(tmp_path, damage):
    from safetensors.numpy import load_file, save_file

    cache = SemanticCache(str(tmp_path), KEY)
    good = cache.get_or_compute(IDS, texts_fn, FakeEncoder(), chunk_size=16)
    victim = cache.chunk_files()[1]
    if damage == "garbage":
        victim.write_bytes(b"\x00not a safetensors file")
    else:
        t = load_file(str(victim))
        from safetensors import safe_open

        with safe_open(str(victim), framework="np") as f:
            meta = f.metadata()
        if damage == "checksum":
            t["emb"][0, 0] += 1.0
        else:
            t["emb"][0, 0] = np.nan
            meta["emb_sha256"] = hashlib.sha256(t["emb"].tobytes()).hexdigest()
        save_file(t, str(victim), metadata=meta)
    n_victim = 16 if IDS.size >= 32 else None
    enc = FakeEncoder()
    again = SemanticCache(str(tmp_path), KEY)
    with pytest.warns(UserWarning, match="corrupted"):
        out = again.get_or_compute(IDS, texts_fn, enc, chunk_size=16)
    assert again.stats["corrupted"] == 1 and again.stats["computed"] == n_victim
    np.testing.assert_array_equal(out, good)
    # rebuilt: a further run is warm and clean
    enc2 = FakeEncoder()
    SemanticCache(str(tmp_path), KEY).get_or_compute(IDS, texts_fn, enc2)
    assert enc2.forward_calls == 0


def test_key_mismatch_refused(tmp_path):
    SemanticCache(str(tmp_path), KEY)
    # the folder is chosen by hashing the key, so a different key normally gets its own folder ...
    other = SemanticCache(str(tmp_path), {**KEY, "dataset": "ml-1m"})
    assert other.path != SemanticCache(str(tmp_path), KEY).path
    # ... and a folder whose key.json says otherwise is refused with the differing entries
    (other.path / "key.json").write_text('{"dataset": "ml-100k", "encoder": "other", "abstract_length": 10}')
    with pytest.raises(ValueError, match=r"dataset: cached 'ml-100k' != requested 'ml-1m'.*encoder"):
        SemanticCache(str(tmp_path), {**KEY, "dataset": "ml-1m"})


def test_nan_outputs_raise_and_are_not_cached(tmp_path):
    cache = SemanticCache(str(tmp_path), KEY)
    bad_ids = IDS[[3, 20]]
    enc = FakeEncoder(nan_for=texts_fn(bad_ids))
    with pytest.raises(FloatingPointError, match=str(int(bad_ids[0]))):
        cache.get_or_compute(IDS, texts_fn, enc, chunk_size=16)
    assert cache.chunk_files() == []


def test_bad_ids_rejected(tmp_path):
    cache = SemanticCache(str(tmp_path), KEY)
    with pytest.raises(ValueError, match="unique"):
        cache.get_or_compute(np.array([1, 1]), texts_fn, FakeEncoder())


def test_ranks_split_then_read_everything(tmp_path):
    world = 3
    encs = [FakeEncoder() for _ in range(world)]
    for r in range(world):  # sequential stand-in for parallel ranks; no barrier: returns None
        assert SemanticCache(str(tmp_path), KEY).get_or_compute(
            IDS, texts_fn, encs[r], chunk_size=8, rank=r, world_size=world) is None
    cache = SemanticCache(str(tmp_path), KEY)
    enc = FakeEncoder()
    out = cache.get_or_compute(IDS, texts_fn, enc, rank=1, world_size=world, barrier=lambda: None)
    assert enc.forward_calls == 0 and cache.stats["hits"] == 50
    np.testing.assert_array_equal(out, FakeEncoder().encode(texts_fn(IDS)))
    assert [e.forward_calls for e in encs] == [3, 3, 2]  # 17/17/16 ids in chunks of 8


class CountingEncoder(FakeEncoder):
    def __init__(self):
        super().__init__()
        self.seen = []

    def encode(self, texts, show_progress=False):
        self.seen += list(texts)
        return super().encode(texts)


def test_identical_texts_are_encoded_once(tmp_path):
    enc = CountingEncoder()
    cache = SemanticCache(str(tmp_path), KEY)
    ids = np.arange(20, dtype=np.int64)
    same = cache.get_or_compute(ids, lambda chunk: [f"venue {int(i) % 3}" for i in chunk], enc, chunk_size=8)
    assert sorted(enc.seen) == sorted([f"venue {k}" for k in range(3)] * 3)  # 3 chunks, 3 distinct texts each
    assert cache.stats["duplicates"] == 20 - 9 and cache.stats["computed"] == 20
    for i in ids:  # every id gets the vector of its own text
        np.testing.assert_array_equal(same[i], FakeEncoder().encode([f"venue {int(i) % 3}"])[0])
