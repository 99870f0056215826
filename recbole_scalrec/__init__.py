"""recbole-scalrec: SCaLRec (staleness-calibrated cloud semantics) as a RecBole plug-in."""
import warnings

from recbole_scalrec.compat import import_recbole_sequential as _import_recbole_sequential

# RecBole 1.2.1's chained in-place fillna warns on pandas 2.x (it works there; pandas 3 breaks it,
# hence the pandas<3 pin).
warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.data\.dataset\.dataset")

_import_recbole_sequential()

__version__ = "0.1.0"
