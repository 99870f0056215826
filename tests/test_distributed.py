"""Multi-process runs (``nproc``): gloo on the CPU, the semantic precompute split over ranks,
stage 1 sharded with summed gradients, results equal to one process."""
import glob
import json

import numpy as np
import pytest

from synthetic import write_synthetic_dataset
from test_reliability import all_embeddings, metrics_of, small_config, write_tiny_lm

# Tolerance of 2 processes against 1 with dropout off: both take the same global batches and the
# same mean-loss gradient; only the float summation order of the gradient differs (about 1e-7
# relative), far below the score gaps that decide a rank on this data, so ranking metrics agree to
# float precision. With dropout on, each rank draws its own masks and results differ as between
# two seeds.
TOLERANCE = 1e-6


def test_launch_spec_from_config():
    from recbole_scalrec.distributed import spec_from_config

    assert spec_from_config({"nproc": 1, "world_size": -1}) is None
    spec = spec_from_config({"nproc": 2, "world_size": -1, "use_gpu": False, "device": "cpu"})
    assert spec.world_size == 2 and spec.backend == "gloo" and spec.port > 0 and spec.offset == 0
    with pytest.raises(ValueError, match="--port"):
        spec_from_config({"nproc": 2, "world_size": 4, "offset": 0})
    with pytest.raises(ValueError, match="offset"):
        spec_from_config({"nproc": 2, "world_size": 4, "offset": 3, "port": 29500})


def test_two_cpu_processes_match_one(tmp_path):
    from recbole_scalrec.quick_start import run_recbole_scalrec

    write_tiny_lm(str(tmp_path / "lm"))
    write_synthetic_dataset(str(tmp_path / "data"), "tiny", n_users=12, min_len=5, max_len=10)
    no_dropout = dict(hidden_dropout_prob=0.0, attn_dropout_prob=0.0, projection_dropout=0.0, epochs=2, use_gpu=False)
    one = run_recbole_scalrec(model="SASRec", dataset="tiny",
                              config_dict=small_config(tmp_path, tmp_path / "one", tmp_path / "cache1", **no_dropout))
    two = run_recbole_scalrec(model="SASRec", dataset="tiny",
                              config_dict=small_config(tmp_path, tmp_path / "two", tmp_path / "cache2", nproc=2, **no_dropout))
    assert two["world_size"] == 2 and one["world_size"] == 1
    # rank 0 wrote the results and the checkpoint
    assert json.load(open(tmp_path / "two" / "results.json"))["world_size"] == 2
    assert (tmp_path / "two" / "stage1.pth").is_file()
    assert not glob.glob(str(tmp_path / "two" / "*.tmp*"))
    # the precompute was split: both ranks wrote chunks, together every vector once
    from safetensors import safe_open

    ranks = set()
    for path in glob.glob(str(tmp_path / "cache2" / "tiny" / "*" / "chunk-*.safetensors")):
        with safe_open(path, framework="np") as f:
            ranks.add(f.metadata()["rank"])
    assert ranks == {"0", "1"}
    e1, e2 = all_embeddings(tmp_path / "cache1"), all_embeddings(tmp_path / "cache2")
    assert set(e1) == set(e2) and max(float(np.abs(e1[i] - e2[i]).max()) for i in e1) < 1e-5
    assert two["stage1"]["epochs_run"] == one["stage1"]["epochs_run"] == 2
    assert abs(two["stage1"]["best_valid_ndcg@10"] - one["stage1"]["best_valid_ndcg@10"]) <= TOLERANCE
    for split in one["full_ranking"]:
        for k, v in one["full_ranking"][split].items():
            assert abs(two["full_ranking"][split][k] - v) <= TOLERANCE
    m1, m2 = metrics_of(one), metrics_of(two)
    assert set(m1) == set(m2)
    for key in m1:
        for k, v in m1[key].items():
            assert abs(m2[key][k] - v) <= TOLERANCE, (key, k)


def test_a_rank_error_reaches_the_caller_with_its_type(tmp_path):
    from recbole_scalrec.data.item_text import DataTextError
    from recbole_scalrec.quick_start import run_recbole_scalrec

    write_synthetic_dataset(str(tmp_path / "data"), "tiny", n_users=6, min_len=5, max_len=6)
    cfg = small_config(tmp_path, tmp_path / "out", tmp_path / "cache", nproc=2, use_gpu=False,
                       item_text_fields=["title", "plot"])
    with pytest.raises(DataTextError, match=r"missing \['plot'\]"):
        run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=cfg)
    assert not (tmp_path / "out").exists()
