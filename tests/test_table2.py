"""The paper's Table 2 rows built here, on tiny data."""
import json

import numpy as np

from synthetic import tiny_run_config

SMALL = ["--hidden_size=16", "--embedding_size=16", "--inner_size=32", "--n_layers=1", "--n_heads=1",
         "--MAX_ITEM_LIST_LENGTH=10", "--train_batch_size=64", "--eval_batch_size=64", "--epochs=1"]


def test_snapshot_graph_drops_each_users_interactions_after_t0(tmp_path):
    from recbole.data import data_preparation

    from recbole_scalrec.config import Config
    from recbole_scalrec.experiments.table2 import SnapshotGraphDataset
    from recbole_scalrec.experiments.baselines import NEGATIVE_SAMPLING

    cfg = tiny_run_config(tmp_path)
    config = Config(model="LightGCN", dataset="tiny", config_dict={
        "data_path": cfg["data_path"], "embedding_size": 16, "state": "ERROR", "table2_gap": 5,
        "train_neg_sample_args": NEGATIVE_SAMPLING})
    data = SnapshotGraphDataset(config)
    seq = data.sequences
    train, valid, test = data_preparation(config, data)
    counts = np.bincount(train.dataset.inter_feat[data.uid_field].numpy(), minlength=seq.users.max() + 1)[seq.users]
    np.testing.assert_array_equal(counts, np.maximum(seq.lengths - 2 - 4, 1))  # n - 2 training items, 4 after t0 removed
    assert data.snapshot_removed == int((seq.lengths - 2 - counts).sum())
    feat = test.dataset.inter_feat
    assert dict(zip(feat[data.uid_field].numpy().tolist(), feat[data.iid_field].numpy().tolist())) == dict(
        zip(seq.users.tolist(), seq.items[seq.offsets[1:] - 1].tolist()))


def test_table2_command_builds_and_reuses_every_row(tmp_path, capsys):
    from recbole_scalrec.quick_start import run_recbole_scalrec
    from recbole_scalrec.experiments.table2 import main

    cfg = tiny_run_config(tmp_path, results_dir=str(tmp_path / "runs" / "tiny-SASRec-seed2020"),
                          stage2_methods=["scalrec"], eval_gaps=[0, 5])
    run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=cfg)
    args = ["--dataset", "tiny", "--seeds", "2020", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "table2"),
            f"--data_path={cfg['data_path']}", f"--checkpoint_dir={tmp_path / 'saved'}", *SMALL]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["rows"]) == {"lightgcn_cloud", "sasrec_cloud", "surge_cloud", "sasrec_device", "llrec_device", "cached_fusion",
                                   "scalrec", "fresh_fusion"}
    assert result["rows"]["sasrec_cloud"]["family"] == "Cloud" and result["rows"]["scalrec"]["family"] == "Device-cloud"
    for row in result["rows"].values():
        values = np.array(list(row["mean"].values()))
        assert ((0 <= values) & (values <= 1)).all()
    stored = json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / "sasrec_cloud.json").read_text())
    assert stored["sees"].startswith("S_<=t0")
    run = json.loads((tmp_path / "runs" / "tiny-SASRec-seed2020" / "results.json").read_text())
    scalrec = [r for r in run["results"] if (r["split"], r["setting"], r["gap"], r["method"]) == ("test", "S2", 5, "scalrec")]
    assert result["rows"]["scalrec"]["mean"]["ndcg@10"] == scalrec[0]["metrics"]["ndcg@10"]
    mtime = (tmp_path / "table2" / "tiny" / "seed-2020" / "lightgcn_cloud.json").stat().st_mtime
    assert main(args) == 0  # a second call reuses every stored row
    assert (tmp_path / "table2" / "tiny" / "seed-2020" / "lightgcn_cloud.json").stat().st_mtime == mtime
    assert "| Cloud | lightgcn_cloud |" in (tmp_path / "table2" / "tiny.md").read_text()


def test_llrec_is_compact_and_distills_from_its_teacher(tmp_path):
    """The on-device model's table is factorised, and its loss reads the teacher's logits."""
    import torch
    from recbole.data import data_preparation

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.dataset import SCaLRecDataset
    from recbole_scalrec.model.sequential_recommender.llrec import LLRec
    from recbole_scalrec.utils import get_model

    cfg = tiny_run_config(tmp_path)
    small = {"data_path": cfg["data_path"], "state": "ERROR", "hidden_size": 16, "embedding_size": 16,
             "n_layers": 1, "n_heads": 1, "inner_size": 32, "MAX_ITEM_LIST_LENGTH": 10}
    config = Config(model="LLRec", dataset="tiny", config_dict=dict(small, llrec_item_rank=4))
    train, _, _ = data_preparation(config, SCaLRecDataset(config))
    model = LLRec(config, train.dataset)
    assert model.item_table.shape == (train.dataset.item_num, 16)
    assert model.item_factors.weight.numel() + model.item_basis.weight.numel() == train.dataset.item_num * 4 + 4 * 16
    batch = next(iter(train))
    ce_only = model.calculate_loss(batch)
    teacher = get_model("SASRec")(Config(model="SASRec", dataset="tiny", config_dict=small), train.dataset)
    model.set_teacher(teacher)
    assert not torch.isclose(model.calculate_loss(batch), ce_only)  # the distillation term is in the loss
    assert all(not p.requires_grad for p in teacher.parameters()) and "_teacher" not in dict(model.named_modules())
