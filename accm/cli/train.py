"""accm-train: train accm-tiny (``base``) and the ACCM compensation modules (``accm``)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ._common import Parser, run_cli


def _base(args) -> int:
    from ..train.base import BaseRecipe, train_base

    recipe = BaseRecipe()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(BaseRecipe)
                 if getattr(args, f.name, None) is not None}
    recipe = dataclasses.replace(recipe, **overrides)
    summary = train_base(Path(args.work), Path(args.output), recipe)
    print(json.dumps(summary, indent=1))
    return 0


def build_parser() -> Parser:
    p = Parser(prog="accm-train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    b = sub.add_parser("base", help="train accm-tiny from nothing (resumable)")
    b.add_argument("--work", required=True, help="work directory: pools, features, checkpoints")
    b.add_argument("--output", required=True, help="where the HF checkpoint is written")
    for f in dataclasses.fields(__import__("accm.train.base", fromlist=["BaseRecipe"]).BaseRecipe):
        if f.type in ("int", "float"):
            b.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name,
                           type=int if f.type == "int" else float, default=None)
    b.set_defaults(func=_base)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
