"""Former name of :mod:`recbole_scalrec.experiments.baselines`, kept so that existing imports and ``python -m recbole_scalrec.baselines`` work."""
import importlib
import sys

if __name__ == "__main__":
    raise SystemExit(importlib.import_module("recbole_scalrec.experiments.baselines").main())
sys.modules[__name__] = importlib.import_module("recbole_scalrec.experiments.baselines")
