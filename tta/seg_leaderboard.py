"""``python -m tta.seg_leaderboard``: segmentation leaderboard (mIoU per domain, per-class IoU).

    python -m tta.seg_leaderboard [--store FILE] [--protocol NAME ...] [--out FILE.md]

Reads the result store and prints (or writes) the tables of
:func:`tta.segmentation_report.segmentation_tables` for every segmentation protocol in it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tta.cli import Parser, guarded
from tta.errors import UserError
from tta.paths import CHECKOUT_ROOT

DEFAULT_STORE = CHECKOUT_ROOT / "leaderboard" / "results.sqlite"


@guarded
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m tta.seg_leaderboard", description="Segmentation leaderboard from the result store.")
    p.add_argument("--store", default=str(DEFAULT_STORE), help=f"SQLite result store (default {DEFAULT_STORE})")
    p.add_argument("--protocol", nargs="*", default=[], help="only these protocols")
    p.add_argument("--out", help="write the markdown here instead of printing it")
    args = p.parse_args(argv)
    from tta.segmentation_report import segmentation_tables
    from tta.store import ResultStore

    if not Path(args.store).expanduser().is_file():
        raise UserError(f"result store {args.store!r} does not exist (run `python -m tta.run ... --store FILE` first)")
    rows = [r for r in ResultStore(args.store).rows() if not args.protocol or r["protocol"] in args.protocol]
    tables = segmentation_tables(rows)
    if not tables:
        raise UserError(f"no segmentation rows in {args.store}" + (f" for {', '.join(args.protocol)}" if args.protocol else ""))
    text = "# Segmentation leaderboard\n\n" + "\n".join(tables.values())
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            raise UserError(f"cannot write {args.out}: {exc.strerror}") from None
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
