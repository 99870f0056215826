"""SCaLRec from a RecBole user's own script: RecBole's objects only, on tiny data."""
import numpy as np
import pytest
import torch

from synthetic import tiny_run_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    cfg = tiny_run_config(root, semantic_train_stride=3, backbone="GRU4Rec", embedding_size=16,
                          stage2_methods=["scalrec", "learned_gate"], metrics=["Hit", "NDCG"], topk=[10],
                          valid_metric="NDCG@10")
    return root, cfg


def _user_script(cfg):
    """What the README's "In your RecBole project" shows."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_scalrec.config import Config
    from recbole_scalrec.data import create_dataset
    from recbole_scalrec.model.sequential_recommender.scalrec import SCaLRec
    from recbole_scalrec.trainer import SCaLRecTrainer

    config = Config(model=SCaLRec, dataset="tiny", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = SCaLRec(config, train_data.dataset).to(config["device"])
    trainer = SCaLRecTrainer(config, model)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data)
    test_result = trainer.evaluate(test_data)
    return config, dataset, (train_data, valid_data, test_data), model, trainer, best_valid_result, test_result


@pytest.fixture(scope="module")
def script(tiny):
    return _user_script(tiny[1])


def test_user_script_trains_and_evaluates_with_recboles_objects(script):
    config, dataset, (train, valid, test), model, trainer, valid_result, test_result = script
    from recbole_scalrec.data.dataset import SCaLRecDataset

    assert isinstance(dataset, SCaLRecDataset)
    assert model.backbone_name == "GRU4Rec" and type(model.fusion.backbone).__name__ == "GRU4Rec"
    assert config["embedding_size"] == 16 and config["num_layers"] == 1  # GRU4Rec's own yaml under ours
    assert set(test_result) == {"hit@10", "ndcg@10"} and set(valid_result) == {"hit@10", "ndcg@10"}
    assert 0.0 < test_result["ndcg@10"] <= test_result["hit@10"] <= 1.0
    # RecBole's split is the protocol's: one validation and one test request per user, the same prefixes
    seq = dataset.sequences
    np.testing.assert_array_equal(np.sort(test.dataset.prefix_ids()), seq.eval_prefixes("test"))
    np.testing.assert_array_equal(np.sort(valid.dataset.prefix_ids()), seq.eval_prefixes("valid"))
    np.testing.assert_array_equal(np.sort(train.dataset.prefix_ids()), seq.train_prefixes())
    # RecBole's evaluator (full sort, fresh semantics) agrees with the trainer's own full ranking
    ours = trainer.full_ranking(test.dataset.prefix_ids())["fused"]
    assert test_result["ndcg@10"] == pytest.approx(ours["ndcg@10"], abs=1e-4)
    assert test_result["hit@10"] == pytest.approx(ours["hit@10"], abs=1e-4)
    # stage 2 trained both heads; the protocol is a method of the trainer
    assert set(trainer.stage2_info) == {"scalrec", "learned_gate"}
    rows = trainer.evaluate_staleness(test)
    methods = {r["method"] for r in rows}
    assert {"fresh_fusion", "cached_fusion", "scalrec", "learned_gate"} <= methods
    assert {r["gap"] for r in rows} == set(config["eval_gaps"])
    assert all(r["n_requests"] == seq.n_users for r in rows)


def test_every_row_carries_the_semantics_it_is_served_with(script):
    _, dataset, (train, valid, test), *_ = script
    from recbole_scalrec.data.dataset import OWN_FIELD, PREFIX_FIELD, SEMANTIC_FIELD

    channel = dataset.semantics
    batch = next(iter(test))[0]
    ids = batch[PREFIX_FIELD].numpy()
    torch.testing.assert_close(batch[SEMANTIC_FIELD], channel.fresh(ids).float())  # a test request: its own h
    assert bool(batch[OWN_FIELD].all())
    batch = next(iter(train))
    ids = batch[PREFIX_FIELD].numpy()
    h, own = channel.latest(ids)  # a training prefix: its user's latest encoded training prefix's h
    torch.testing.assert_close(batch[SEMANTIC_FIELD], h.float())
    assert 0 < int(batch[OWN_FIELD].sum()) < len(ids)  # stride 3: some rows have their own h, some not
    # the row's sequence is its prefix's
    seq, length = dataset.sequences.gather_sequences(torch.as_tensor(ids), dataset.config["MAX_ITEM_LIST_LENGTH"])
    torch.testing.assert_close(batch["item_id_list"], seq)
    torch.testing.assert_close(batch["item_length"], length)


def test_calculate_loss_is_the_fast_loops_loss_and_recboles_trainer_can_train_it(tiny):
    """RecBole's stock Trainer trains SCaLRec through calculate_loss, the loss the fast loop computes."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed
    import torch.nn.functional as F

    from recbole_scalrec.config import Config
    from recbole_scalrec.data import create_dataset
    from recbole_scalrec.data.dataset import PREFIX_FIELD
    from recbole_scalrec.model.sequential_recommender.scalrec import SCaLRec
    from recbole_scalrec.trainer import Trainer
    from recbole_scalrec.trainer.fusion_trainer import FusionTrainer

    config = Config(model="SCaLRec", dataset="tiny", config_dict=dict(tiny[1], epochs=1))
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = SCaLRec(config, train.dataset)
    model.eval()  # no dropout: the two computations see the same function
    batch = next(iter(train))
    ch = train.dataset.semantics
    fast = FusionTrainer(config, model.fusion, ch.sequences, ch.table, train_semantic=ch.train_table)
    seq, length, h, target, own, users = fast._batch(batch[PREFIX_FIELD].numpy(), train=True)
    logits = model.fusion.train_logits(model.fusion.structure(seq, length, users), h, own)
    with torch.no_grad():
        torch.testing.assert_close(model.calculate_loss(batch), F.cross_entropy(logits, target))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(config, model).fit(train, valid, saved=False, show_progress=False)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lookups_and_cli_name_the_same_run(tiny):
    from recbole.utils import ModelType

    from recbole_scalrec.model.sequential_recommender.scalrec import SCaLRec
    from recbole_scalrec.quick_start import structure_encoder_name
    from recbole_scalrec.trainer.scalrec_trainer import SCaLRecTrainer
    from recbole_scalrec.utils import get_model, get_trainer

    assert get_model("SCaLRec") is SCaLRec
    assert get_trainer(ModelType.SEQUENTIAL, "SCaLRec") is SCaLRecTrainer
    cfg = tiny[1]
    assert structure_encoder_name("SCaLRec", "tiny", None, cfg) == "GRU4Rec"
    assert structure_encoder_name(SCaLRec, "tiny", None, dict(cfg, backbone="NARM")) == "NARM"
    assert structure_encoder_name("SCaLRec", "tiny", None, {k: v for k, v in cfg.items() if k != "backbone"}) == "SASRec"
    assert structure_encoder_name("SURGE", "tiny", None, cfg) == "SURGE"


def test_scalrec_refuses_a_dataset_without_semantics(tiny):
    from recbole_scalrec.config import Config
    from recbole_scalrec.model.sequential_recommender.scalrec import SCaLRec
    from recbole_scalrec.quick_start import load_dataset

    config = Config(model="SCaLRec", dataset="tiny", config_dict=tiny[1])
    with pytest.raises(ValueError, match="create_dataset"):
        SCaLRec(config, load_dataset(config))
