"""Former name of :mod:`recbole_scalrec.semantic.encoder`, kept so that existing imports work."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("recbole_scalrec.semantic.encoder")
