"""RARec (the LLM-based cloud row and its on-device form) on the synthetic data with a tiny local
causal LM: what reads the soft prompts, what trains, and what the trainer records."""
import pytest
import torch
from synthetic import tiny_run_config, write_tiny_causal_lm


def _rarec(tmp_path, **extra):
    from recbole.data import data_preparation

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.dataset import SCaLRecDataset
    from recbole_scalrec.model.sequential_recommender.rarec import RARec

    cfg = tiny_run_config(tmp_path)
    small = {"data_path": cfg["data_path"], "state": "ERROR", "hidden_size": 16, "n_layers": 1, "n_heads": 1,
             "inner_size": 32, "MAX_ITEM_LIST_LENGTH": 10, "rarec_lm": write_tiny_causal_lm(str(tmp_path / "causal")),
             "rarec_history_len": 4, "rarec_prefix_tokens": 2, "rarec_negatives": 8, "train_batch_size": 8,
             "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False, **extra}
    config = Config(model="RARec", dataset="tiny", config_dict=small)
    train, valid, test = data_preparation(config, SCaLRecDataset(config))
    return config, RARec(config, train.dataset), train, valid


def test_rarec_reads_id_embeddings_as_soft_prompts_and_trains_only_its_own_parts(tmp_path):
    """The user vector changes with the history's items and with the prefixes; a step trains the
    reparameterisation, the output map and the prefixes, never the LM or the ID model; the LM's
    weights stay out of the state dict; the device side runs fewer LM layers."""
    config, model, train, _ = _rarec(tmp_path)
    assert model.lm_layers == 2 and all(k.split(".")[0] in ("align", "out", "prefix", "id_model") for k in model.state_dict())
    batch = next(iter(train))
    seq, length, users = batch["item_id_list"], batch["item_length"], batch["user_id"]
    model.eval()
    with torch.no_grad():
        u = model(seq, length, users)
        other = seq.clone()
        last = (length - 1).clamp_min(0)
        other[torch.arange(len(seq)), last] = other[torch.arange(len(seq)), last] % (model.n_items - 1) + 1
        assert not torch.allclose(model(other, length, users), u)  # the latest item's soft token is read
        for p in model.prefix.parameters():
            p.add_(1.0)
        assert not torch.allclose(model(seq, length, users), u)  # so are the per-layer prefixes
    assert (model.title_vectors[1:].abs().sum(1) > 0).all()  # every item has text, so a target to align to
    model.train()
    loss = model.calculate_loss(batch)
    loss.backward()
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained == {"align", "out", "prefix"}
    lm = model._lm[0].get_base_model()
    assert all(p.grad is None for p in lm.parameters()) and all(p.grad is None for p in model.id_model.parameters())
    aligned_off = model.align_weight
    model.align_weight = 0.0
    torch.manual_seed(0)
    bpr_only = model.calculate_loss(batch)
    model.align_weight = aligned_off
    torch.manual_seed(0)
    assert model.calculate_loss(batch) > bpr_only  # the alignment term is in the loss
    _, device, _, _ = _rarec(tmp_path, rarec_side="device", rarec_device_layers=1)
    assert device.lm_layers == 1 and device.on_device_parameters() < model.on_device_parameters()


def test_rarec_trainer_cuts_each_epoch_and_records_it(tmp_path):
    """An epoch is ``rarec_train_batches`` batches; each epoch's prompts, loss and validation score
    are logged; the kept state is the best on validation."""
    from recbole_scalrec.trainer import RARecTrainer

    config, model, train, valid = _rarec(tmp_path, epochs=2, rarec_train_batches=2, stopping_step=5)
    trainer = RARecTrainer(config, model)
    best, _ = trainer.fit(train, valid, saved=True, show_progress=False)
    assert [e["epoch"] for e in trainer.phase_log] == [0, 1]
    assert all(e["prompts"] == 2 * 8 and e["loss"] > 0 and 0 <= e["valid_score"] <= 1 for e in trainer.phase_log)
    assert best == max(e["valid_score"] for e in trainer.phase_log)
    assert len(train) > 2  # the cut is a real subsample of the training prefixes


def test_rarec_without_its_packages_says_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    from recbole_scalrec.semantic import causal_lm

    real = importlib.util.find_spec
    monkeypatch.setattr(causal_lm, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ImportError, match=r'need peft: .*pip install -e "\.\[llm\]"'):
        causal_lm.load_causal_lm(write_tiny_causal_lm(str(tmp_path / "causal")))
