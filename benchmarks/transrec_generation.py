"""TransRec's constrained generation: each prompt run once for all its beams against ``generate``
running it once per beam, side by side on the same test requests.

    python benchmarks/transrec_generation.py [--dataset foursquare] [--side cloud] [--n 8] [--threads 1]

Builds ``TransRecLM`` as the ``transrec_<side>`` row of Table 2 builds it (untrained LoRA factors:
the LM's own beams, which is what the cost depends on) and generates, for the first ``--n`` test
requests and every facet, the beams both ways in one process at the same thread count. Parity is
what the ranking keeps: whether every request's beams name the same identifiers in the same order,
and the largest difference of a beam's score.
Last line: one JSON object (per facet ``shared_s``, ``per_beam_s``, ``same_beams``, ``max_score_diff``;
overall ``shared_s``, ``per_beam_s``, ``speedup``, ``same_beams``).
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def build(dataset: str, side: str, seed: int):
    """The model and the first test requests' sequences, as the Table 2 row serves them."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.dataset import SCaLRecDataset
    from recbole_scalrec.data.prepare import ensure_prepared
    from recbole_scalrec.model.sequential_recommender.transreclm import TransRecLM

    config = Config(model="TransRecLM", dataset=dataset,
                    config_dict={"seed": seed, "state": "WARNING", "show_progress": False, "transrec_side": side})
    ensure_prepared(config["dataset"], os.path.dirname(os.path.normpath(config["data_path"])))
    init_seed(seed, config["reproducibility"])
    data = SCaLRecDataset(config)
    train, _, _ = data_preparation(config, data)
    init_seed(seed, config["reproducibility"])
    return config, TransRecLM(config, train.dataset).eval(), data.sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="foursquare")
    parser.add_argument("--side", default="cloud", choices=["cloud", "device"])
    parser.add_argument("--n", type=int, default=8, help="test requests (one generation batch at the default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, model, seqs = build(args.dataset, args.side, args.seed)
    test = seqs.eval_prefixes("test")[: args.n]
    seq, length = seqs.gather_sequences(torch.as_tensor(test), config["MAX_ITEM_LIST_LENGTH"])
    figures: dict = {"dataset": args.dataset, "side": args.side, "lm_layers": model.lm_layers, "n": len(test),
                     "beams": model.beams, "threads": args.threads, "facets": {}}
    for facet in model.facets:
        start = time.perf_counter()
        shared = model.generate(facet, seq, length)
        middle = time.perf_counter()
        per_beam = model.generate(facet, seq, length, share_prompt=False)
        end = time.perf_counter()
        same = [[n for n, _ in row] for row in shared] == [[n for n, _ in row] for row in per_beam]
        diff = max((abs(a - b) for x, y in zip(shared, per_beam) for (_, a), (_, b) in zip(x, y)), default=0.0)
        figures["facets"][facet] = {"shared_s": middle - start, "per_beam_s": end - middle, "same_beams": same,
                                    "max_score_diff": diff}
        print(f"{facet}: shared prompt {middle - start:.1f} s, prompt per beam {end - middle:.1f} s, "
              f"same beams {same}, largest score difference {diff:.2e}", flush=True)
    per_facet = figures["facets"].values()
    figures["shared_s"] = sum(f["shared_s"] for f in per_facet)
    figures["per_beam_s"] = sum(f["per_beam_s"] for f in per_facet)
    figures["speedup"] = figures["per_beam_s"] / figures["shared_s"]
    figures["same_beams"] = all(f["same_beams"] for f in per_facet)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
