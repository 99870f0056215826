"""CDA4Rec (Long et al., "Cloud-Device Collaborative Agents for Sequential Recommendation",
arXiv 2509.01551): the paper's device-cloud family in Table 2 and its plug-in study (RQ4,
METHOD.md Sec. 8).

The mechanism kept: the cloud's language model turns the user's behaviour ``S_{<=t0}`` into a text
abstract and a semantic user embedding, and a *strategy planner* on the cloud decides, from what the
cloud knows of the user at ``t0``, how the cloud and the device should collaborate on the user's next
requests; the plan is sent with the semantics and cached. The device executes the plan on its fresh
sequence ``S_{<=t}``: it ranks the cached candidates with its own sequential model and the cached
semantics, mixed as the plan says. Nothing on the device re-plans.

The plan here is one of ``cda4rec_strategies``, the share ``lambda_k`` of the semantic side in the
one scoring function (METHOD.md Eq. 4; ``0``: the device model alone, ``1``: the cloud semantics
alone; the run's own ``fusion_weight`` is always among them). The planner is an MLP over the cloud's
context at ``t0`` (its semantic and structure vectors, the prefix length, the recent density and
pace), standardised, with a softmax ``pi`` over the strategies, trained on the run's stage-2 training
requests as the cloud sees them (no staleness) to maximise the mixture likelihood of the target in
its candidate set, ``log sum_k pi_k softmax_C(s_k / tau)[target]``, with validation early stopping on
NDCG@10 of the argmax plan (also without staleness: the cloud does not know when its plan is read).
At request time the plan is the argmax strategy.

Substitutions, each named: (1) CDA4Rec's cloud LLM writes a plan in words that decomposes the task
for the device's small LM; here the cloud language model is the project's (all-MiniLM-L6-v2 over the
text abstract of ``S_{<=t0}``, the same cache every device-cloud row is served) and the plan is the
discrete collaboration strategy such a plan selects, learned from the data instead of prompted;
(2) the device's small LM is the run's sequential model (the structure encoder of the fused model,
trained by SCaLRec's stage 1). ``cda4rec+scalrec`` executes the same plan with the semantics
SCaLRec's estimator and calibrator give the cached embedding on the device. Keys:
``properties/model/CDA4Rec.yaml``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn


def plan_features(states, prefix_ids: np.ndarray) -> torch.Tensor:
    """The cloud's context at the prefixes ``prefix_ids`` (its own time ``t0``): ``[z_sem, z_str,
    log(1 + length), density, per_day]``."""
    rows = states.rows(np.asarray(prefix_ids, dtype=np.int64))
    return torch.cat([states.z_sem[rows], states.z_str[rows], torch.log1p(states.length[rows].float())[:, None],
                      states.density[rows].float()[:, None], states.per_day[rows].float()[:, None]], 1)


class StrategyPlanner(nn.Module):
    """Standardised cloud context -> logits over the strategies."""

    def __init__(self, n_features: int, n_strategies: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_strategies))

    def fit_scaler(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.std)


class CDA4Rec(SequentialRecommender):
    """See the module docstring. ``strategy_scores(weight)`` callbacks give the candidate scores
    of a request batch under one strategy weight (the caller's one scoring path)."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset, n_features: int) -> None:
        super().__init__(config, dataset)
        weights = [float(w) for w in (config["cda4rec_strategies"] or [0.0, 0.5, 1.0])]
        own = float(config["fusion_weight"]) if config["fusion_weight"] is not None else None
        if own is not None and all(abs(w - own) > 1e-9 for w in weights):
            weights.append(own)
        self.register_buffer("strategies", torch.tensor(sorted(weights)))
        self.planner = StrategyPlanner(n_features, len(weights), int(config["cda4rec_planner_hidden"] or 64))
        self.temperature = float(config["cda4rec_temperature"] or 1.0)
        self.lr = float(config["cda4rec_learning_rate"] or 1e-3)
        self.epochs = int(config["cda4rec_epochs"] or 30)
        self.patience = int(config["cda4rec_stopping_step"] or 3)
        self.batch_size = int(config["cda4rec_batch_size"] or 512)

    def plan(self, features: torch.Tensor) -> torch.Tensor:
        """Index of the planned strategy per request."""
        return self.planner(features).argmax(1)

    def planned_weight(self, features: torch.Tensor) -> torch.Tensor:
        """``lambda`` of the planned strategy, ``[B, 1]``."""
        return self.strategies[self.plan(features)][:, None]

    def mixture_loss(self, logits: torch.Tensor, scores: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
        """``-log sum_k pi_k softmax_C(s_k / tau)[target]`` over requests whose target is a candidate.

        ``scores`` ``[B, K, N]``: each strategy's candidate scores; ``hit`` ``[B, N]``: the target's place."""
        log_p = F.log_softmax(scores / self.temperature, dim=2)
        target = torch.where(hit[:, None, :], log_p, torch.full_like(log_p, -torch.inf)).amax(2)  # [B, K]
        return -torch.logsumexp(F.log_softmax(logits, 1) + target, 1).mean()

    def fit_planner(self, train: dict, valid: dict, seed: int = 0) -> dict:
        """Train the planner on ``train`` and stop on ``valid``; each a dict of ``features`` ``[B, F]``,
        ``scores`` ``[B, K, N]`` (every strategy's candidate scores) and ``hit`` ``[B, N]``. Returns
        the history (loss, validation NDCG@10 of the plan, how often each strategy is planned)."""
        keep = train["hit"].any(1)
        feats, scores, hit = train["features"][keep], train["scores"][keep], train["hit"][keep]
        self.planner.fit_scaler(feats)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(self.planner.parameters(), lr=self.lr)
        best, best_state, bad, history = self.plan_ndcg(valid), None, 0, []
        start = best
        for epoch in range(self.epochs):
            self.planner.train()
            total = 0.0
            for batch in torch.randperm(len(feats), generator=generator).split(self.batch_size):
                loss = self.mixture_loss(self.planner(feats[batch]), scores[batch], hit[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss) * len(batch)
            score = self.plan_ndcg(valid)
            history.append({"epoch": epoch, "loss": total / len(feats), "valid_ndcg@10": score})
            if score > best:
                best, best_state, bad = score, {k: v.clone() for k, v in self.planner.state_dict().items()}, 0
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if best_state is not None:
            self.planner.load_state_dict(best_state)
        self.planner.eval()
        with torch.no_grad():
            counts = torch.bincount(self.plan(valid["features"]), minlength=len(self.strategies))
        return {"strategies": self.strategies.tolist(), "planner_history": history,
                "valid_ndcg@10_start": start, "valid_ndcg@10": best, "training_requests": int(keep.sum()),
                "valid_plan_share": (counts.float() / counts.sum()).tolist()}

    @torch.no_grad()
    def plan_ndcg(self, split: dict) -> float:
        """NDCG@10 on the candidate sets when each request follows its argmax plan."""
        self.planner.eval()
        chosen = self.plan(split["features"])
        scores = split["scores"][torch.arange(len(chosen)), chosen]
        target = torch.where(split["hit"], scores, torch.full_like(scores, -torch.inf)).amax(1)
        rank = (scores > target[:, None]).sum(1) + 1
        gain = torch.where(split["hit"].any(1) & (rank <= 10), 1.0 / torch.log2(rank.float() + 1), torch.zeros(()))
        return float(gain.mean())

    def calculate_loss(self, interaction):  # pragma: no cover - trained by fit_planner on cached requests
        raise NotImplementedError("CDA4Rec's planner trains on the cloud's requests: use fit_planner.")

    def predict(self, interaction):  # pragma: no cover
        raise NotImplementedError("CDA4Rec ranks a cached candidate set: serve it through recbole_scalrec.table2.")

    full_sort_predict = predict
