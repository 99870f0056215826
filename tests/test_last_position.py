"""SASRec's last-position forward equals RecBole's forward (outputs and gradients)."""
import copy

import pytest
import torch
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_scalrec.trainer.last_position import use_last_position_forward

N_ITEMS, MAX_LEN = 30, 12


class _Items:
    def num(self, field):
        return N_ITEMS


def _sasrec(n_layers: int) -> SASRec:
    config = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
              "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_", "MAX_ITEM_LIST_LENGTH": MAX_LEN,
              "device": "cpu", "n_layers": n_layers, "n_heads": 2, "hidden_size": 16, "inner_size": 32,
              "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
              "initializer_range": 0.02, "loss_type": "CE"}
    torch.manual_seed(0)
    return SASRec(config, _Items())


def _batch():
    lengths = torch.tensor([1, 5, MAX_LEN, 7, 2])
    seq = torch.zeros(len(lengths), MAX_LEN, dtype=torch.long)
    for b, n in enumerate(lengths):  # RecBole's layout: items left-aligned, zero padding on the right
        seq[b, :n] = torch.randint(1, N_ITEMS, (int(n),))
    return seq, lengths


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_last_position_forward_matches_recbole(n_layers):
    ref = _sasrec(n_layers).eval()
    fast = copy.deepcopy(ref)
    assert use_last_position_forward(fast) == 1
    assert list(fast.state_dict()) == list(ref.state_dict())
    seq, lengths = _batch()
    out_ref, out_fast = ref(seq, lengths), fast(seq, lengths)
    assert out_fast.shape == out_ref.shape == (len(lengths), 16)
    assert torch.allclose(out_fast, out_ref, atol=1e-5)
    weights = torch.randn_like(out_ref)
    (out_ref * weights).sum().backward()
    (out_fast * weights).sum().backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_last_position_forward_survives_deepcopy_and_trains():
    model = _sasrec(2)
    use_last_position_forward(model)
    clone = copy.deepcopy(model)
    assert clone.forward.__self__ is clone  # bound to the copy, not to the original
    seq, lengths = _batch()
    model.train()
    out = model(seq, lengths)
    out.sum().backward()
    assert torch.isfinite(out).all() and model.item_embedding.weight.grad.abs().sum() > 0


def test_other_backbones_are_left_alone():
    class Subclass(SASRec):
        def forward(self, item_seq, item_seq_len):
            return super().forward(item_seq, item_seq_len)

    assert use_last_position_forward(torch.nn.GRU(4, 4)) == 0
    sub = Subclass.__new__(Subclass)
    torch.nn.Module.__init__(sub)
    assert use_last_position_forward(sub) == 0
