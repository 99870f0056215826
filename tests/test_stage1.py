"""Stage 1's inputs: every training prefix, the LM-initialised item table, the checkpoint key,
``real_timestamps: auto`` and the cache lookup of prefixes without their own semantics."""
import logging
import os

import numpy as np
import pytest
import torch
from torch import nn

from synthetic import FakeEncoder, tiny_config_dict, write_synthetic_dataset, write_tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- the device cache lookup -------------------------------------------------------------------

def test_at_or_before_takes_the_latest_stored_prefix_of_the_same_user():
    from recbole_scalrec.staleness.snapshot import PrefixTable

    table = PrefixTable(np.array([10, 0, 3, 6]), np.arange(4, dtype=np.float32)[:, None] * [[1.0, -1.0]])
    values, own = table.at_or_before(np.array([0, 1, 2, 3, 5, 7, 12]), floors=np.zeros(7, dtype=np.int64))
    # stored ids sorted: 0 -> row 0 (value 1), 3 -> 2, 6 -> 3, 10 -> 0
    assert values[:, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 0.0]
    assert own.tolist() == [True, False, False, True, False, False, False]
    with pytest.raises(KeyError, match="no encoded prefix of its own user"):
        table.at_or_before(np.array([5]), floors=np.array([4]))  # prefix 3 belongs to another user


# --- every training prefix reaches stage 1 -------------------------------------------------------

@pytest.fixture(scope="module")
def strided_run(tmp_path_factory):
    from recbole_scalrec.quick_start import build_run

    root = tmp_path_factory.mktemp("strided")
    write_synthetic_dataset(str(root / "data"), "tiny")
    cfg = tiny_config_dict(str(root / "data"), results_dir=str(root / "out"), semantic_cache_dir=str(root / "cache"),
                           lm_path=write_tiny_lm(str(root / "lm")), lm_max_length=32, semantic_train_stride=3,
                           stage2_methods=[], epochs=2, stopping_step=5)
    return build_run(model="SASRec", dataset="tiny", config_dict=cfg, saved=False), cfg


def test_every_training_prefix_reaches_stage1(strided_run):
    run, _ = strided_run
    n_train = len(run.sequences.train_prefixes())
    info = run.info["stage1"]
    assert info["n_train_prefixes"] == n_train and info["missing_semantics"] == "latest"
    assert len(info["history"]) == 2
    encoded = len(np.intersect1d(run.prefixes["all"], run.sequences.train_prefixes()))
    for epoch in info["history"]:
        assert epoch["prefixes_seen"] == n_train  # each epoch, every prefix once
        assert epoch["prefixes_with_own_semantics"] == encoded < n_train  # stride 3: the rest read the cache


def test_encoded_mode_trains_only_the_encoded_prefixes(strided_run, tmp_path):
    from recbole_scalrec.quick_start import build_run

    run, cfg = strided_run
    other = build_run(model="SASRec", dataset="tiny", saved=False,
                      config_dict=dict(cfg, stage1_train_prefixes="encoded", epochs=1, results_dir=str(tmp_path)))
    encoded = np.intersect1d(other.prefixes["all"], other.sequences.train_prefixes())
    assert other.info["stage1"]["n_train_prefixes"] == len(encoded) < len(run.sequences.train_prefixes())
    assert other.info["stage1"]["history"][0]["prefixes_with_own_semantics"] == len(encoded)


def test_stage1_records_the_conditioning_and_item_init(strided_run):
    run, _ = strided_run
    info = run.info["stage1"]
    assert info["item_embedding_init"]["mode"] == "lm"
    assert info["item_embedding_init"]["with_text"] == run.sequences.n_items - 1  # every synthetic item has a title
    assert info["semantic_conditioning"]["mode"] == "whiten"
    assert torch.count_nonzero(run.fusion.conditioner.mean) > 0


# --- the LM-initialised item table ------------------------------------------------------------

def test_pca_project_matches_numpy_pca():
    from recbole_scalrec.model.item_init import pca_project

    x = np.random.default_rng(0).standard_normal((50, 12)) @ np.diag(np.linspace(3, 0.1, 12))
    got = pca_project(x.astype(np.float32), 4)
    u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
    want = u[:, :4] * s[:4]
    np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-4, atol=1e-4)  # components up to sign
    assert pca_project(x[:3].astype(np.float32), 8).shape == (3, 2)  # at most n - 1 components


def test_lm_init_equals_the_pca_projection_up_to_scale():
    from recbole_scalrec.model.item_init import init_item_table, pca_project

    torch.manual_seed(0)
    table = nn.Embedding(21, 6, padding_idx=0)
    nn.init.normal_(table.weight, std=0.02)
    before = table.weight.detach().clone()
    ids = np.arange(1, 21, 2)  # every other item has text
    projected = pca_project(np.random.default_rng(1).standard_normal((len(ids), 16)).astype(np.float32), 6)
    info = init_item_table(table, ids, projected)
    rows = table.weight.detach()[torch.as_tensor(ids)].numpy()
    scale = rows / projected
    np.testing.assert_allclose(scale, info["scale"], rtol=1e-5)  # one scale for every entry
    assert abs(rows.std() - before[1:].std().item()) < 1e-6  # the backbone's own initial scale
    untouched = [i for i in range(21) if i not in set(ids.tolist())]
    assert torch.equal(table.weight.detach()[untouched], before[untouched])  # no text (and padding): random
    assert info["with_text"] == 10 and info["without_text"] == 10 and info["components"] == 6


def test_missing_item_text_keeps_a_random_vector_and_is_logged(tmp_path, caplog):
    from recbole_scalrec.model.item_init import lm_initialise_items

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.item_embedding = nn.Embedding(6, 4, padding_idx=0)

    torch.manual_seed(0)
    backbone = Backbone()
    before = backbone.item_embedding.weight.detach().clone()
    texts = ["[PAD]", "a jazz song", "", "a rock song", "a folk song", "  "]
    with caplog.at_level(logging.INFO, logger="recbole_scalrec.model.item_init"):
        info = lm_initialise_items(backbone, texts, FakeEncoder(), str(tmp_path), "tiny")
    weight = backbone.item_embedding.weight.detach()
    for item in (0, 2, 5):  # padding and the items without text
        assert torch.equal(weight[item], before[item])
    for item in (1, 3, 4):
        assert not torch.equal(weight[item], before[item])
    assert info["with_text"] == 3 and info["without_text"] == 2
    assert "3 of 5 items initialised from the LM" in caplog.text and "2 without text keep random vectors" in caplog.text
    # a second call reads the item vectors from the cache: no LM call
    encoder = FakeEncoder()
    lm_initialise_items(Backbone(), texts, encoder, str(tmp_path), "tiny")
    assert encoder.forward_calls == 0


def test_backbone_without_item_table_gets_a_clear_error():
    from recbole_scalrec.model.item_init import lm_initialise_items

    with pytest.raises(TypeError, match="item_embedding_init: random"):
        lm_initialise_items(nn.Linear(2, 2), ["", "x"], FakeEncoder(), "/nonexistent", "tiny")


# --- the stage-1 checkpoint key ---------------------------------------------------------------

@pytest.mark.parametrize("model, key, value", [("SASRec", "inner_size", 64), ("SURGE", "pool_length", 3),
                                               ("SASRec", "item_embedding_init", "random"),
                                               ("SASRec", "semantic_conditioning", "none")])
def test_checkpoint_key_changes_with_a_weight_changing_key(tmp_path, model, key, value):
    from recbole_scalrec.config import Config
    from recbole_scalrec.quick_start import stage1_key

    cfg = tiny_config_dict(str(tmp_path))
    base = stage1_key(Config(model=model, dataset="tiny", config_dict=cfg), "sem", 100)
    changed = stage1_key(Config(model=model, dataset="tiny", config_dict=dict(cfg, **{key: value})), "sem", 100)
    assert base != changed and base["config"][key] != changed["config"][key]
    same = stage1_key(Config(model=model, dataset="tiny", config_dict=dict(cfg, stage2_epochs=9, results_dir="x")), "sem", 100)
    assert same == base  # stage-2 and output keys do not retrain stage 1


def test_saved_checkpoint_with_other_backbone_settings_is_refused_by_name(tmp_path):
    from recbole_scalrec.quick_start import CheckpointMismatchError, check_stage1_checkpoint
    from recbole_scalrec.trainer.trainer import save_checkpoint

    path = str(tmp_path / "stage1.pth")
    fields = {"config": {"inner_size": 32}, "semantic": "sem", "n_inter": 100}
    save_checkpoint({"key": "a", "key_fields": fields, "state_dict": {}, "info": {}}, path)
    now = dict(fields, config={"inner_size": 64})
    with pytest.raises(CheckpointMismatchError, match="inner_size: checkpoint 32, now 64"):
        check_stage1_checkpoint(path, "b", now, saved=True)
    assert check_stage1_checkpoint(path, "b", now, saved=False) is None  # in memory: retrain, file untouched
    assert check_stage1_checkpoint(path, "a", fields, saved=True) is not None


# --- real_timestamps: auto ----------------------------------------------------------------------

class _Times:
    def __init__(self, times):
        self.times = np.asarray(times, dtype=np.float64)


@pytest.mark.parametrize("times, real", [(np.arange(200), False), (1_600_000_000 + 3600 * np.arange(200), True),
                                         (1_600_000_000_000 + np.arange(200), False)])
def test_real_timestamps_auto(times, real, caplog):
    from recbole_scalrec.quick_start import resolve_real_timestamps

    with caplog.at_level(logging.INFO, logger="recbole_scalrec.data.requests"):
        assert resolve_real_timestamps({"real_timestamps": "auto"}, _Times(times)) is real
    assert ("not unix seconds" in caplog.text) is (not real)
    assert resolve_real_timestamps({"real_timestamps": True}, _Times(np.arange(3))) is True
    with pytest.raises(ValueError, match="True, False or auto"):
        resolve_real_timestamps({"real_timestamps": "sometimes"}, _Times(times))


def test_order_index_data_gets_no_time_words(tmp_path):
    """A dataset whose timestamps are an order index: abstracts carry no 'Time:' line."""
    from recbole_scalrec.semantic.abstract import AbstractBuilder
    from recbole_scalrec.config import Config
    from recbole_scalrec.data.item_text import load_item_texts, load_request_texts
    from recbole_scalrec.data.sequences import UserSequences
    from recbole_scalrec.quick_start import load_dataset, resolve_real_timestamps

    root = write_synthetic_dataset(str(tmp_path), "tiny")
    inter = os.path.join(root, "tiny", "tiny.inter")
    lines = open(inter).read().splitlines()
    with open(inter, "w") as f:  # timestamps -> 0, 1, 2, ... (the order index of many public splits)
        f.write(lines[0] + "\n")
        for i, line in enumerate(lines[1:]):
            user, item = line.split("\t")[:2]
            f.write(f"{user}\t{item}\t{i}\n")
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(root))
    data = load_dataset(config)
    sequences = UserSequences.from_dataset(data)
    config["real_timestamps"] = resolve_real_timestamps(config, sequences)
    assert config["real_timestamps"] is False
    builder = AbstractBuilder.from_config(config, sequences, load_item_texts(config, data),
                                          load_request_texts(config, data, sequences.rows))
    texts = builder.build(sequences.eval_prefixes("test")[:5])
    assert texts and not any("Time:" in t for t in texts)
