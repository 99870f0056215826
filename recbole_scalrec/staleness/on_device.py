"""The device's per-request SCaLRec path, exported from a trained head to one compiled kernel.

At serving time one request arrives at a time (batch 1). At that size PyTorch's (and even
numpy's) per-operation dispatch costs far more than the arithmetic — a request is ~30k
multiply-adds — so the trained estimator and calibrator weights are copied out once and the
whole request runs as one ``numba``-compiled function without temporaries:

* the cues (Eq. 10, same columns as :func:`recbole_scalrec.staleness.cues.compute_cues`, Spearman with
  average ranks for ties over the top-M candidates under the semantic score),
* the reliability ``r`` and correction budget ``kappa = 1 - r`` (Eq. 11),
* the proposal ``u``, the bounded correction (Eqs. 12-14) and, where the head has one, the
  learned shrink ``a`` (``(1 - kappa a) z_sem_hat + delta``, METHOD.md Sec. 5),
* the Eq. 4 score of each candidate with the calibrated semantics and the top-``k`` rerank.

The cue standardisation (``CueScaler``) is folded into the first layer of every MLP, so raw cues
go straight in. :meth:`OnDeviceReranker.scores` matches :func:`recbole_scalrec.staleness.methods.method_scores`
for ``scalrec`` heads (tested). Compiled code is cached on disk (``numba`` ``cache=True``), so only
the first process ever compiles (about 2 s).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from recbole_scalrec.staleness.cues import CUE_NAMES, SPEARMAN_EPS
from recbole_scalrec.staleness.methods import SCaLRecHead

_N_CUES = len(CUE_NAMES)
# Sums may be reassociated (and multiply-adds fused) so the dot products vectorise; nothing else
# of fast-math (no NaN/inf assumptions).
_FAST = {"reassoc", "contract"}


def _mlp_layers(seq: torch.nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(weight [out, in], bias [out])`` of each Linear, float32, PyTorch layout (rows are dot products)."""
    linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
    return [
        (m.weight.detach().cpu().numpy().astype(np.float32).copy(), m.bias.detach().cpu().numpy().astype(np.float32).copy())
        for m in linears
    ]


def _fold_scaler(layers, mean: np.ndarray, inv_std: np.ndarray, start: int):
    """Fold the cue standardisation ``(c - mean) * inv_std`` into the first layer's input
    columns ``start:`` (those that read the cues), so the raw cues go straight in."""
    (w1, b1), rest = layers[0], layers[1:]
    cols = slice(start, start + len(mean))
    w1 = w1.copy()
    b1 = (b1 - w1[:, cols] @ (mean * inv_std)).astype(np.float32)
    w1[:, cols] = w1[:, cols] * inv_std[None, :]
    return [(w1, b1)] + rest


@njit(cache=True)
def _average_ranks(x):  # pragma: no cover - compiled
    """1-based ranks with ties sharing their average (M is small: pairwise counts)."""
    m = x.shape[0]
    out = np.empty(m, dtype=np.float64)
    for i in range(m):
        less = 0
        equal = 0
        for j in range(m):
            if x[j] < x[i]:
                less += 1
            elif x[j] == x[i]:
                equal += 1
        out[i] = less + (equal + 1) / 2.0
    return out


@njit(cache=True, fastmath=_FAST)
def _request_cues(items, cands, z_str, z_snap, z_sem, gap, length, density, per_day, top_m, sem, out):  # pragma: no cover
    """Eq. 10 into ``out`` (raw, unscaled); ``sem`` receives the candidates' semantic scores."""
    n, d = cands.shape[0], z_str.shape[0]
    dd = 0.0
    ss = 0.0
    pp = 0.0
    sp = 0.0
    for j in range(d):
        a = np.float64(z_str[j])
        b = np.float64(z_snap[j])
        dd += (a - b) * (a - b)
        ss += a * a
        pp += b * b
        sp += a * b
    for i in range(n):
        row = items[cands[i]]
        acc = 0.0
        for j in range(d):
            acc += row[j] * z_sem[j]
        sem[i] = acc
    m = min(top_m, n)
    top = np.argsort(-sem, kind="mergesort")[:m]
    sem_top = np.empty(m, dtype=np.float64)
    str_top = np.empty(m, dtype=np.float64)
    for t in range(m):
        row = items[cands[top[t]]]
        acc = 0.0
        for j in range(d):
            acc += row[j] * z_str[j]
        sem_top[t] = sem[top[t]]
        str_top[t] = np.float32(acc)
    rx = _average_ranks(sem_top)
    ry = _average_ranks(str_top)
    mx = rx.mean()
    my = ry.mean()
    cov = 0.0
    vx = 0.0
    vy = 0.0
    for t in range(m):
        cov += (rx[t] - mx) * (ry[t] - my)
        vx += (rx[t] - mx) * (rx[t] - mx)
        vy += (ry[t] - my) * (ry[t] - my)
    denom = math.sqrt(vx * vy)
    out[0] = math.log1p(gap)
    out[1] = math.sqrt(dd)
    out[2] = sp / max(math.sqrt(ss * pp), 1e-8)
    out[3] = cov / denom if denom > SPEARMAN_EPS else 0.0
    out[4] = math.log1p(length)
    out[5] = density
    out[6] = math.log1p(per_day)


@njit(cache=True, fastmath=_FAST)
def _dense(x, w, b, relu):  # pragma: no cover - compiled
    """``act(w @ x + b)`` with ``w`` in PyTorch layout ``[out, in]``."""
    out = np.empty(w.shape[0], dtype=np.float32)
    for o in range(w.shape[0]):
        acc = np.float32(b[o])
        row = w[o]
        for i in range(w.shape[1]):
            acc += row[i] * x[i]
        out[o] = max(acc, np.float32(0.0)) if relu else acc
    return out


def _pack(est, cal, shr) -> tuple[np.ndarray, np.ndarray]:
    """All weights in one contiguous float32 buffer (one argument, one stream of reads) and the
    layout ``[est_hidden, cal_in, cal_hidden, shrink_hidden]`` to slice it (the shrink reads the
    calibrator's input)."""
    (ew1, eb1), (ew2, eb2) = est
    (cw1, cb1), (cw2, cb2) = cal
    (sw1, sb1), (sw2, sb2) = shr
    flat = np.concatenate([a.ravel() for a in (ew1, eb1, ew2, eb2, cw1, cb1, cw2, cb2, sw1, sb1, sw2, sb2)])
    return flat.astype(np.float32), np.array([ew1.shape[0], cw1.shape[1], cw1.shape[0], sw1.shape[0]], dtype=np.int64)


@njit(cache=True, fastmath=_FAST)
def _unpack(params, layout, n_cues, d):  # pragma: no cover - compiled
    eh, cin, ch, sh = layout[0], layout[1], layout[2], layout[3]
    o = 0
    ew1 = params[o:o + eh * n_cues].reshape((eh, n_cues))
    o += eh * n_cues
    eb1 = params[o:o + eh]
    o += eh
    ew2 = params[o:o + eh].reshape((1, eh))
    o += eh
    eb2 = params[o:o + 1]
    o += 1
    cw1 = params[o:o + ch * cin].reshape((ch, cin))
    o += ch * cin
    cb1 = params[o:o + ch]
    o += ch
    cw2 = params[o:o + d * ch].reshape((d, ch))
    o += d * ch
    cb2 = params[o:o + d]
    o += d
    sw1 = params[o:o + sh * cin].reshape((sh, cin))
    o += sh * cin
    sb1 = params[o:o + sh]
    o += sh
    sw2 = params[o:o + sh].reshape((1, sh))
    o += sh
    sb2 = params[o:o + 1]
    return ew1, eb1, ew2, eb2, cw1, cb1, cw2, cb2, sw1, sb1, sw2, sb2


@njit(cache=True, fastmath=_FAST)
def _scalrec_scores(items, cands, z_str, z_snap, z_sem, gap, length, density, per_day, top_m,
                    params, layout, use_estimator, use_cues, use_shrink, radius, weight):  # pragma: no cover - compiled
    """Eq. 4 scores of the candidates with ``(1 - kappa a) z_sem_hat + delta`` (Eqs. 10-14; ``a = 0``
    without a shrink), one request."""
    n, d = cands.shape[0], z_str.shape[0]
    est_w1, est_b1, est_w2, est_b2, cal_w1, cal_b1, cal_w2, cal_b2, s_w1, s_b1, s_w2, s_b2 = _unpack(params, layout, _N_CUES, d)
    sem = np.empty(n, dtype=np.float32)
    cues = np.empty(_N_CUES, dtype=np.float32)
    _request_cues(items, cands, z_str, z_snap, z_sem, gap, length, density, per_day, top_m, sem, cues)
    kappa = 1.0
    if use_estimator:  # kappa = 1 - r, r = sigmoid(MLP_phi(c)) (Eq. 11)
        logit = _dense(_dense(cues, est_w1, est_b1, True), est_w2, est_b2, False)[0]
        kappa = 1.0 - 1.0 / (1.0 + math.exp(-logit))
    x = np.empty(cal_w1.shape[1], dtype=np.float32)  # [z_sem_hat; z_str(t); c] (Eq. 12)
    x[:d] = z_sem
    x[d:2 * d] = z_str
    if use_cues:
        x[2 * d:] = cues
    u = _dense(_dense(x, cal_w1, cal_b1, True), cal_w2, cal_b2, False)
    uu = 0.0
    zz = 0.0
    for j in range(d):
        uu += u[j] * u[j]
        zz += z_sem[j] * z_sem[j]
    scale = radius * math.sqrt(zz) * kappa / max(math.sqrt(uu) + 1e-8, 1.0)  # Eq. 13
    keep = 1.0
    if use_shrink:  # a = sigmoid(MLP([z_sem_hat; z_str(t); c]))
        a_logit = _dense(_dense(x, s_w1, s_b1, True), s_w2, s_b2, False)[0]
        keep = 1.0 - kappa / (1.0 + math.exp(-a_logit))
    mixed = np.empty(d, dtype=np.float32)
    for j in range(d):  # Eq. 4 with (1 - kappa a) z_sem_hat + delta (Eq. 14)
        mixed[j] = weight * (keep * z_sem[j] + scale * u[j]) + (1.0 - weight) * z_str[j]
    scores = np.empty(n, dtype=np.float32)
    for i in range(n):
        row = items[cands[i]]
        acc = np.float32(0.0)
        for j in range(d):
            acc += row[j] * mixed[j]
        scores[i] = acc
    return scores


@njit(cache=True, fastmath=_FAST)
def _scalrec_rerank(items, cands, z_str, z_snap, z_sem, gap, length, density, per_day, top_m,
                    params, layout, use_estimator, use_cues, use_shrink, radius, weight, k):  # pragma: no cover - compiled
    """Top-``k`` candidate ids, best first: scores and sort in one call (one dispatch per request)."""
    scores = _scalrec_scores(items, cands, z_str, z_snap, z_sem, gap, length, density, per_day, top_m,
                             params, layout, use_estimator, use_cues, use_shrink, radius, weight)
    order = np.argsort(-scores, kind="mergesort")[: min(k, scores.shape[0])]
    return cands[order]


@njit(cache=True, fastmath=_FAST)
def _repair(items, cands, z_str, k):  # pragma: no cover - compiled
    """``cands`` plus the ``k`` best other items by ``<z_str, v_i>`` (padding 0 excluded), best
    first: a running top-k by insertion, one pass over the item table (METHOD.md Sec. 10)."""
    n_items, d = items.shape
    held = np.zeros(n_items, dtype=np.bool_)
    held[0] = True
    for c in cands:
        held[c] = True
    k = min(k, n_items - 1 - cands.shape[0])
    best_s = np.full(k, -np.inf, dtype=np.float32)
    best_i = np.zeros(k, dtype=np.int64)
    for i in range(n_items):
        if held[i]:
            continue
        acc = np.float32(0.0)
        for j in range(d):
            acc += items[i, j] * z_str[j]
        if k == 0 or acc <= best_s[k - 1]:
            continue
        pos = k - 1
        while pos > 0 and best_s[pos - 1] < acc:
            best_s[pos] = best_s[pos - 1]
            best_i[pos] = best_i[pos - 1]
            pos -= 1
        best_s[pos] = acc
        best_i[pos] = i
    out = np.empty(cands.shape[0] + k, dtype=np.int64)
    out[: cands.shape[0]] = cands
    out[cands.shape[0]:] = best_i
    return out


def _f32(x) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype == np.float32 and x.flags.c_contiguous else np.ascontiguousarray(x, dtype=np.float32)


def _i64(x) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype == np.int64 and x.flags.c_contiguous else np.ascontiguousarray(x, dtype=np.int64)


class OnDeviceReranker:
    """SCaLRec's device-side computation for one request (float32, one compiled kernel)."""

    def __init__(self, head: SCaLRecHead, item_table: torch.Tensor, top_m: int = 20) -> None:
        self.items = np.ascontiguousarray(item_table.detach().cpu().numpy(), dtype=np.float32)
        self.top_m = int(top_m)
        mean = head.scaler.mean.cpu().numpy().astype(np.float32)
        inv_std = (head.cue_mask / head.scaler.std).cpu().numpy().astype(np.float32)
        self.use_cues = bool(head.calibrator.use_cues)
        self.use_estimator = head.estimator is not None
        if self.use_estimator:
            est = _fold_scaler(_mlp_layers(head.estimator.net), mean, inv_std, 0)
        else:  # unused placeholder of the right shapes
            est = [(np.zeros((1, _N_CUES), np.float32), np.zeros(1, np.float32)), (np.zeros((1, 1), np.float32), np.zeros(1, np.float32))]
        cal = _mlp_layers(head.calibrator.net)
        if self.use_cues:
            cal = _fold_scaler(cal, mean, inv_std, cal[0][0].shape[1] - len(mean))
        self.use_shrink = head.shrink is not None
        if self.use_shrink:
            if head.shrink.use_cues != self.use_cues:
                raise ValueError("The on-device kernel feeds the shrink the calibrator's input; build both with the same use_cues.")
            shr = _mlp_layers(head.shrink.net)
            if self.use_cues:
                shr = _fold_scaler(shr, mean, inv_std, shr[0][0].shape[1] - len(mean))
        else:  # unused placeholder of the right shapes
            cin = cal[0][0].shape[1]
            shr = [(np.zeros((1, cin), np.float32), np.zeros(1, np.float32)), (np.zeros((1, 1), np.float32), np.zeros(1, np.float32))]
        self.estimator = est if self.use_estimator else None
        self.calibrator = cal
        self.shrink = shr if self.use_shrink else None
        self.params, self.layout = _pack(est, cal, shr)
        self.radius = float(head.radius)
        self.weight = float(head.fusion_weight)

    def parameter_count(self) -> int:
        layers = (self.estimator or []) + self.calibrator + (self.shrink or [])
        return int(sum(w.size + b.size for w, b in layers))

    def cues(self, candidates: np.ndarray, z_str, z_str_snap, z_sem_snap, gap, length, density, per_day) -> np.ndarray:
        """Raw Eq. 10 cue vector of one request (columns of :data:`recbole_scalrec.staleness.cues.CUE_NAMES`)."""
        cands = _i64(candidates)
        out = np.empty(_N_CUES, dtype=np.float32)
        _request_cues(self.items, cands, _f32(z_str), _f32(z_str_snap), _f32(z_sem_snap), float(gap), float(length),
                      float(density), float(per_day), self.top_m, np.empty(len(cands), np.float32), out)
        return out

    def _args(self, candidates, z_str, z_str_snap, z_sem_snap, gap, length, density, per_day) -> tuple:
        return (self.items, _i64(candidates), _f32(z_str), _f32(z_str_snap), _f32(z_sem_snap), float(gap), float(length),
                float(density), float(per_day), self.top_m, self.params, self.layout, self.use_estimator,
                self.use_cues, self.use_shrink, self.radius, self.weight)

    def scores(self, candidates: np.ndarray, **request) -> np.ndarray:
        """Eq. 4 scores of ``candidates`` with the calibrated semantics ``(1 - kappa a) z_sem_hat + delta``.

        ``request``: ``z_str``, ``z_str_snap``, ``z_sem_snap`` (float32 ``[d]``), ``gap``, ``length``,
        ``density``, ``per_day`` (numbers), as in :class:`recbole_scalrec.staleness.snapshot.StaleRequests`."""
        return _scalrec_scores(*self._args(candidates, **request))

    def repair(self, candidates: np.ndarray, z_str, k: int = 20) -> np.ndarray:
        """The cached candidates plus the ``k`` best items they lack by the fresh structure score
        (as :func:`recbole_scalrec.staleness.snapshot.repair_candidates`), for the ``+repair`` methods."""
        return _repair(self.items, _i64(candidates), _f32(z_str), int(k))

    def rerank(self, candidates: np.ndarray, k: int = 10, **request) -> np.ndarray:
        """Top-``k`` candidate item ids for one request, best first (one compiled call)."""
        return _scalrec_rerank(*self._args(candidates, **request), int(k))
