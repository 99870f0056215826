"""LM precision: the pipeline's abstracts encoded at fp32, bf16 and int8, side by side.

    python benchmarks/lm_precision.py [--dataset ml-100k] [--n 2000] [--threads 2] [--repeats 2]

Builds ``--n`` of the pipeline's own device abstracts (random prefixes of the dataset, the
``AbstractBuilder`` the pipeline uses) and encodes them with the configured LM at each precision
(``lm_precision``; fp32 with the pipeline's padding-free path, ``lm_packed: True``). Times are the
best of ``--repeats`` passes after a warm-up, all in one process with the same thread count.
Parity is what the vectors keep: cosine of each text's vector to its fp32 vector (min, mean,
1st percentile); the target is a least cosine of 0.999 (the 1st percentile is reported too, since
one odd text decides the min). Also prints what ``lm_precision: auto`` picks on this machine.
Last line: one JSON object (``fp32_s``, ``bf16_s``, ``int8_s``, ``bf16_speedup``, ``int8_speedup``,
``bf16_min_cos``, ``int8_min_cos``, ``auto``, ``bf16_units``, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def pipeline_abstracts(dataset: str, n: int, seed: int = 2020) -> list[str]:
    """``n`` abstracts of random prefixes, exactly as the pipeline writes them."""
    from recbole_scalrec.semantic.abstract import AbstractBuilder
    from recbole_scalrec.config import Config
    from recbole_scalrec.data.item_text import load_item_texts, load_request_texts
    from recbole_scalrec.data.prepare import ensure_prepared
    from recbole_scalrec.data.sequences import UserSequences
    from recbole_scalrec.quick_start import load_dataset, resolve_real_timestamps

    config = Config(model="SASRec", dataset=dataset, config_dict={"state": "WARNING"})
    ensure_prepared(dataset, os.path.dirname(os.path.normpath(config["data_path"])))
    data = load_dataset(config)
    sequences = UserSequences.from_dataset(data)
    config["real_timestamps"] = resolve_real_timestamps(config, sequences)
    builder = AbstractBuilder.from_config(config, sequences, load_item_texts(config, data),
                                          load_request_texts(config, data, sequences.rows))
    ids = np.random.default_rng(seed).choice(len(sequences.items), size=min(n, len(sequences.items)), replace=False)
    return builder.build(np.sort(ids))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def main() -> None:
    from recbole_scalrec.semantic.encoder import SemanticEncoder, bf16_capable

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = pipeline_abstracts(args.dataset, args.n)
    figures: dict = {"dataset": args.dataset, "n_texts": len(texts), "threads": args.threads,
                     "bf16_units": bf16_capable(torch.device("cpu"))}
    vectors = {}
    for precision in ("fp32", "bf16", "int8"):
        encoder = SemanticEncoder(batch_size=args.batch_size, packed=True, precision=precision)
        encoder.encode(texts[:64])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            vectors[precision] = encoder.encode(texts)
            best = min(best, time.perf_counter() - start)
        figures[f"{precision}_s"] = best
        figures[f"{precision}_per_s"] = len(texts) / best
        print(f"{precision}: {best:.2f} s ({len(texts) / best:.0f} texts/s)", flush=True)
    for precision in ("bf16", "int8"):
        cos = cosines(vectors[precision], vectors["fp32"])
        figures[f"{precision}_speedup"] = figures["fp32_s"] / figures[f"{precision}_s"]
        figures[f"{precision}_min_cos"] = float(cos.min())
        figures[f"{precision}_p01_cos"] = float(np.percentile(cos, 1))
        figures[f"{precision}_mean_cos"] = float(cos.mean())
        print(f"{precision}: x{figures[f'{precision}_speedup']:.2f} against fp32; cosine to fp32 min {cos.min():.6f}, "
              f"1st percentile {np.percentile(cos, 1):.6f}, mean {cos.mean():.6f}")
    auto = SemanticEncoder(batch_size=args.batch_size, packed=True, precision="auto")
    figures["auto"] = auto.precision
    figures["auto_info"] = auto.precision_info
    print(f"lm_precision auto on this machine: {auto.precision} ({auto.precision_info})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
