"""The paper's Table 2 rows built here, on tiny data."""
import json

import numpy as np

from synthetic import tiny_run_config, write_tiny_causal_lm

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
            f"--data_path={cfg['data_path']}", f"--checkpoint_dir={tmp_path / 'saved'}", *SMALL,
            "--prefer_rounds=1", "--prefer_edge_servers=2", "--prefer_simulation_cpus=1",
            f"--rarec_lm={write_tiny_causal_lm(str(tmp_path / 'causal'))}", "--rarec_train_batches=2", "--rarec_device_layers=1",
            f"--transrec_lm={tmp_path / 'causal'}", "--transrec_train_batches=2", "--transrec_device_layers=1",
            "--transrec_beams=4", "--transrec_attribute_field=genre"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["rows"]) == {"lightgcn_cloud", "sasrec_cloud", "surge_cloud", "rarec_cloud", "transrec_cloud",
                                   "sasrec_device", "llrec_device", "rarec_device", "transrec_device", "dccl_device",
                                   "prefer_device", "cda4rec",
                                   "cda4rec+scalrec", "lsc4rec", "lsc4rec+scalrec", "duet", "cached_fusion", "scalrec",
                                   "cached_fusion+repair", "scalrec+repair", "fresh_fusion"}
    assert result["rows"]["sasrec_cloud"]["family"] == "Cloud" and result["rows"]["scalrec"]["family"] == "Device-cloud"
    assert {result["rows"][r]["family"] for r in ("duet", "lsc4rec", "lsc4rec+scalrec")} == {"Device-cloud"}
    lengths = {len(json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / f"{n}.json").read_text())["ranks"])
               for n in result["rows"]}
    assert len(lengths) == 1 and lengths.pop() > 0  # every row keeps its per-user test ranks, for the paired tests
    tests = result["paired_tests"]
    assert {t["family"] for t in tests.values()} == {"Cloud", "On-device", "Device-cloud", "SCaLRec attached",
                                                     "Candidate repair", "LLM-based vs SASRec"}
    assert result["rows"]["scalrec+repair"]["family"] == "Device-cloud + repair"
    assert "scalrec+repair vs scalrec" in tests and "top 5" in json.loads(
        (tmp_path / "table2" / "tiny" / "seed-2020" / "scalrec+repair.json").read_text())["sees"]
    assert {"rarec_cloud vs sasrec_cloud", "transrec_device vs sasrec_device"} <= set(tests)
    assert all(0 <= t["wilcoxon_p"] <= 1 for t in tests.values())
    lsc = json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / "lsc4rec.json").read_text())
    assert str(lsc["srm_weight"]) in lsc["valid_ndcg@10_by_weight"] and len(lsc["valid_ndcg@10_by_weight"]) > 1
    assert 0 <= lsc["trigger_share_of_test_requests"] <= 1 and 0 <= lsc["share_top10_changed_from_cloud_list"] <= 1
    duet = json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / "duet.json").read_text())
    assert duet["parameters"] > 0 and duet["sees"].startswith("device encoder on S_<=t")
    for row in result["rows"].values():
        values = np.array(list(row["mean"].values()))
        assert ((0 <= values) & (values <= 1)).all()
    stored = json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / "sasrec_cloud.json").read_text())
    assert stored["sees"].startswith("S_<=t0")
    run = json.loads((tmp_path / "runs" / "tiny-SASRec-seed2020" / "results.json").read_text())
    scalrec = [r for r in run["results"] if (r["split"], r["setting"], r["gap"], r["method"]) == ("test", "S2", 5, "scalrec")]
    assert result["rows"]["scalrec"]["mean"]["ndcg@10"] == scalrec[0]["metrics"]["ndcg@10"]
    repaired = [r for r in run["results"] if (r["split"], r["setting"], r["gap"], r["method"]) == ("test", "S2", 5, "scalrec+repair")]
    assert result["rows"]["scalrec+repair"]["mean"]["ndcg@10"] == repaired[0]["metrics"]["ndcg@10"]
    cda = json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / "cda4rec.json").read_text())
    assert abs(sum(cda["test_plan_share"]) - 1) < 1e-6 and len(cda["strategies"]) == len(cda["test_plan_share"])
    assert cda["training_requests"] > 0 and cda["valid_ndcg@10"] >= cda["valid_ndcg@10_start"]
    dccl = json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / "dccl_device.json").read_text())
    assert [p["phase"] for p in dccl["phases"]] == ["patch", "distill", "patch"]  # the cloud came trained
    assert dccl["parameters"] > 0 and "share_top10_changed_by_patch" in dccl["phases"][-1]
    prefer = json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / "prefer_device.json").read_text())
    assert [r["round"] for r in prefer["rounds"] if "round" in r] == [1] and prefer["rounds"][-1]["edges"] == 2
    rarec = {side: json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / f"rarec_{side}.json").read_text())
             for side in ("cloud", "device")}
    assert (rarec["cloud"]["lm_layers"], rarec["device"]["lm_layers"]) == (2, 1)  # the device runs the smaller LM
    assert rarec["cloud"]["sees"].startswith("S_<=t0") and rarec["device"]["sees"] == "S_<=t"
    assert all(r["trained_prompts"] > 0 and r["epochs"] for r in rarec.values()) and rarec["device"]["parameters"] > 0
    transrec = {side: json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / f"transrec_{side}.json").read_text())
                for side in ("cloud", "device")}
    assert (transrec["cloud"]["lm_layers"], transrec["device"]["lm_layers"]) == (2, 1)
    assert all(r["facets"] == ["id", "title", "attribute"] and r["beams"] == 4 and r["trained_prompts"] > 0
               and 0 < r["items_ranked_per_request"] < 31 for r in transrec.values())
    assert transrec["cloud"]["sees"].startswith("S_<=t0") and transrec["device"]["parameters"] > 0
    for r in transrec.values():  # a named target ranks among the named items (at most 30), an unnamed one last (31)
        assert np.mean(np.asarray(r["ranks"]) < 31) == r["share_targets_named_by_a_beam"] < 1
        # tied items are ordered at random, so ranking the target first among them scores at least as high
        assert r["ties"].startswith("the target placed uniformly at random") and r["mean_items_tied_with_named_target"] >= 0
        assert r["ndcg@10_target_first_among_ties"] >= r["metrics"]["ndcg@10"]
    kept = {p.name.split("-")[0] for p in (tmp_path / "saved" / "table2").glob("*.pth")}
    assert kept == {"LightGCN", "SURGE", "SASRec", "LLRec", "DCCL", "PREFER", "DUET", "RARec", "TransRecLM"}
    mtime = (tmp_path / "table2" / "tiny" / "seed-2020" / "lightgcn_cloud.json").stat().st_mtime
    assert main(args) == 0  # a second call reuses every stored row
    assert (tmp_path / "table2" / "tiny" / "seed-2020" / "lightgcn_cloud.json").stat().st_mtime == mtime
    assert "| Cloud | lightgcn_cloud |" in (tmp_path / "table2" / "tiny.md").read_text()
    device = tmp_path / "table2" / "tiny" / "seed-2020" / "sasrec_device.json"
    before = json.loads(device.read_text())
    device.unlink()
    from recbole_scalrec.experiments import table2

    table2._FITTED.clear()  # as in a new process
    assert main(args) == 0  # the row again, from the kept SASRec: the same model, not a new training
    after = json.loads(device.read_text())
    assert after["ranks"] == before["ranks"] and after["train_s"] == before["train_s"]
    (tmp_path / "table2" / "tiny" / "seed-2020" / "lsc4rec.json").unlink()
    for kept in (tmp_path / "saved" / "table2").glob("SASRec-*.pth"):
        kept.unlink()
    table2._FITTED.clear()
    assert main(args) == 0  # the reranker alone trains its SRM (with gradients)
    assert json.loads((tmp_path / "table2" / "tiny" / "seed-2020" / "lsc4rec.json").read_text())["ranks"]


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


def _small_model(tmp_path, name: str, **extra):
    from recbole.data import data_preparation

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.dataset import SCaLRecDataset
    from recbole_scalrec.utils import get_model

    cfg = tiny_run_config(tmp_path)
    small = {"data_path": cfg["data_path"], "state": "ERROR", "hidden_size": 16, "embedding_size": 16, "n_layers": 1,
             "n_heads": 1, "inner_size": 32, "MAX_ITEM_LIST_LENGTH": 10, "duet_generator_hidden": 8, **extra}
    config = Config(model=name, dataset="tiny", config_dict=small)
    train, _, _ = data_preparation(config, SCaLRecDataset(config))
    return get_model(name)(config, train.dataset), train


def test_duet_generates_the_device_layers_from_the_cloud_sequence(tmp_path):
    """The user vector depends on the sequence the cloud saw through the generated layers, and the
    generator's projections are trained parameters (they get gradients)."""
    import torch

    model, train = _small_model(tmp_path, "DUET")
    model.eval()
    batch = next(iter(train))
    seq, length = batch["item_id_list"], batch["item_length"]
    fresh = model(seq, length)
    torch.testing.assert_close(fresh, model(seq, length, seq, length))
    stale_len = (length - 3).clamp(min=1)
    stale = torch.where(torch.arange(seq.shape[1])[None, :] < stale_len[:, None], seq, torch.zeros_like(seq))
    changed = (model(seq, length, stale, stale_len) - fresh).abs().amax(1) > 1e-6
    assert changed[length > 3].all()  # a shorter cloud view changes the generated layers
    assert torch.equal(model.device_state(seq, length), model.device_state(seq, length))  # the device side is the same
    model.train()
    model.calculate_loss(batch).backward()
    for name in ("generator.weights.0.weight", "generator.biases.1.weight", "generator.gru.weight_hh_l0"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_lsc4rec_fusion_goes_from_the_cloud_order_to_the_srm_order(tmp_path):
    import torch

    from recbole_scalrec.model.sequential_recommender.lsc4rec import list_ranks

    model, _ = _small_model(tmp_path, "LSC4Rec", lsc4rec_weight_grid=[0.0, 0.5, 1e6], lsc4rec_request_ratio=0.5)
    torch.manual_seed(0)
    srm = torch.randn(6, 8)
    cloud = torch.arange(8).expand(6, 8)
    assert torch.equal(list_ranks(model.fuse(cloud, srm, 0.0)), cloud)  # w = 0: the cloud's list as it came
    assert torch.equal(list_ranks(model.fuse(cloud, srm, 1e6)), list_ranks(srm))  # large w: the SRM's order
    assert torch.equal(model.trigger_statistic(list_ranks(srm), srm), torch.zeros(6))  # agreeing lists never trigger
    assert (model.trigger_statistic(cloud, srm) > 0).all()
    # targets placed where the SRM ranks them first: the validation fit must pick the SRM-heavy weight
    candidates = torch.arange(1, 9).expand(6, 8).clone()
    targets = candidates.gather(1, srm.argmax(1, keepdim=True)).squeeze(1)
    picked = model.fit_fusion(cloud, srm, candidates, targets)
    assert picked["srm_weight"] == 1e6 and float(model.srm_weight) == 1e6
    assert picked["valid_ndcg@10_by_weight"][1e6] == 1.0
    assert 0.3 <= model.triggered(cloud, srm).float().mean() <= 0.7  # half the requests at a request ratio of 0.5


def test_dccl_phases_train_their_own_parameters_and_the_patches_act(tmp_path):
    """Patch phase: only the per-user patches move, each from its own user's rows, and the patched
    model ranks differently; distillation: only the shared model moves, towards the frozen patched
    teacher; the handed-over cloud model is copied, not changed; the trainer logs each phase."""
    import torch

    from recbole_scalrec.model.sequential_recommender.dccl import DCCL
    from recbole_scalrec.trainer import DCCLTrainer

    model, train = _small_model(tmp_path, "DCCL", epochs=2, dccl_patch_epochs=2, dccl_distill_epochs=1,
                                dccl_patch_learning_rate=0.05, dccl_patch_reg=0.0, dccl_patch_rank=2)
    given, _ = _small_model(tmp_path, "SASRec")
    model.set_cloud(given)
    before = {k: v.clone() for k, v in given.state_dict().items()}
    assert model.set_phase("patch") == list(model.patch.parameters())
    batch = next(iter(train))
    users = batch["user_id"]
    shared = {k: v.clone() for k, v in model.cloud.state_dict().items()}
    optimizer = torch.optim.Adam(model.patch.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    assert all(torch.equal(v, model.cloud.state_dict()[k]) for k, v in shared.items())
    moved = model.patch.up.weight.abs().sum(1) > 0
    assert moved[users].all() and not moved[torch.tensor(sorted(set(range(len(moved))) - set(users.tolist())))].any()
    model.eval()
    seq, length = batch["item_id_list"], batch["item_length"]
    h = model.shared_vector(seq, length, users)
    assert (model.patch.correction_norm(h, users) > 0).all()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    params = model.set_phase("distill")
    assert {id(p) for p in params} == {id(p) for p in model.cloud.parameters()}
    loss = model.calculate_loss(batch)
    loss.backward()
    assert all(p.grad is None for p in model.patch.parameters()) and "_teacher" not in dict(model.named_modules())
    assert all(torch.equal(v, given.state_dict()[k]) for k, v in before.items())  # the given model is untouched

    from recbole.data import data_preparation

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.dataset import SCaLRecDataset

    config = Config(model="DCCL", dataset="tiny", config_dict={"data_path": tiny_run_config(tmp_path)["data_path"],
                    "state": "ERROR", "hidden_size": 16, "n_layers": 1, "n_heads": 1, "inner_size": 32,
                    "MAX_ITEM_LIST_LENGTH": 10, "epochs": 1, "dccl_patch_epochs": 1, "dccl_distill_epochs": 1,
                    "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False})
    train, valid, _ = data_preparation(config, SCaLRecDataset(config))
    trainer = DCCLTrainer(config, DCCL(config, train.dataset))
    trainer.fit(train, valid, saved=True)
    assert [p["phase"] for p in trainer.phase_log] == ["cloud", "patch", "distill", "patch"]
    for entry in trainer.phase_log:  # a phase never hands on a state worse on validation than the one it got
        assert entry["valid_best"] >= entry["valid_start"]
        assert len(entry["valid_per_epoch"]) == entry["epochs_run"]  # every epoch validated (eval_step 1)
        assert entry["valid_best"] == max([entry["valid_start"], *entry["valid_per_epoch"]])
    last = trainer.phase_log[-1]
    assert last["patch_relative_norm_mean"] >= 0 and 0 <= last["share_top10_changed_by_patch"] <= 1


def test_cda4rec_planner_learns_which_strategy_ranks_the_target(tmp_path):
    """On requests where the context says which strategy puts the target first, the planner's
    mixture likelihood teaches it to plan that strategy; the run's own fusion weight is a strategy."""
    import pytest
    import torch

    from recbole_scalrec.model.sequential_recommender.cda4rec import CDA4Rec
    from recbole_scalrec.config import Config
    from recbole.data import data_preparation
    from recbole_scalrec.data.dataset import SCaLRecDataset

    cfg = tiny_run_config(tmp_path)
    config = Config(model="CDA4Rec", dataset="tiny", config_dict={
        "data_path": cfg["data_path"], "state": "ERROR", "cda4rec_strategies": [0.0, 1.0], "fusion_weight": 0.3,
        "cda4rec_epochs": 40, "cda4rec_stopping_step": 40, "cda4rec_learning_rate": 0.01, "cda4rec_batch_size": 64})
    train, _, _ = data_preparation(config, SCaLRecDataset(config))
    model = CDA4Rec(config, train.dataset, n_features=4)
    assert model.strategies.tolist() == pytest.approx([0.0, 0.3, 1.0])

    def requests(n: int, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        features = torch.randn(n, 4, generator=g)
        best = (features[:, 0] > 0).long() * 2  # strategy 0 or 2 ranks the target (candidate 0) first
        scores = torch.randn(n, 3, 20, generator=g)
        scores[torch.arange(n), best, 0] = 10.0
        scores[torch.arange(n), 2 - best, 0] = -10.0
        scores[:, 1, 0] = -10.0
        hit = torch.zeros(n, 20, dtype=torch.bool)
        hit[:, 0] = True
        return {"features": features, "scores": scores, "hit": hit}

    valid = requests(200, 1)
    fitted = model.fit_planner(requests(1000, 0), valid)
    assert fitted["valid_ndcg@10"] > 0.95 and fitted["valid_ndcg@10_start"] < 0.8
    plan = model.plan(valid["features"])
    assert ((plan == 2) == (valid["features"][:, 0] > 0)).float().mean() > 0.95
    assert fitted["valid_plan_share"][1] < 0.05  # the strategy that never ranks the target is not planned


def test_prefer_trains_federated_with_flower_and_keeps_user_embeddings_local(tmp_path):
    """Flower's simulation runs the rounds over the edge servers; only the encoder's tensors travel,
    the user embeddings come back from the edges' local state and change the ranking; the kept round
    is the best on federated validation."""
    import torch
    from recbole.data import data_preparation

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.dataset import SCaLRecDataset
    from recbole_scalrec.model.sequential_recommender.prefer import PREFER
    from recbole_scalrec.trainer import PREFERTrainer

    config = Config(model="PREFER", dataset="tiny", config_dict={
        "data_path": tiny_run_config(tmp_path)["data_path"], "state": "ERROR", "hidden_size": 16, "n_layers": 1,
        "n_heads": 1, "inner_size": 32, "MAX_ITEM_LIST_LENGTH": 10, "prefer_rounds": 2, "prefer_edge_servers": 2, "prefer_simulation_cpus": 1,
        "learning_rate": 0.01, "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False})
    train, valid, _ = data_preparation(config, SCaLRecDataset(config))
    model = PREFER(config, train.dataset)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    start = [a.copy() for a in model.shared_arrays()]
    assert len(start) == len(model.encoder.state_dict()) and "user_embedding.weight" not in model.shared_names()
    trainer = PREFERTrainer(config, model)
    trainer.fit(train, valid)
    rounds = [r for r in trainer.phase_log if "round" in r]
    assert [r["round"] for r in rounds] == [1, 2] and all(0 <= r["valid_ndcg@10"] <= 1 for r in rounds)
    summary = trainer.phase_log[-1]
    assert summary["edges"] == 2 and sum(summary["train_prefixes_per_edge"]) == len(train.dataset.inter_feat)
    assert summary["kept_round"] == max(rounds, key=lambda r: r["valid_ndcg@10"])["round"]
    assert summary["rounds_run"] == 2 and not summary["stopped_early"]
    assert any(not np.array_equal(a, b) for a, b in zip(start, model.shared_arrays()))  # the global model trained
    users = torch.unique(train.dataset.inter_feat["user_id"])
    assert (model.user_embedding.weight[users].norm(dim=1) > 0).all()  # every user's e_u came back from its edge
    batch = valid.dataset.inter_feat[torch.arange(8)]
    with torch.no_grad():
        with_eu = model.full_sort_predict(batch)
        h = model(batch["item_id_list"], batch["item_length"], batch["user_id"]) - model.user_embedding(batch["user_id"])
    assert not torch.allclose(with_eu, h @ model.item_table.T)
    assert model.on_device_parameters() == sum(p.numel() for p in model.encoder.parameters()) + 16
    # each edge seeds its own batches and dropout: two edges at once train what one at a time does
    config["prefer_simulation_cpus"] = 2
    parallel = PREFER(config, train.dataset)
    parallel.load_state_dict(initial)
    again = PREFERTrainer(config, parallel)
    again.fit(train, valid)
    assert [r.get("valid_ndcg@10") for r in again.phase_log] == [r.get("valid_ndcg@10") for r in trainer.phase_log]
    for a, b in zip(model.shared_arrays(), parallel.shared_arrays()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # early stopping in rounds: with nothing to learn (learning rate 0) round 2 does not beat round 1,
    # and with a patience of one round no edge is called after it
    config["prefer_simulation_cpus"], config["prefer_rounds"], config["prefer_stopping_rounds"] = 1, 4, 1
    config["learning_rate"] = 0.0
    still = PREFERTrainer(config, PREFER(config, train.dataset))
    still.fit(train, valid)
    assert [r["round"] for r in still.phase_log if "round" in r] == [1, 2]
    assert still.phase_log[-1]["rounds_run"] == 2 and still.phase_log[-1]["stopped_early"]
    assert still.phase_log[-1]["kept_round"] == 1
