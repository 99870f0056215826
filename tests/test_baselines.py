"""Stock RecBole models on SCaLRec's split, by RecBole's trainer and evaluator."""
import json

import numpy as np

from synthetic import write_synthetic_dataset

SMALL = ["--hidden_size=16", "--embedding_size=16", "--inner_size=32", "--n_layers=1", "--n_heads=1",
         "--MAX_ITEM_LIST_LENGTH=10", "--train_batch_size=64", "--eval_batch_size=64"]


def test_general_dataset_split_is_the_protocols(tmp_path):
    """LightGCN's RecBole split on ProtocolOrderDataset: each user's last item is the test target and
    the second last the validation target, as in SCaLRec's sequences (exact time order)."""
    from recbole.data import data_preparation

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.dataset import ProtocolOrderDataset

    write_synthetic_dataset(str(tmp_path), "tiny")
    config = Config(model="LightGCN", dataset="tiny", config_dict={
        "data_path": str(tmp_path), "embedding_size": 16, "state": "ERROR", "show_progress": False,
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False,
                                  "candidate_num": 0}})
    data = ProtocolOrderDataset(config)
    seq = data.sequences
    _, valid, test = data_preparation(config, data)
    for loader, back in ((test, 1), (valid, 2)):
        feat = loader.dataset.inter_feat
        by_user = dict(zip(feat[data.uid_field].numpy().tolist(), feat[data.iid_field].numpy().tolist()))
        expected = dict(zip(seq.users.tolist(), seq.items[seq.offsets[1:] - back].tolist()))
        assert by_user == expected


def test_baselines_command_trains_each_model_and_prints_one_entry_per_model(tmp_path, capsys):
    from recbole_scalrec.experiments.baselines import main

    write_synthetic_dataset(str(tmp_path), "tiny")
    assert main(["--models", "GRU4Rec", "LightGCN", "--dataset", "tiny", "--epochs", "1",
                 "--scalrec-results", str(tmp_path / "none"), f"--data_path={tmp_path}",
                 f"--checkpoint_dir={tmp_path / 'saved'}", *SMALL]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["models"]) == {"GRU4Rec", "LightGCN"} and result["scalrec"] is None
    assert result["models"]["LightGCN"]["family"] == "general"
    for entry in result["models"].values():
        assert entry["epochs_run"] == 1 and entry["n_test"] == 40
        values = np.array(list(entry["metrics"].values()))
        assert ((0.0 <= values) & (values <= 1.0)).all()
    assert "| GRU4Rec | sequential | 1 |" in out and "no results.json found" in out
