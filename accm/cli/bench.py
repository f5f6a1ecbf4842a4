"""accm-bench: accuracy on ShapesVQA (PyTorch reference or an exported bundle)."""

from __future__ import annotations

import json
import sys

from ._common import Parser, UserError, add_model_options, run_cli


def _accuracy(args) -> int:
    from ..bench.accuracy import BundleAnswerer, TorchAnswerer, evaluate

    if args.bundle is not None:
        if args.random_keep:
            raise UserError("--random-keep is a PyTorch-reference baseline; it cannot run on a bundle")
        answer = BundleAnswerer(args.bundle, args.provider)
    else:
        from ..pruning.schedule import Schedule

        try:
            schedule = Schedule.parse(args.schedule)
        except ValueError as e:
            raise UserError(str(e)) from None
        answer = TorchAnswerer(args.model, args.vision_keep, schedule, args.score_layer,
                               random_keep_seed=args.seed if args.random_keep else None, accm=args.accm,
                               accm_dir=args.accm_dir, caption_mode=args.caption_mode, seed=args.seed)
    result = evaluate(answer, n=args.n, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['model']}  vision_keep={result['vision_keep']}  schedule={result['schedule']}  "
              f"accm={result.get('accm')}  n={result['n']}  backend={result['backend']}")
        for fam, acc in result["per_family"].items():
            print(f"  {fam:10s} {acc:6.3f}")
        print(f"  {'overall':10s} {result['accuracy']:6.3f}   kept tokens on objects: {result['kept_on_object']:.3f}")
    return 0


def build_parser() -> Parser:
    p = Parser(prog="accm-bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    a = sub.add_parser("accuracy", help="exact-match accuracy on ShapesVQA test questions")
    a.add_argument("--bundle", default=None, help="evaluate an exported bundle through the runtime")
    add_model_options(a, default_keep=None)
    a.add_argument("--n", type=int, default=500, help="number of test questions")
    a.add_argument("--seed", type=int, default=0, help="which test questions (and the random-keep draw)")
    a.add_argument("--random-keep", action="store_true", help="keep random patches instead of attention-guided")
    a.add_argument("--accm", action="store_true", help="compensate vision-side pruning with ACCM captions")
    a.add_argument("--accm-dir", default=None, help="trained caption/ and selector/ (default: <model>/accm)")
    a.add_argument("--caption-mode", choices=["selected", "random", "oracle", "none"], default="selected",
                   help="with --accm: the selector's caption, a random candidate, or best-of-M (oracle)")
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    a.add_argument("--json", action="store_true")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=_accuracy)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
