"""Every RecBole sequential model either serves as the structure encoder or is refused with why."""
import numpy as np
import pytest
import torch

from recbole_scalrec.model.structure_encoder import REFUSED, UnsupportedBackbone, backbone_dataset
from recbole_scalrec.utils import list_sequential_models
from synthetic import write_synthetic_dataset

MODELS = list_sequential_models()
SMALL = {"MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 16, "embedding_size": 16, "inner_size": 32, "n_layers": 2,
         "n_heads": 1, "epochs": 1, "train_batch_size": 64, "eval_batch_size": 64, "selected_features": ["genre"],
         "item_attribute": "genre", "show_progress": False, "state": "ERROR", "compile": False}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    write_synthetic_dataset(str(root), "tiny")
    return str(root)


def test_recbole_models_served_and_refused():
    recbole = [m for m in MODELS if m != "SURGE"]  # SURGE is the plug-in's
    assert len(recbole) == 31
    refused = sorted(m for m in recbole if m in REFUSED)
    assert refused == ["DIEN", "DIN", "GRU4RecKG", "KSR", "RepeatNet", "TransRec"]
    assert len(recbole) - len(refused) == 25


@pytest.mark.parametrize("name", MODELS)
def test_every_sequential_model_trains_one_epoch_or_is_refused(name, data_root):
    from recbole_scalrec.config import Config
    from recbole_scalrec.data.sequences import UserSequences
    from recbole_scalrec.model.fusion import FusionModel
    from recbole_scalrec.quick_start import load_dataset, run_recbole_scalrec
    from recbole_scalrec.staleness.snapshot import PrefixTable
    from recbole_scalrec.trainer.fusion_trainer import FusionTrainer
    from recbole_scalrec.utils import get_model

    if name in REFUSED:  # refused at once, with the reason, before any data or LM work
        with pytest.raises(UnsupportedBackbone, match=f"{name} cannot be the structure encoder: "):
            run_recbole_scalrec(model=name, dataset="tiny", config_dict={"data_path": data_root + "/nowhere"})
        return
    config = Config(model=name, dataset="tiny", config_dict=dict(SMALL, data_path=data_root))
    data = load_dataset(config)
    sequences = UserSequences.from_dataset(data)
    torch.manual_seed(0)
    fusion = FusionModel(get_model(name)(config, backbone_dataset(name, config, data)), 8)
    assert fusion.item_table.shape[0] == data.item_num  # a mask token's row is not an item
    semantic = PrefixTable(np.arange(len(sequences.items)), torch.randn(len(sequences.items), 8))
    before = [p.detach().clone() for p in fusion.backbone.parameters()]
    trainer = FusionTrainer(config, fusion, sequences, semantic)
    info = trainer.fit(sequences.train_prefixes(), sequences.eval_prefixes("valid"))
    assert info["epochs_run"] == 1 and np.isfinite(info["history"][0]["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, fusion.backbone.parameters()))  # the backbone learned
    metrics = trainer.evaluate(sequences.eval_prefixes("test"))
    assert 0.0 <= metrics["fused"]["ndcg@10"] <= 1.0 and 0.0 <= metrics["structure_only"]["hit@10"] <= 1.0
