"""On-device latency of one request (batch 1, one thread).

    python benchmarks/on_device_latency.py [--model SASRec] [--dataset ml-100k] [--repeats 2000]

Measures, side by side in one run: the backbone's structure encode ``z_str(t)`` of a
prefix (PyTorch, inference mode), and SCaLRec's device overhead — cues (Eq. 10),
estimator (Eq. 11), calibrator + bounded correction (Eqs. 12-14) and the Eq. 4 rerank of
``candidate_size`` candidates — on the exported :class:`OnDeviceReranker` (one compiled call;
the timed region starts when the request's inputs are in hand); and, separately, the candidate
repair of the ``+repair`` methods (``repair_size`` items by the fresh structure score over the
whole item table, METHOD.md Sec. 10); and the whole device path (structure encoder, cues, estimator,
calibrator, rerank) per request three ways: eager PyTorch (:class:`recbole_scalrec.export.DevicePath`),
PyTorch encode + the numba kernel, and the same path exported to ONNX and run by onnxruntime (CPU
provider, one thread; ``onnx_us_p50`` target <= 200, file size ``onnx_bytes``). Latency does not
depend on trained weight values, so freshly initialised weights of the configured sizes
are used. Last line: one JSON object (``overhead_us_p50`` target <= 100,
``overhead_ratio`` <= 0.10, ``device_params`` <= 100000; ``repair_us_p50``).
"""
import argparse
import json
import os
import time

# One thread everywhere, as on one phone core: BLAS must be told before numpy loads it (a
# multi-threaded OpenBLAS spends more on waking threads than a 100 x 64 product costs).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


from recbole_scalrec.config import Config  # noqa: E402
from recbole_scalrec.staleness.cues import CUE_NAMES  # noqa: E402
from recbole_scalrec.data.sequences import UserSequences  # noqa: E402
from recbole_scalrec.staleness.methods import build_head  # noqa: E402
from recbole_scalrec.staleness.on_device import OnDeviceReranker  # noqa: E402
from recbole_scalrec.quick_start import load_dataset  # noqa: E402
from recbole_scalrec.utils import get_model  # noqa: E402


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    us = np.asarray(samples_s) * 1e6
    return float(np.percentile(us, 50)), float(np.percentile(us, 95))


def whole_path(config, backbone, head, data, seqs, requests, repeats: int) -> dict:
    """The whole device path at batch 1: eager torch and onnxruntime (when installed), p50/p95 us."""
    import tempfile

    from recbole_scalrec.export import DevicePath, export_device_path, latency_us, session
    from recbole_scalrec.model.fusion import FusionModel

    fusion = FusionModel(backbone, 384).eval()
    module = DevicePath(fusion, head, config["spearman_top_m"]).eval()
    rng = np.random.default_rng(1)
    n, d = len(requests), fusion.item_table.shape[1]
    seq, length = seqs.gather_sequences(torch.as_tensor(requests), config["MAX_ITEM_LIST_LENGTH"])
    inputs = {"item_seq": seq.numpy(), "item_seq_len": length.numpy(), "user": seqs.prefix_users(requests).numpy(),
              "candidates": np.stack([rng.choice(np.arange(1, data.item_num), size=config["candidate_size"], replace=False)
                                      for _ in range(n)]),
              "z_str_snap": rng.standard_normal((n, d)).astype(np.float32),
              "z_sem_snap": rng.standard_normal((n, d)).astype(np.float32), "gap": np.full(n, 5),
              "length": seqs.prefix_length(requests).astype(np.float32), "density": np.full(n, 0.9, np.float32),
              "per_day": np.full(n, 3.0, np.float32)}
    names = ("item_seq", "item_seq_len", "user", "candidates", "z_str_snap", "z_sem_snap", "gap", "length", "density",
             "per_day")
    times = []
    with torch.inference_mode():
        for r in range(repeats + 50):
            i = r % n
            args = [torch.as_tensor(inputs[k][i : i + 1]) for k in names]
            start = time.perf_counter()
            module(*args)
            if r >= 50:
                times.append(time.perf_counter() - start)
    p50, p95 = percentiles(times)
    out = {"torch_path_us_p50": p50, "torch_path_us_p95": p95}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return dict(out, onnx="onnxruntime not installed (pip install -e '.[device]')")
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "device.onnx")
        out["onnx_bytes"] = export_device_path(module, inputs, file)
        lat = latency_us(session(file, threads=1), inputs, repeats)
    return dict(out, onnx_us_p50=lat["p50_us"], onnx_us_p95=lat["p95_us"])


def main() -> None:
    parser = argparse.ArgumentParser(description="on-device latency, batch 1, one thread")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    config = Config(model=args.model, dataset=args.dataset, config_dict={"state": "WARNING"})
    data = load_dataset(config)
    seqs = UserSequences.from_dataset(data)
    backbone = get_model(args.model)(config, data).eval()
    dim = backbone.item_embedding.embedding_dim
    head = build_head("scalrec", config, dim).eval()
    head.scaler.fit(torch.randn(256, len(CUE_NAMES)))
    device = OnDeviceReranker(head, backbone.item_embedding.weight, config["spearman_top_m"])
    rng = np.random.default_rng(0)
    requests = rng.choice(seqs.eval_prefixes("test"), size=64)

    encode_s, overhead_s, repair_s = [], [], []
    repair_size = int(config["repair_size"] or 20)
    with torch.inference_mode():
        for r in range(args.repeats + 50):
            pid = torch.as_tensor(requests[r % len(requests) : r % len(requests) + 1])
            seq, length = seqs.gather_sequences(pid, config["MAX_ITEM_LIST_LENGTH"])
            start = time.perf_counter()
            z_str = backbone(seq, length)[0].numpy()
            mid = time.perf_counter()
            # the snapshot (candidates, z_sem_hat, z_str(t0)) is already on the device; the prefix's
            # length, density and events per day are plain numbers the app keeps
            cands = rng.choice(np.arange(1, data.item_num), size=config["candidate_size"], replace=False)
            z_snap, z_sem = z_str + 0.1, z_str[::-1].copy()
            n_items = int(length[0])
            t1 = time.perf_counter()
            device.rerank(cands, k=10, z_str=z_str, z_str_snap=z_snap, z_sem_snap=z_sem, gap=5, length=n_items,
                          density=0.9, per_day=3.0)
            end = time.perf_counter()
            device.repair(cands, z_str, repair_size)
            after = time.perf_counter()
            if r >= 50:
                encode_s.append(mid - start)
                overhead_s.append(end - t1)
                repair_s.append(after - end)
    path = whole_path(config, backbone, head, data, seqs, requests, args.repeats)
    enc50, enc95 = percentiles(encode_s)
    ovh50, ovh95 = percentiles(overhead_s)
    rep50, rep95 = percentiles(repair_s)
    figures = {
        "model": args.model,
        "dataset": args.dataset,
        "candidate_size": config["candidate_size"],
        "max_len": config["MAX_ITEM_LIST_LENGTH"],
        "structure_encode_us_p50": enc50,
        "structure_encode_us_p95": enc95,
        "overhead_us_p50": ovh50,
        "overhead_us_p95": ovh95,
        "overhead_ratio": ovh50 / enc50,
        "device_params": device.parameter_count(),
        "n_items": int(data.item_num),
        "repair_size": repair_size,
        "repair_us_p50": rep50,
        "repair_us_p95": rep95,
        "numba_path_us_p50": float(np.percentile(np.add(encode_s, overhead_s) * 1e6, 50)),
        **path,
    }
    print(f"structure encode p50 {enc50:.0f} us (p95 {enc95:.0f}); SCaLRec overhead p50 {ovh50:.0f} us "
          f"(p95 {ovh95:.0f}); ratio {figures['overhead_ratio']:.3f}; device params {figures['device_params']}; "
          f"candidate repair (+{repair_size} of {data.item_num} items) p50 {rep50:.0f} us (p95 {rep95:.0f})")
    print(f"whole device path per request: eager torch p50 {path['torch_path_us_p50']:.0f} us; torch encode + numba "
          f"p50 {figures['numba_path_us_p50']:.0f} us; onnxruntime p50 {path.get('onnx_us_p50', float('nan')):.0f} us "
          f"(p95 {path.get('onnx_us_p95', float('nan')):.0f}; {path.get('onnx_bytes', 0) / 1e6:.2f} MB)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
