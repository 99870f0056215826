"""Budgeted cloud refresh driven by the estimator's reliability (METHOD.md Sec. 9).

    python -m recbole_scalrec.refresh --results_dir DIR --budgets 50 100 200 500 [--window 20]
        [--head scalrec] [--seed 0] [--figure docs/figures/refresh-<dataset>.png]

**The serving simulation.** Each user's evaluated request at ``t`` (validation or test) ends a run
of ``window`` consecutive requests ``t - window + 1 .. t`` (fewer for a short history). The device
holds the cloud snapshot of ``t - window`` when the run starts; at each request it either keeps
its snapshot (gap = request - snapshot, S2: the snapshot's candidates and semantics) or asks the
cloud for a fresh one (one call; that request is served at gap 0). A policy decides:

* ``estimator``: refresh when SCaLRec's reliability ``r`` of the request under the current
  snapshot falls below a threshold; the threshold is set on the validation runs so that they
  spend the budget (bisection), then applied to the test runs;
* ``fixed``: refresh every ``k = round(1000 / budget)`` requests, each user at a random phase;
* ``random``: refresh each request with probability ``budget / 1000``.

Spend is cloud calls per 1,000 requests over all runs' requests. Quality is NDCG@10 of the final
(held-out) request of each run with the gap the policy left, for SCaLRec and for cached fusion
(both rerank the snapshot's candidates; fresh fusion at gap 0 and both at gap ``window`` are the
references). Every prefix of the runs needs its semantics: those the run folder's cache lacks are
encoded once (``lm_forward_calls`` says how many calls that took).

Writes ``refresh.json`` and ``refresh.md`` into ``--out`` (default ``<results_dir>/refresh``) and
the quality-versus-calls figure; the last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

POLICIES = ("estimator", "fixed", "random")
METHODS = ("scalrec", "cached_fusion")


def run_windows(sequences, request_ids: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Each run's first snapshot ``start = max(first prefix, t - window)`` and its number of requests ``t - start``."""
    first = sequences.offsets[sequences.user_of(request_ids)]
    start = np.maximum(first, request_ids - window)
    return start, request_ids - start


def window_prefixes(sequences, request_ids: np.ndarray, window: int) -> np.ndarray:
    """Every prefix of the runs (their snapshots and requests), sorted unique."""
    start, n = run_windows(sequences, request_ids, window)
    return np.unique(np.concatenate([np.arange(s, s + k + 1) for s, k in zip(start, n)]))


class Simulator:
    """Steps every user's run of requests at once under a policy (see the module docstring)."""

    def __init__(self, run, head_name: str = "scalrec", window: int = 20) -> None:
        self.run, self.head, self.window = run, run.heads[head_name], int(window)
        self.top_m = run.config["spearman_top_m"]

    @torch.no_grad()
    def reliability(self, prefix_ids: np.ndarray, snapshots: np.ndarray) -> np.ndarray:
        """``r`` of requests at ``prefix_ids`` served from the snapshots ``snapshots`` (S2)."""
        from recbole_scalrec.staleness.methods import request_cues
        from recbole_scalrec.staleness.snapshot import stale_requests

        if len(prefix_ids) == 0:
            return np.zeros(0, dtype=np.float32)
        req = stale_requests(self.run.states, self.run.sequences, prefix_ids, prefix_ids - snapshots,
                             np.ones(len(prefix_ids), dtype=bool))
        cues = request_cues(req, self.run.item_table, self.top_m)
        return self.head.adjust(req, cues).reliability.numpy()

    def simulate(self, request_ids: np.ndarray, policy: str, value: float, seed: int = 0) -> tuple[np.ndarray, int, int]:
        """Final gaps of each run, cloud calls and requests served, under ``policy`` with its
        ``value`` (estimator: threshold; fixed: interval k; random: probability)."""
        rng = np.random.default_rng(seed)
        start, n = run_windows(self.run.sequences, request_ids, self.window)
        snapshot = start.copy()
        phase = rng.integers(0, max(int(value), 1), size=len(start)) if policy == "fixed" else None
        calls = 0
        for step in range(1, int(n.max(initial=0)) + 1):
            active = np.flatnonzero(n >= step)
            at = start[active] + step
            if policy == "estimator":
                refresh = self.reliability(at, snapshot[active]) < value
            elif policy == "fixed":
                refresh = (step + phase[active]) % int(value) == 0
            elif policy == "random":
                refresh = rng.random(len(active)) < value
            else:
                raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}.")
            snapshot[active[refresh]] = at[refresh]
            calls += int(refresh.sum())
        return request_ids - snapshot, calls, int(n.sum())

    def threshold_for(self, request_ids: np.ndarray, budget: float, iterations: int = 20) -> float:
        """The estimator threshold whose spend on ``request_ids`` is closest to ``budget`` calls per 1,000."""
        lo, hi = 0.0, 1.0
        for _ in range(iterations):
            mid = (lo + hi) / 2
            _, calls, served = self.simulate(request_ids, "estimator", mid)
            if 1000.0 * calls / max(served, 1) > budget:
                hi = mid
            else:
                lo = mid
        return lo

    def quality(self, request_ids: np.ndarray, gaps: np.ndarray, ranks: dict | None = None) -> dict[str, float]:
        """Test NDCG@10 of the final requests at their gaps, per method (S2); with ``ranks`` (a dict)
        each method's per-request target ranks are put there too."""
        from recbole_scalrec.staleness.protocol import evaluate_staleness

        cfg = self.run.config
        rows = evaluate_staleness(self.run.states, self.run.sequences, self.run.item_table, request_ids, [], ["S2"],
                                  list(METHODS) + ["fresh_fusion"], cfg["fusion_weight"], self.run.heads, self.top_m,
                                  cfg["eval_batch_size"], gap_override=gaps, internals=False)
        if ranks is not None:
            ranks.update({r["method"]: np.asarray(r["ranks"]) for r in rows})
        return {r["method"]: float(r["metrics"]["ndcg@10"]) for r in rows}


def evaluate_budgets(sim: Simulator, budgets: list[float], seed: int = 0) -> dict:
    """Every policy at every budget: calls per 1,000 test requests and the test NDCG@10 of each method."""
    valid, test = sim.run.prefixes["valid"], sim.run.prefixes["test"]
    from recbole_scalrec.experiments.report import ndcg10 as ndcg10_per_request, wilcoxon_p

    rows = []
    for budget in budgets:
        settings = {"estimator": sim.threshold_for(valid, budget), "fixed": max(1, round(1000.0 / budget)),
                    "random": min(1.0, budget / 1000.0)}
        ranks, by_policy = {}, {}
        for policy, value in settings.items():
            gaps, calls, served = sim.simulate(test, policy, value, seed)
            ranks[policy] = {}
            by_policy[policy] = {"budget": budget, "policy": policy, "value": float(value),
                                 "calls_per_1000": 1000.0 * calls / max(served, 1), "mean_final_gap": float(gaps.mean()),
                                 "ndcg@10": sim.quality(test, gaps, ranks[policy])}
            rows.append(by_policy[policy])
        # the estimator's gain over fixed-interval refresh at this budget, paired over users
        for method in METHODS:
            a, b = (ndcg10_per_request(ranks[p][method]) for p in ("estimator", "fixed"))
            by_policy["estimator"].setdefault("vs_fixed", {})[method] = {"mean_diff": float((a - b).mean()),
                                                           "wilcoxon_p": wilcoxon_p(a, b)}
    never = sim.quality(test, run_windows(sim.run.sequences, test, sim.window)[1])
    always = sim.quality(test, np.zeros(len(test), dtype=np.int64))
    return {"rows": rows, "never_refresh": never, "always_refresh": always}


def markdown(result: dict, dataset: str, window: int) -> str:
    from recbole_scalrec.experiments.report import p_text

    lines = [f"{dataset}: test NDCG@10 of the final request of each user's run of {window} requests, S2, by refresh "
             f"policy at equal cloud spend (calls per 1,000 requests; the estimator's threshold set on validation).", "",
             "| budget | policy | calls / 1,000 | mean final gap | SCaLRec | cached fusion | vs fixed, paired over users |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        versus = "; ".join(f"{m.replace('_', ' ')} {v['mean_diff']:+.4f} (p = {p_text(v['wilcoxon_p'])})"
                           for m, v in r.get("vs_fixed", {}).items())
        lines.append(f"| {r['budget']:g} | {r['policy']} | {r['calls_per_1000']:.1f} | {r['mean_final_gap']:.2f} | "
                     f"{r['ndcg@10']['scalrec']:.4f} | {r['ndcg@10']['cached_fusion']:.4f} | {versus} |")
    n, a = result["never_refresh"], result["always_refresh"]
    lines += ["", f"Never refresh (gap {window}): SCaLRec {n['scalrec']:.4f}, cached fusion {n['cached_fusion']:.4f}; "
                  f"always (gap 0): fresh fusion {a['fresh_fusion']:.4f}."]
    return "\n".join(lines) + "\n"


def draw(result: dict, path: str, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, marker in zip(POLICIES, "osd"):
        for method, style in zip(METHODS, ("-", "--")):
            rows = sorted((r for r in result["rows"] if r["policy"] == policy), key=lambda r: r["calls_per_1000"])
            ax.plot([r["calls_per_1000"] for r in rows], [r["ndcg@10"][method] for r in rows], style, marker=marker,
                    label=f"{method.replace('_', ' ')}, {policy}")
    ax.axhline(result["always_refresh"]["fresh_fusion"], color="grey", ls=":", label="fresh fusion (always refresh)")
    ax.set_xlabel("cloud calls per 1,000 requests")
    ax.set_ylabel("test NDCG@10, S2")
    ax.set_title(f"{dataset}: quality against cloud calls")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_scalrec.refresh", description=__doc__.splitlines()[0])
    parser.add_argument("--results_dir", required=True)
    parser.add_argument("--budgets", type=float, nargs="+", default=[50, 100, 200, 500])
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--head", default="scalrec")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--figure", default=None)
    args = parser.parse_args(argv)
    from recbole_scalrec.quick_start import load_run

    run = load_run(args.results_dir)
    trainer = run.info["trainer"]
    needed = window_prefixes(run.sequences, np.concatenate([run.prefixes["valid"], run.prefixes["test"]]), args.window)
    calls_before = trainer.channel.lm_forward_calls
    trainer.channel.extend(needed)
    run.states = trainer.compute_states()
    sim = Simulator(run, args.head, args.window)
    result = evaluate_budgets(sim, args.budgets, args.seed)
    result.update(dataset=run.config["dataset"], model=run.config["model"], window=args.window, head=args.head,
                  results_dir=args.results_dir, lm_forward_calls=trainer.channel.lm_forward_calls - calls_before)
    out = args.out or os.path.join(args.results_dir, "refresh")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "refresh.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    text = markdown(result, run.config["dataset"], args.window)
    with open(os.path.join(out, "refresh.md"), "w", encoding="utf-8") as f:
        f.write(text)
    draw(result, args.figure or os.path.join(out, f"refresh-{run.config['dataset']}.png"), run.config["dataset"])
    print(text)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
