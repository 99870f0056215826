"""DUET (Lv et al., "DUET: A Tuning-Free Device-Cloud Collaborative Parameters Generation Framework
for Efficient Device Model Generalization", WWW 2023): the paper's device-cloud family in Table 2
(METHOD.md Sec. 8).

The mechanism kept: the device model is a sequence encoder followed by ``duet_layers`` dense layers
whose weights are not stored on the device but *generated* by the cloud. The cloud's parameter
generator reads the user's behaviour as the cloud sees it, ``S_{<=t0}`` at serving time, with a GRU
(its last valid state, then a two-layer MLP with tanh between: ``z``), and emits per layer

    W_l = reshape(A_l z + a_l, d x d),   b_l = B_l z + c_l,

full rank, no decomposition; the device applies ``x_1 = tanh(x_0 W_1 + b_1)``, ``x_2 = x_1 W_2 + b_2``
(no activation after the last, no residual) to its own encoder's state ``x_0`` of the fresh sequence
``S_{<=t}``, without any gradient step on the device, and scores ``<x_L, v_i>`` over the item table.
The encoder, the generator and the item table are trained jointly end to end on the training data,
where the generator and the encoder see the same sequence (DUET is not trained for staleness; it is
served under it, like every row of the table).

Substitutions, each named: (1) the device encoder is one self-attention layer with a causal mask
over item and position embeddings (DUET's reference encoder is one transformer layer over the same
inputs, without a mask); (2) the loss is cross-entropy over all items, as every row here, instead of
binary cross-entropy on sampled negatives; (3) the generator's projections ``A_l, a_l, B_l, c_l`` are
trained parameters (the paper trains the generator; its public code holds them outside the module
tree), initialised so that ``W_l`` starts near the identity and ``b_l`` near zero, which lets the
deep product train from the first epoch. Keys: ``properties/model/DUET.yaml``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType
from torch import nn


class ParameterGenerator(nn.Module):
    """The cloud's hypernetwork: a sequence in, the weights and biases of the device's dense layers out."""

    def __init__(self, dim: int, hidden: int, n_layers: int) -> None:
        super().__init__()
        self.dim = dim
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.code = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.weights = nn.ModuleList(nn.Linear(hidden, dim * dim) for _ in range(n_layers))
        self.biases = nn.ModuleList(nn.Linear(hidden, dim) for _ in range(n_layers))
        for w, b in zip(self.weights, self.biases):
            nn.init.normal_(w.weight, std=0.1 / (hidden * dim) ** 0.5)
            with torch.no_grad():
                w.bias.copy_(torch.eye(dim).flatten())
            nn.init.normal_(b.weight, std=0.1 / hidden ** 0.5)
            nn.init.zeros_(b.bias)

    def forward(self, emb: torch.Tensor, length: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(W_l [B, d, d], b_l [B, d])]`` from the embedded sequence ``[B, L, d]``."""
        states, _ = self.gru(emb)
        last = states.gather(1, (length - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, states.shape[-1])).squeeze(1)
        z = self.code(last)
        return [(w(z).view(-1, self.dim, self.dim), b(z)) for w, b in zip(self.weights, self.biases)]


class DUET(SequentialRecommender):
    """See the module docstring."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        d = config["hidden_size"]
        self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, d)
        self.layer_norm = nn.LayerNorm(d, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.encoder = TransformerEncoder(n_layers=1, n_heads=config["n_heads"], hidden_size=d,
                                          inner_size=config["inner_size"], hidden_dropout_prob=config["hidden_dropout_prob"],
                                          attn_dropout_prob=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
                                          layer_norm_eps=config["layer_norm_eps"])
        self.generator = ParameterGenerator(d, config["duet_generator_hidden"], config["duet_layers"])
        nn.init.normal_(self.item_embedding.weight, std=config["initializer_range"])
        nn.init.normal_(self.position_embedding.weight, std=config["initializer_range"])

    @property
    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight

    def _embed(self, item_seq: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_seq.shape[1], device=item_seq.device).unsqueeze(0)
        return self.dropout(self.layer_norm(self.item_embedding(item_seq) + self.position_embedding(positions)))

    def device_state(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``x_0``: the device encoder's state at the last position of ``S_{<=t}``."""
        out = self.encoder(self._embed(item_seq), self.get_attention_mask(item_seq), output_all_encoded_layers=False)[-1]
        return self.gather_indexes(out, item_seq_len - 1)

    def generate(self, cloud_seq: torch.Tensor, cloud_len: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The cloud's side: the device layers' parameters from the sequence the cloud sees."""
        return self.generator(self.item_embedding(cloud_seq), cloud_len)

    @staticmethod
    def apply_layers(x: torch.Tensor, params: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The device's side: the generated layers on ``x_0`` (tanh between layers, none after the last)."""
        for i, (w, b) in enumerate(params):
            x = torch.bmm(x.unsqueeze(1), w).squeeze(1) + b
            if i < len(params) - 1:
                x = torch.tanh(x)
        return x

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, cloud_seq: torch.Tensor | None = None,
                cloud_len: torch.Tensor | None = None) -> torch.Tensor:
        """The user vector: the device state of ``item_seq`` through the layers generated from
        ``cloud_seq`` (the same sequence when none is given, as in training)."""
        if cloud_seq is None:
            cloud_seq, cloud_len = item_seq, item_seq_len
        return self.apply_layers(self.device_state(item_seq, item_seq_len), self.generate(cloud_seq, cloud_len))

    def calculate_loss(self, interaction) -> torch.Tensor:
        z = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return F.cross_entropy(z @ self.item_table.T, interaction[self.POS_ITEM_ID])

    def predict(self, interaction) -> torch.Tensor:
        z = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (z * self.item_table[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]) @ self.item_table.T
