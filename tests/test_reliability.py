"""Reliability: bad inputs, determinism, resume, checkpoint policy, safe loading.

Runs use a tiny randomly initialised BERT (``write_tiny_lm``, the bundled MiniLM's tokenizer) and
12 synthetic users, so each end-to-end run takes a few seconds on a CPU.
"""
import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch

from synthetic import tiny_config_dict, write_synthetic_dataset, write_tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def small_config(root, out, cache, **extra) -> dict:
    """A few-second run: tiny LM, one trained head, two gaps, one setting."""
    settings = dict(results_dir=str(out), semantic_cache_dir=str(cache), lm_path=str(root / "lm"), lm_max_length=32,
                    semantic_chunk_size=16, epochs=1, stage2_epochs=1, stage2_methods=["scalrec"], eval_gaps=[0, 5, 20],
                    eval_settings=["S2"], train_batch_size=16)
    return tiny_config_dict(str(root / "data"), **dict(settings, **extra))


def metrics_of(summary: dict) -> dict:
    return {(r["split"], r["setting"], r["gap"], r["method"]): r["metrics"] for r in summary["results"]}


def all_embeddings(cache_dir) -> dict[int, np.ndarray]:
    """Every cached vector under ``cache_dir`` by prefix id (read with safetensors, no pickle)."""
    from safetensors.numpy import load_file

    out = {}
    for path in glob.glob(os.path.join(str(cache_dir), "*", "*", "chunk-*.safetensors")):
        tensors = load_file(path)
        out.update({int(i): e for i, e in zip(tensors["ids"], tensors["emb"])})
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    write_tiny_lm(str(root / "lm"))
    write_synthetic_dataset(str(root / "data"), "tiny", n_users=12, min_len=5, max_len=10)
    return root


@pytest.fixture(scope="module")
def two_runs(env):
    """The same seed and config twice: two fresh results folders, one shared semantic cache."""
    from recbole_scalrec.quick_start import run_recbole_scalrec

    a = run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=small_config(env, env / "a", env / "cache"))
    b = run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=small_config(env, env / "b", env / "cache"))
    return a, b


# ------------------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_results_json(env, two_runs):
    a, b = two_runs
    assert a["lm_forward_calls"] > 0 and b["lm_forward_calls"] == 0  # b read the shared cache
    ja, jb = (json.load(open(env / d / "results.json")) for d in ("a", "b"))
    assert metrics_of(ja) == metrics_of(jb)
    assert ja["full_ranking"] == jb["full_ranking"]
    assert ja["stage1"]["best_valid_ndcg@10"] == jb["stage1"]["best_valid_ndcg@10"]
    assert ja["stage2"] == jb["stage2"]
    assert ja["n_users"] == 12 and ja["n_users_filtered"] == 0


# ------------------------------------------------------------------------------ stage-1 checkpoint
def test_stage1_checkpoint_loads_weights_only(env, two_runs):
    state = torch.load(env / "a" / "stage1.pth", map_location="cpu", weights_only=True)
    assert set(state) >= {"key", "key_fields", "state_dict", "info"}
    assert all(torch.is_tensor(v) for v in state["state_dict"].values())


def test_finished_stage1_is_reused_not_retrained(env, two_runs, monkeypatch):
    from recbole_scalrec.quick_start import run_recbole_scalrec
    from recbole_scalrec.trainer.fusion_trainer import FusionTrainer

    def no_training(*args, **kwargs):
        raise AssertionError("stage 1 must not be retrained")

    monkeypatch.setattr(FusionTrainer, "fit", no_training)
    before = (env / "a" / "stage1.pth").read_bytes()
    again = run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=small_config(env, env / "a", env / "cache"))
    assert again["stage1"]["checkpoint"] == "reused"
    assert metrics_of(again) == metrics_of(two_runs[0])
    assert (env / "a" / "stage1.pth").read_bytes() == before


def test_checkpoint_for_other_settings_is_refused(env, two_runs, capsys):
    from recbole_scalrec.quick_start import CheckpointMismatchError, run_recbole_scalrec

    before = (env / "a" / "stage1.pth").read_bytes()
    with pytest.raises(CheckpointMismatchError) as err:
        run_recbole_scalrec(model="SASRec", dataset="tiny",
                            config_dict=small_config(env, env / "a", env / "cache", fusion_weight=0.3))
    message = str(err.value)
    assert "fusion_weight: checkpoint 0.5, now 0.3" in message and "--results_dir" in message and "delete" in message
    assert (env / "a" / "stage1.pth").read_bytes() == before


def test_checkpoint_policy_unreadable_and_unsaved(env, tmp_path):
    """Unreadable: retrain (and overwrite). Mismatch without saving: train in memory, file untouched."""
    from recbole_scalrec.quick_start import CheckpointMismatchError, check_stage1_checkpoint

    path = tmp_path / "stage1.pth"
    path.write_bytes(b"not a checkpoint")
    assert check_stage1_checkpoint(str(path), "k", {}, saved=True) is None
    torch.save({"key": "old", "key_fields": {"config": {"epochs": 1}, "semantic": "s", "n_inter": 5}}, path)
    fields = {"config": {"epochs": 2}, "semantic": "t", "n_inter": 5}
    assert check_stage1_checkpoint(str(path), "new", fields, saved=False) is None
    with pytest.raises(CheckpointMismatchError, match="epochs: checkpoint 1, now 2; semantics"):
        check_stage1_checkpoint(str(path), "new", fields, saved=True)
    assert check_stage1_checkpoint(str(path), "old", fields, saved=True)["key"] == "old"


# ------------------------------------------------------------------------------ semantic cache
def test_corrupted_cache_chunk_is_rebuilt_through_the_pipeline(env, two_runs):
    from recbole_scalrec.quick_start import run_recbole_scalrec

    # the abstracts' cache folder (its key names the abstract settings), not the item-text vectors'
    folders = [f for f in glob.glob(str(env / "cache" / "tiny" / "*"))
               if "abstract" in json.load(open(os.path.join(f, "key.json")))]
    assert len(folders) == 1
    chunks = sorted(glob.glob(os.path.join(folders[0], "chunk-*.safetensors")))
    assert len(chunks) > 1
    data = open(chunks[0], "rb").read()
    open(chunks[0], "wb").write(data[: len(data) // 2])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match="corrupted"):
        c = run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=small_config(env, env / "c", env / "cache"))
    assert c["lm_forward_calls"] == 1  # only the damaged chunk (16 abstracts, one LM batch) is encoded again
    assert metrics_of(c) == metrics_of(two_runs[0])


def test_interrupted_precompute_resumes_to_identical_embeddings(env, two_runs, monkeypatch):
    from recbole_scalrec.quick_start import run_recbole_scalrec
    from recbole_scalrec.semantic.encoder import SemanticEncoder

    real_encode = SemanticEncoder.encode
    calls = []

    def dies_after_one_chunk(self, texts, *args, **kwargs):
        if calls:
            raise RuntimeError("simulated kill")
        calls.append(len(texts))
        return real_encode(self, texts, *args, **kwargs)

    cfg = small_config(env, env / "r", env / "cache_resume")
    monkeypatch.setattr(SemanticEncoder, "encode", dies_after_one_chunk)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=cfg)
    assert calls == [16] and len(all_embeddings(env / "cache_resume")) == 16
    assert not glob.glob(str(env / "cache_resume" / "*" / "*" / ".tmp-*"))
    assert not (env / "r").exists()  # nothing written to the results folder
    monkeypatch.setattr(SemanticEncoder, "encode", real_encode)

    resumed = run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=cfg)
    assert resumed["lm_forward_calls"] == resumed["n_semantic_prefixes"] // 16 + (resumed["n_semantic_prefixes"] % 16 > 0) - 1
    fresh, done = all_embeddings(env / "cache"), all_embeddings(env / "cache_resume")
    assert set(done) == set(fresh) and all(np.array_equal(done[i], fresh[i]) for i in fresh)
    assert metrics_of(resumed) == metrics_of(two_runs[0])


# ------------------------------------------------------------------------------ data repairs
def test_no_timestamp_short_users_and_clamped_gaps(env, tmp_path):
    """No timestamp column: file order kept (warning); users with < 3 interactions filtered and
    counted; gaps longer than the history clamp to t0 = 1 and are counted per results row."""
    from recbole.data import create_dataset

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.sequences import UserSequences
    from recbole_scalrec.quick_start import run_recbole_scalrec

    root = write_synthetic_dataset(str(tmp_path / "data"), "notime", n_users=12, min_len=5, max_len=10, with_time=False)
    inter = os.path.join(root, "notime", "notime.inter")
    with open(inter, "a") as f:  # two users with 2 interactions, one with 1
        f.write("short0\ti1\nshort0\ti2\nshort1\ti3\nshort1\ti4\nshort2\ti5\n")
    lines = [line.rstrip("\n").split("\t") for line in open(inter).readlines()[1:]]
    file_order: dict[str, list[str]] = {}
    for user, item in lines:
        file_order.setdefault(user, []).append(item)

    cfg = small_config(env, tmp_path / "out", tmp_path / "cache", data_path=root)
    config = Config(model="SASRec", dataset="notime", config_dict=cfg)
    data = create_dataset(config)
    seq = UserSequences.from_dataset(data)
    assert seq.times is None and seq.n_users == 12
    users = data.field2id_token[data.uid_field]
    items = data.field2id_token[data.iid_field]
    for k, u in enumerate(seq.users):
        assert list(items[seq.items[seq.offsets[k]:seq.offsets[k + 1]]]) == file_order[users[u]]

    summary = run_recbole_scalrec(model="SASRec", dataset="notime", config_dict=cfg, saved=False)
    assert summary["n_users"] == 12 and summary["n_users_filtered"] == 3
    lengths = {u: len(v) for u, v in file_order.items() if not u.startswith("short")}
    for r in summary["results"]:
        t = np.array([n - (2 if r["split"] == "test" else 3) + 1 for n in lengths.values()])  # prefix lengths
        assert r["n_clamped"] == int((t <= r["gap"]).sum())
    assert any(r["gap"] == 20 and r["n_clamped"] == 12 for r in summary["results"])
    assert any(r["gap"] == 5 and 0 < r["n_clamped"] < 12 for r in summary["results"])


def test_short_users_that_reach_sequences_are_dropped_and_counted(env, tmp_path):
    from recbole.data import create_dataset

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.sequences import UserSequences, raw_user_count

    root = write_synthetic_dataset(str(tmp_path / "data"), "loose", n_users=5, min_len=5, max_len=6)
    with open(os.path.join(root, "loose", "loose.inter"), "a") as f:
        f.write("s0\ti1\t1700000000\ns0\ti2\t1700000100\n")
    cfg = small_config(env, tmp_path / "out", tmp_path / "cache", data_path=root, user_inter_num_interval="[1,inf)")
    config = Config(model="SASRec", dataset="loose", config_dict=cfg)
    seq = UserSequences.from_dataset(create_dataset(config))
    assert seq.n_users == 5 and seq.n_short_dropped == 1 and raw_user_count(config) == 6
    assert (seq.lengths >= 3).all() and len(seq.items) == len(seq.rows) == seq.offsets[-1]


def test_near_tie_timestamps_sort_exactly_and_float32_reproduces_recbole(env, tmp_path):
    """RecBole sorts its float32 copy of the timestamps (128 s resolution here); we sort the exact
    seconds, and ``sort_dtype=np.float32`` gives RecBole's split (same test targets)."""
    from recbole.data import create_dataset, data_preparation

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.sequences import UserSequences

    root = write_synthetic_dataset(str(tmp_path / "data"), "ties", n_users=4, min_len=5, max_len=6)
    with open(os.path.join(root, "ties", "ties.inter"), "a") as f:  # later in the file, 10 s earlier
        f.write("t0\ti1\t1700000000\nt0\ti2\t1700000100\nt0\ti3\t1700000300\nt0\ti4\t1700000290\n")
    cfg = small_config(env, tmp_path / "out", tmp_path / "cache", data_path=root, checkpoint_dir=str(tmp_path / "ck"))
    config = Config(model="SASRec", dataset="ties", config_dict=cfg)
    data = create_dataset(config)
    built = {dtype: UserSequences.from_dataset(data, sort_dtype=dtype) for dtype in (np.float64, np.float32)}
    _, _, test = data_preparation(config, data)  # (turns data's columns into float32 tensors)
    inter = test.dataset.inter_feat
    recbole_target = dict(zip(inter[data.uid_field].tolist(), inter[data.iid_field].tolist()))
    items = data.field2id_token[data.iid_field]
    t0 = int(np.flatnonzero(data.field2id_token[data.uid_field] == "t0")[0])
    for dtype, last in ((np.float64, "i3"), (np.float32, "i4")):
        seq = built[dtype]
        k = int(np.flatnonzero(seq.users == t0)[0])
        assert items[seq.items[seq.offsets[k + 1] - 1]] == last  # exact: i3 is newest; float32: a tie, file order
        if dtype is np.float32:
            targets = seq.targets(seq.eval_prefixes("test"))
            assert {int(u): int(t) for u, t in zip(seq.users, targets)} == recbole_target


# ------------------------------------------------------------------------------ CLI errors
def _cli(env, capsys, *args):
    from recbole_scalrec.quick_start import main

    code = main([f"--lm_path={env / 'lm'}", "--lm_max_length=32", "--epochs=1", "--stage2_epochs=1",
                 "--hidden_size=16", "--n_layers=1", "--n_heads=1", "--MAX_ITEM_LIST_LENGTH=10", "--state=WARNING",
                 *args])
    captured = capsys.readouterr()
    return code, captured.err


def test_cli_reports_bad_inputs_without_traceback(env, tmp_path, capsys, monkeypatch):
    from recbole_scalrec.semantic.encoder import SemanticEncoder

    out, cache = tmp_path / "out", tmp_path / "cache"
    common = ["--dataset=tiny", f"--data_path={env / 'data'}", f"--results_dir={out}", f"--semantic_cache_dir={cache}"]

    errors = []
    code, err = _cli(env, capsys, *common, "--item_text_fields=['title', 'plot']")
    errors.append(err)
    assert code == 2 and err.startswith("error: ") and "missing ['plot']" in err and "--item_text_fields" in err

    bare = tmp_path / "bare"
    shutil.copytree(env / "data" / "tiny", bare / "tiny")
    os.remove(bare / "tiny" / "tiny.item")
    code, err = _cli(env, capsys, "--dataset=tiny", f"--data_path={bare}", f"--results_dir={out}",
                     f"--semantic_cache_dir={cache}", "--item_text_fields=['title']")
    errors.append(err)
    assert code == 2 and "No item file" in err and "tiny.item" in err

    code, err = _cli(env, capsys, "--dataset=nosuchdata", f"--data_path={tmp_path}", f"--results_dir={out}")
    errors.append(err)
    assert code == 2 and "Dataset 'nosuchdata' is not prepared" in err

    monkeypatch.setattr(SemanticEncoder, "encode",
                        lambda self, texts, *a, **k: np.full((len(texts), self.dim), np.nan, dtype=np.float32))
    code, err = _cli(env, capsys, *common, "--item_text_fields=['title', 'genre']")
    errors.append(err)
    assert code == 2 and "NaN/inf" in err and "not cached" in err

    for e in errors:  # one "error: ..." line at the end (progress bars may precede it), no traceback
        assert "Traceback" not in e and e.rstrip("\n").splitlines()[-1].startswith("error: ")
        assert sum(line.startswith("error: ") for line in e.splitlines()) == 1
    assert not out.exists()  # no results files from a failed run
    assert not glob.glob(str(cache / "*" / "*" / "chunk-*"))  # NaN vectors were not cached


# ------------------------------------------------------------------------------ safe loading
class _Trap:
    """Unpickling this creates a marker file (stands for arbitrary code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pipeline_never_unpickles_a_saved_recbole_dataset(env, tmp_path):
    import pickle

    from recbole_scalrec.config import Config
    from recbole_scalrec.quick_start import load_dataset

    marker = tmp_path / "code-ran"
    (tmp_path / "ckpt").mkdir()
    with open(tmp_path / "ckpt" / "tiny-SequentialDataset.pth", "wb") as f:
        pickle.dump(_Trap(str(marker)), f)
    config = Config(model="SASRec", dataset="tiny",
                    config_dict=small_config(env, tmp_path / "out", tmp_path / "cache", checkpoint_dir=str(tmp_path / "ckpt")))
    data = load_dataset(config)
    assert not marker.exists() and data.user_num == 13  # 12 users + padding


def test_every_load_site_in_the_package_is_safe():
    """torch.load only with weights_only=True; no pickle/joblib loads; np.load without allow_pickle."""
    import re
    from pathlib import Path

    import recbole_scalrec

    root = Path(recbole_scalrec.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"
        assert not re.search(r"\b(pickle|joblib|dill|cloudpickle)\.loads?\(", text), path
        assert "allow_pickle=True" not in text, path
        assert "read_pickle" not in text, path
