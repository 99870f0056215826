import torch
from recbole.model.layers import FeedForward, TransformerEncoder

from recbole_scalrec.trainer.activation import use_fused_gelu


def _encoder(act: str) -> TransformerEncoder:
    return TransformerEncoder(n_layers=2, n_heads=2, hidden_size=8, inner_size=16, hidden_dropout_prob=0.0,
                              attn_dropout_prob=0.0, hidden_act=act, layer_norm_eps=1e-12)


def test_fused_gelu_computes_recbole_gelu_forward_and_backward():
    torch.manual_seed(0)
    ref = _encoder("gelu")
    fast = _encoder("gelu")
    fast.load_state_dict(ref.state_dict())
    keys = list(fast.state_dict())
    assert use_fused_gelu(fast) == 2
    assert list(fast.state_dict()) == keys
    x = torch.randn(3, 5, 8)
    mask = torch.zeros(3, 1, 5, 5)
    outs, grads = [], []
    for enc in (ref, fast):
        xi = x.clone().requires_grad_(True)
        out = enc(xi, mask)[-1]
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append(xi.grad)
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_fused_gelu_leaves_other_activations_alone():
    enc = _encoder("relu")
    acts = [m.intermediate_act_fn for m in enc.modules() if isinstance(m, FeedForward)]
    assert use_fused_gelu(enc) == 0
    assert [m.intermediate_act_fn for m in enc.modules() if isinstance(m, FeedForward)] == acts
    assert use_fused_gelu(torch.nn.GRU(4, 4)) == 0
