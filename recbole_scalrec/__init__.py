"""recbole-scalrec: SCaLRec (staleness-calibrated cloud semantics) as a RecBole plug-in."""
from recbole_scalrec.compat import import_recbole_sequential as _import_recbole_sequential

_import_recbole_sequential()

__version__ = "0.1.0"
