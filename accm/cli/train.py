"""accm-train: train accm-tiny (``base``) and the ACCM compensation modules (``accm``)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ._common import Parser, number, run_cli


def _base(args) -> int:
    from ..models.registry import resolve
    from ..train.base import BaseRecipe, train_base

    recipe = BaseRecipe()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(BaseRecipe)
                 if getattr(args, f.name, None) is not None}
    recipe = dataclasses.replace(recipe, **overrides)
    init = resolve(args.init).path if args.init else None
    summary = train_base(Path(args.work), Path(args.output), recipe, init)
    print(json.dumps(summary, indent=1))
    return 0


def _accm(args) -> int:
    from ..train.accm import AccmRecipe, train_accm
    from ..train.accm_data import JsonlSource

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(AccmRecipe)
                 if f.name != "keeps" and getattr(args, f.name, None) is not None}
    if args.keeps:
        overrides["keeps"] = tuple(args.keeps)
    recipe = dataclasses.replace(AccmRecipe(), **overrides)
    questions = JsonlSource(args.data, "question") if args.data else None
    captions = JsonlSource(args.captions, "caption") if args.captions else None
    summary = train_accm(args.model, Path(args.output), Path(args.work), recipe, questions, captions)
    print(json.dumps(summary, indent=1))
    return 0


def _recipe_flags(parser, recipe_cls) -> None:
    for f in dataclasses.fields(recipe_cls):
        if f.type in ("int", "float", "str"):
            kind = {"int": int, "float": float, "str": str}[f.type]
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name,
                                type=kind if kind is str else number(kind, **_recipe_bounds(f.name)),
                                default=None, choices=f.metadata.get("choices"), help=f.metadata.get("help"))


ZERO_MEANS_OFF = ("input_tokens", "prefix_all_tokens", "stage1_cached_scenes")  # 0: all tokens / off / on the fly


def _recipe_bounds(name: str) -> dict:
    """No recipe number is negative; batches and learning rates are positive, shares and gates
    are fractions, and sizes and intervals are at least 1 (0 would train nothing or divide by 0)."""
    if name.endswith(("_batch", "_lr")):
        return {"above": 0}
    if name.endswith(("_share", "_gate", "_gate_acc", "_min_family")):
        return {"low": 0, "high": 1}
    if name.endswith(("_every", "_hidden", "_layers", "_heads", "_scenes", "_samples", "_tokens", "patience",
                      "beams", "_per_image", "prefix_len")) and name not in ZERO_MEANS_OFF:
        return {"low": 1}
    return {"low": 0}


def build_parser() -> Parser:
    p = Parser(prog="accm-train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    b = sub.add_parser("base", help="train accm-tiny from nothing (resumable)")
    b.add_argument("--work", required=True, help="work directory: pools, features, checkpoints")
    b.add_argument("--output", required=True, help="where the HF checkpoint is written")
    b.add_argument("--init", default=None,
                   help="continue an earlier result (directory or accm-tiny): keep its tokenizer and vision "
                        "tower, skip the vision stage, train the LLM stage on from the last curriculum level")
    _recipe_flags(b, __import__("accm.train.base", fromlist=["BaseRecipe"]).BaseRecipe)
    b.set_defaults(func=_base)
    a = sub.add_parser("accm", help="train the ACCM caption model and selector for a LLaVA-1.5 model")
    a.add_argument("--model", default=None, help="checkpoint directory, alias or accm-tiny (default)")
    a.add_argument("--data", default=None, help="stage 2 JSONL: {image, question} per line (default: ShapesVQA)")
    a.add_argument("--captions", default=None, help="stage 1 JSONL: {image, caption} per line (default: ShapesVQA)")
    a.add_argument("--work", required=True, help="work directory: checkpoints and logs (resumable)")
    a.add_argument("--output", required=True, help="where caption/ and selector/ are written")
    a.add_argument("--keeps", type=number(int, low=1), nargs="+", default=None,
                   help="vision keep counts to train at (18 36)")
    _recipe_flags(a, __import__("accm.train.accm", fromlist=["AccmRecipe"]).AccmRecipe)
    a.set_defaults(func=_accm)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
