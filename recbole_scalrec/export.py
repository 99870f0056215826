"""The device path of a trained run as one ONNX graph, run by onnxruntime (METHOD.md Sec. 3-5).

    python -m recbole_scalrec.export --results_dir DIR --out device.onnx [--head scalrec] [--no-check]

:class:`DevicePath` is everything the device computes for one request, in one module: the structure
encoder over the latest sequence ``z_str(t)``, the cues (Eq. 10, the Spearman agreement on the top-M
included), the estimator (Eq. 11), the calibrator with its bounded correction (Eqs. 12-14) and the
Eq. 4 rerank of the cached candidate set. The cached snapshot is an input: ``z_sem_hat``, the
candidates ``C_hat`` and ``z_str(t0)``, with the gap, the prefix length and the two density cues.
Outputs: the candidates' scores, the top-``k`` items and the reliability ``r``.

The same functions as the batched path compute it (:func:`recbole_scalrec.staleness.cues.compute_cues`,
the head's ``adjust``, :func:`recbole_scalrec.staleness.methods.adjusted_scores`); during export
the average ranks of the Spearman cue are counted pairwise (ONNX has no ``searchsorted``; the
ranks are the same numbers). :func:`export_device_path` writes the graph (TorchScript exporter,
opset 17) and :func:`parity` runs it with onnxruntime's CPU provider on a run's test requests
against the batched torch path. A backbone the exporter cannot trace is reported with the
exporter's reason (:class:`ExportError`).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from recbole_scalrec.staleness.cues import compute_cues
from recbole_scalrec.staleness.methods import adjusted_scores

INPUTS = ("item_seq", "item_seq_len", "user", "candidates", "z_str_snap", "z_sem_snap", "gap", "length", "density",
          "per_day")
OUTPUTS = ("scores", "top_items", "reliability")


class ExportError(RuntimeError):
    """The device path of this run cannot be exported (the message says why)."""


class DevicePath(nn.Module):
    """One request's device computation (see the module docstring); batch-first tensors."""

    def __init__(self, fusion: nn.Module, head: nn.Module, top_m: int = 20, k: int = 10) -> None:
        super().__init__()
        self.fusion, self.head, self.top_m, self.k = fusion, head, int(top_m), int(k)

    def forward(self, item_seq, item_seq_len, user, candidates, z_str_snap, z_sem_snap, gap, length, density, per_day):
        z_str = self.fusion.structure(item_seq, item_seq_len, user if self.fusion.needs_user else None)
        table = self.fusion.item_table
        cues = compute_cues(gap, z_str, z_str_snap, z_sem_snap, table[candidates], length, density, per_day, self.top_m)
        req = SimpleNamespace(z_str=z_str, z_sem_snap=z_sem_snap, z_str_snap=z_str_snap, candidates=candidates)
        adj = self.head.adjust(req, cues)
        scores = adjusted_scores(adj, req, table)
        top = torch.topk(scores, k=min(self.k, scores.shape[1]), dim=1).indices
        reliability = adj.reliability if adj.reliability is not None else torch.ones_like(gap, dtype=scores.dtype)
        return scores, torch.gather(candidates, 1, top), reliability


def request_inputs(run, prefix_ids: np.ndarray, gap: int, setting: str = "S2") -> dict[str, np.ndarray]:
    """The device's inputs for requests of a run (``run.states`` and sequences), as numpy arrays."""
    from recbole_scalrec.staleness.snapshot import stale_requests

    n = len(prefix_ids)
    req = stale_requests(run.states, run.sequences, prefix_ids, np.full(n, gap), np.full(n, setting == "S2"))
    seq, seq_len = run.sequences.gather_sequences(torch.as_tensor(prefix_ids), run.config["MAX_ITEM_LIST_LENGTH"])
    return {"item_seq": seq.numpy(), "item_seq_len": seq_len.numpy(),
            "user": run.sequences.prefix_users(prefix_ids).numpy(), "candidates": req.candidates.numpy(),
            "z_str_snap": req.z_str_snap.numpy(), "z_sem_snap": req.z_sem_snap.numpy(), "gap": req.gap.numpy(),
            "length": req.length.numpy(), "density": req.density.numpy(), "per_day": req.per_day.numpy()}


def export_device_path(path_module: DevicePath, example: dict[str, np.ndarray], out: str) -> int:
    """Write ``path_module`` as ONNX to ``out`` (batch dimension dynamic); returns the file size."""
    path_module.eval()
    args = tuple(torch.as_tensor(example[name][:1]) for name in INPUTS)
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(path_module, args, out, dynamo=False, opset_version=17, input_names=list(INPUTS),
                              output_names=list(OUTPUTS), dynamic_axes={n: {0: "batch"} for n in INPUTS + OUTPUTS})
    except Exception as exc:  # noqa: BLE001 - the exporter's own reason is the message
        name = type(path_module.fusion.backbone).__name__
        raise ExportError(f"{name}'s device path cannot be exported to ONNX: {type(exc).__name__}: {exc}") from exc
    return os.path.getsize(out)


def session(path: str, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads (one: a phone core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def run_session(sess, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    wanted = {i.name for i in sess.get_inputs()}  # the exporter drops inputs a backbone never reads
    return sess.run(None, {k: v for k, v in inputs.items() if k in wanted})


@torch.no_grad()
def parity(sess, path_module: DevicePath, inputs: dict[str, np.ndarray]) -> dict:
    """onnxruntime against the batched torch path on the same requests: the largest score
    difference and the share of requests whose top-10 (items and order) is identical."""
    scores_ort, top_ort, r_ort = run_session(sess, inputs)
    scores_t, top_t, r_t = path_module(*(torch.as_tensor(inputs[n]) for n in INPUTS))
    return {"n_requests": int(len(scores_ort)), "max_abs_score_diff": float(np.abs(scores_ort - scores_t.numpy()).max()),
            "max_abs_reliability_diff": float(np.abs(r_ort - r_t.numpy()).max()),
            "identical_top10": float((top_ort == top_t.numpy()).all(axis=1).mean())}


def latency_us(sess, inputs: dict[str, np.ndarray], repeats: int = 1000) -> dict[str, float]:
    """p50 / p95 microseconds of one request at batch 1, cycling through the given requests."""
    n = len(inputs["gap"])
    feeds = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(min(n, 256))]
    for f in feeds[:20]:
        run_session(sess, f)
    times = []
    for i in range(repeats):
        start = time.perf_counter_ns()
        run_session(sess, feeds[i % len(feeds)])
        times.append((time.perf_counter_ns() - start) / 1e3)
    return {"p50_us": float(np.percentile(times, 50)), "p95_us": float(np.percentile(times, 95))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_scalrec.export", description=__doc__.splitlines()[0])
    parser.add_argument("--results_dir", required=True, help="a finished run folder (results.json, stage1.pth, heads.pth)")
    parser.add_argument("--out", default="device.onnx")
    parser.add_argument("--head", default="scalrec", help="which trained head of the run (an SCaLRec head)")
    parser.add_argument("--gap", type=int, default=5, help="gap of the test requests the parity check uses (S2)")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check and the latency")
    args = parser.parse_args(argv)
    from recbole_scalrec.quick_start import load_run

    torch.set_num_threads(1)
    run = load_run(args.results_dir)
    if args.head not in run.heads:
        raise SystemExit(f"error: the run has no head {args.head!r}; it has {', '.join(run.heads)}.")
    module = DevicePath(run.fusion, run.heads[args.head], run.config["spearman_top_m"]).eval()
    inputs = request_inputs(run, run.prefixes["test"], args.gap)
    try:
        size = export_device_path(module, inputs, args.out)
    except ExportError as err:
        print(f"error: {err}")
        return 2
    report = {"out": args.out, "bytes": size, "model": run.config["model"], "dataset": run.config["dataset"],
              "head": args.head}
    if not args.no_check:
        sess = session(args.out)
        report["parity"] = parity(sess, module, inputs)
        report["latency"] = latency_us(sess, inputs)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
