"""Shared command-line plumbing: one-line errors with exit code 2, never a traceback for bad input."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn

from tta.errors import UserError

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def guarded(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI ``main`` so a :class:`UserError` prints one line and exits 2."""

    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except SystemExit as exc:
            if not isinstance(exc.code, str):  # argparse's --help / usage errors, and plain exit codes
                raise
            # sys.exit("message") from a plugin's code (setup, reset...): Python would print the
            # message without the error: prefix and exit 1
            print(f"error: {' '.join(exc.code.split())} (sys.exit called)", file=sys.stderr)
            return EXIT_USAGE
        except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
            sys.stdout = open(os.devnull, "w")
            return 0
        except KeyboardInterrupt:
            print("interrupted: finished domains are in the store", file=sys.stderr)
            return 130

    return wrapper
