"""The device path exported to ONNX and run by onnxruntime, against the batched torch path."""
import json

import numpy as np
import pytest
import torch

from synthetic import tiny_run_config

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from recbole_scalrec.quick_start import run_recbole_scalrec

    root = tmp_path_factory.mktemp("export")
    cfg = tiny_run_config(root, stage2_methods=["scalrec", "learned_gate"])
    run_recbole_scalrec(model="SASRec", dataset="tiny", config_dict=cfg)
    return root


def test_load_run_rebuilds_the_trained_heads(finished_run):
    from recbole_scalrec.quick_start import load_run

    run = load_run(str(finished_run / "run"))
    saved = torch.load(finished_run / "run" / "heads.pth", weights_only=True)["state_dict"]
    for key, value in torch.nn.ModuleDict(run.heads).state_dict().items():
        torch.testing.assert_close(value, saved[key])
    assert run.lm_forward_calls == 0 and run.info["stage1"]["checkpoint"] == "reused"


def test_onnx_device_path_matches_the_batched_protocol(finished_run, tmp_path):
    from recbole_scalrec.export import DevicePath, export_device_path, request_inputs, run_session, session
    from recbole_scalrec.quick_start import load_run
    from recbole_scalrec.staleness.methods import method_scores, request_cues
    from recbole_scalrec.staleness.snapshot import stale_requests

    run = load_run(str(finished_run / "run"))
    ids = run.prefixes["test"]
    for gap in (0, 5):
        inputs = request_inputs(run, ids, gap)
        module = DevicePath(run.fusion, run.heads["scalrec"], run.config["spearman_top_m"]).eval()
        size = export_device_path(module, inputs, str(tmp_path / f"device-{gap}.onnx"))
        assert size > 10_000
        scores, top, reliability = run_session(session(str(tmp_path / f"device-{gap}.onnx")), inputs)
        # the protocol's own scores of the same requests (the batched torch path every method uses)
        req = stale_requests(run.states, run.sequences, ids, np.full(len(ids), gap), np.full(len(ids), True))
        cues = request_cues(req, run.item_table, run.config["spearman_top_m"])
        with torch.no_grad():
            expected = method_scores("scalrec", req, run.item_table, run.config["fusion_weight"], run.heads, cues).numpy()
            r = run.heads["scalrec"].adjust(req, cues).reliability.numpy()
        assert np.abs(scores - expected).max() < 1e-4
        np.testing.assert_allclose(reliability, r, atol=1e-5)
        expected_top = np.take_along_axis(req.candidates.numpy(), np.argsort(-expected, axis=1, kind="stable")[:, :10], 1)
        assert (top == expected_top).all(axis=1).mean() == 1.0


def test_export_command_reports_parity_and_latency(finished_run, tmp_path, capsys):
    from recbole_scalrec.export import main

    assert main(["--results_dir", str(finished_run / "run"), "--out", str(tmp_path / "device.onnx")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["parity"]["max_abs_score_diff"] < 1e-4 and report["parity"]["identical_top10"] == 1.0
    assert report["latency"]["p50_us"] > 0 and report["bytes"] == (tmp_path / "device.onnx").stat().st_size
