"""SURGE on a tiny synthetic dataset: RecBole pipeline run, gradients, padding invariance, scoring."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_scalrec.config import Config
from recbole_scalrec.model.sequential_recommender.surge import SURGE
from recbole_scalrec.trainer import Trainer
from recbole_scalrec.utils import get_model

NAME = "surgetiny"
N_USERS, N_ITEMS = 30, 25


def _write_dataset(root: str) -> None:
    """Users walk through item clusters, so the next item is partly predictable."""
    rng = np.random.default_rng(0)
    folder = os.path.join(root, NAME)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{NAME}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(N_USERS):
            t = 1_600_000_000 + int(rng.integers(0, 1_000_000))
            cluster = int(rng.integers(5))
            for _ in range(int(rng.integers(6, 16))):
                if rng.random() < 0.2:
                    cluster = int(rng.integers(5))
                t += int(rng.integers(60, 86_400))
                f.write(f"u{u}\ti{cluster * 5 + int(rng.integers(5))}\t{t}\n")


def _config(root: str, **extra) -> Config:
    cfg = {
        "data_path": root,
        "checkpoint_dir": os.path.join(root, "saved"),
        "epochs": 1,
        "train_batch_size": 32,
        "eval_batch_size": 64,
        "embedding_size": 16,
        "hidden_size": 16,
        "att_fcn_layer_sizes": [16, 8],
        "mlp_hidden_sizes": [16],
        "MAX_ITEM_LIST_LENGTH": 10,
        "pool_length": 4,  # shorter than most sequences: the pooling is exercised
        "show_progress": False,
        "state": "WARNING",
    }
    cfg.update(extra)
    config = Config(model="SURGE", dataset=NAME, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    return config


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("surge"))
    _write_dataset(path)
    return path


@pytest.fixture(scope="module")
def setup(root):
    config = _config(root)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, dataset, train, valid, test


def _batch(model: SURGE, seqs: list[list[int]], length: int) -> Interaction:
    item_seq = torch.zeros(len(seqs), length, dtype=torch.long)
    for row, seq in enumerate(seqs):
        item_seq[row, : len(seq)] = torch.tensor(seq)
    return Interaction({
        model.ITEM_SEQ: item_seq,
        model.ITEM_SEQ_LEN: torch.tensor([len(s) for s in seqs]),
        model.POS_ITEM_ID: torch.tensor([(s[-1] % (model.n_items - 1)) + 1 for s in seqs]),
        model.NEG_ITEM_ID: torch.tensor([(s[0] % (model.n_items - 1)) + 1 for s in seqs]),
        model.ITEM_ID: torch.tensor([(s[-1] % (model.n_items - 1)) + 1 for s in seqs]),
    })


SEQS = [[3, 7, 7, 1, 12, 5, 9, 2], [4], [10, 11], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [6, 6, 6, 6, 6]]


def test_lookup_finds_plugin_model():
    assert get_model("SURGE") is SURGE


def test_one_epoch_run(setup, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # RecBole's trainer writes log_tensorboard/ into the working directory
    config, dataset, train, valid, test = setup
    model = get_model("SURGE")(config, train.dataset).to(config["device"])
    trainer = Trainer(config, model)
    best_score, best_valid = trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    assert math.isfinite(best_score)
    for key in ("hit@10", "ndcg@10"):
        assert 0.0 <= result[key] <= 1.0


@pytest.mark.parametrize("extra", [
    {},
    {"query_type": "learned", "metric_heads": 2, "attention_heads": 2},
    {"pool_layers": 2, "layer_shared": False},
])
def test_gradients_reach_every_parameter(root, setup, extra):
    config = _config(root, **extra)
    model = SURGE(config, setup[1])
    model.train()
    model.calculate_loss(_batch(model, SEQS, 12)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("extra", [{}, {"pool_layers": 2, "metric_heads": 2, "dropout_prob": 0.3}])
def test_padding_invariance(root, setup, extra):
    config = _config(root, **extra)
    model = SURGE(config, setup[1]).eval()
    with torch.no_grad():
        short_batch = _batch(model, SEQS, 10)
        short = model.forward(short_batch[model.ITEM_SEQ], short_batch[model.ITEM_SEQ_LEN])
        long_batch = _batch(model, SEQS, 23)
        long = model.forward(long_batch[model.ITEM_SEQ], long_batch[model.ITEM_SEQ_LEN])
        alone = torch.cat([
            model.forward(b[model.ITEM_SEQ], b[model.ITEM_SEQ_LEN])
            for b in (_batch(model, [s], len(s) + 2) for s in SEQS)
        ])
        # padding on the left instead of the right: the mask comes from the item ids
        left = torch.zeros(len(SEQS), 15, dtype=torch.long)
        for row, seq in enumerate(SEQS):
            left[row, 15 - len(seq):] = torch.tensor(seq)
        left_out = model.forward(left, torch.tensor([len(s) for s in SEQS]))
    assert short.shape == (len(SEQS), config["embedding_size"])
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short, left_out, atol=1e-5, rtol=1e-5)
    # the padding embedding never matters
    with torch.no_grad():
        model.item_embedding.weight[0].normal_()
        again = model.forward(long_batch[model.ITEM_SEQ], long_batch[model.ITEM_SEQ_LEN])
    torch.testing.assert_close(short, again, atol=1e-5, rtol=1e-5)


def test_full_sort_and_predict_agree(root, setup):
    config = _config(root)
    model = SURGE(config, setup[1]).eval()
    batch = _batch(model, SEQS, 10)
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        z = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
        point = model.predict(batch)
    assert scores.shape == (len(SEQS), model.n_items)
    assert z.shape == (len(SEQS), model.item_embedding.embedding_dim)
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(point, scores.gather(1, batch[model.ITEM_ID].unsqueeze(1)).squeeze(1))


@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
def test_losses_finite(root, setup, loss_type):
    extra = {"loss_type": loss_type}
    if loss_type == "BPR":
        extra["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": 1}
    config = _config(root, **extra)
    model = SURGE(config, setup[1]).train()
    loss = model.calculate_loss(_batch(model, SEQS, 10))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()


def test_bpr_with_recbole_negatives(root):
    config = _config(root, loss_type="BPR", train_neg_sample_args={"distribution": "uniform", "sample_num": 1})
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    model = SURGE(config, train.dataset).train()
    batch = next(iter(train))
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss)
