"""Sequences, cues, bounded correction, metrics and the one scoring path."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from recbole_scalrec.calibrator import bounded_correction
from recbole_scalrec.cues import average_ranks, batched_spearman, compute_cues
from recbole_scalrec.data.sequences import UserSequences
from recbole_scalrec.fusion import score_all, score_candidates
from recbole_scalrec.methods import METHODS, SCaLRecHead, method_scores
from recbole_scalrec.protocol import metrics_from_ranks, target_ranks
from recbole_scalrec.snapshot import PrefixStates, refresh_gaps, stale_requests


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


def test_every_method_scores_through_one_path():
    seq = make_sequences()
    states = _states(seq)
    req = stale_requests(states, seq, seq.eval_prefixes("test"), 5, s2=True)
    table = torch.randn(seq.n_items, 8)
    cues = compute_cues(req.gap, req.z_str, req.z_str_snap, req.z_sem_snap, table[req.candidates], req.length,
                        req.density, req.per_day, top_m=4)
    head = SCaLRecHead(8, cues.shape[1], 0.5)
    heads = {m: head for m in METHODS}
    for m in METHODS:
        s = method_scores(m, req, table, 0.5, heads, cues)
        assert s.shape == req.candidates.shape and torch.isfinite(s).all()
    structure = method_scores("structure_only", req, table, 0.5)
    assert torch.allclose(structure, torch.einsum("bnd,bd->bn", table[req.candidates], req.z_str), atol=1e-6)


@pytest.mark.parametrize("head_kwargs", [{}, {"use_estimator": False}, {"calibrator_cues": False}])
def test_on_device_reranker_matches_the_batched_path(head_kwargs):
    from recbole_scalrec.on_device import OnDeviceReranker

    seq = make_sequences(lengths=(30, 25))
    states = _states(seq, n_cand=12)
    req = stale_requests(states, seq, seq.eval_prefixes("test"), 5, s2=True)
    table = torch.randn(seq.n_items, 8)
    cues = compute_cues(req.gap, req.z_str, req.z_str_snap, req.z_sem_snap, table[req.candidates], req.length,
                        req.density, req.per_day, top_m=5)
    head = SCaLRecHead(8, cues.shape[1], 0.5, **head_kwargs)
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
