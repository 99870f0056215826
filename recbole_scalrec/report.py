"""Former name of :mod:`recbole_scalrec.experiments.report`, kept so that existing imports and ``python -m recbole_scalrec.report`` work."""
import importlib
import sys

if __name__ == "__main__":
    raise SystemExit(importlib.import_module("recbole_scalrec.experiments.report").main())
sys.modules[__name__] = importlib.import_module("recbole_scalrec.experiments.report")
