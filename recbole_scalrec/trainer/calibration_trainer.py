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
from recbole_scalrec.staleness.estimator import candidate_log_probs, fit_target_scale, kl_div, mismatch, reliability_target
from recbole_scalrec.staleness.methods import StalenessHead, adjustment, request_cues
from recbole_scalrec.staleness.protocol import evaluate_staleness, mean_ndcg10
from recbole_scalrec.staleness.snapshot import PrefixStates, StaleRequests, stale_requests

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


class _HeadProgress:
    """One head's optimiser, early-stopping state and history while stage 2 trains it."""

    def __init__(self, method: str, head: StalenessHead, lr: float, target: dict) -> None:
        self.method, self.head, self.target = method, head, target
        self.optimizer = torch.optim.Adam(head.parameters(), lr=lr)
        self.best, self.best_state, self.best_epoch, self.bad = -float("inf"), None, 0, 0
        self.history: list[dict] = []
        self.active = True
        self.epoch_sums: dict[str, float] = {}

    def step(self, loss: torch.Tensor, parts: dict, n: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for name, value in {"loss": loss.item(), **parts}.items():
            self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + value * n
        self.epoch_sums["n"] = self.epoch_sums.get("n", 0.0) + n

    def end_epoch(self, epoch: int, score: float, tie: float, patience: int) -> None:
        n = max(self.epoch_sums.pop("n", 0.0), 1.0)
        loss = self.epoch_sums.pop("loss", 0.0) / n
        parts = {name: value / n for name, value in self.epoch_sums.items()}
        self.epoch_sums = {}
        self.history.append({"epoch": epoch, "loss": loss, "parts": parts, "valid_ndcg@10": score})
        logger.info(f"stage 2 [{self.method}] epoch {epoch}: loss {loss:.5f} ("
                    + ", ".join(f"{k} {v:.5f}" for k, v in parts.items()) + f"), valid NDCG@10 {score:.4f}")
        if score >= self.best - tie:  # ties (within the tolerance) go to the longer-trained head
            self.best, self.best_state, self.best_epoch, self.bad = max(self.best, score), copy.deepcopy(self.head.state_dict()), epoch, 0
        else:
            self.bad += 1
            self.active = self.bad < patience

    def finish(self, n_requests: int) -> dict:
        if self.best_state is not None:
            self.head.load_state_dict(self.best_state)
        self.head.eval()
        return {"best_valid_ndcg@10": self.best, "epochs_run": len(self.history), "best_epoch": self.best_epoch,
                "n_requests": n_requests, **self.target, "history": self.history}


class CalibrationTrainer:
    """Fits staleness heads on frozen :class:`PrefixStates`.

    :meth:`fit_all` trains several heads in one pass: every head sees the same sampled batches (one
    draw of gaps and settings, the cues computed once per batch) and is validated in one protocol
    pass, each with its own optimiser and early stopping. A head's draws do not depend on the other
    heads, so each ends exactly as :meth:`fit` alone would leave it (tested).
    """

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
    def fit_scalers(self, heads: dict[str, StalenessHead], rng: np.random.Generator) -> dict[str, dict]:
        """On one sampled pass over (at most 20,000) training requests: standardise every head's
        cues with their statistics and set its ``m0`` of the reliability target
        (:func:`fit_target_scale` of the head's ``target_scale_mode``); per head, ``m0`` and the
        quartiles of the mismatch ``m`` seen."""
        ids = self.train_ids[rng.permutation(len(self.train_ids))[:20000]]
        req = self._sample(rng, ids)
        cues = request_cues(req, self.item_table, self.config["spearman_top_m"])
        m = mismatch(req, self.item_table, self.config["fusion_weight"], self.config["kd_temperature"])
        q25, q50, q75 = (float(v) for v in torch.quantile(m.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.double)))
        out = {}
        for method, head in heads.items():
            head.scaler.fit(cues)
            head.target_scale.fill_(fit_target_scale(m, head.target_scale_mode))
            out[method] = {"target_scale": float(head.target_scale), "mismatch_q25": q25, "mismatch_q50": q50,
                           "mismatch_q75": q75}
        return out

    def validate(self, heads: dict[str, StalenessHead]) -> dict[str, float]:
        """Validation NDCG@10 of each head under the protocol (gaps > 0), in one pass."""
        rows = evaluate_staleness(self.states, self.sequences, self.item_table, self.valid_ids,
                                  self.config["eval_gaps"], self.config["eval_settings"], list(heads),
                                  self.config["fusion_weight"], heads, self.config["spearman_top_m"],
                                  self.config["eval_batch_size"], internals=False)
        min_gap = 1 if any(g > 0 for g in self.config["eval_gaps"]) else 0
        return {method: mean_ndcg10(rows, method, min_gap=min_gap) for method in heads}

    def fit(self, head: StalenessHead, method: str) -> dict:
        """Train one head (:meth:`fit_all` with one head)."""
        return self.fit_all({method: head})[method]

    def fit_all(self, heads: dict[str, StalenessHead]) -> dict[str, dict]:
        """Train every head on the same batches; per head, its summary and per-epoch history
        (loss, loss parts, validation score); each head ends with its best epoch's weights."""
        cfg = self.config
        rng = np.random.default_rng(cfg["seed"])
        torch.manual_seed(cfg["seed"])
        targets = self.fit_scalers(heads, rng)
        progress = {m: _HeadProgress(m, h, cfg["stage2_learning_rate"], targets[m]) for m, h in heads.items()}
        t = next(iter(targets.values()), None)
        if t is not None:
            logger.info(f"stage 2 [{', '.join(heads)}]: {len(self.train_ids)} training requests; mismatch m quartiles "
                        f"{t['mismatch_q25']:.4g} {t['mismatch_q50']:.4g} {t['mismatch_q75']:.4g}; m0 "
                        + ", ".join(f"{m} {v['target_scale']:.4g}" for m, v in targets.items()))
        tie = float(cfg["stage2_tie_tolerance"] or 0.0)
        bar = None
        if cfg["show_progress"] and heads:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg["stage2_epochs"], desc="stage 2", unit="epoch", leave=False, disable=None)
        try:
            for epoch in range(cfg["stage2_epochs"]):
                active = [p for p in progress.values() if p.active]
                if not active:
                    break
                for p in active:
                    p.head.train()
                order = rng.permutation(len(self.train_ids))
                for lo in range(0, len(order), cfg["stage2_batch_size"]):
                    req = self._sample(rng, self.train_ids[order[lo : lo + cfg["stage2_batch_size"]]])
                    cues = request_cues(req, self.item_table, cfg["spearman_top_m"])
                    for p in active:
                        loss, parts = distillation_loss(p.head, req, cues, self.item_table, cfg["fusion_weight"],
                                                        cfg["kd_temperature"], p.method)
                        p.step(loss, parts, len(req))
                scores = self.validate({p.method: p.head for p in active})
                for p in active:
                    p.end_epoch(epoch, scores[p.method], tie, cfg["stage2_stopping_step"])
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return {m: p.finish(int(len(self.train_ids))) for m, p in progress.items()}
