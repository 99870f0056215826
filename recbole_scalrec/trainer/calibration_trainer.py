"""Stage 2 (METHOD.md Sec. 6, Eqs. 15-21): train a staleness head with the backbone frozen.

Each epoch visits every training request once with a random gap ``Delta in G`` and a random
setting (S2 with probability ``stage2_s2_prob``). Over the request's candidate set, with
temperature ``tau``:

* teacher ``p_T = softmax(s_fresh / tau)`` (fresh ``z_sem(t)``, offline only),
* stale student ``p_S = softmax(s_stale / tau)``; mismatch ``m = KL(p_T || p_S)`` (Eq. 17),
  reliability target ``y = exp(-m)`` (Eq. 18), ``L_rel = (r - y)^2`` (Eq. 19),
* corrected ``p_C = softmax(s_corr / tau)`` (Eq. 20),
* ``L = KL(p_T || p_C) + lambda_rel * L_rel + lambda_reg * ||u||^2`` (Eq. 21).

Model selection: early stopping on validation NDCG@10 under the protocol (mean over
``eval_gaps`` x ``eval_settings``); an epoch within ``stage2_tie_tolerance`` of the best so far
counts as a tie, and ties go to the longer-trained head.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F

from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.fusion import score_candidates
from recbole_scalrec.methods import StalenessHead, adjustment, request_cues
from recbole_scalrec.protocol import evaluate_staleness, mean_ndcg10
from recbole_scalrec.snapshot import PrefixStates, StaleRequests, stale_requests

logger = logging.getLogger(__name__)


def kl_div(p_log_teacher: torch.Tensor, p_log_student: torch.Tensor) -> torch.Tensor:
    """``KL(p_T || p_S)`` per row from log-probabilities."""
    return (p_log_teacher.exp() * (p_log_teacher - p_log_student)).sum(-1)


def distillation_loss(head: StalenessHead, req: StaleRequests, cues: torch.Tensor, item_table: torch.Tensor,
                      fusion_weight: float, tau: float, method: str) -> tuple[torch.Tensor, dict]:
    """Eq. 21 for one batch (``L_rel`` / ``L_reg`` only where the head has them)."""
    def log_p(z_sem, weight):
        w = weight.reshape(-1, 1) if torch.is_tensor(weight) else weight
        return F.log_softmax(score_candidates(item_table, req.candidates, req.z_str, z_sem, w) / tau, dim=-1)

    log_teacher = log_p(req.z_sem_fresh, fusion_weight)
    adj = adjustment(method, req, fusion_weight, {method: head}, cues)
    loss = kl_div(log_teacher, log_p(adj.z_sem, adj.weight)).mean()
    parts = {"kd": loss.item()}
    if adj.reliability is not None and head.lambda_rel > 0:
        with torch.no_grad():
            target = torch.exp(-kl_div(log_teacher, log_p(req.z_sem_snap, fusion_weight)))
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
    def fit_scaler(self, head: StalenessHead, rng: np.random.Generator) -> None:
        """Standardise cues with their statistics on one sampled pass over the training requests."""
        ids = self.train_ids[rng.permutation(len(self.train_ids))[:20000]]
        req = self._sample(rng, ids)
        head.scaler.fit(request_cues(req, self.item_table, self.config["spearman_top_m"]))

    def validate(self, head: StalenessHead, method: str) -> float:
        rows = evaluate_staleness(self.states, self.sequences, self.item_table, self.valid_ids,
                                  self.config["eval_gaps"], self.config["eval_settings"], [method],
                                  self.config["fusion_weight"], {method: head}, self.config["spearman_top_m"],
                                  self.config["eval_batch_size"])
        return mean_ndcg10(rows, method)

    def fit(self, head: StalenessHead, method: str) -> dict:
        cfg = self.config
        rng = np.random.default_rng(cfg["seed"])
        torch.manual_seed(cfg["seed"])
        self.fit_scaler(head, rng)
        optimizer = torch.optim.Adam(head.parameters(), lr=cfg["stage2_learning_rate"])
        best, best_state, bad, history = -float("inf"), None, 0, []
        tie = float(cfg["stage2_tie_tolerance"] or 0.0)
        for epoch in range(cfg["stage2_epochs"]):
            head.train()
            order = rng.permutation(len(self.train_ids))
            total, n = 0.0, 0
            for lo in range(0, len(order), cfg["stage2_batch_size"]):
                req = self._sample(rng, self.train_ids[order[lo : lo + cfg["stage2_batch_size"]]])
                cues = request_cues(req, self.item_table, cfg["spearman_top_m"])
                loss, _ = distillation_loss(head, req, cues, self.item_table, cfg["fusion_weight"],
                                            cfg["kd_temperature"], method)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(req)
                n += len(req)
            score = self.validate(head, method)
            history.append({"epoch": epoch, "loss": total / max(n, 1), "valid_ndcg@10": score})
            logger.info(f"stage 2 [{method}] epoch {epoch}: loss {total / max(n, 1):.5f}, valid NDCG@10 {score:.4f}")
            if score >= best - tie:  # ties (within the tolerance) go to the longer-trained head
                best, best_state, bad = max(best, score), copy.deepcopy(head.state_dict()), 0
            else:
                bad += 1
                if bad >= cfg["stage2_stopping_step"]:
                    break
        if best_state is not None:
            head.load_state_dict(best_state)
        head.eval()
        return {"best_valid_ndcg@10": best, "epochs_run": len(history), "history": history}
