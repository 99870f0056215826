"""Stage 2 (METHOD.md Sec. 6, Eqs. 15-21): train a staleness head with the backbone frozen.

Each epoch visits every training request once with a random gap ``Delta in G`` and a random
setting (S2 with probability ``stage2_s2_prob``). Over the request's candidate set, with
temperature ``tau``:

* teacher ``p_T = softmax(s_fresh / tau)`` (fresh ``z_sem(t)``, offline only),
* stale student ``p_S = softmax(s_stale / tau)``; mismatch ``m = KL(p_T || p_S)`` (Eq. 17),
  reliability target ``y = exp(-m / m0)`` (Eq. 18; ``m0`` from ``reliability_target_scale``,
  fitted once on the training requests), ``L_rel = (r - y)^2`` (Eq. 19),
* corrected ``p_C = softmax(s_corr / tau)`` (Eq. 20),
* ``L = KL(p_T || p_C) + lambda_rel * L_rel + lambda_reg * ||u||^2`` (Eq. 21).

Requests come from ``stage2_prefixes`` (the pipeline picks them, ``stage2_requests``). Model
selection: early stopping on validation NDCG@10 under the protocol (mean over the gaps of
``eval_gaps`` above 0 x ``eval_settings``; at gap 0 the best head is one that changes nothing); an
epoch within ``stage2_tie_tolerance`` of the best so far counts as a tie, and ties go to the
longer-trained head. Each epoch's history holds the mean of every loss part.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.estimator import candidate_log_probs, fit_target_scale, kl_div, mismatch, reliability_target
from recbole_scalrec.methods import StalenessHead, adjustment, request_cues
from recbole_scalrec.protocol import evaluate_staleness, mean_ndcg10
from recbole_scalrec.snapshot import PrefixStates, StaleRequests, stale_requests

logger = logging.getLogger(__name__)


def distillation_loss(head: StalenessHead, req: StaleRequests, cues: torch.Tensor, item_table: torch.Tensor,
                      fusion_weight: float, tau: float, method: str) -> tuple[torch.Tensor, dict]:
    """Eq. 21 for one batch (``L_rel`` / ``L_reg`` only where the head has them); the parts as floats."""
    def log_p(z_sem, weight):
        return candidate_log_probs(item_table, req.candidates, req.z_str, z_sem, weight, tau)

    log_teacher = log_p(req.z_sem_fresh, fusion_weight)
    adj = adjustment(method, req, fusion_weight, {method: head}, cues)
    loss = kl_div(log_teacher, log_p(adj.z_sem, adj.weight)).mean()
    parts = {"kd": loss.item()}
    if adj.reliability is not None and head.lambda_rel > 0:
        with torch.no_grad():
            target = reliability_target(kl_div(log_teacher, log_p(req.z_sem_snap, fusion_weight)), head.target_scale)
        l_rel = ((adj.reliability - target) ** 2).mean()
        loss = loss + head.lambda_rel * l_rel
        parts["rel"] = l_rel.item()
    if adj.proposal is not None and head.lambda_reg > 0:
        l_reg = adj.proposal.pow(2).sum(-1).mean()
        loss = loss + head.lambda_reg * l_reg
        parts["reg"] = l_reg.item()
    return loss, parts


class CalibrationTrainer:
    """Fits one staleness head on frozen :class:`PrefixStates`."""

    def __init__(self, config, states: PrefixStates, sequences: UserSequences, item_table: torch.Tensor,
                 train_ids: np.ndarray, valid_ids: np.ndarray) -> None:
        self.config = config
        self.states = states
        self.sequences = sequences
        self.item_table = item_table.detach()
        self.train_ids = train_ids
        self.valid_ids = valid_ids
        self.gaps = np.asarray(config["stage2_gaps"], dtype=np.int64)

    def _sample(self, rng: np.random.Generator, ids: np.ndarray) -> StaleRequests:
        gaps = rng.choice(self.gaps, size=len(ids))
        s2 = rng.random(len(ids)) < self.config["stage2_s2_prob"]
        return stale_requests(self.states, self.sequences, ids, gaps, s2)

    @torch.no_grad()
    def fit_scaler(self, head: StalenessHead, rng: np.random.Generator) -> dict:
        """On one sampled pass over (at most 20,000) training requests: standardise the cues with
        their statistics and set ``m0`` of the reliability target (:func:`fit_target_scale` of the
        head's ``target_scale_mode``); returns ``m0`` and the quartiles of ``m`` it saw."""
        ids = self.train_ids[rng.permutation(len(self.train_ids))[:20000]]
        req = self._sample(rng, ids)
        head.scaler.fit(request_cues(req, self.item_table, self.config["spearman_top_m"]))
        m = mismatch(req, self.item_table, self.config["fusion_weight"], self.config["kd_temperature"])
        head.target_scale.fill_(fit_target_scale(m, head.target_scale_mode))
        q25, q50, q75 = (float(v) for v in torch.quantile(m.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.double)))
        return {"target_scale": float(head.target_scale), "mismatch_q25": q25, "mismatch_q50": q50, "mismatch_q75": q75}

    def validate(self, head: StalenessHead, method: str) -> float:
        rows = evaluate_staleness(self.states, self.sequences, self.item_table, self.valid_ids,
                                  self.config["eval_gaps"], self.config["eval_settings"], [method],
                                  self.config["fusion_weight"], {method: head}, self.config["spearman_top_m"],
                                  self.config["eval_batch_size"], temperature=self.config["kd_temperature"])
        return mean_ndcg10(rows, method, min_gap=1 if any(g > 0 for g in self.config["eval_gaps"]) else 0)

    def fit(self, head: StalenessHead, method: str) -> dict:
        cfg = self.config
        rng = np.random.default_rng(cfg["seed"])
        torch.manual_seed(cfg["seed"])
        target = self.fit_scaler(head, rng)
        logger.info(f"stage 2 [{method}]: {len(self.train_ids)} training requests; mismatch m quartiles "
                    f"{target['mismatch_q25']:.4g} {target['mismatch_q50']:.4g} {target['mismatch_q75']:.4g}, m0 {target['target_scale']:.4g}")
        optimizer = torch.optim.Adam(head.parameters(), lr=cfg["stage2_learning_rate"])
        best, best_state, best_epoch, bad, history = -float("inf"), None, 0, 0, []
        tie = float(cfg["stage2_tie_tolerance"] or 0.0)
        for epoch in range(cfg["stage2_epochs"]):
            head.train()
            order = rng.permutation(len(self.train_ids))
            total, n, part_sums = 0.0, 0, {}
            for lo in range(0, len(order), cfg["stage2_batch_size"]):
                req = self._sample(rng, self.train_ids[order[lo : lo + cfg["stage2_batch_size"]]])
                cues = request_cues(req, self.item_table, cfg["spearman_top_m"])
                loss, parts = distillation_loss(head, req, cues, self.item_table, cfg["fusion_weight"],
                                            cfg["kd_temperature"], method)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(req)
                n += len(req)
                for name, value in parts.items():
                    part_sums[name] = part_sums.get(name, 0.0) + value * len(req)
            score = self.validate(head, method)
            parts = {name: value / max(n, 1) for name, value in part_sums.items()}
            history.append({"epoch": epoch, "loss": total / max(n, 1), "parts": parts, "valid_ndcg@10": score})
            logger.info(f"stage 2 [{method}] epoch {epoch}: loss {total / max(n, 1):.5f} ("
                        + ", ".join(f"{k} {v:.5f}" for k, v in parts.items()) + f"), valid NDCG@10 {score:.4f}")
            if score >= best - tie:  # ties (within the tolerance) go to the longer-trained head
                best, best_state, best_epoch, bad = max(best, score), copy.deepcopy(head.state_dict()), epoch, 0
            else:
                bad += 1
                if bad >= cfg["stage2_stopping_step"]:
                    break
        if best_state is not None:
            head.load_state_dict(best_state)
        head.eval()
        return {"best_valid_ndcg@10": best, "epochs_run": len(history), "best_epoch": best_epoch,
                "n_requests": int(len(self.train_ids)), **target, "history": history}
