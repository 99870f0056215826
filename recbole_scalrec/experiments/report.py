"""Aggregate runs' ``results.json`` / ``per_request.npz`` into the reproduction report.

    python -m recbole_scalrec.report docs/results/current/*-seed*/ [--figures docs/figures] > docs/results_generated.md

Each argument is a results folder (``results.json`` and ``per_request.npz``). Runs of the same
dataset and backbone with different seeds are pooled: mean ± std over seeds, and a paired
Wilcoxon signed-rank test over (seed, user) requests of SCaLRec's per-request NDCG@10 against the
strongest deployable baseline. ``--figures DIR`` also draws the seed-mean staleness curves of each
(dataset, backbone) to ``DIR/staleness-<dataset>-<model>.png``.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import numpy as np
from scipy.stats import wilcoxon

DEPLOYABLE_BASELINES = ("cached_fusion", "structure_only", "semantic_only", "learned_gate", "dynamic_fusion")
ABLATIONS = ("scalrec", "scalrec_literal", "scalrec_no_estimator", "scalrec_no_rel_loss", "scalrec_no_reg_loss", "scalrec_no_spearman")
MAIN_METRICS = ("hit@5", "ndcg@5", "hit@10", "ndcg@10")


def load_runs(folders: list[str]) -> dict[tuple[str, str], list[dict]]:
    runs = defaultdict(list)
    for folder in folders:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
            payload = json.load(f)
        npz = os.path.join(folder, "per_request.npz")
        payload["ranks"] = dict(np.load(npz)) if os.path.isfile(npz) else {}
        payload["folder"] = folder
        runs[(payload["dataset"], payload["model"])].append(payload)
    return runs


def metric(run: dict, split: str, setting: str, gap: int, method: str, name: str) -> float:
    for r in run["results"]:
        if (r["split"], r["setting"], r["gap"], r["method"]) == (split, setting, gap, method):
            return r["metrics"][name]
    return float("nan")


def mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.mean():.4f}"


def ndcg10(ranks: np.ndarray) -> np.ndarray:
    return np.where((ranks > 0) & (ranks <= 10), 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0)


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Paired Wilcoxon signed-rank p of per-request values ``a`` against ``b`` (1.0 when they are equal)."""
    return float(wilcoxon(a, b).pvalue) if np.any(a != b) else 1.0


def p_text(p: float) -> str:
    """A p-value as the tables print it: three significant digits, and ``< 1e-300`` where the normal
    approximation of a large paired test underflows to 0 (a printed 0 would read as an exact value)."""
    return "< 1e-300" if p < 1e-300 else f"{p:.3g}"


def paired(a: np.ndarray, b: np.ndarray) -> tuple[str, str]:
    """Per-request values ``a`` against ``b``: the mean difference with the count, and how many went
    each way with the paired Wilcoxon p."""
    d = a - b
    return f"{d.mean():+.4f} over {len(d)}", f"better on {(d > 0).sum()}, worse on {(d < 0).sum()}; Wilcoxon p = {p_text(wilcoxon_p(a, b))}"


def methods_of(run: dict) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in run["results"]))


def main_table(runs: list[dict], setting="S2", gap=5) -> list[str]:
    out = ["| method | " + " | ".join(m.upper() for m in MAIN_METRICS) + " |", "|---|" + "---|" * len(MAIN_METRICS)]
    for m in methods_of(runs[0]):
        cells = [mean_std([metric(r, "test", setting, gap, m, k) for r in runs]) for k in MAIN_METRICS]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out


def strongest_baseline(runs: list[dict], setting="S2", gap=5) -> str:
    present = [m for m in DEPLOYABLE_BASELINES if m in methods_of(runs[0])]
    return max(present, key=lambda m: np.mean([metric(r, "valid", setting, gap, m, "ndcg@10") for r in runs]))


def paired_test(runs: list[dict], baseline: str, setting="S2", gap=5) -> str:
    ours, base = [], []
    for r in runs:
        key = f"test/{setting}/{gap}"
        if f"{key}/scalrec" in r["ranks"] and f"{key}/{baseline}" in r["ranks"]:
            ours.append(ndcg10(r["ranks"][f"{key}/scalrec"]))
            base.append(ndcg10(r["ranks"][f"{key}/{baseline}"]))
    if not ours:
        return "no per-request ranks"
    a, b = np.concatenate(ours), np.concatenate(base)
    diff = a - b
    if not np.any(diff):
        return f"n = {len(a)} requests: identical per-request NDCG@10 (no test possible)"
    p = wilcoxon_p(a, b)
    return (f"n = {len(a)} (seed, user) requests; mean per-request NDCG@10 difference {diff.mean():+.4f}; "
            f"SCaLRec better on {(diff > 0).sum()}, worse on {(diff < 0).sum()}; Wilcoxon signed-rank p = {p_text(p)}")


def gap_table(runs: list[dict], setting: str) -> list[str]:
    gaps = sorted({r["gap"] for r in runs[0]["results"] if r["gap"] is not None})
    out = ["| method | " + " | ".join(f"Δ={g}" for g in gaps) + " |", "|---|" + "---|" * len(gaps)]
    present = {r["method"] for r in runs[0]["results"] if r["setting"] == setting}
    for m in (m for m in methods_of(runs[0]) if m in present):  # +repair methods have S2 rows only
        out.append(f"| {m} | " + " | ".join(f"{np.mean([metric(r, 'test', setting, g, m, 'ndcg@10') for r in runs]):.4f}"
                                             for g in gaps) + " |")
    return out


def seed_mean_ndcg(runs: list[dict], setting: str, gap: int, method: str) -> float:
    """Test NDCG@10 of ``method`` at one setting and gap, mean over the runs (seeds)."""
    return float(np.mean([metric(r, "test", setting, gap, method, "ndcg@10") for r in runs]))


def recovery(runs: list[dict], setting: str, gap: int) -> float:
    """``(SCaLRec − cached) / (fresh − cached)``, defined only where staleness costs at least 1% of
    fresh NDCG@10: where it costs less, or cached semantics score above fresh ones, there is
    nothing to recover and the ratio would divide noise (or a gain) by noise."""
    f, c, s = (seed_mean_ndcg(runs, setting, gap, m) for m in ("fresh_fusion", "cached_fusion", "scalrec"))
    return (s - c) / (f - c) if f - c > 0.01 * abs(f) else float("nan")


def recovery_cell(runs: list[dict], setting: str, gap: int) -> str:
    """The recovery ratio as a table cell, or why it is not read there."""
    v = recovery(runs, setting, gap)
    if not np.isnan(v):
        return f"{v:.3f}"
    f, c = (seed_mean_ndcg(runs, setting, gap, m) for m in ("fresh_fusion", "cached_fusion"))
    return "n/a (cached above fresh)" if c - f > 0.01 * abs(f) else "n/a (fresh ≈ cached)"


def mean_payload(runs: list[dict]) -> dict:
    """One run-shaped payload whose metrics are the means over ``runs`` (seeds) of each result row."""
    rows = []
    for r in runs[0]["results"]:
        key = (r["split"], r["setting"], r["gap"], r["method"])
        means = {k: float(np.mean([metric(run, *key, k) for run in runs])) for k in r["metrics"]}
        rows.append(dict(r, metrics=means))
    seeds = ", ".join(str(run["seed"]) for run in runs)
    return {"model": runs[0]["model"], "dataset": f"{runs[0]['dataset']}, mean over seeds {seeds}", "results": rows}


def backbone_table(runs_by_key: dict) -> list[str]:
    """Model-agnostic check: the same SCaLRec pipeline on every backbone that was run."""
    cols = ("structure_only", "cached_fusion", "fresh_fusion", "scalrec")
    out = ["## Model-agnostic check (test NDCG@10, S2, mean over seeds)", "",
           "| dataset | backbone | seeds | " + " | ".join(f"{c} Δ=5" for c in cols)
           + " | SCaLRec − cached, Δ=5 | SCaLRec − cached, Δ ∈ {5,10,20} |", "|---|---|---|" + "---|" * (len(cols) + 2)]
    for (dataset, model), runs in sorted(runs_by_key.items()):
        cells = [seed_mean_ndcg(runs, "S2", 5, c) for c in cols]
        out.append(f"| {dataset} | {model} | {len(runs)} | " + " | ".join(f"{v:.4f}" for v in cells)
                   + f" | {cells[3] - cells[1]:+.4f} | {s2_mean(runs, 'scalrec') - s2_mean(runs, 'cached_fusion'):+.4f} |")
    return out + [""]


def s2_mean(runs: list[dict], method: str, gaps=(5, 10, 20), split: str = "test") -> float:
    return float(np.mean([metric(r, split, "S2", g, method, "ndcg@10") for r in runs for g in gaps]))


def seed_verdict(per_seed: list[bool]) -> str:
    """'holds' / 'does not hold' when every seed agrees, else 'mixed'; with the count of seeds where it holds."""
    k, n = sum(per_seed), len(per_seed)
    word = "holds" if k == n else ("does not hold" if k == 0 else "mixed")
    return f"{word} ({k}/{n} seeds)"


def claims(runs_by_key: dict) -> list[str]:
    """The paper's claims, one line each per (dataset, backbone), judged on every seed separately.

    The evidence column gives means over seeds; the verdict counts the seeds on which the claim
    holds, so a difference of a few hits that flips between seeds reads as 'mixed', not as a result.
    """
    out = ["## The paper's claims against our numbers", "",
           "Evidence: test NDCG@10, mean over seeds. Verdict: judged on each seed separately; "
           "'holds' / 'does not hold' only when every seed agrees, otherwise 'mixed'.", "",
           "| claim | dataset, backbone | evidence | verdict |", "|---|---|---|---|"]
    gains = defaultdict(list)  # backbone -> per-seed gain of SCaLRec over cached fusion (S2, mean over gaps)

    def at(r, setting, gap, method):
        return metric(r, "test", setting, gap, method, "ndcg@10")

    for (dataset, model), runs in sorted(runs_by_key.items()):
        gaps = sorted({r["gap"] for r in runs[0]["results"] if r["gap"] is not None})
        pos = [g for g in gaps if g > 0]

        def mean(fn):
            return float(np.mean([fn(r) for r in runs]))

        cached = {st: [mean(lambda r, g=g, st=st: at(r, st, g, "cached_fusion")) for g in gaps] for st in ("S1", "S2")}
        mono = [all(at(r, "S2", a, "cached_fusion") >= at(r, "S2", b, "cached_fusion") - 1e-12 for a, b in zip(gaps, gaps[1:]))
                for r in runs]
        out.append(f"| monotone degradation with Δ (cached fusion, S2) | {dataset}, {model} | "
                   + ", ".join(f"Δ={g}: {v:.4f}" for g, v in zip(gaps, cached["S2"])) + f" | {seed_verdict(mono)} |")
        harder = [all(at(r, "S2", g, "cached_fusion") < at(r, "S1", g, "cached_fusion") for g in pos) for r in runs]
        out.append(f"| S2 harder than S1 (cached fusion, Δ > 0) | {dataset}, {model} | "
                   + ", ".join(f"Δ={g}: S1 {a:.4f} / S2 {b:.4f}" for g, a, b in zip(gaps, cached["S1"], cached["S2"]) if g > 0)
                   + f" | {seed_verdict(harder)} |")

        def margin(r, g):
            return at(r, "S2", g, "scalrec") - at(r, "S2", g, "cached_fusion")

        first = 5 if 5 in gaps else pos[0]
        widens = [margin(r, gaps[-1]) > margin(r, first) and margin(r, gaps[-1]) > 0 for r in runs]
        out.append(f"| SCaLRec's margin over cached fusion widens with Δ (S2) | {dataset}, {model} | "
                   + ", ".join(f"Δ={g}: {mean(lambda r, g=g: margin(r, g)):+.4f}" for g in gaps) + f" | {seed_verdict(widens)} |")
        full, no_est, no_cal, gate, dyn = ([s2_mean([r], m) for r in runs] for m in
                                           ("scalrec", "scalrec_no_estimator", "cached_fusion", "learned_gate", "dynamic_fusion"))
        calib = [f - c > max(f - e, 0.0) for f, e, c in zip(full, no_est, no_cal)]
        out.append(f"| removing the calibrator hurts more than removing the estimator (S2, Δ ∈ {{5,10,20}}) | {dataset}, {model} | "
                   f"SCaLRec {np.mean(full):.4f}, w/o estimator {np.mean(no_est):.4f}, w/o calibrator (= cached fusion) "
                   f"{np.mean(no_cal):.4f} | {seed_verdict(calib)} |")
        beats = [f > max(g, d) for f, g, d in zip(full, gate, dyn)]
        out.append(f"| calibration beats gating and dynamic fusion (S2, Δ ∈ {{5,10,20}}) | {dataset}, {model} | "
                   f"SCaLRec {np.mean(full):.4f}, gate {np.mean(gate):.4f}, dynamic {np.mean(dyn):.4f} | {seed_verdict(beats)} |")
        gains[model] += [(dataset, f - c) for f, c in zip(full, no_cal)]
    # the paper's two backbones; other backbones that were run are listed too
    paper = [m for m in ("SASRec", "SURGE") if m in gains]
    evidence = "; ".join(f"{m}: " + ", ".join(f"{d} {g:+.4f}" for d, g in v) for m, v in sorted(gains.items()))
    verdict = (("not testable: " + (f"only {paper[0]}" if paper else "neither") + " of SASRec / SURGE run") if len(paper) < 2
               else seed_verdict([g > 0 for m in paper for _, g in gains[m]]).replace("seeds", "runs"))
    out.append("| gains over cached fusion hold on both backbones, SASRec and SURGE (S2, Δ ∈ {5,10,20}) | every run, "
               f"per seed | {evidence} | {verdict} |")
    return out + [""]


def internals_of(run: dict, setting: str, gap: int, method: str) -> dict:
    for r in run["results"]:
        if (r["split"], r["setting"], r["gap"], r["method"]) == ("test", setting, gap, method):
            return r.get("internals") or {}
    return {}


def internals_table(runs: list[dict], setting: str = "S2") -> list[str]:
    """What each trained head does, gap by gap (test, mean over seeds): the share of requests whose
    top-10 differs from cached fusion's, and the means of ``r``, ``y`` and the correction size."""
    gaps = sorted({r["gap"] for r in runs[0]["results"] if r["gap"] is not None})
    methods = [m for m in methods_of(runs[0]) if len(internals_of(runs[0], setting, gaps[-1], m)) > 1]
    if not methods:
        return []
    out = [f"### What the heads do ({setting}; changed top-10 share / mean r / mean y / mean ‖z_used − ẑ‖/‖ẑ‖)", "",
           "| method | " + " | ".join(f"Δ={g}" for g in gaps) + " |", "|---|" + "---|" * len(gaps)]

    def mean(method, gap, name):
        values = []
        for run in runs:
            v = internals_of(run, setting, gap, method).get(name)
            if v is not None:
                values.append(v if isinstance(v, float) else v["mean"])
        return f"{np.mean(values):.2f}" if values else "–"

    for m in methods:
        out.append(f"| {m} | " + " | ".join(" / ".join(mean(m, g, n) for n in ("changed_top10", "r", "y", "correction"))
                                             for g in gaps) + " |")
    return out + [""]


def pooled_ndcg(runs: list[dict], method: str, setting: str, gaps) -> np.ndarray | None:
    """Per-request NDCG@10 of ``method`` over every (seed, gap, user), in one order for every method."""
    parts = []
    for r in runs:
        for g in gaps:
            key = f"test/{setting}/{g}/{method}"
            if key not in r["ranks"]:
                return None
            parts.append(ndcg10(r["ranks"][key]))
    return np.concatenate(parts) if parts else None


def targets(runs: list[dict]) -> list[str]:
    """The staleness targets: recovery over Δ ∈ {5, 10, 20} (S2), SCaLRec against the better of
    gate and dynamic fusion (paired Wilcoxon over seed × gap × user), Δ = 0 against fresh fusion,
    epoch-0 heads, and candidate repair."""
    have = methods_of(runs[0])
    if "scalrec" not in have:
        return []
    out = ["### Staleness targets", ""]
    fresh, cached, ours = (s2_mean(runs, m) for m in ("fresh_fusion", "cached_fusion", "scalrec"))
    cost = (fresh - cached) / fresh if fresh else float("nan")
    if cost >= 0.02:
        rec = f"{(ours - cached) / (fresh - cached):.3f}"
    else:  # the ratio is only read where staleness costs (the target's own condition)
        rec = "not applicable, staleness costs under 2% of fresh here"
    out.append(f"* Recovery (S2, mean over Δ ∈ {{5, 10, 20}}): {rec} (SCaLRec {ours:.4f}, cached {cached:.4f}, "
               f"fresh {fresh:.4f}; staleness costs {100 * cost:.1f}% of fresh).")
    s1 = {m: float(np.mean([metric(r, "test", "S1", g, m, "ndcg@10") for r in runs for g in (5, 10, 20)]))
          for m in ("fresh_fusion", "cached_fusion", "scalrec")}
    cost1 = (s1["fresh_fusion"] - s1["cached_fusion"]) / s1["fresh_fusion"] if s1["fresh_fusion"] else float("nan")
    rec1 = (f"{(s1['scalrec'] - s1['cached_fusion']) / (s1['fresh_fusion'] - s1['cached_fusion']):.3f}" if cost1 >= 0.02
            else "not applicable, staleness costs under 2% of fresh here")
    out.append(f"* Recovery (S1, mean over Δ ∈ {{5, 10, 20}}): {rec1} (SCaLRec {s1['scalrec']:.4f}, cached "
               f"{s1['cached_fusion']:.4f}, fresh {s1['fresh_fusion']:.4f}; staleness costs {100 * cost1:.1f}% of fresh).")
    rivals = [m for m in ("learned_gate", "dynamic_fusion") if m in have]
    if rivals:
        best = max(rivals, key=lambda m: s2_mean(runs, m))
        a, b = pooled_ndcg(runs, "scalrec", "S2", (5, 10, 20)), pooled_ndcg(runs, best, "S2", (5, 10, 20))
        if a is not None and b is not None:
            diff, ways = paired(a, b)
            out.append(f"* SCaLRec against the better of gate and dynamic fusion (`{best}`, {s2_mean(runs, best):.4f}): "
                       f"mean per-request difference {diff} (seed, gap, user) requests, {ways}.")
    # whether the head costs anything against serving the snapshot unchanged, beside what fresh
    # semantics (its distillation teacher) would have given on the same requests
    for setting in ("S1", "S2"):
        a, b, f = (pooled_ndcg(runs, m, setting, (5, 10, 20)) for m in ("scalrec", "cached_fusion", "fresh_fusion"))
        if a is not None and b is not None and f is not None:
            (diff, ways), (fdiff, fways) = paired(a, b), paired(f, b)
            out.append(f"* {setting}, Δ ∈ {{5, 10, 20}}, per request against cached fusion: SCaLRec {diff} (seed, gap, "
                       f"user) requests, {ways}; fresh fusion {fdiff}, {fways}.")
    zero = [(metric(r, "test", st, 0, "scalrec", "ndcg@10"), metric(r, "test", st, 0, "fresh_fusion", "ndcg@10"))
            for r in runs for st in ("S1", "S2")]
    rel = [(o - f) / f for o, f in zero if f and not np.isnan(o)]
    if rel:  # the sign says whether the heads cost something where nothing is stale or scored above fresh fusion
        out.append(f"* Δ = 0: SCaLRec within {100 * max(map(abs, rel)):.2f}% of fresh fusion at worst (S1 and S2, every "
                   f"seed; from {100 * min(rel):+.2f}% to {100 * max(rel):+.2f}%, below fresh by "
                   f"{100 * max(0.0, -min(rel)):.2f}% at most).")
        a, b = pooled_ndcg(runs, "scalrec", "S1", (0,)), pooled_ndcg(runs, "fresh_fusion", "S1", (0,))
        if a is not None and b is not None:  # at Δ = 0 S1 and S2 are the same requests
            diff, ways = paired(a, b)
            out.append(f"  Per request at Δ = 0: {diff} (seed, user) requests, SCaLRec {ways}.")
    kept = [(m, info.get("best_epoch")) for r in runs for m, info in (r.get("stage2") or {}).items()]
    kept = [(m, e) for m, e in kept if e is not None]
    if kept:
        zeros = [m for m, e in kept if e == 0]
        own = [e for m, e in kept if m == "scalrec"]
        out.append(f"* Heads that kept their epoch-0 weights: {len(zeros)} of {len(kept)} ({', '.join(sorted(set(zeros))) or 'none'}); "
                   f"SCaLRec's own head: {own.count(0)} of {len(own)}.")
    # whether validation, on which stage 2 picks its epoch, saw what test shows
    margin = [[s2_mean([r], "scalrec", split=split) - s2_mean([r], "cached_fusion", split=split)
               for split in ("valid", "test")] for r in runs]
    if not np.isnan(margin).any():
        pairs = ", ".join(f"{r.get('seed')}: {v:+.4f} / {t:+.4f}" for r, (v, t) in zip(runs, margin))
        out.append(f"* SCaLRec − cached fusion, S2, mean over Δ ∈ {{5, 10, 20}}, validation / test per seed: {pairs}.")
    for m in ("cached_fusion+repair", "scalrec+repair"):
        if m in have:
            s1_fresh = float(np.mean([metric(r, "test", "S1", g, "fresh_fusion", "ndcg@10") for r in runs for g in (5, 10, 20)]))
            out.append(f"* `{m}` (S2, mean over Δ ∈ {{5, 10, 20}}): {s2_mean(runs, m):.4f}, against cached S2 {cached:.4f} "
                       f"and fresh S1 {s1_fresh:.4f}.")
    return out + [""]


def report(runs_by_key: dict, folders: list[str] | None = None, figures: str | None = None) -> str:
    """The markdown report of the runs; ``folders`` and ``figures`` (the command's arguments) name in
    its header what it was generated from."""
    command = "python -m recbole_scalrec.report " + " ".join(folders or ["<folders>"])
    command += f" --figures {figures}" if figures else ""
    out = ["# Reproduction report", "",
           f"Generated by `{command}` from the raw `results.json` / `per_request.npz` in those folders",
           "(each folder's `command.txt` is the command that produced it). Test split; NDCG@10 unless named.", ""]
    for (dataset, model), runs in sorted(runs_by_key.items()):
        seeds = sorted(r["seed"] for r in runs)
        out += [f"## {dataset}, {model} (seeds {', '.join(map(str, seeds))})", "", "### Main table (Δ = 5, S2)", ""]
        out += main_table(runs) + [""]
        base = strongest_baseline(runs)
        out += [f"Strongest deployable baseline (valid NDCG@10, Δ = 5, S2): `{base}`. Paired test: {paired_test(runs, base)}.", ""]
        for setting in ("S1", "S2"):
            out += [f"### NDCG@10 against Δ, {setting}", ""] + gap_table(runs, setting) + [""]
        gaps = sorted({r["gap"] for r in runs[0]["results"] if r["gap"]})
        out += ["### Recovery ratio (NDCG_SCaLRec − NDCG_cached) / (NDCG_fresh − NDCG_cached)", "",
                "| setting | " + " | ".join(f"Δ={g}" for g in gaps) + " |", "|---|" + "---|" * len(gaps)]
        for setting in ("S1", "S2"):
            out.append(f"| {setting} | " + " | ".join(recovery_cell(runs, setting, g) for g in gaps) + " |")
        out += [""] + internals_table(runs) + targets(runs)
        out += ["### Ablations (S2, NDCG@10 mean over Δ ∈ {5, 10, 20})", "", "| variant | NDCG@10 |", "|---|---|"]
        for m in ABLATIONS + ("learned_gate", "dynamic_fusion", "cached_fusion"):
            if m in methods_of(runs[0]):
                out.append(f"| {m} | {np.mean([metric(r, 'test', 'S2', g, m, 'ndcg@10') for r in runs for g in (5, 10, 20)]):.4f} |")
        by_seed = sorted(runs, key=lambda r: r["seed"])
        out += ["", "### Wall time per stage (s; a run that found the semantics cached spends ~0 s encoding)", "",
                "| stage | " + " | ".join(f"seed {r['seed']}" for r in by_seed) + " |", "|---|" + "---|" * len(by_seed)]
        for stage in runs[0]["timings_s"]:
            out.append(f"| {stage} | " + " | ".join(f"{r['timings_s'].get(stage, np.nan):.1f}" for r in by_seed) + " |")
        out += ["", "LM forward calls per seed: " + ", ".join(str(r["lm_forward_calls"]) for r in by_seed)
                + f" (0: the semantics were cached); prefixes with semantics: {runs[0].get('n_semantic_prefixes', 'n/a')}.", ""]
    return "\n".join(out + backbone_table(runs_by_key) + claims(runs_by_key))


def draw_figures(runs_by_key: dict, folder: str) -> list[str]:
    """Seed-mean staleness curves of each (dataset, backbone); returns the files written."""
    from recbole_scalrec.results import plot_staleness_curves

    os.makedirs(folder, exist_ok=True)
    paths = []
    for (dataset, model), runs in sorted(runs_by_key.items()):
        paths.append(os.path.join(folder, f"staleness-{dataset}-{model}.png"))
        plot_staleness_curves(mean_payload(runs), paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="aggregate results folders into a markdown report")
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--figures", default=None, help="folder for the seed-mean staleness curves (PNG)")
    args = parser.parse_args()
    runs = load_runs(args.folders)
    if args.figures:
        draw_figures(runs, args.figures)
    print(report(runs, args.folders, args.figures))


if __name__ == "__main__":
    main()
