"""``python -m tta.seg_leaderboard``: segmentation leaderboard (mIoU per domain, per-class IoU).

    python -m tta.seg_leaderboard [--store FILE] [--protocol NAME ...] [--out FILE.md]

Reads the result store (default: the user store, :func:`tta.paths.user_store`; never the
committed leaderboard's) and prints (or writes) the tables of
:func:`tta.segmentation_report.segmentation_tables` for every segmentation protocol in it.
``--store`` and ``--out`` are checked before the store is read; nothing is created on failure.
"""

from __future__ import annotations

import sys

from tta.cli import Parser, guarded
from tta.errors import UserError
from tta.paths import user_store
from tta.writable import existing_file, output_file


@guarded
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m tta.seg_leaderboard", description="Segmentation leaderboard from the result store.")
    p.add_argument("--store", help=f"SQLite result store (default {user_store()}, the user store)")
    p.add_argument("--protocol", nargs="*", default=[], help="only these protocols")
    p.add_argument("--out", help="write the markdown here instead of printing it")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load a plugin file first (its dataset readers name their classes, its methods their defaults)")
    args = p.parse_args(argv)
    from tta import plugins

    plugins.load_all(args.plugin)
    store = existing_file(args.store or user_store(), "result store",
                          "run `python -m tta.run ... --store FILE` first, or give --store FILE")
    out = output_file(args.out, "--out") if args.out else None
    from tta.segmentation_report import segmentation_tables
    from tta.store import ResultStore

    rows = [r for r in ResultStore(store, read_only=True).rows() if not args.protocol or r["protocol"] in args.protocol]
    tables = segmentation_tables(rows)
    if not tables:
        raise UserError(f"no segmentation rows in {store}" + (f" for {', '.join(args.protocol)}" if args.protocol else ""))
    text = "# Segmentation leaderboard\n\n" + "\n".join(tables.values())
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror}") from None
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
