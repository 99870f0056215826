"""Budgeted refresh driven by the estimator, against fixed-interval and random refresh."""
import json

import numpy as np
import pytest

from synthetic import tiny_run_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from recbole_scalrec.quick_start import run_recbole_scalrec

    root = tmp_path_factory.mktemp("refresh")
    cfg = tiny_run_config(root, semantic_train_stride=3, stage2_methods=["scalrec"])
    run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=cfg)
    return root


def test_policies_spend_what_they_are_given(finished_run):
    from recbole_scalrec.quick_start import load_run
    from recbole_scalrec.refresh import Simulator, run_windows, window_prefixes

    run = load_run(str(finished_run / "run"))
    trainer = run.info["trainer"]
    ids = np.concatenate([run.prefixes["valid"], run.prefixes["test"]])
    table = trainer.channel.extend(window_prefixes(run.sequences, ids, 6))
    assert trainer.channel.lm_forward_calls > 0  # the runs' prefixes the stride skipped were encoded
    assert np.isin(window_prefixes(run.sequences, ids, 6), table.ids).all()
    run.states = trainer.compute_states()
    sim = Simulator(run, "scalrec", window=6)
    test = run.prefixes["test"]
    start, n = run_windows(run.sequences, test, 6)
    never, calls, served = sim.simulate(test, "estimator", 0.0)  # r > 0 always: never refreshes
    assert calls == 0 and served == n.sum() and (never == test - start).all()
    always, calls, _ = sim.simulate(test, "estimator", 1.01)  # every request refreshes
    assert calls == served and (always == 0).all()
    gaps, calls, served = sim.simulate(test, "fixed", 3)
    assert abs(calls / served - 1 / 3) < 0.1 and gaps.max() <= 2
    _, calls, served = sim.simulate(test, "random", 0.25, seed=1)
    assert 0.1 < calls / served < 0.4
    theta = sim.threshold_for(run.prefixes["valid"], 300)
    _, calls, served = sim.simulate(run.prefixes["valid"], "estimator", theta)
    assert abs(1000 * calls / served - 300) < 150  # the bisection spends about the budget on validation
    # a lower reliability comes with a longer gap on average (the estimator reads staleness)
    r_fresh = sim.reliability(test, test)
    r_stale = sim.reliability(test, start)
    assert r_stale.mean() < r_fresh.mean()


def test_refresh_command_writes_the_curve(finished_run, tmp_path, capsys):
    from recbole_scalrec.refresh import main

    figure = tmp_path / "refresh-tiny.png"
    assert main(["--results_dir", str(finished_run / "run"), "--budgets", "100", "300", "--window", "6",
                 "--out", str(tmp_path / "out"), "--figure", str(figure)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {(r["budget"], r["policy"]) for r in result["rows"]} == {(b, p) for b in (100, 300)
                                                                     for p in ("estimator", "fixed", "random")}
    for r in result["rows"]:
        assert set(r["ndcg@10"]) == {"scalrec", "cached_fusion", "fresh_fusion"}
        assert 0.0 <= r["ndcg@10"]["scalrec"] <= 1.0 and r["calls_per_1000"] <= 1000
        if r["policy"] == "estimator":
            assert 0.0 <= r["vs_fixed"]["scalrec"]["wilcoxon_p"] <= 1.0
    assert figure.stat().st_size > 10_000 and (tmp_path / "out" / "refresh.md").is_file()
