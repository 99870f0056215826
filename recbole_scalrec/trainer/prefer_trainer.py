"""The trainer of :class:`~recbole_scalrec.model.sequential_recommender.prefer.PREFER`: federated
training over edge servers, run by Flower (``flwr``) in simulation on this machine.

Each Flower client is one edge server with its users (user id modulo ``prefer_edge_servers``). A
round: Flower sends the global user-independent parameters; each edge trains them, with its users'
own embeddings ``e_u``, on its users' training prefixes for ``prefer_local_epochs`` epochs (Adam,
``learning_rate``), keeps the ``e_u`` in its local state (a file per edge and round under the
trainer's checkpoint folder; they never reach the server) and returns the user-independent
parameters; Flower's FedAvg averages them weighted by training prefixes. Each edge then scores its
users' validation requests with the new global model (full sort, NDCG@10) and FedAvg's
evaluation averages the scores. After ``prefer_rounds`` rounds, or once ``prefer_stopping_rounds``
rounds in a row have not beaten the best (early stopping, in rounds), the round
with the best validation score is kept (global parameters and that round's ``e_u``). :attr:`PREFERTrainer.phase_log` holds the
per-round record (validation NDCG@10, mean training loss, mean ``||e_u||``) and the edges' sizes.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import torch

from recbole_scalrec.staleness.protocol import full_ranking_metrics, metrics_from_ranks
from recbole_scalrec.trainer.trainer import Trainer

SIMULATION_HINT = ('PREFER trains with Flower in simulation, which needs Ray: pip install -e ".[federated]" '
                   '(flwr[simulation] 1.8, the last whose Ray pin RecBole 1.2.1 accepts).')


def _columns(interaction, fields: list[str], rows: np.ndarray) -> dict[str, torch.Tensor]:
    return {f: interaction[f][torch.as_tensor(rows)].clone() for f in fields}


def _edge_client(model, edge: int, train: dict, valid: dict, fields: dict, state_dir: str, lr: float,
                 epochs: int, batch_size: int, seed: int):
    """The Flower client of one edge server (built inside the simulation's worker)."""
    import flwr as fl

    class EdgeServer(fl.client.NumPyClient):
        def _prepare(self, parameters, rnd: int) -> None:
            torch.set_num_threads(1)
            torch.autograd.set_detect_anomaly(False)  # RecBole's sine.py turns it on at import
            model.load_shared(parameters)
            users = torch.unique(train[fields["user"]])
            path = os.path.join(state_dir, f"edge-{edge}-round{rnd}.pt")
            if os.path.isfile(path):
                stored = torch.load(path, weights_only=True)
                with torch.no_grad():
                    model.user_embedding.weight[stored["users"]] = stored["e_u"]
            self.users = users

        def fit(self, parameters, config):
            rnd = int(config["round"])
            self._prepare(parameters, rnd - 1)
            model.train()
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            # the edge's own seeds (batch order and dropout): a round's result does not depend on how
            # many edges Ray runs at once (prefer_simulation_cpus) or in which order
            generator = torch.Generator().manual_seed(seed * 1000 + rnd * 10 + edge)
            torch.manual_seed(seed * 1000 + rnd * 10 + edge)
            n = len(train[fields["target"]])
            total, steps = 0.0, 0
            for _ in range(epochs):
                for batch in torch.randperm(n, generator=generator).split(batch_size):
                    loss = model.calculate_loss({k: v[batch] for k, v in train.items()})
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, steps = total + float(loss), steps + 1
            e_u = model.user_embedding.weight[self.users].detach().clone()
            torch.save({"users": self.users, "e_u": e_u}, os.path.join(state_dir, f"edge-{edge}-round{rnd}.pt"))
            return model.shared_arrays(), n, {"loss": total / max(steps, 1), "e_u_norm": float(e_u.norm(dim=1).mean())}

        @torch.no_grad()
        def evaluate(self, parameters, config):
            self._prepare(parameters, int(config["round"]))
            model.eval()
            scores = model.full_sort_predict(valid)
            scores[:, 0] = -torch.inf  # the padding item, as every Table 2 row
            target = valid[fields["target"]]
            ndcg = metrics_from_ranks(full_ranking_metrics(scores, target))["ndcg@10"]
            return 1.0 - ndcg, len(target), {"ndcg@10": ndcg}

    return EdgeServer().to_client()


class PREFERTrainer(Trainer):
    """See the module docstring."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.rounds = int(config["prefer_rounds"] or 25)
        self.local_epochs = int(config["prefer_local_epochs"] or 2)
        self.patience = int(config["prefer_stopping_rounds"] or 0)
        self.edges = int(config["prefer_edge_servers"] or 4)
        self.cpus = int(config["prefer_simulation_cpus"] or 2)
        self.phase_log: list[dict] = []

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        try:
            import flwr as fl
            import ray  # noqa: F401  (Flower's simulation engine)
        except ImportError as err:
            raise ImportError(SIMULATION_HINT) from err
        model = self.model
        fields = {"user": model.USER_ID, "target": model.POS_ITEM_ID}
        columns = [model.USER_ID, model.ITEM_SEQ, model.ITEM_SEQ_LEN, model.POS_ITEM_ID]
        train = train_data.dataset.inter_feat
        valid = valid_data.dataset.inter_feat
        train_edge = train[model.USER_ID].numpy() % self.edges
        valid_edge = valid[model.USER_ID].numpy() % self.edges
        state_dir = os.path.join(self.checkpoint_dir, f"prefer-edges-{os.getpid()}-{id(self)}")
        shutil.rmtree(state_dir, ignore_errors=True)
        os.makedirs(state_dir)
        edges = [e for e in range(self.edges) if (train_edge == e).any() and (valid_edge == e).any()]
        parts = {e: (_columns(train, columns, np.flatnonzero(train_edge == e)),
                     _columns(valid, columns, np.flatnonzero(valid_edge == e))) for e in edges}
        seed = int(self.config["seed"] or 0)
        lr, batch = float(self.config["learning_rate"]), int(self.config["train_batch_size"])
        local_epochs = self.local_epochs  # the client function travels to the simulation's workers: no self in it

        def client_fn(cid: str):
            edge = edges[int(cid)]
            return _edge_client(model, edge, *parts[edge], fields, state_dir, lr, local_epochs, batch, seed)

        log = self.phase_log
        patience = self.patience

        class KeepEveryRound(fl.server.strategy.FedAvg):
            """FedAvg that remembers each round's global parameters and federated validation score,
            and stops sending work to the edges once ``patience`` rounds have not beaten the best
            (Flower then passes the remaining rounds without calling any client)."""

            def __init__(self, **kwargs) -> None:
                super().__init__(**kwargs)
                self.params: dict[int, list[np.ndarray]] = {}
                self.best_round, self.best_score, self.stopped = 0, -1.0, False

            def configure_fit(self, server_round, parameters, client_manager):
                return [] if self.stopped else super().configure_fit(server_round, parameters, client_manager)

            def configure_evaluate(self, server_round, parameters, client_manager):
                return [] if self.stopped else super().configure_evaluate(server_round, parameters, client_manager)

            def aggregate_fit(self, rnd, results, failures):
                if failures:
                    raise RuntimeError(f"PREFER round {rnd}: {len(failures)} edge servers failed: {failures[0]!r}")
                aggregated, metrics = super().aggregate_fit(rnd, results, failures)
                self.params[rnd] = fl.common.parameters_to_ndarrays(aggregated)
                n = sum(r.num_examples for _, r in results)
                log.append({"round": rnd, "train_loss": sum(r.metrics["loss"] * r.num_examples for _, r in results) / n,
                            "e_u_norm": float(np.mean([r.metrics["e_u_norm"] for _, r in results]))})
                return aggregated, metrics

            def aggregate_evaluate(self, rnd, results, failures):
                if failures:
                    raise RuntimeError(f"PREFER round {rnd}: {len(failures)} edge evaluations failed: {failures[0]!r}")
                n = sum(r.num_examples for _, r in results)
                score = sum(r.metrics["ndcg@10"] * r.num_examples for _, r in results) / n
                log[-1]["valid_ndcg@10"] = score
                if score > self.best_score:
                    self.best_round, self.best_score = rnd, score
                self.stopped = patience > 0 and rnd - self.best_round >= patience
                return super().aggregate_evaluate(rnd, results, failures)

        strategy = KeepEveryRound(
            fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=len(edges), min_evaluate_clients=len(edges),
            min_available_clients=len(edges), initial_parameters=fl.common.ndarrays_to_parameters(model.shared_arrays()),
            on_fit_config_fn=lambda rnd: {"round": rnd}, on_evaluate_config_fn=lambda rnd: {"round": rnd})
        fl.simulation.start_simulation(
            client_fn=client_fn, num_clients=len(edges), config=fl.server.ServerConfig(num_rounds=self.rounds),
            strategy=strategy, client_resources={"num_cpus": 1},
            ray_init_args={"num_cpus": min(self.cpus, len(edges)), "include_dashboard": False, "log_to_driver": False})
        best = strategy.best_round  # the first round with the best federated validation score
        model.load_shared(strategy.params[best])
        with torch.no_grad():
            for e in edges:
                path = os.path.join(state_dir, f"edge-{e}-round{best}.pt")
                stored = torch.load(path, weights_only=True)
                model.user_embedding.weight[stored["users"]] = stored["e_u"]
        shutil.rmtree(state_dir, ignore_errors=True)
        rounds_run = sum(1 for r in log if "round" in r)
        log.append({"edges": len(edges), "train_prefixes_per_edge": [int((train_edge == e).sum()) for e in edges],
                    "kept_round": best, "rounds_run": rounds_run, "stopped_early": rounds_run < self.rounds})
        self.best_valid_score = strategy.best_score
        if verbose:
            self.logger.info(f"PREFER: {log}")
        self._save_checkpoint(best, verbose=verbose)
        return self.best_valid_score, None
