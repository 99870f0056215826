"""Sequences, cues, bounded correction, metrics and the one scoring path."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from recbole_scalrec.staleness.calibrator import Shrink, bounded_correction, corrected_semantics
from recbole_scalrec.staleness.cues import average_ranks, batched_spearman, compute_cues
from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.model.fusion import score_all, score_candidates
from recbole_scalrec.staleness.estimator import fit_target_scale, reliability_target
from recbole_scalrec.staleness.methods import (
    METHODS, TRAINED_METHODS, DynamicFusionHead, GateHead, SCaLRecHead, adjustment, build_head, method_scores,
)
from recbole_scalrec.staleness.protocol import evaluate_staleness, metrics_from_ranks, target_ranks
from recbole_scalrec.staleness.snapshot import PrefixStates, refresh_gaps, repair_candidates, stale_requests


def make_sequences(lengths=(5, 3, 8), n_items=20, seed=0) -> UserSequences:
    rng = np.random.default_rng(seed)
    items = rng.integers(1, n_items, size=sum(lengths))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    times = np.arange(sum(lengths), dtype=np.float64) * 3600.0
    return UserSequences(items.astype(np.int64), times, np.arange(len(items)), offsets, np.arange(1, len(lengths) + 1), n_items)


def test_leave_one_out_split():
    seq = make_sequences()
    # user 0: positions 0..4 -> train prefixes end at 0, 1 (targets 1, 2); valid prefix 2; test prefix 3
    assert seq.train_prefixes().tolist() == [0, 1, 8, 9, 10, 11, 12]
    assert seq.eval_prefixes("valid").tolist() == [2, 5, 13]
    assert seq.eval_prefixes("test").tolist() == [3, 6, 14]
    assert seq.prefix_length(np.array([3, 5, 14])).tolist() == [4, 1, 7]


def test_shift_prefix_clamps_to_first_item():
    seq = make_sequences()
    snap, clamped = seq.shift_prefix(np.array([3, 6, 14]), 5)
    assert snap.tolist() == [0, 5, 9]
    assert clamped.tolist() == [True, True, False]


def test_gather_sequences_left_aligned_and_truncated():
    seq = make_sequences()
    s, length = seq.gather_sequences(torch.tensor([3, 14]), max_len=4)
    assert length.tolist() == [4, 4]
    assert s[0].tolist() == seq.items[0:4].tolist()
    assert s[1].tolist() == seq.items[11:15].tolist()
    s, length = seq.gather_sequences(torch.tensor([5]), max_len=4)
    assert length.tolist() == [1] and s[0, 1:].tolist() == [0, 0, 0]


def test_thin_train_prefixes_aligned_to_last_and_keeps_first():
    seq = make_sequences(lengths=(30,))
    thin = seq.thin_train_prefixes(5)
    assert thin.tolist() == [0, 1, 6, 11, 16, 21, 26]
    # gaps that are multiples of the stride stay on the grid (or clamp to t = 1)
    for g in (5, 10, 20):
        assert set(seq.shift_prefix(thin, g)[0]) <= set(thin)


def test_refresh_gaps():
    seq = make_sequences(lengths=(30,))
    assert refresh_gaps(seq, np.array([0, 1, 4, 5, 9]), 5).tolist() == [0, 1, 4, 0, 4]


def test_average_ranks_and_spearman_match_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (300, 20), generator=g).double()
    y = torch.randint(0, 4, (300, 20), generator=g).double()
    ref = np.array([spearmanr(a, b).statistic for a, b in zip(x.numpy(), y.numpy())])
    ours = batched_spearman(x, y).numpy()
    ok = ~np.isnan(ref)
    assert np.max(np.abs(ours[ok] - ref[ok])) <= 1e-6
    assert average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).tolist() == [[3.5, 1.0, 3.5, 2.0]]


def test_bounded_correction_respects_radius():
    torch.manual_seed(0)
    for _ in range(20):
        u = torch.randn(64, 16) * torch.rand(64, 1) * 10
        z = torch.randn(64, 16)
        kappa = torch.rand(64)
        delta = bounded_correction(u, z, kappa, radius=0.2)
        bound = 0.2 * z.norm(dim=-1) * kappa
        assert torch.all(delta.norm(dim=-1) <= bound + 1e-6)


def test_target_ranks_and_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.3], [0.1, 0.2, 0.3]])
    cands = torch.tensor([[4, 7, 9], [1, 2, 3], [5, 6, 8]])
    targets = torch.tensor([7, 1, 42])  # 42 is not a candidate: a miss
    ranks = target_ranks(scores, cands, targets).numpy()
    assert ranks.tolist() == [2, 3, 0]
    m = metrics_from_ranks(ranks, ks=(1, 5))
    assert m["hit@1"] == 0.0
    assert m["hit@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert m["candidate_recall"] == pytest.approx(2 / 3)


def test_full_ranking_ranks_a_target_the_model_does_not_return_last():
    from recbole_scalrec.staleness.protocol import full_ranking_metrics

    inf = float("inf")
    scores = torch.tensor([[-inf, 0.5, -inf, -inf, 0.2], [-inf, 0.5, -inf, -inf, 0.2]])
    # a scored target ranks among the scored items; one scored -inf is out of the list, not 3rd
    assert full_ranking_metrics(scores, torch.tensor([4, 2])).tolist() == [2, 5]


def test_full_ranking_places_a_tied_target_at_random_among_its_equals():
    """Without a generator a tied target ranks first among its equals; with one its place is drawn
    uniformly among them (about the middle on average), reproducibly for a seed, and untied or
    unnamed targets keep their ranks."""
    from recbole_scalrec.staleness.protocol import full_ranking_metrics

    inf = float("inf")
    row = [-inf, 0.9] + [0.3] * 100 + [0.1]  # the target (item 2) tied with 99 others behind one better item
    scores = torch.tensor([row] * 2000)
    targets = torch.tensor([2] * 1999 + [102])
    assert set(full_ranking_metrics(scores, targets).tolist()[:-1]) == {2}
    drawn = full_ranking_metrics(scores, targets, ties=torch.Generator().manual_seed(0))
    assert drawn[:-1].min() >= 2 and drawn[:-1].max() <= 101 and abs(drawn[:-1].mean() - 51.5) < 3
    assert drawn[-1] == 102  # the untied last item keeps its rank
    again = full_ranking_metrics(scores, targets, ties=torch.Generator().manual_seed(0))
    assert (drawn == again).all()
    unnamed = torch.tensor([[-inf, 0.5, -inf, -inf]])
    assert full_ranking_metrics(unnamed, torch.tensor([2]), ties=torch.Generator().manual_seed(0)).tolist() == [4]


def test_score_all_masks_padding_and_candidates_match():
    table = torch.randn(10, 4)
    z_str, z_sem = torch.randn(3, 4), torch.randn(3, 4)
    full = score_all(table, z_str, z_sem, 0.3)
    assert torch.isinf(full[:, 0]).all()
    cands = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    part = score_candidates(table, cands, z_str, z_sem, 0.3)
    assert torch.allclose(part, full.gather(1, cands), atol=1e-6)


def _states(seq: UserSequences, dim=8, n_cand=6, seed=0) -> PrefixStates:
    g = torch.Generator().manual_seed(seed)
    ids = np.arange(len(seq.items))
    cands = torch.stack([torch.randperm(seq.n_items - 1, generator=g)[:n_cand] + 1 for _ in ids])
    return PrefixStates(ids, torch.randn(len(ids), dim, generator=g), torch.randn(len(ids), dim, generator=g), cands,
                        torch.as_tensor(seq.prefix_length(ids), dtype=torch.float32), torch.ones(len(ids)), torch.zeros(len(ids)))


def test_s2_candidates_are_the_snapshots_and_s1_the_fresh():
    seq = make_sequences()
    states = _states(seq)
    req_ids = seq.eval_prefixes("test")
    s2 = stale_requests(states, seq, req_ids, 2, s2=True)
    s1 = stale_requests(states, seq, req_ids, 2, s2=False)
    snap, _ = seq.shift_prefix(req_ids, 2)
    assert torch.equal(s2.candidates, states.candidates[torch.as_tensor(snap)])
    assert torch.equal(s1.candidates, states.candidates[torch.as_tensor(req_ids)])
    assert torch.equal(s1.z_sem_snap, states.z_sem[torch.as_tensor(snap)])
    assert s2.clamped.tolist() == [False, True, False]


HEAD_CONFIG = {"fusion_weight": 0.5, "correction_radius": 0.2, "estimator_hidden_size": 8, "calibrator_hidden_size": 16,
               "calibrator_use_cues": True, "lambda_rel": 1.0, "lambda_reg": 1e-3, "correction_shrink": True,
               "reliability_target_scale": "median"}


def test_every_method_scores_through_one_path_with_its_own_head():
    seq = make_sequences()
    states = _states(seq)
    req = stale_requests(states, seq, seq.eval_prefixes("test"), 5, s2=True)
    table = torch.randn(seq.n_items, 8)
    cues = compute_cues(req.gap, req.z_str, req.z_str_snap, req.z_sem_snap, table[req.candidates], req.length,
                        req.density, req.per_day, top_m=4)
    heads = {m: build_head(m, HEAD_CONFIG, 8) for m in TRAINED_METHODS}
    assert type(heads["learned_gate"]) is GateHead and type(heads["dynamic_fusion"]) is DynamicFusionHead
    assert all(type(heads[m]) is SCaLRecHead for m in TRAINED_METHODS if m.startswith("scalrec"))
    assert heads["scalrec"].shrink is not None and heads["scalrec_literal"].shrink is None
    assert heads["scalrec"].target_scale_mode == "median" and heads["scalrec_literal"].target_scale_mode == 1.0
    assert heads["scalrec_no_estimator"].estimator is None and heads["scalrec_no_rel_loss"].lambda_rel == 0.0
    for m in METHODS:
        s = method_scores(m, req, table, 0.5, heads, cues)
        assert s.shape == req.candidates.shape and torch.isfinite(s).all()
    structure = method_scores("structure_only", req, table, 0.5)
    assert torch.allclose(structure, torch.einsum("bnd,bd->bn", table[req.candidates], req.z_str), atol=1e-6)
    # the gate scales the cached semantics by g in (0, 1); dynamic fusion keeps them and moves lambda
    gate = adjustment("learned_gate", req, 0.5, heads, cues)
    g = gate.z_sem.norm(dim=-1) / req.z_sem_snap.norm(dim=-1)
    assert ((g > 0) & (g < 1)).all()
    assert torch.allclose(gate.z_sem, g[:, None] * req.z_sem_snap, atol=1e-5)
    dyn = adjustment("dynamic_fusion", req, 0.5, heads, cues)
    assert torch.equal(dyn.z_sem, req.z_sem_snap) and dyn.weight.shape == (len(req), 1)
    assert torch.allclose(dyn.weight, torch.full_like(dyn.weight, 0.5), atol=1e-4)  # starts at lambda
    with pytest.raises(ValueError, match="Unknown method"):
        build_head("scalrec_typo", HEAD_CONFIG, 8)


def test_shrink_lets_the_correction_turn_semantics_down_within_its_bound():
    z = torch.randn(6, 8)
    u = torch.randn(6, 8) * 5
    kappa = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0, 0.3])
    a = torch.tensor([0.9, 0.5, 0.5, 1.0, 1.0, 0.0])
    delta = bounded_correction(u, z, kappa, 0.2)
    out = corrected_semantics(z, delta, kappa, a)
    assert torch.allclose(out, (1 - kappa * a)[:, None] * z + delta)
    assert torch.equal(corrected_semantics(z, delta, kappa, None), z + delta)  # Eq. 14 as printed
    assert torch.allclose(out[0], z[0])  # kappa = 0: nothing moves
    # kappa = a = 1 removes the cached semantics, leaving only the bounded proposal
    assert torch.allclose(out[4], delta[4]) and delta[4].norm() <= 0.2 * z[4].norm() + 1e-5
    # an untrained shrink starts near 0: an untrained head hardly moves the cached semantics
    shrink = Shrink(8, 3, hidden=4)
    assert torch.allclose(shrink(z, z, torch.zeros(6, 3)), torch.full((6,), 0.05), atol=1e-6)


def test_reliability_target_scale():
    m = torch.tensor([0.0, 0.0, 0.01, 0.02, 0.03, 0.04, 0.5])
    assert fit_target_scale(m, "median") == pytest.approx(0.03)  # median of the positive mismatches
    assert fit_target_scale(m, 1.0) == 1.0 and fit_target_scale(m, "2.5") == 2.5
    y = reliability_target(m, 0.03)
    assert y[0] == 1.0 and torch.isclose(y[4], torch.exp(torch.tensor(-1.0)))
    assert torch.allclose(reliability_target(m, 1.0), torch.exp(-m))  # the paper's literal exp(-m)
    noise = torch.tensor([-1e-8, 1e-8, 0.0])  # KL of equal distributions in float arithmetic
    assert torch.equal(reliability_target(noise, 1e-7), torch.ones(3)) and fit_target_scale(noise, "median") == 1.0
    for bad in ("mean", -1.0, 0):
        with pytest.raises(ValueError, match="reliability_target_scale"):
            fit_target_scale(m, bad)


def test_repair_adds_the_best_fresh_structure_items_not_yet_held():
    seq = make_sequences(lengths=(12, 9), n_items=30)
    states = _states(seq, n_cand=6)
    req = stale_requests(states, seq, seq.eval_prefixes("test"), 3, s2=True)
    table = torch.randn(seq.n_items, 8)
    fixed = repair_candidates(req, table, 4)
    assert fixed.candidates.shape == (len(req), 10)
    assert torch.equal(fixed.candidates[:, :6], req.candidates) and torch.equal(fixed.z_sem_snap, req.z_sem_snap)
    for b in range(len(req)):
        held = set(req.candidates[b].tolist())
        extra = fixed.candidates[b, 6:].tolist()
        assert len(set(extra)) == 4 and not held & set(extra) and 0 not in extra
        scores = table @ req.z_str[b]
        rest = [i for i in range(1, seq.n_items) if i not in held]
        best = sorted(rest, key=lambda i: -float(scores[i]))[:4]
        assert extra == best
    assert repair_candidates(req, table, 0) is req
    from recbole_scalrec.staleness.on_device import OnDeviceReranker

    device = OnDeviceReranker(SCaLRecHead(8, 7, 0.5), table)
    for b in range(len(req)):  # the device's one-request kernel adds the same items in the same order
        assert device.repair(req.candidates[b].numpy(), req.z_str[b].numpy(), 4).tolist() == fixed.candidates[b].tolist()


def test_latest_per_user():
    seq = make_sequences(lengths=(10, 3, 8))
    grid = seq.thin_train_prefixes(2)
    latest = seq.latest_per_user(grid, 2)
    users = seq.user_of(latest)
    for u in np.unique(seq.user_of(grid)):
        assert latest[users == u].tolist() == sorted(grid[seq.user_of(grid) == u])[-2:]
    assert np.array_equal(seq.latest_per_user(grid, 0), np.sort(grid))


def test_protocol_records_internals_and_repairs_in_s2_only():
    seq = make_sequences(lengths=(12, 9, 15), n_items=30)
    states = _states(seq, n_cand=6)
    table = torch.randn(seq.n_items, 8)
    heads = {m: build_head(m, HEAD_CONFIG, 8) for m in ("scalrec", "learned_gate")}
    methods = ["fresh_fusion", "cached_fusion", "scalrec", "learned_gate", "cached_fusion+repair", "scalrec+repair"]
    rows = evaluate_staleness(states, seq, table, seq.eval_prefixes("test"), [0, 5], ["S1", "S2"], methods, 0.5,
                              heads, top_m=4, repair_size=3, temperature=4.0)
    got = {(r["setting"], r["gap"], r["method"]): r for r in rows}
    assert ("S1", 5, "scalrec+repair") not in got and ("S2", 5, "scalrec+repair") in got
    assert got[("S2", 5, "cached_fusion")]["internals"] == {"changed_top10": 0.0}
    assert got[("S2", 0, "fresh_fusion")]["internals"]["changed_top10"] == 0.0  # gap 0: the snapshot is fresh
    assert got[("S2", 5, "fresh_fusion")]["internals"]["changed_top10"] > 0.0  # random semantics: stale differs
    inner = got[("S2", 5, "scalrec")]["internals"]
    assert {"y", "r", "kappa", "shrink", "correction", "weight"} <= set(inner)
    assert got[("S2", 0, "scalrec")]["internals"]["y"]["mean"] == 1.0  # no staleness, no mismatch
    assert np.isclose(inner["kappa"]["mean"], 1 - inner["r"]["mean"], atol=1e-6)
    gate = got[("S2", 5, "learned_gate")]["internals"]
    assert 0 < gate["correction"]["q50"] < 1 and "r" not in gate
    assert got[("S2", 5, "cached_fusion+repair")]["metrics"]["candidate_recall"] >= got[("S2", 5, "cached_fusion")]["metrics"]["candidate_recall"]
    with pytest.raises(ValueError, match="repair_size"):
        evaluate_staleness(states, seq, table, seq.eval_prefixes("test"), [5], ["S2"], ["cached_fusion+repair"], 0.5)


@pytest.mark.parametrize("head_kwargs", [{}, {"use_estimator": False}, {"calibrator_cues": False}, {"shrink": True},
                                         {"shrink": True, "calibrator_cues": False}])
def test_on_device_reranker_matches_the_batched_path(head_kwargs):
    from recbole_scalrec.staleness.on_device import OnDeviceReranker

    seq = make_sequences(lengths=(30, 25))
    states = _states(seq, n_cand=12)
    req = stale_requests(states, seq, seq.eval_prefixes("test"), 5, s2=True)
    table = torch.randn(seq.n_items, 8)
    cues = compute_cues(req.gap, req.z_str, req.z_str_snap, req.z_sem_snap, table[req.candidates], req.length,
                        req.density, req.per_day, top_m=5)
    head = SCaLRecHead(8, cues.shape[1], 0.5, **head_kwargs)
    if head.shrink is not None:  # a trained shrink, not its constant start
        torch.nn.init.normal_(head.shrink.net[2].weight)
    head.scaler.fit(torch.randn(50, cues.shape[1]) + cues.mean(0))
    head.eval()
    with torch.no_grad():
        batched = method_scores("scalrec", req, table, 0.5, {"scalrec": head}, cues)
    device = OnDeviceReranker(head, table, top_m=5)
    for b in range(len(req)):
        one = device.scores(req.candidates[b].numpy(), z_str=req.z_str[b].numpy(), z_str_snap=req.z_str_snap[b].numpy(),
                            z_sem_snap=req.z_sem_snap[b].numpy(), gap=float(req.gap[b]), length=float(req.length[b]),
                            density=float(req.density[b]), per_day=float(req.per_day[b]))
        assert np.allclose(one, batched[b].numpy(), atol=1e-4)
        raw = device.cues(req.candidates[b].numpy(), z_str=req.z_str[b].numpy(), z_str_snap=req.z_str_snap[b].numpy(),
                          z_sem_snap=req.z_sem_snap[b].numpy(), gap=float(req.gap[b]), length=float(req.length[b]),
                          density=float(req.density[b]), per_day=float(req.per_day[b]))
        assert np.allclose(raw, cues[b].numpy(), atol=1e-5)
        top = device.rerank(req.candidates[b].numpy(), k=3, z_str=req.z_str[b].numpy(), z_str_snap=req.z_str_snap[b].numpy(),
                            z_sem_snap=req.z_sem_snap[b].numpy(), gap=int(req.gap[b]), length=int(req.length[b]),
                            density=float(req.density[b]), per_day=float(req.per_day[b]))
        assert list(top) == list(req.candidates[b].numpy()[np.argsort(-one, kind="stable")[:3]])
