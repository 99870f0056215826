"""End-to-end pipeline on a tiny synthetic dataset: CLI, results files, stage-2 behaviour."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from synthetic import tiny_config_dict, write_synthetic_dataset, write_tiny_lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_NAMES = ["fresh_fusion", "cached_fusion", "structure_only", "semantic_only", "learned_gate", "dynamic_fusion",
                "scalrec", "scalrec_literal", "scalrec_no_estimator", "scalrec_no_rel_loss", "scalrec_no_reg_loss",
                "scalrec_no_spearman"]
REPAIR_NAMES = ["cached_fusion+repair", "scalrec+repair"]  # S2 only


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from recbole_scalrec.quick_start import run_recbole_scalrec

    root = tmp_path_factory.mktemp("tiny")
    write_synthetic_dataset(str(root / "data"), "tiny")
    cfg = tiny_config_dict(str(root / "data"), results_dir=str(root / "out"), semantic_cache_dir=str(root / "cache"))
    result = run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=cfg)
    return root, cfg, result


def test_results_json_schema(tiny_run):
    root, _, _ = tiny_run
    payload = json.load(open(root / "out" / "results.json"))
    for key in ("dataset", "model", "seed", "candidate_size", "config", "timings_s", "lm_forward_calls", "results"):
        assert key in payload
    assert payload["dataset"] == "tiny" and payload["model"] == "SASRec" and payload["candidate_size"] == 10
    assert isinstance(payload["lm_forward_calls"], int) and payload["lm_forward_calls"] > 0
    assert payload["lm_precision"] == {"requested": "fp32", "precision": "fp32"}
    seen = set()
    for row in payload["results"]:
        assert row["split"] in ("valid", "test") and row["setting"] in ("S1", "S2") and row["gap"] in (0, 5, 10, 20)
        assert row["method"] in METHOD_NAMES or (row["method"] in REPAIR_NAMES and row["setting"] == "S2")
        assert set(row["metrics"]) == {"hit@5", "ndcg@5", "hit@10", "ndcg@10", "candidate_recall"}
        assert row["n_requests"] == 40 and 0 <= row["n_clamped"] <= 40
        assert 0.0 <= row["internals"]["changed_top10"] <= 1.0
        if row["method"] == "cached_fusion":
            assert row["internals"]["changed_top10"] == 0.0
        if row["method"].startswith("scalrec"):  # what the head did, recorded per row
            for name in ("y", "r", "kappa", "correction"):
                if name == "r" and row["method"].startswith("scalrec_no_estimator"):
                    continue
                q = row["internals"][name]
                assert q["q25"] <= q["q50"] <= q["q75"] and np.isfinite(q["mean"])
        seen.add((row["split"], row["setting"], row["gap"], row["method"]))
    assert len(seen) == 2 * 2 * 4 * len(METHOD_NAMES) + 2 * 4 * len(REPAIR_NAMES)
    kept = payload["stage2"]["scalrec"]
    assert kept["target_scale"] > 0 and kept["n_requests"] > 0 and 0 <= kept["best_epoch"] < kept["epochs_run"]
    assert set(kept["history"][0]["parts"]) == {"kd", "rel", "reg"}
    for name in ("per_request.npz", "results.md", "staleness_curves.png"):
        assert (root / "out" / name).stat().st_size > 0
    ranks = np.load(root / "out" / "per_request.npz")
    assert ranks["test/S2/5/scalrec"].shape == (40,)


def test_methods_share_candidates_and_staleness_hurts_only_when_stale(tiny_run):
    _, _, result = tiny_run
    rows = {(r["split"], r["setting"], r["gap"], r["method"]): r["metrics"] for r in result["results"]}
    for setting in ("S1", "S2"):
        for gap in (0, 5, 10, 20):
            recalls = {rows[("test", setting, gap, m)]["candidate_recall"] for m in METHOD_NAMES}
            assert len(recalls) == 1  # one candidate set per request, whatever the method
        # repair only adds candidates: recall can only grow over the snapshot's set
        assert rows[("test", "S2", gap, "cached_fusion+repair")]["candidate_recall"] >= rows[("test", "S2", gap, "cached_fusion")]["candidate_recall"]
    # at gap 0 the snapshot is the present: cached fusion is fresh fusion
    assert rows[("test", "S2", 0, "cached_fusion")] == rows[("test", "S2", 0, "fresh_fusion")]
    # in S1 the fresh upper bound does not depend on the gap
    assert rows[("test", "S1", 20, "fresh_fusion")] == rows[("test", "S1", 0, "fresh_fusion")]


def test_warm_run_makes_no_lm_calls_and_reuses_stage1(tiny_run):
    from recbole_scalrec.quick_start import run_recbole_scalrec

    root, cfg, first = tiny_run
    again = run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=dict(cfg, stage2_methods=["scalrec"]))
    assert again["lm_forward_calls"] == 0
    assert again["full_ranking"] == first["full_ranking"]


def test_zero_gap_gives_reliability_near_one_and_small_correction(tmp_path):
    """After stage 2, Delta = 0 requests get r close to 1 and a near-zero correction."""
    from recbole_scalrec.staleness.methods import request_cues
    from recbole_scalrec.quick_start import build_run

    write_synthetic_dataset(str(tmp_path / "data"), "tiny")
    cfg = tiny_config_dict(str(tmp_path / "data"), results_dir=str(tmp_path / "out"), lm_path=write_tiny_lm(str(tmp_path / "lm")),
                           lm_max_length=32, semantic_cache_dir=str(tmp_path / "cache"), stage2_epochs=40, stage2_stopping_step=40,
                           stage2_learning_rate=0.01, stage2_methods=["scalrec"],
                           stage2_tie_tolerance=0.001)  # tiny data: NDCG flat to 1e-4, select the trained head
    run = build_run(model="SASRec", dataset="tiny", config_dict=cfg)
    head = run.heads["scalrec"]
    from recbole_scalrec.staleness.snapshot import stale_requests

    req = stale_requests(run.states, run.sequences, run.prefixes["test"], 0, s2=True)
    with torch.no_grad():
        adj = head.adjust(req, request_cues(req, run.item_table, cfg["spearman_top_m"]))
    assert adj.reliability.mean() > 0.9
    rel_change = (adj.z_sem - req.z_sem_snap).norm(dim=-1) / req.z_sem_snap.norm(dim=-1)
    # the shrink moves it by kappa * a * ||z_sem_hat|| at most, the correction by rho * kappa * ||z_sem_hat||
    assert torch.all(rel_change <= (adj.shrink + 0.2) * adj.kappa + 1e-6)
    assert rel_change.mean() < 0.02


def test_cli_one_epoch_on_tiny_data(tmp_path):
    write_synthetic_dataset(str(tmp_path / "data"), "tiny")
    args = [sys.executable, os.path.join(REPO, "run_recbole_scalrec.py"), "--model=GRU4Rec", "--dataset=tiny",
            f"--data_path={tmp_path / 'data'}", "--epochs=1", "--stage2_epochs=1", "--item_text_fields=['title', 'genre']",
            f"--results_dir={tmp_path / 'out'}", f"--semantic_cache_dir={tmp_path / 'cache'}", "--MAX_ITEM_LIST_LENGTH=10",
            f"--lm_path={write_tiny_lm(str(tmp_path / 'lm'))}", "--lm_max_length=32",
            "--candidate_size=10", "--stage2_methods=['scalrec']", "--embedding_size=16", "--hidden_size=16",
            "--state=WARNING"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.load(open(tmp_path / "out" / "results.json"))
    assert payload["model"] == "GRU4Rec" and {r["method"] for r in payload["results"]} >= {"scalrec", "cached_fusion"}


def test_cli_rejects_malformed_override_and_unknown_model(tmp_path):
    bad = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_scalrec.py"), "--epochs", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--key=value" in bad.stderr
    unknown = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_scalrec.py"), "--model=SASRek"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert unknown.returncode != 0 and "SASRec" in unknown.stderr and "Traceback" not in unknown.stderr


def test_help_lists_scalrec_keys():
    done = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_scalrec.py"), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    for key in ("correction_radius", "kd_temperature", "lambda_rel", "candidate_size", "eval_gaps", "fusion_weight"):
        assert key in done.stdout


def test_full_pipeline_with_surge_backbone(tmp_path):
    from recbole_scalrec.quick_start import run_recbole_scalrec

    write_synthetic_dataset(str(tmp_path / "data"), "tiny")
    cfg = tiny_config_dict(str(tmp_path / "data"), results_dir=str(tmp_path / "out"), semantic_cache_dir=str(tmp_path / "cache"),
                           lm_path=write_tiny_lm(str(tmp_path / "lm")), lm_max_length=32, epochs=1, stage2_epochs=1, stage2_methods=["scalrec"], embedding_size=16, hidden_size=16,
                           pool_length=5)
    result = run_recbole_scalrec(model="SURGE", dataset="tiny", config_dict=cfg)
    assert result["model"] == "SURGE"
    methods = {r["method"] for r in result["results"]}
    assert {"scalrec", "cached_fusion", "fresh_fusion", "structure_only"} <= methods
    assert all(0.0 <= r["metrics"]["ndcg@10"] <= 1.0 for r in result["results"])


def test_report_aggregates_a_run(tiny_run, tmp_path):
    from recbole_scalrec.experiments.report import (draw_figures, load_runs, mean_payload, recovery, recovery_cell, report,
                                                    seed_verdict)

    root, _, _ = tiny_run
    runs = load_runs([str(root / "out")])
    text = report(runs, [str(root / "out")])
    assert f"Generated by `python -m recbole_scalrec.report {root / 'out'}`" in text
    assert "## tiny, SASRec" in text and "Main table" in text and "paper's claims" in text
    assert "| scalrec |" in text and "Recovery ratio" in text
    assert "| tiny | SASRec | 1 |" in text  # model-agnostic table row
    f0, s0 = (next(x["metrics"]["ndcg@10"] for x in runs[("tiny", "SASRec")][0]["results"]
                   if (x["split"], x["setting"], x["gap"], x["method"]) == ("test", "S1", 0, m))
              for m in ("fresh_fusion", "scalrec"))
    if f0:  # Δ = 0 is reported with its sign: a head scoring above fresh fusion is not a shortfall
        assert f"below fresh by {100 * max(0.0, (f0 - s0) / f0):.2f}% at most" in text
        assert "Per request at Δ = 0:" in text
    assert "SCaLRec − cached fusion, S2, mean over Δ ∈ {5, 10, 20}, validation / test per seed: " in text
    best_epoch = runs[("tiny", "SASRec")][0]["stage2"]["scalrec"]["best_epoch"]
    assert f"; SCaLRec's own head: {int(best_epoch == 0)} of 1." in text
    for setting in ("S1", "S2"):  # the head against serving the snapshot unchanged, with its teacher beside it
        assert f"* {setting}, Δ ∈ {{5, 10, 20}}, per request against cached fusion: SCaLRec " in text
    from recbole_scalrec.experiments.report import paired
    # six requests up, one tied: the exact two-sided signed-rank p is 2 / 2**6
    assert paired(np.array([0.3, 0.2, 0.4, 0.1, 0.5, 0.6, 0.0]), np.zeros(7)) == (
        "+0.3000 over 7", "better on 6, worse on 0; Wilcoxon p = 0.0312")
    # two thousand requests all one way: the normal approximation underflows, and the table says so
    from recbole_scalrec.experiments.report import p_text, wilcoxon_p
    assert wilcoxon_p(np.linspace(0.5, 1.0, 2000), np.zeros(2000)) == 0.0
    assert (p_text(0.0), p_text(3.2e-35), p_text(0.0312)) == ("< 1e-300", "3.2e-35", "0.0312")
    assert "not testable: only SASRec of SASRec / SURGE run" in text
    assert "(1/1 seeds) |" in text  # each claim judged per seed
    assert [seed_verdict(v) for v in ([True, True], [False], [True, False, False])] == [
        "holds (2/2 seeds)", "does not hold (0/1 seeds)", "mixed (1/3 seeds)"]
    # two copies of the run pool to the same means; the figure is written
    twice = {k: v + v for k, v in runs.items()}
    assert mean_payload(twice[("tiny", "SASRec")])["results"] == mean_payload(runs[("tiny", "SASRec")])["results"]
    (path,) = draw_figures(runs, str(tmp_path / "fig"))
    assert path.endswith("staleness-tiny-SASRec.png") and os.path.getsize(path) > 0
    r = runs[("tiny", "SASRec")]
    f, c, s = (next(x["metrics"]["ndcg@10"] for x in r[0]["results"] if (x["split"], x["setting"], x["gap"], x["method"])
                    == ("test", "S2", 10, m)) for m in ("fresh_fusion", "cached_fusion", "scalrec"))
    if f - c > 0.01 * abs(f):
        assert recovery(r, "S2", 10) == pytest.approx((s - c) / (f - c))
    else:  # staleness cost (almost) nothing, or cached scored above fresh: the ratio is undefined
        assert np.isnan(recovery(r, "S2", 10))
    # a run whose cached semantics score above fresh ones has nothing to recover
    flipped = [dict(r[0], results=[dict(x, metrics=dict(x["metrics"], **{"ndcg@10": {"fresh_fusion": 0.1, "cached_fusion": 0.2,
                                                                                         "scalrec": 0.15}[x["method"]]}))
                                   if x["method"] in ("fresh_fusion", "cached_fusion", "scalrec") else x for x in r[0]["results"]])]
    assert np.isnan(recovery(flipped, "S2", 10)) and recovery_cell(flipped, "S2", 10) == "n/a (cached above fresh)"


def test_sweep_reuses_stage1_and_reports_the_mean_over_gaps(tiny_run, tmp_path):
    from recbole_scalrec.experiments.sweep import SWEEP_GAPS, mean_over_gaps, run_sweep

    root, cfg, result = tiny_run
    overrides = {k: v for k, v in cfg.items() if k not in ("results_dir", "seed")}
    rows = run_sweep("correction_radius", [0.05], "SASRec", "tiny", result["seed"], str(tmp_path / "sweeps"),
                     overrides, stage1_checkpoint=str(root / "out" / "stage1.pth"))
    (row,) = rows
    assert row["correction_radius"] == 0.05 and row["stage1_checkpoint"] == "reused"
    assert row["valid_scalrec_ndcg@10"] == pytest.approx(mean_over_gaps(json.loads(
        (tmp_path / "sweeps" / f"tiny-SASRec-seed{result['seed']}" / "correction_radius=0.05" / "results.json").read_text()
    )["results"], "scalrec", "ndcg@10", split="valid"))
    run_dir = tmp_path / "sweeps" / f"tiny-SASRec-seed{result['seed']}" / "correction_radius=0.05"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["config"]["correction_radius"] == 0.05
    methods = {r["method"] for r in saved["results"]}
    assert "scalrec" in methods and "learned_gate" not in methods  # only the swept head is trained
    by_hand = np.mean([r["metrics"]["ndcg@10"] for r in saved["results"] if r["split"] == "test"
                       and r["setting"] == "S2" and r["method"] == "scalrec" and r["gap"] in SWEEP_GAPS])
    assert row["scalrec_ndcg@10"] == pytest.approx(by_hand)
    assert mean_over_gaps(saved["results"], "cached_fusion", "ndcg@10") == pytest.approx(row["cached_fusion_ndcg@10"])


def test_sweep_merges_seeds_and_draws_one_panel_per_key(tmp_path):
    from recbole_scalrec.experiments.sweep import draw_sweeps, merge_seeds

    def row(value, seed):
        return {"correction_radius": value, "scalrec_ndcg@10": 0.1 * value + seed, "scalrec_hit@10": 0.2,
                "cached_fusion_ndcg@10": 0.05, "fresh_fusion_ndcg@10": 0.07, "valid_scalrec_ndcg@10": 0.06,
                "valid_cached_fusion_ndcg@10": 0.05}

    rows = merge_seeds("correction_radius", {1: [row(0.1, 1), row(1.0, 1)], 3: [row(0.1, 3), row(1.0, 3)]})
    assert [r["correction_radius"] for r in rows] == [0.1, 1.0] and rows[0]["seeds"] == [1, 3]
    assert rows[1]["scalrec_ndcg@10"] == pytest.approx(2.1) and rows[1]["scalrec_ndcg@10_std"] == pytest.approx(1.0)
    assert rows[0]["per_seed"]["3"]["scalrec_ndcg@10"] == pytest.approx(3.01)
    (tmp_path / "sweep-correction_radius.json").write_text(json.dumps(rows))
    with pytest.raises(FileNotFoundError):
        draw_sweeps(str(tmp_path / "nothing"), str(tmp_path / "x.png"))
    assert draw_sweeps(str(tmp_path), str(tmp_path / "fig.png")) == ["correction_radius"]
    assert (tmp_path / "fig.png").stat().st_size > 0
