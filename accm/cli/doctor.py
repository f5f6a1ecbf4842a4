"""accm-doctor: the versions, backends, device, memory and cache a bug report needs."""

from __future__ import annotations

import json
import sys

from ._common import Parser, run_cli


def _doctor(args) -> int:
    from ..doctor import report, text

    r = report()
    print(json.dumps(r, indent=1) if args.json else text(r))
    return 0


def build_parser() -> Parser:
    p = Parser(prog="accm-doctor", description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
