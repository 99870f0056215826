"""Former name of :mod:`recbole_scalrec.staleness.calibrator`, kept so that existing imports work."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("recbole_scalrec.staleness.calibrator")
