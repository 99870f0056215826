"""Any RecBole sequential model as the structure encoder ``z_str(t) = f_theta(S_{<=t})``.

The fusion (Eq. 4) needs one vector per prefix in the space of one item table, scored by an
inner product. RecBole's sequential models reach that vector through a few calling conventions;
:class:`StructureEncoder` adapts each:

* ``forward(item_seq, item_seq_len)`` (SASRec, GRU4Rec, NARM, STAMP, SRGNN, GCSAN, LightSANs,
  SINE, the feature-aware FDSA / GRU4RecF / SASRecF, SURGE, ...) returning ``[B, d]``, or the whole
  sequence ``[B, L, d]`` (GRU4RecCPR, SASRecCPR), read at the last position;
* ``forward(item_seq)`` (NextItNet, CORE, S3Rec with ``bidirectional=False``), read at the last
  position when it returns the sequence;
* BERT4Rec: the mask token is placed after the last item (as its ``full_sort_predict`` does) and
  the output read there; its item table without the mask row (its output bias is not used: Eq. 4
  has none);
* models that also take the user (Caser, HGN, HRM, NPE, SHAN, FOSSIL): the prefix's internal user id;
* FPMC, whose score ``<UI_u, IU_i> + <LI_l, IL_i>`` (matrix factorisation plus a first-order Markov
  chain from the last item ``l``) is one inner product of concatenations: the user vector
  ``[UI_u; LI_l]`` against the item table ``[IU_i; IL_i]`` (:data:`ITEM_TABLES`), so the fusion and
  the LM initialisation work in that ``2 x embedding_size`` space.

The models in :data:`REFUSED` cannot serve, and are refused at start with the reason.
The adapter holds a reference to the backbone, not a copy: parameters and ``state_dict`` keys
stay the backbone's.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

REFUSED = {
    "DIN": "a click-through model: it scores a (user, candidate item) pair by attending over the history with that "
           "candidate, so there is no user vector to score an item table with",
    "DIEN": "a click-through model: it scores a (user, candidate item) pair through an interest-evolution GRU driven by "
            "that candidate, so there is no user vector to score an item table with",
    "TransRec": "it scores an item by a translation distance -||u + t + v_last - v_i||, not by an inner product "
                "with an item table",
    "RepeatNet": "it outputs a mixture of repeat and explore distributions over items, not a user vector in item space",
    "LLRec": "it is this package's compact on-device baseline (Table 2), whose item table is a product of two "
             "factors rather than an embedding table; compare with it by python -m recbole_scalrec.table2",
    "DUET": "it is this package's device-cloud baseline (Table 2), whose user vector needs the cloud's generated "
            "layers; compare with it by python -m recbole_scalrec.table2",
    "LSC4Rec": "it is this package's device-cloud baseline (Table 2), a reranker of the cloud's candidate list; "
               "compare with it by python -m recbole_scalrec.table2",
    "DCCL": "it is this package's on-device baseline (Table 2), whose user vector carries a per-user patch "
            "tuned on the device; compare with it by python -m recbole_scalrec.table2",
    "PREFER": "it is this package's federated on-device baseline (Table 2), whose user vector needs the user's "
              "local embedding kept on an edge server; compare with it by python -m recbole_scalrec.table2",
    "RARec": "it is this package's LLM-based baseline (Table 2), whose user vector is a language model's reading "
             "of another model's ID embeddings; compare with it by python -m recbole_scalrec.table2",
    "TransRecLM": "it is this package's generative LLM-based baseline (Table 2), which ranks items by generating "
                  "their identifiers, with no user vector; compare with it by python -m recbole_scalrec.table2",
    "CDA4Rec": "it is this package's device-cloud baseline (Table 2), a strategy planner over fusion weights "
               "rather than a sequence encoder; compare with it by python -m recbole_scalrec.table2",
    "KSR": "it needs a knowledge graph (.kg / .link / .ent files), which these datasets do not have",
    "GRU4RecKG": "it needs a knowledge graph (.kg / .link / .ent files), which these datasets do not have",
}
# backbones whose score is an inner product with several item tables side by side
ITEM_TABLES = {"FPMC": ("IU_emb", "IL_emb")}
_SEQ = ("item_seq", "seq_item")
_LEN = ("item_seq_len", "seq_item_len")


class UnsupportedBackbone(ValueError):
    """A sequential model that cannot be the structure encoder (the message says why)."""


def check_backbone(name: str) -> None:
    """Raise :class:`UnsupportedBackbone` for a model of :data:`REFUSED` or one that is not
    sequential (e.g. RecBole's general LightGCN); an unknown name raises ``ValueError`` with close
    matches (:func:`recbole_scalrec.utils.get_model`)."""
    from recbole.utils import ModelType

    from recbole_scalrec.utils import get_model

    if name in REFUSED:
        raise UnsupportedBackbone(f"{name} cannot be the structure encoder: {REFUSED[name]}. "
                                  f"Use a model that maps a sequence to a user vector, e.g. SASRec or GRU4Rec.")
    kind = getattr(get_model(name), "type", None)
    if kind != ModelType.SEQUENTIAL:
        raise UnsupportedBackbone(f"{name} is a {getattr(kind, 'name', kind)} model, not a sequential one, so it cannot be the "
                                  f"structure encoder; compare with it by python -m recbole_scalrec.baselines --models {name}.")


def backbone_dataset(name: str, config, dataset):
    """The dataset to build backbone ``name`` with, holding what its constructor reads that the
    pipeline does not otherwise build (the pipeline reads the interactions as loaded and never runs
    RecBole's augmentation): the item features as an ``Interaction`` (FDSA, GRU4RecF, SASRecF,
    S3Rec), the length of the item-sequence field (CORE), and for FEARec, whose constructor indexes
    the augmented training sequences (its same-target positives), RecBole's own training split of
    a copy. Refuses a model of :data:`REFUSED` first. The pipeline's dataset is left as it reads it."""
    import copy

    check_backbone(name)
    seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    dataset.field2seqlen.setdefault(seq_field, config["MAX_ITEM_LIST_LENGTH"])
    item_feat = getattr(dataset, "item_feat", None)
    if item_feat is not None and not hasattr(item_feat, "interaction"):  # a pandas DataFrame
        dataset.item_feat = dataset._dataframe_to_interaction(item_feat)
    built = hasattr(dataset.inter_feat, "interaction") and seq_field in dataset.inter_feat.interaction
    if name == "FEARec" and not built:
        channel = getattr(dataset, "semantics", None)
        dataset.semantics = None  # the copy needs the interactions only, not the language model
        try:
            return copy.deepcopy(dataset).build()[0]
        finally:
            dataset.semantics = channel
    return dataset


def item_tables(backbone: nn.Module) -> list[nn.Embedding]:
    """The backbone's item table(s) the fusion scores with, in order: ``item_embedding``, or the
    tables :data:`ITEM_TABLES` names for its class."""
    names = ITEM_TABLES.get(type(backbone).__name__, ("item_embedding",))
    tables = [getattr(backbone, n, None) for n in names]
    if not all(isinstance(t, nn.Embedding) for t in tables):
        return []
    return tables


class StructureEncoder:
    """Calls a backbone the way its ``forward`` asks and returns ``[B, d]`` in item space."""

    def __init__(self, backbone: nn.Module) -> None:
        name = type(backbone).__name__
        check_backbone(name)
        self.backbone = backbone
        self.tables = item_tables(backbone)
        if name in ITEM_TABLES:  # FPMC: [UI_u; LI_l] against [IU_i; IL_i]
            self.params, self.needs_user, self.mask_token = [], True, None
            self.n_items = self.tables[0].num_embeddings
            return
        if not isinstance(getattr(backbone, "item_embedding", None), nn.Embedding):
            raise UnsupportedBackbone(
                f"{name} has no nn.Embedding `item_embedding`: the fusion scores items with the backbone's item "
                f"table. Use a RecBole sequential model that scores by <z, item_embedding>.")
        self.backbone = backbone
        self.params = [p for p in inspect.signature(backbone.forward).parameters]
        known = set(_SEQ + _LEN + ("user", "bidirectional"))
        unknown = [p for p in self.params if p not in known and
                   inspect.signature(backbone.forward).parameters[p].default is inspect.Parameter.empty]
        if unknown or not any(p in _SEQ for p in self.params):
            raise UnsupportedBackbone(f"{name}.forward{inspect.signature(backbone.forward)} takes inputs the structure "
                                      f"encoder cannot give ({', '.join(unknown) or 'no item sequence'}).")
        self.needs_user = "user" in self.params
        self.mask_token = getattr(backbone, "mask_token", None) if name == "BERT4Rec" else None
        rows = backbone.item_embedding.num_embeddings
        # BERT4Rec and S3Rec keep their mask token in the last row of the item table
        self.n_items = rows - 1 if getattr(backbone, "mask_token", None) == rows - 1 else rows

    @property
    def item_table(self) -> torch.Tensor:
        """The item vectors ``v_i`` of ids ``0..n_items-1`` (a mask token's row left out; several
        tables side by side for the models of :data:`ITEM_TABLES`)."""
        if len(self.tables) == 1:
            return self.tables[0].weight[: self.n_items]
        return torch.cat([t.weight[: self.n_items] for t in self.tables], dim=1)

    @property
    def dim(self) -> int:
        return sum(t.embedding_dim for t in self.tables)

    def _fpmc(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        last = item_seq.gather(1, (item_seq_len.long() - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        return torch.cat([self.backbone.UI_emb(user), self.backbone.LI_emb(last)], dim=1)

    def _with_mask(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """BERT4Rec's test input: the mask token after the last item, the oldest item dropped."""
        seq = torch.cat([item_seq, torch.zeros_like(item_seq[:, :1])], dim=1)
        seq = seq.scatter(1, item_seq_len.long().unsqueeze(1), self.mask_token)
        return seq[:, 1:]

    def __call__(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        if self.needs_user and user is None:
            raise ValueError(f"{type(self.backbone).__name__} needs the user of each prefix; pass user=.")
        if type(self.backbone).__name__ in ITEM_TABLES:
            return self._fpmc(item_seq, item_seq_len, user)
        if self.mask_token is not None:
            item_seq = self._with_mask(item_seq, item_seq_len)
        args = []
        for p in self.params:
            if p in _SEQ:
                args.append(item_seq)
            elif p in _LEN:
                args.append(item_seq_len)
            elif p == "user":
                args.append(user)
            elif p == "bidirectional":
                args.append(False)
        z = self.backbone(*args)
        if isinstance(z, (tuple, list)):
            z = z[0]
        if z.dim() == 3:  # the whole sequence: read the last item's position
            index = (item_seq_len.long() - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, z.shape[-1])
            z = z.gather(1, index).squeeze(1)
        return z
