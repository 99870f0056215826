"""Compatibility with the environment RecBole 1.2.1 runs in, kept in one place.

* Importing RecBole's sequential models runs ``torch.autograd.set_detect_anomaly(True)``
  (a module-level line in ``recbole/model/sequential_recommender/sine.py``), which slows
  every backward pass ~1.4x. :func:`import_recbole_sequential` imports the package and
  restores the anomaly-mode flag that was in force before.
* RecBole's ``Trainer`` loads checkpoints with a bare ``torch.load``; on torch >= 2.6 that
  defaults to ``weights_only=True`` and rejects RecBole's pickled checkpoints. The fix is
  a trainer subclass (:class:`recbole_scalrec.trainer.Trainer`), not an environment variable.
* RecBole's ``quick_start`` imports ``ray``; nothing in this package imports it.
* RecBole's graph models (LightGCN, NGCF, ...) fill their adjacency with ``dok_matrix._update``,
  a private method SciPy >= 1.12 removed; :func:`patch_scipy_dok_update` puts back the same bulk
  update (of the matrix's own dict of entries) when it is missing.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch


def import_recbole_sequential() -> ModuleType:
    """Import ``recbole.model.sequential_recommender`` without leaving anomaly detection on."""
    was_enabled = torch.is_anomaly_enabled()
    module = importlib.import_module("recbole.model.sequential_recommender")
    torch.autograd.set_detect_anomaly(was_enabled)
    return module


def patch_scipy_dok_update() -> bool:
    """Give ``scipy.sparse.dok_matrix`` the ``_update(dict)`` RecBole's graph models call, when this
    SciPy lacks it; returns whether it was added."""
    import scipy.sparse as sp

    if hasattr(sp.dok_matrix, "_update"):
        return False

    def _update(self, data: dict) -> None:
        self._dict.update(data)  # what SciPy's own _update did: a bulk insert without checks

    sp.dok_matrix._update = _update
    return True


def undo_recbole_side_effects() -> None:
    """Turn off anomaly detection that importing RecBole's model zoo switched on."""
    torch.autograd.set_detect_anomaly(False)
