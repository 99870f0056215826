"""``python -m recbole_scalrec.data prepare <name> --source <dir> --out <dir>``."""
from __future__ import annotations

import argparse
import sys

from recbole_scalrec.data.prepare import CONVERTERS, MIN_USER_INTER, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_scalrec.data",
                                     description="Convert a raw dataset to RecBole atomic files.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write <out>/<name>.inter and <out>/<name>.item")
    p.add_argument("name", choices=sorted(CONVERTERS), help="dataset to convert")
    p.add_argument("--source", required=True, help="folder of the raw files (see docs/datasets.md)")
    p.add_argument("--out", required=True, help="the dataset folder itself: RecBole's <data_path>/<name>")
    args = parser.parse_args(argv)
    try:
        stats = prepare(args.name, args.source, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/{args.name}.inter and {args.out}/{args.name}.item")
    print(f"converter filter: none (every row of the source is written: "
          f"{stats.written_users} users / {stats.written_items} items / {stats.written_interactions} interactions)")
    print(f"after RecBole's filter (users with >= {MIN_USER_INTER} interactions):")
    print(f"users: {stats.users}")
    print(f"items: {stats.items}")
    print(f"interactions: {stats.interactions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
