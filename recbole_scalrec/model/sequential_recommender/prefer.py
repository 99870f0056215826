"""PREFER (Guo et al., "PREFER: Point-of-interest REcommendation with efficiency and
privacy-preservation via Federated Edge leaRning", IMWUT 2021): the paper's on-device family in
Table 2 (METHOD.md Sec. 8).

The mechanism kept: the model is trained where the data are, on the devices, and never sees a
user's raw sequence anywhere else. Its parameters are split in two: the *user-specific* ones (here a
user embedding ``e_u`` added to the user representation) stay on the user's device; the
*user-independent* ones (the sequence encoder and the item table) are sent to the user's edge server,
which aggregates them over its users, and the edge servers' models are aggregated into the global
model (weighted by training examples, FedAvg) that is sent back for the next round. At request time
the device runs the global model with its own ``e_u`` on the fresh sequence ``S_{<=t}``:

    z_u(t) = h(S_{<=t}) + e_u.

The federated training is run by Flower (``flwr``) in simulation on one machine
(:class:`~recbole_scalrec.trainer.prefer_trainer.PREFERTrainer`): each Flower client is one edge
server with its users (``prefer_edge_servers`` groups, users assigned by their id), each round it
trains the global user-independent parameters on its users' training prefixes for
``prefer_local_epochs`` epochs while their ``e_u`` stay in the edge's local state, and Flower's
FedAvg aggregates the edges; the rounds stop once ``prefer_stopping_rounds`` of them have not
beaten the best federated validation NDCG@10, and the best round is kept.

Substitutions, each named: (1) the encoder is a RecBole sequential model (``prefer_encoder``, SASRec
by default) instead of PREFER's own POI model (its geographic and temporal modules are not built:
ReDial has no geography); (2) inside an edge, the users' updates are minibatch steps over the edge's
users' prefixes (each step averages its users' gradients, FedSGD at the edge) instead of each device
running local epochs that the edge then averages; the aggregation across edges is Flower's FedAvg.
Keys: ``properties/model/PREFER.yaml``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_scalrec.model.user_vector import UserVectorScores


class PREFER(UserVectorScores, SequentialRecommender):
    """See the module docstring. :meth:`shared_arrays` / :meth:`load_shared` are what travels to the
    edge servers (the encoder's state); ``user_embedding`` never does."""

    input_type = InputType.POINTWISE
    serves_users = True  # the device adds its own e_u

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        from recbole_scalrec.model.structure_encoder import StructureEncoder
        from recbole_scalrec.utils import get_model

        self.USER_ID = config["USER_ID_FIELD"]
        self.encoder = get_model(config["prefer_encoder"] or "SASRec")(config, dataset)
        self._encoder = [StructureEncoder(self.encoder)]
        dim = self._encoder[0].item_table.shape[1]
        self.user_embedding = nn.Embedding(dataset.user_num, dim)
        nn.init.zeros_(self.user_embedding.weight)

    @property
    def item_table(self) -> torch.Tensor:
        return self._encoder[0].item_table

    def shared_names(self) -> list[str]:
        """Names of the user-independent tensors, in the order they travel."""
        return list(self.encoder.state_dict().keys())

    def shared_arrays(self) -> list[np.ndarray]:
        return [v.detach().cpu().numpy().copy() for v in self.encoder.state_dict().values()]

    def load_shared(self, arrays: list[np.ndarray]) -> None:
        names = self.shared_names()
        if len(arrays) != len(names):
            raise ValueError(f"PREFER got {len(arrays)} shared tensors, its encoder has {len(names)}.")
        self.encoder.load_state_dict({n: torch.as_tensor(a) for n, a in zip(names, arrays)})

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        encoder = self._encoder[0]
        h = encoder(item_seq, item_seq_len, users if encoder.needs_user else None)
        return h + self.user_embedding(users)

    def calculate_loss(self, interaction) -> torch.Tensor:
        z = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], interaction[self.USER_ID])
        return F.cross_entropy(z @ self.item_table.T, interaction[self.POS_ITEM_ID])

    def on_device_parameters(self) -> int:
        """Numbers one device holds: the global model and its own ``e_u``."""
        return int(sum(p.numel() for p in self.encoder.parameters())) + self.user_embedding.embedding_dim
