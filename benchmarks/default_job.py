"""The default job (``python run_recbole_scalrec.py``: SASRec on ml-100k) cold and then warm, in one run.

    python benchmarks/default_job.py [--workdir /tmp/default_job] [--previous docs/benchmarks/default_job_cold.txt]
        [--fp32] [--key=value ...]

* **cold**: an empty semantic cache, a new results folder and no stage-1 checkpoint: every LM call,
  stage 1, stage 2 and the evaluation;
* **warm**: the same command again: the cache serves every ``h`` (zero LM calls) and the stage-1
  checkpoint is reused, so stage 2 and the evaluation run;
* ``--fp32``: a third, cold run with ``lm_precision: fp32`` (its own cache), so the test metrics of
  the default precision stand beside those of fp32 (the parity that matters is the rankings').

Each run is the CLI in a subprocess (``--key=value`` overrides are passed on). Prints the stage
times side by side with the previous record's (``timings_s`` of its last JSON line), test S2
NDCG@10 at gap 5 per method, and as its last line one JSON object
``{"cold_s", "warm_s", "stages_cold", "stages_warm", "lm_precision", "test_ndcg@10_s2_gap5", ...}``.
Wall times depend on the machine and on what else runs on it: compare runs made side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def previous_record(path: str) -> dict:
    """The last JSON line of a recorded default-job run (its ``stages_cold`` or, in older records,
    ``timings_s``, and the LM call count)."""
    if not path or not os.path.isfile(path):
        return {}
    for line in reversed(open(path, encoding="utf-8").read().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def run_job(workdir: str, name: str, extra: list[str], cache: str) -> dict:
    """One CLI run into ``<workdir>/<name>``; its wall seconds and ``results.json``."""
    results = os.path.join(workdir, name)
    cmd = [sys.executable, os.path.join(ROOT, "run_recbole_scalrec.py"), f"--semantic_cache_dir={cache}",
           f"--results_dir={results}", f"--checkpoint_dir={os.path.join(workdir, 'saved')}", "--show_progress=False",
           *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    with open(os.path.join(results, "results.json"), encoding="utf-8") as f:
        summary = json.load(f)
    return {"wall_s": round(wall, 1), "summary": summary, "command": " ".join(cmd[1:])}


def gap5(summary: dict) -> dict[str, float]:
    return {r["method"]: round(r["metrics"]["ndcg@10"], 4) for r in summary["results"]
            if r["split"] == "test" and r["setting"] == "S2" and r["gap"] == 5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/default_job")
    parser.add_argument("--previous", default=os.path.join(ROOT, "docs", "benchmarks", "default_job_cold.txt"))
    parser.add_argument("--fp32", action="store_true", help="also a cold run with lm_precision fp32")
    args, extra = parser.parse_known_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    cache = os.path.join(args.workdir, "cache")
    cold = run_job(args.workdir, "cold", extra, cache)
    warm = run_job(args.workdir, "warm", extra + [f"--stage1_checkpoint={os.path.join(args.workdir, 'cold', 'stage1.pth')}"],
                   cache)
    runs = {"cold": cold, "warm": warm}
    if args.fp32:
        runs["fp32"] = run_job(args.workdir, "fp32", extra + ["--lm_precision=fp32"], os.path.join(args.workdir, "cache-fp32"))
    previous = previous_record(args.previous)
    previous_stages = previous.get("stages_cold") or previous.get("timings_s") or {}  # this script's record, or an older one
    stages = list(cold["summary"]["timings_s"])
    print(f"commands: {cold['command']}  (then warm, reusing the cache and the stage-1 checkpoint)")
    print("\n| stage | previous record | " + " | ".join(runs) + " |\n|---|---|" + "---|" * len(runs))
    for stage in stages:
        row = [f"{previous_stages.get(stage, '')}"] + [f"{r['summary']['timings_s'].get(stage, '')}" for r in runs.values()]
        print(f"| {stage} | " + " | ".join(row) + " |")
    print("| **wall** | " + str(previous.get("cold_s", previous.get("wall_s", ""))) + " | " + " | ".join(str(r["wall_s"]) for r in runs.values()) + " |")
    print("| LM calls | " + str(previous.get("lm_forward_calls", "")) + " | "
          + " | ".join(str(r["summary"]["lm_forward_calls"]) for r in runs.values()) + " |")
    metrics = {name: gap5(r["summary"]) for name, r in runs.items()}
    print("\ntest, S2, gap 5, NDCG@10:\n\n| method | " + " | ".join(runs) + " |\n|---|" + "---|" * len(runs))
    for method in metrics["cold"]:
        print(f"| {method} | " + " | ".join(f"{metrics[n].get(method, float('nan')):.4f}" for n in runs) + " |")
    precision = cold["summary"].get("lm_precision") or {}
    print(json.dumps({"cold_s": cold["wall_s"], "warm_s": warm["wall_s"], "stages_cold": cold["summary"]["timings_s"],
                      "stages_warm": warm["summary"]["timings_s"], "lm_precision": precision.get("precision"),
                      "lm_precision_info": precision, "lm_forward_calls_warm": warm["summary"]["lm_forward_calls"],
                      "stage1_epochs": cold["summary"]["stage1"].get("epochs_run"),
                      "test_ndcg@10_s2_gap5": metrics["cold"],
                      **({"fp32_s": runs["fp32"]["wall_s"], "test_ndcg@10_s2_gap5_fp32": metrics["fp32"]} if "fp32" in runs else {}),
                      "previous": previous}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
