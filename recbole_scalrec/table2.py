"""``python -m recbole_scalrec.table2``: the command of :mod:`recbole_scalrec.experiments.table2`."""
import importlib
import sys

if __name__ == "__main__":
    raise SystemExit(importlib.import_module("recbole_scalrec.experiments.table2").main())
sys.modules[__name__] = importlib.import_module("recbole_scalrec.experiments.table2")
