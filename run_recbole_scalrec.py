"""Run SCaLRec: ``python run_recbole_scalrec.py --model=SASRec --dataset=foursquare``.

See ``--help`` for the SCaLRec configuration keys; any key can be set as ``--key=value``.
"""
import sys

from recbole_scalrec.cli import main

if __name__ == "__main__":
    sys.exit(main())
