r"""SURGE: Sequential Recommendation with Graph Neural Networks (Chang et al., SIGIR 2021).

A PyTorch re-implementation, written for RecBole, that follows the authors' TensorFlow code
(``tsinghua-fib-lab/SIGIR21-SURGE``, ``reco_utils/recommender/deeprec/models/sequential/surge.py``).
Every learnable weight is a registered parameter; nothing is drawn at random in ``forward``.

Pipeline of :meth:`SURGE.forward` (one sequence of ``n`` real items, padding id 0 masked out
everywhere)::

    1. interest graph   S = mean_h cos(w_h * x_i, w_h * x_j), min-max normalised per row over the
                        real columns; A_ij = 1[S_ij > value of rank ceil(eps * nnz(S)) of S]
                        (relative-rank sparsification over the whole graph: the top eps * nnz(S)
                        edges are kept, nnz(S) = n^2 minus the per-row minima, as in the official
                        code)
    2. interest fusion  A~ = D^-1/2 (A + I) D^-1/2, cluster embedding x^c = A~ A~ x;
                        f1 = Att_c(x^c, x) (cluster-aware), f2 = Att_q(q, x) (query-aware);
                        E_ij = softmax_j over the edges of LeakyReLU(A_ij (f1_j + f2_i));
                        x'_i = LeakyReLU(W (E x)_i + x_i)
    3. interest         cluster score gamma = softmax(Att_c(A~ A~ x', x') + Att_q(q, x')) over the
       extraction       nodes; pooling keeps the top ``pool_length`` nodes by gamma (all of them when
                        n <= pool_length), coarsened graph A' = E A E^T restricted to the kept nodes,
                        graph readout r = sum_i gamma_i x'_i over the kept nodes
    4. prediction       kept nodes in time order -> AUGRU (update gate scaled by 1 - alpha_t,
                        alpha = Att_g(q, kept nodes)) -> h_T;
                        z_str = W_o MLP([h_T; r; q; r * q])

The attention blocks ``Att(query, keys)`` are the official ``_attention_fcn``: keys projected by a
matrix, ``[k; q; k - q; k * q]`` fed to an MLP (``att_fcn_layer_sizes``, ReLU) that gives one
logit per node, softmax over the real nodes.

**Target-free output z_str.** The official model is target-aware: the target item embedding
e_t is the query of Att_q and of the AUGRU attention, and the logit is
``MLP([h_T; r; e_t; r * e_t])``. Our fusion model needs a structure embedding that does not see
the target and scores every item by ``<z, v_i>`` with ``v_i = self.item_embedding.weight[i]``.
So the query q is target-free (``query_type``):

* ``last`` (default): the embedding of the last interacted item, the standard proxy for "what
  comes next";
* ``learned``: a learned query vector (a query-free readout shared by all sequences).

and the target-aware logit MLP is factorised into two towers: the MLP maps
``[h_T; r; q; r * q]`` to the item space (a final linear layer to ``embedding_size``), and the
score of item i is ``<z_str, v_i>``. :meth:`predict`, the CE/BPR losses and
:meth:`full_sort_predict` all use this score, so ranking all items costs one forward pass per
sequence plus one ``[B, d] x [d, n_items]`` matrix product, not one forward pass per candidate.

**Deviations from the official code, and why.**

* Padding never reaches the graph: the official code lets padded positions into the min/max of
  the similarity normalisation and into the batch-norm statistics of its attention MLPs. Here the
  min/max run over the real items only and the MLPs have no batch norm (its statistics would mix
  padded positions in); a sequence gives the same output whatever its padding length.
* Straight-through adjacency: ``A = 1[S > threshold]`` is a hard cast in the official code, so
  its metric weights w_h never receive a gradient. Here the forward values are the same binary
  matrix, and the gradient of a kept edge w.r.t. S is taken as 1 (``A = hard + hard * (S -
  stop_grad(S))``), so the metric learning is trained.
* Edge cases the official code leaves undefined (a one-item sequence: 0/0 in the min-max; no
  pooling when the whole row is real: an out-of-range gather) are defined as "threshold 0".
* As in the official code, f2 enters E indexed by the centre node i, so it cancels in the row
  softmax (f1, f2 > 0 and LeakyReLU is the identity there); f2 is still trained through the
  cluster score. Kept as is.
* The attention MLPs' output layer has no bias: a constant added to every node's logit cancels in
  the softmax over the nodes, so that bias could never learn (its gradient is exactly 0). Their
  first layer on ``[k; q; k - q; k * q]`` is evaluated in an equivalent rearranged form that
  computes the term of a per-sequence query once per sequence (same function, ~40% less time).
* Scoring is the two-tower factorisation above, and the losses are RecBole's (full-softmax CE or
  BPR) instead of the official 1-positive-4-negatives softmax; the official L2 terms (``embed_l2``
  on the item embeddings of the batch, ``layer_l2`` on every other weight) are added to the loss.

``item_seq_len`` is accepted for RecBole's API; the node mask comes from the item ids
(``item_seq != 0``), so left- or right-padded sequences work alike.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

_EPS = 1e-7  # K.epsilon() of the official code


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the entries where ``mask`` is true; exactly 0 elsewhere (and on empty rows)."""
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=dim) * mask.to(logits.dtype)


def _straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Values of ``hard`` (0/1), gradient of ``soft`` on the entries where ``hard`` is 1."""
    return hard + hard * (soft - soft.detach())


class _AttentionFCN(nn.Module):
    """The official ``_attention_fcn``: one attention weight per node, softmax over the nodes.

    ``k = keys W``; logit = MLP([k; q; k - q; k * q]); weights = masked softmax over the nodes.
    """

    def __init__(self, key_size: int, query_size: int, layer_sizes: list[int]):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(key_size, query_size))
        layers: list[nn.Module] = []
        last = 4 * query_size
        for size in layer_sizes:
            layers += [nn.Linear(last, size), nn.ReLU()]
            last = size
        # no bias on the logit: a constant shift cancels in the softmax (its gradient is always 0)
        layers.append(nn.Linear(last, 1, bias=False))
        self.mlp = nn.Sequential(*layers)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k = keys @ self.weight  # [B, L, Fq]
        # First layer on [k; q; k - q; k * q], rearranged (same function, fewer FLOPs):
        # W [k; q; k-q; k*q] = (W_1 + W_3) k + (W_2 - W_3) q + W_4 (k * q); the q term of a
        # per-sequence query [B, Fq] is computed once per sequence, not once per node.
        first = self.mlp[0]
        w_k, w_q, w_diff, w_prod = first.weight.split(k.size(-1), dim=1)
        q = query.unsqueeze(1) if query.dim() == 2 else query
        hidden = torch.cat([k, k * q], dim=-1) @ torch.cat([w_k + w_diff, w_prod], dim=1).t()
        hidden = hidden + F.linear(q, w_q - w_diff, first.bias)
        logits = self.mlp[1:](hidden).squeeze(-1)  # [B, L]
        return _masked_softmax(logits, mask)


class _AUGRUCell(nn.Module):
    """GRU cell whose update gate is scaled by ``1 - a`` (the official ``VecAttGRUCell``)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.gates = nn.Linear(input_size + hidden_size, 2 * hidden_size)
        self.candidate = nn.Linear(input_size + hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        r, u = torch.sigmoid(self.gates(torch.cat([x, h], dim=-1))).chunk(2, dim=-1)
        c = torch.tanh(self.candidate(torch.cat([x, r * h], dim=-1)))
        u = (1.0 - att) * u
        return u * h + (1.0 - u) * c


class SURGE(SequentialRecommender):
    """SURGE (Chang et al., SIGIR 2021) with a target-free output ``z_str`` in item space.

    See the module docstring for the architecture, how ``z_str`` is formed and how full ranking
    is computed. Config keys: ``properties/model/SURGE.yaml``.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.hidden_size = config["hidden_size"]
        self.metric_heads = config["metric_heads"]
        self.attention_heads = config["attention_heads"]
        self.relative_threshold = float(config["relative_threshold"])
        self.pool_layers = config["pool_layers"]
        self.pool_length = config["pool_length"]
        self.layer_shared = config["layer_shared"]
        self.query_type = config["query_type"]
        self.init_std = config["init_std"]
        self.embed_l2 = config["embed_l2"] or 0.0
        self.layer_l2 = config["layer_l2"] or 0.0
        self.loss_type = config["loss_type"]
        att_sizes = list(config["att_fcn_layer_sizes"])
        mlp_sizes = list(config["mlp_hidden_sizes"])
        if self.query_type not in ("last", "learned"):
            raise ValueError(f"SURGE: query_type must be 'last' or 'learned', not {self.query_type!r}.")
        if not 0.0 < self.relative_threshold <= 1.0:
            raise ValueError(f"SURGE: relative_threshold must be in (0, 1], not {self.relative_threshold}.")
        if self.pool_layers < 1 or self.pool_length < 1 or self.metric_heads < 1 or self.attention_heads < 1:
            raise ValueError("SURGE: pool_layers, pool_length, metric_heads and attention_heads must be >= 1.")
        d = self.embedding_size

        self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
        self.emb_dropout = nn.Dropout(config["dropout_prob"] or 0.0)
        # 1) metric learning: one weight vector per head (the official dense layer applied to ones)
        self.metric_weights = nn.Parameter(torch.empty(self.metric_heads, d))
        # 2-3) attention blocks, shared across pooling layers or one set per layer (layer_shared)
        n_sets = 1 if self.layer_shared else self.pool_layers
        self.cluster_att = nn.ModuleList(
            nn.ModuleList(_AttentionFCN(d, d, att_sizes) for _ in range(self.attention_heads)) for _ in range(n_sets)
        )
        self.query_att = nn.ModuleList(
            nn.ModuleList(_AttentionFCN(d, d, att_sizes) for _ in range(self.attention_heads)) for _ in range(n_sets)
        )
        # the official tf.layers.dense inside the head loop creates new weights per layer and head
        self.conv_dense = nn.ModuleList(
            nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(self.attention_heads))
            for _ in range(self.pool_layers)
        )
        # 4) prediction
        self.augru_att = _AttentionFCN(d, d, att_sizes)
        self.augru = _AUGRUCell(d, self.hidden_size)
        layers: list[nn.Module] = []
        last = self.hidden_size + 3 * d
        for size in mlp_sizes:
            layers += [nn.Linear(last, size), nn.ReLU()]
            last = size
        layers.append(nn.Linear(last, d))  # to item space (the official logit layer has width 1)
        self.output_mlp = nn.Sequential(*layers)
        self.query = nn.Parameter(torch.empty(d)) if self.query_type == "learned" else None

        if self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        elif self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            raise NotImplementedError("Make sure 'loss_type' in ['BPR', 'CE']!")
        self._init_weights()

    # ------------------------------------------------------------------ initialisation
    def _init_weights(self) -> None:
        """Official initialisers where they do not rely on batch norm.

        Embedding and attention projections: truncated normal(0, init_std) (``tnormal``); metric
        weights, graph-convolution dense and GRU kernels: Glorot uniform (TF's default for
        ``tf.layers.dense`` / the GRU cell), GRU gate bias 1; the MLPs: Xavier normal (the
        official tnormal(0.01) MLPs are followed by batch norm, which we drop).
        """
        std = self.init_std
        nn.init.trunc_normal_(self.item_embedding.weight, std=std, a=-2 * std, b=2 * std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        bound = math.sqrt(6.0 / (1 + self.embedding_size))  # glorot over the [1, d] dense kernel
        nn.init.uniform_(self.metric_weights, -bound, bound)
        for module in self.modules():
            if isinstance(module, _AttentionFCN):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        for group in self.conv_dense:
            for dense in group:
                nn.init.xavier_uniform_(dense.weight)
        for mlp in [m.mlp for m in self.modules() if isinstance(m, _AttentionFCN)] + [self.output_mlp]:
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_normal_(layer.weight)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)
        nn.init.xavier_uniform_(self.augru.gates.weight)
        nn.init.ones_(self.augru.gates.bias)
        nn.init.xavier_uniform_(self.augru.candidate.weight)
        nn.init.zeros_(self.augru.candidate.bias)
        if self.query is not None:
            nn.init.trunc_normal_(self.query, std=std, a=-2 * std, b=2 * std)

    # ------------------------------------------------------------------ building blocks
    def _query(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Target-free query q [B, d]: last real item's embedding, or the learned query."""
        if self.query is not None:
            return self.query.unsqueeze(0).expand(x.size(0), -1)
        positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
        last = (positions * mask).argmax(dim=1)  # position of the last real item
        return self.gather_indexes(x, last)

    def _interest_graph(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Metric-learned adjacency [B, L, L] with relative-rank sparsification (binary values)."""
        col = mask.unsqueeze(1)  # [B, 1, L]
        pair = mask.unsqueeze(2) & col  # [B, L, L]
        sim = 0.0
        for h in range(self.metric_heads):
            xh = F.normalize(x * self.metric_weights[h], dim=-1)
            s = xh @ xh.transpose(1, 2)  # weighted cosine similarity
            s_min = s.masked_fill(~col, float("inf")).amin(dim=-1, keepdim=True)
            s_max = s.masked_fill(~col, float("-inf")).amax(dim=-1, keepdim=True)
            s_min = torch.where(torch.isfinite(s_min), s_min, torch.zeros_like(s_min))
            s_max = torch.where(torch.isfinite(s_max), s_max, torch.zeros_like(s_max))
            sim = sim + (s - s_min) / (s_max - s_min).clamp_min(_EPS)
        sim = (sim / self.metric_heads).masked_fill(~pair, 0.0)

        # relative ranking over the whole graph: keep the ceil(eps * nnz) strongest edges
        batch, length = mask.shape
        flat = sim.detach().reshape(batch, -1)
        ranked = flat.sort(dim=1, descending=True).values
        num_edges = (flat != 0).sum(dim=1)
        to_keep = torch.ceil(num_edges.to(flat.dtype) * self.relative_threshold).long()
        threshold = ranked.gather(1, to_keep.clamp(max=length * length - 1).unsqueeze(1)).squeeze(1)
        threshold = torch.where(to_keep < num_edges, threshold, torch.zeros_like(threshold))
        hard = (sim.detach() > threshold.view(-1, 1, 1)).to(sim.dtype)
        return _straight_through(hard, sim)

    def _fusion_extraction(self, x, adj, node_mask, real_len, query, layer):
        """One interest fusion (attentive graph convolution) + extraction (pooling) layer."""
        length = x.size(1)
        eye = torch.eye(length, dtype=x.dtype, device=x.device)
        edges = adj.detach() > 0
        a_bool = _straight_through(edges.to(x.dtype), adj) * (1.0 - eye) + eye
        edge_mask = edges | eye.bool()
        degree = a_bool.sum(dim=-1).sqrt() + _EPS  # [B, L]
        a_norm = a_bool / degree.unsqueeze(1) / degree.unsqueeze(2)
        sets = 0 if self.layer_shared else layer

        # ---- interest fusion: cluster- and query-aware attentive graph convolution
        x_q = a_norm @ (a_norm @ x)
        heads, e = [], None
        for i in range(self.attention_heads):
            f1 = self.cluster_att[sets][i](x_q, x, node_mask)
            f2 = self.query_att[sets][i](query, x, node_mask)
            e = a_bool * f1.unsqueeze(1) + a_bool * f2.unsqueeze(2)  # E_ij = A_ij (f1_j + f2_i)
            e = _masked_softmax(F.leaky_relu(e, 0.2), edge_mask)
            heads.append(F.leaky_relu(self.conv_dense[layer][i](e @ x) + x, 0.2))
        xc = torch.stack(heads).mean(dim=0)

        # ---- interest extraction: cluster score and top-k graph pooling
        x_q = a_norm @ (a_norm @ xc)
        score = torch.stack([
            self.cluster_att[sets][i](x_q, xc, node_mask) + self.query_att[sets][i](query, xc, node_mask)
            for i in range(self.attention_heads)
        ]).mean(dim=0)
        score = _masked_softmax(score, node_mask) * node_mask
        num_nodes = node_mask.sum(dim=1)
        reduced = self.pool_length + (real_len - self.pool_length).to(x.dtype) / self.pool_layers * (
            self.pool_layers - layer - 1
        )
        to_keep = torch.where(num_nodes > self.pool_length, reduced.long(), num_nodes)
        ranked = score.detach().sort(dim=1, descending=True).values
        target = ranked.gather(1, to_keep.clamp(max=length - 1).unsqueeze(1)).squeeze(1)
        target = torch.where(to_keep < length, target, torch.zeros_like(target)) + _EPS
        new_mask = score.detach() > target.unsqueeze(1)
        keep = new_mask.to(x.dtype)

        # coarsened graph (used by a next pooling layer) and graph readout
        e = e * keep.unsqueeze(2) * keep.unsqueeze(1)
        adj = e @ a_bool @ e.transpose(1, 2)
        readout = (xc * (score * keep).unsqueeze(-1)).sum(dim=1)
        return xc, adj, new_mask, readout

    def _augru_final_state(self, x: torch.Tensor, att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Final AUGRU state; ``mask`` is left-aligned, so steps past a row's length keep its state."""
        h = x.new_zeros(x.size(0), self.hidden_size)
        for t in range(x.size(1)):
            h_new = self.augru(x[:, t], h, att[:, t : t + 1])
            h = torch.where(mask[:, t : t + 1], h_new, h)
        return h

    # ------------------------------------------------------------------ RecBole API
    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor | None = None) -> torch.Tensor:
        """Target-free structure embedding z_str [B, embedding_size] in item space."""
        mask = item_seq != 0
        x = self.item_embedding(item_seq)
        x = self.emb_dropout(x) * mask.unsqueeze(-1).to(x.dtype)
        query = self._query(x, mask)
        adj = self._interest_graph(x, mask)
        real_len = mask.sum(dim=1)
        node_mask, readout = mask, None
        for layer in range(self.pool_layers):
            x, adj, node_mask, readout = self._fusion_extraction(x, adj, node_mask, real_len, query, layer)

        # flatten the pooled graph to a reduced sequence: kept nodes first, in time order
        kept, order = torch.sort(node_mask.to(torch.int8), dim=1, descending=True, stable=True)
        x = x.gather(1, order.unsqueeze(-1).expand_as(x))
        width = max(int(kept.sum(dim=1).max()), 1)
        x, node_mask = x[:, :width], kept[:, :width].bool()
        alphas = self.augru_att(query, x, node_mask)
        final_state = self._augru_final_state(x, alphas, node_mask)
        return self.output_mlp(torch.cat([final_state, readout, query, readout * query], dim=-1))

    def regularisation(self, item_ids: torch.Tensor) -> torch.Tensor | float:
        """Official regularisation: embed_l2 * l2(involved item embeddings) + layer_l2 * l2(other weights)."""
        penalty = 0.0
        if self.embed_l2 > 0:
            involved = torch.unique(item_ids)
            penalty = penalty + self.embed_l2 * self.item_embedding(involved).pow(2).sum() / 2
        if self.layer_l2 > 0:
            penalty = penalty + self.layer_l2 * sum(
                p.pow(2).sum() for n, p in self.named_parameters() if not n.startswith("item_embedding")
            ) / 2
        return penalty

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        z = self.forward(item_seq, item_seq_len)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = interaction[self.NEG_ITEM_ID]
            pos_score = (z * self.item_embedding(pos_items)).sum(dim=-1)
            neg_score = (z * self.item_embedding(neg_items)).sum(dim=-1)
            loss = self.loss_fct(pos_score, neg_score)
            involved = torch.cat([item_seq.flatten(), pos_items.flatten(), neg_items.flatten()])
        else:
            logits = z @ self.item_embedding.weight.transpose(0, 1)
            loss = self.loss_fct(logits, pos_items)
            involved = torch.cat([item_seq.flatten(), pos_items.flatten()])
        return loss + self.regularisation(involved)

    def predict(self, interaction):
        z = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (z * self.item_embedding(interaction[self.ITEM_ID])).sum(dim=-1)

    def full_sort_predict(self, interaction):
        """Scores [B, n_items]: one forward per sequence, then ``z_str @ item_embedding.weight^T``."""
        z = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return z @ self.item_embedding.weight.transpose(0, 1)
