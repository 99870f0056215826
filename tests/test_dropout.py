import torch
from torch import nn

from recbole_scalrec.trainer.dropout import UniformDropout, use_uniform_dropout


def test_uniform_dropout_keeps_one_minus_p_and_rescales():
    torch.manual_seed(0)
    drop = UniformDropout(0.3).train()
    x = torch.ones(200_000)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert abs(y.mean().item() - 1.0) < 0.01  # expectation preserved (inverted dropout)


def test_uniform_dropout_is_identity_in_eval_and_passes_gradients():
    drop = UniformDropout(0.5)
    x = torch.randn(4, 5, requires_grad=True)
    assert torch.equal(drop.eval()(x), x)
    y = drop.train()(x)
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)  # gradient flows exactly through the kept units


def test_swap_replaces_every_dropout_and_keeps_the_state_dict():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 1)))
    keys = list(model.state_dict())
    assert use_uniform_dropout(model) == 2
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [type(m) for m in drops] == [UniformDropout, UniformDropout] and [m.p for m in drops] == [0.2, 0.5]
    assert list(model.state_dict()) == keys
