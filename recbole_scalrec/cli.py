"""The command line of the pipeline: ``python run_recbole_scalrec.py --model=SASRec --dataset=foursquare``.

``--model``, ``--dataset``, ``--config_files`` and RecBole-style ``--key=value`` overrides; a bad input
prints ``error: <what is wrong and how to fix it>`` and exits 2 (``SCALREC_DEBUG=1``: the traceback).
"""
from __future__ import annotations

import os
import sys


def _documented_keys() -> str:
    """``key  default  # meaning`` of every plug-in yaml key, for ``--help``."""
    from recbole_scalrec.utils import properties_dir

    lines = []
    for name in ("overall.yaml", "model/SCaLRec.yaml"):
        lines.append(f"\n{name}:")
        for raw in (properties_dir() / name).read_text(encoding="utf-8").splitlines():
            if raw and not raw.startswith((" ", "#")) and ":" in raw:
                lines.append("  " + raw)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--model``, ``--dataset``, ``--config_files`` and RecBole-style ``--key=value``."""
    import argparse

    from recbole_scalrec.config.configurator import ConfigError, parse_cli_overrides

    parser = argparse.ArgumentParser(
        prog="run_recbole_scalrec.py",
        description="SCaLRec on a RecBole sequential backbone: stage 1, stage 2 and the staleness evaluation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Any configuration key can be overridden as --key=value (RecBole syntax), e.g. --epochs=1 "
               "--data_path=DIR --seed=7 --item_text_fields=\"['title']\".\nSCaLRec keys (defaults):" + _documented_keys(),
    )
    parser.add_argument("--model", "-m", default="SASRec",
                        help="structure encoder: a RecBole or plug-in sequential model; or SCaLRec with --backbone=<model>")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (a folder of RecBole atomic files)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = parse_cli_overrides(rest)
    except ConfigError as err:
        parser.error(str(err))
    files = args.config_files.strip().split(" ") if args.config_files else None
    try:
        from recbole_scalrec.quick_start import run_recbole_scalrec

        run_recbole_scalrec(model=args.model, dataset=args.dataset, config_file_list=files, config_dict=overrides)
    except (ValueError, FileNotFoundError, KeyError, FloatingPointError) as err:
        # bad inputs (data, configuration, checkpoints, NaN from the LM): one line, no traceback
        if os.environ.get("SCALREC_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
