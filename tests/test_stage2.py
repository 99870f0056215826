"""Stage 2 on synthetic states where stale semantics are wrong: the heads must learn to act.

Each user's fresh semantics drift as a random walk over time; the structure embedding sees the
fresh semantics (plus noise). So the longer the gap, the further the cached semantics are from
the fresh ones, and the device's cues (gap, structure drift) can tell.
"""
import numpy as np
import torch

from recbole_scalrec.model.fusion import retrieve_candidates, score_all
from recbole_scalrec.staleness.methods import build_head
from recbole_scalrec.staleness.protocol import evaluate_staleness
from recbole_scalrec.staleness.snapshot import PrefixStates
from recbole_scalrec.trainer.calibration_trainer import CalibrationTrainer
from test_core import make_sequences

DIM, N_CAND = 8, 20
CONFIG = {
    "fusion_weight": 0.5, "correction_radius": 0.5, "estimator_hidden_size": 16, "calibrator_hidden_size": 32,
    "calibrator_use_cues": True, "lambda_rel": 1.0, "lambda_reg": 1e-3, "correction_shrink": True,
    "reliability_target_scale": "median", "kd_temperature": 1.0, "spearman_top_m": 10, "seed": 0,
    "stage2_gaps": [0, 5, 10, 20], "stage2_s2_prob": 0.5, "stage2_epochs": 15, "stage2_batch_size": 128,
    "stage2_learning_rate": 0.01, "stage2_stopping_step": 15, "stage2_tie_tolerance": 1.0,
    "eval_gaps": [0, 5, 20], "eval_settings": ["S1", "S2"], "eval_batch_size": 512, "show_progress": False,
}


def drifting_states(n_users=40, length=60, n_items=120, seed=0):
    seq = make_sequences(lengths=(length,) * n_users, n_items=n_items, seed=seed)
    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(len(seq.items), DIM, generator=g) * 0.35
    z_sem = torch.empty(len(seq.items), DIM)
    for u in range(n_users):  # a random walk per user
        a, b = seq.offsets[u], seq.offsets[u + 1]
        z_sem[a:b] = torch.randn(1, DIM, generator=g) + torch.cumsum(steps[a:b], 0)
    z_str = z_sem + 0.3 * torch.randn(len(seq.items), DIM, generator=g)
    table = torch.randn(n_items, DIM, generator=g)
    cands = retrieve_candidates(score_all(table, z_str, z_sem, 0.5), N_CAND)
    ids = np.arange(len(seq.items))
    density, _ = seq.density(ids, 50)
    states = PrefixStates(ids, z_str, z_sem, cands, torch.as_tensor(seq.prefix_length(ids), dtype=torch.float32),
                          torch.as_tensor(density), torch.zeros(len(ids)))
    return seq, states, table


def test_trained_scalrec_acts_where_stale_semantics_are_wrong():
    torch.manual_seed(0)
    seq, states, table = drifting_states()
    trainer = CalibrationTrainer(CONFIG, states, seq, table, seq.train_prefixes(), seq.eval_prefixes("valid"))
    head = build_head("scalrec", CONFIG, DIM)
    info = trainer.fit(head, "scalrec")
    assert info["epochs_run"] == 15 and info["best_epoch"] == 14 and info["target_scale"] > 0
    first, last = info["history"][0]["parts"], info["history"][-1]["parts"]
    assert last["kd"] < first["kd"] and last["rel"] < first["rel"]  # it learned the teacher and the target
    rows = evaluate_staleness(states, seq, table, seq.eval_prefixes("test"), [0, 5, 20], ["S2"],
                              ["cached_fusion", "scalrec"], 0.5, {"scalrec": head}, top_m=10, temperature=1.0)
    inner = {r["gap"]: r["internals"] for r in rows if r["method"] == "scalrec"}
    # the estimator sees staleness grow with the gap, and the target it learned does too
    assert inner[0]["r"]["mean"] > inner[5]["r"]["mean"] > inner[20]["r"]["mean"]
    assert inner[0]["y"]["mean"] == 1.0 and inner[20]["y"]["mean"] < 0.6
    # so it corrects more at the longer gap, and changes rankings there
    assert inner[20]["correction"]["mean"] > inner[0]["correction"]["mean"]
    assert inner[20]["changed_top10"] > 0.5


def test_heads_trained_together_end_as_each_trained_alone():
    seq, states, table = drifting_states(n_users=16, length=40)
    cfg = dict(CONFIG, stage2_epochs=4, stage2_stopping_step=1, stage2_tie_tolerance=0.0)
    trainer = CalibrationTrainer(cfg, states, seq, table, seq.train_prefixes(), seq.eval_prefixes("valid"))
    methods = ("scalrec", "learned_gate", "dynamic_fusion", "scalrec_literal")

    def fresh(method):
        torch.manual_seed(0)
        return build_head(method, cfg, DIM)

    together = {m: fresh(m) for m in methods}
    info_all = trainer.fit_all(together)
    for m in methods:
        alone = fresh(m)
        info = trainer.fit(alone, m)
        assert info["history"] == info_all[m]["history"] and info["best_epoch"] == info_all[m]["best_epoch"]
        for key, value in alone.state_dict().items():
            assert torch.equal(value, together[m].state_dict()[key]), (m, key)
