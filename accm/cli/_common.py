"""What every console script shares: user errors become one stderr line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys


class UserError(Exception):
    """A problem the user caused and can fix (bad input, missing model, altered bundle)."""


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
