"""Batched Spearman (ours, on tensors) vs a loop of scipy.stats.spearmanr, side by side.

    python benchmarks/spearman.py [--batch 4096] [--m 20] [--repeats 5]

Last line: one JSON object with ``speedup`` (target >= 50) and ``max_abs_diff`` (<= 1e-6).
"""
import argparse
import json
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from recbole_scalrec.staleness.cues import batched_spearman


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--m", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (scipy's loop uses one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    # integer-valued scores (many ties) and continuous scores (few), half each
    x = np.concatenate([rng.integers(0, 8, (args.batch // 2, args.m)), rng.normal(size=(args.batch - args.batch // 2, args.m))])
    y = np.concatenate([rng.integers(0, 5, (args.batch // 2, args.m)), rng.normal(size=(args.batch - args.batch // 2, args.m))])
    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    batched_spearman(xt, yt)  # warm-up

    ours_s = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = batched_spearman(xt, yt)
        ours_s.append(time.perf_counter() - start)
    ref_s = []
    for _ in range(max(1, args.repeats // 2)):
        start = time.perf_counter()
        ref = np.array([spearmanr(a, b).statistic for a, b in zip(x, y)])
        ref_s.append(time.perf_counter() - start)
    ok = ~np.isnan(ref)  # scipy gives nan for a constant row; ours gives 0
    diff = float(np.max(np.abs(ours.numpy()[ok] - ref[ok])))
    figures = {
        "batch": args.batch,
        "threads": args.threads,
        "m": args.m,
        "ours_s": float(np.median(ours_s)),
        "scipy_loop_s": float(np.median(ref_s)),
        "speedup": float(np.median(ref_s) / np.median(ours_s)),
        "max_abs_diff": diff,
        "constant_rows": int((~ok).sum()),
    }
    print(f"ours {figures['ours_s'] * 1e3:.2f} ms, scipy loop {figures['scipy_loop_s'] * 1e3:.1f} ms, "
          f"speedup {figures['speedup']:.0f}x, max |diff| {diff:.2e}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
