"""TransRec (the generative LLM-based rows) on the synthetic data with a tiny local causal LM: the
identifiers and their prefix tree, what LoRA trains, constrained generation, grounding and the
trainer's likelihood early stopping."""
import torch
from synthetic import tiny_run_config, write_tiny_causal_lm


def _transrec(tmp_path, **extra):
    from recbole.data import data_preparation

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.dataset import SCaLRecDataset
    from recbole_scalrec.model.sequential_recommender.transreclm import TransRecLM

    cfg = tiny_run_config(tmp_path)
    small = {"data_path": cfg["data_path"], "state": "ERROR", "MAX_ITEM_LIST_LENGTH": 10,
             "transrec_lm": write_tiny_causal_lm(str(tmp_path / "causal")), "transrec_attribute_field": "genre",
             "transrec_history_len": 3, "transrec_beams": 4, "transrec_generation_batch": 4, "train_batch_size": 8,
             "eval_batch_size": 16, "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False, **extra}
    config = Config(model="TransRecLM", dataset="tiny", config_dict=small)
    train, valid, test = data_preparation(config, SCaLRecDataset(config))
    return config, TransRecLM(config, train.dataset), train, valid


def test_facet_index_allows_only_valid_identifiers():
    from recbole_scalrec.model.sequential_recommender.transreclm import FacetIndex

    class Words:  # one token per word, ids by first appearance
        vocab: dict = {}

        def __call__(self, text, add_special_tokens=False):
            return type("T", (), {"input_ids": [self.vocab.setdefault(w, len(self.vocab) + 10) for w in text.split()]})

    tok = Words()
    index = FacetIndex(["", "red bar", "red cafe", "blue bar", "red bar"], tok, eos=0, max_tokens=8)
    red, bar, cafe, blue = (tok.vocab[w] for w in ("red", "bar", "cafe", "blue"))
    assert sorted(index.allowed([])) == sorted([red, blue])
    assert sorted(index.allowed([red])) == sorted([bar, cafe])
    assert index.allowed([red, bar]) == [0]  # a complete identifier may only end
    assert index.items[(red, bar)] == [1, 4]  # a name shared by two items grounds to both
    assert index.tokens[0] == []  # the padding item has no identifier


def test_transrec_trains_lora_only_and_generates_valid_identifiers(tmp_path):
    """Only the LoRA factors get gradients and sit in the state dict; every beam of constrained
    generation is an identifier of the corpus; grounding ranks exactly the items the beams name,
    with a facet's mass in (0, 1]; the device side runs fewer LM layers."""
    config, model, train, _ = _transrec(tmp_path)
    assert model.facets == ["id", "title", "attribute"] and model.lm_layers == 2
    assert model.state_dict() and all("lora_" in k for k in model.state_dict())
    batch = next(iter(train))
    model.train()
    loss = model.calculate_loss(batch)
    loss.backward()
    grads = {n: p.grad for n, p in model._lm[0].named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads) and any(g.abs().sum() > 0 for g in grads.values())
    model.eval()
    seq, length = batch["item_id_list"][:4], batch["item_length"][:4]
    for facet in model.facets:
        for beams in model.generate(facet, seq, length):
            assert beams and all(name in model.index[facet].items for name, _ in beams)
    scores = model.ground(seq, length)
    named = torch.isfinite(scores)
    assert scores.shape == (4, model.n_items) and named.any(1).all() and not named[:, 0].any()
    assert (scores[named] > 0).all() and (scores[named] <= sum(model.facet_weights.values()) + 1e-6).all()
    _, device, _, _ = _transrec(tmp_path, transrec_side="device", transrec_device_layers=1)
    assert device.lm_layers == 1 and device.on_device_parameters() < model.on_device_parameters()


def test_generation_runs_each_prompt_once_with_the_same_beams(tmp_path):
    """``model.eval()`` turns the held LM's LoRA dropout off, so generation repeats exactly. The
    prompt's cache, computed once per row and repeated for its beams, gives the beams (names, order
    and scores) that ``generate`` gives when it runs the prompt once per beam; rows of different
    prompt lengths (left padding) included."""
    config, model, train, _ = _transrec(tmp_path)
    dropouts = [m for m in model._lm[0].modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert dropouts and all(m.training for m in dropouts)  # LoRA's dropout, in the LM held outside the module tree
    model.eval()
    assert not any(m.training for m in dropouts)  # the model's mode reaches the LM: serving is deterministic
    batch = next(iter(train))
    seq, length = batch["item_id_list"][:4], torch.tensor([1, 2, 3, 3])  # histories of 1 to 3 items
    assert model.generate("title", seq, length) == model.generate("title", seq, length)
    for facet in model.facets:
        shared = model.generate(facet, seq, length)
        per_beam = model.generate(facet, seq, length, share_prompt=False)
        assert [[n for n, _ in row] for row in shared] == [[n for n, _ in row] for row in per_beam]
        scores = [s for row in shared for _, s in row]
        assert scores and torch.allclose(torch.tensor(scores), torch.tensor([s for row in per_beam for _, s in row]),
                                         atol=1e-4)


def test_transrec_training_raises_the_likelihood_of_next_identifiers(tmp_path):
    """Epochs of ``transrec_train_batches`` batches are recorded; the validation score is minus the
    identifier NLL, and a few LoRA epochs at a high step lower that NLL."""
    from recbole_scalrec.trainer import TransRecLMTrainer

    config, model, train, valid = _transrec(tmp_path, epochs=3, transrec_train_batches=4, stopping_step=5,
                                            learning_rate=0.01, transrec_lora_rank=4)
    trainer = TransRecLMTrainer(config, model)
    before, _ = trainer._valid_epoch(valid)
    trainer.phase_log.clear()
    best, _ = trainer.fit(train, valid, saved=True, show_progress=False)
    assert [e["epoch"] for e in trainer.phase_log] == [0, 1, 2]
    assert all(e["prompts"] == 4 * 8 and e["loss"] > 0 and e["valid_score"] < 0 for e in trainer.phase_log)
    assert best == max(e["valid_score"] for e in trainer.phase_log) and best > before
