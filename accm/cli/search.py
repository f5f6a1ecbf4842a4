"""accm-search: rank similarity across layers, G-Search and P-Sigmoid per-layer token schedules."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..files import write_text
from ._common import Parser, UserError, run_cli


def _context(args):
    from ..models.loading import load_llava
    from ..models.registry import checkpoint_digest
    from ..pruning.search_eval import jsonl_val, shapes_val

    lm = load_llava(args.model)
    samples = jsonl_val(args.val) if args.val else shapes_val(args.n, args.seed)
    source = str(args.val) if args.val else f"ShapesVQA val split (n={args.n}, seed={args.seed})"
    return lm, samples, {"source": source, "n": len(samples)}, checkpoint_digest(lm.source.path)


def _ranks(args) -> int:
    from ..pruning.reference import ReferencePipeline
    from ..pruning.search_eval import plot_heatmap, rank_similarity

    lm, samples, val, digest = _context(args)
    ref = ReferencePipeline(lm.model, lm.processor, template=lm.template)
    result = rank_similarity(ref, samples, progress=not args.quiet)
    result.update(model=lm.source.name, model_digest=digest, val=val)
    if args.output:
        write_text(args.output, json.dumps(result, indent=1) + "\n")
    if args.plot:
        title = f"{lm.source.name}: Kendall τ of image-token rankings ({len(samples)} samples)"
        plot_heatmap(result, Path(args.plot), title)
    print(json.dumps({k: result[k] for k in ("model", "layers", "samples", "adjacent", "mean_excluding_layer0")},
                     indent=1))
    return 0


def _scorer(lm, samples, args):
    from ..pruning.search import CachedEvaluator
    from ..pruning.search_eval import ScheduleScorer

    scorer = ScheduleScorer(lm.model, lm.processor, lm.template, samples, batch_size=args.batch_size)
    return scorer, CachedEvaluator(scorer.hits)


def _dims(lm, samples):
    from ..models.prompt import mean_text_tokens
    from ..pruning.flops import dims_from_config

    encode = lambda text: lm.processor.tokenizer(text)["input_ids"]  # noqa: E731
    n_text = mean_text_tokens(encode, lm.template, [s.question for s in samples], lm.model.config.image_token_index)
    return dims_from_config(lm.model.config), n_text


def _write(args, counts, meta) -> None:
    from ..pruning.schedule import Schedule

    schedule = Schedule.per_layer(counts, meta=meta)
    if args.output:
        schedule.save(args.output)
    print(json.dumps(schedule.to_json(), indent=1))


def _gsearch(args) -> int:
    from tqdm import tqdm

    from ..measure.stats import standard_error
    from ..pruning.flops import schedule_flops_ratio
    from ..pruning.schedule import Schedule
    from ..pruning.search import g_search, paired_drop

    lm, samples, val, digest = _context(args)
    scorer, evaluate = _scorer(lm, samples, args)
    dims, n_text = _dims(lm, samples)
    t0 = time.perf_counter()
    bar = tqdm(total=dims.layers - 1, desc="G-Search", unit="layer", disable=args.quiet)
    counts = g_search(evaluate, dims.layers, dims.patches, args.tolerance,
                      progress=lambda layer, c: (bar.update(), bar.set_postfix_str(str(c[layer]))), z=args.z)
    bar.close()
    full_counts = [dims.patches] * dims.layers
    full = evaluate(full_counts)
    score = evaluate(counts)
    drop, se = paired_drop(evaluate.samples[tuple(full_counts)], evaluate.samples[tuple(counts)])
    _write(args, counts, {
        "method": "gsearch", "model": lm.source.name, "model_digest": digest, "metric": scorer.metric,
        "score": score, "full_score": full, "val_n": len(samples),
        "score_se": standard_error(score, len(samples)), "drop": drop, "drop_se": se,
        "tolerance": args.tolerance, "z": args.z, "val": val,
        "prefill_flops_ratio": schedule_flops_ratio(dims, Schedule.per_layer(counts), n_text),
        "evaluations": evaluate.log.evaluations, "seconds": round(time.perf_counter() - t0, 1)})
    return 0


def _psigmoid(args) -> int:
    from tqdm import tqdm

    from ..pruning import search
    from ..pruning.flops import schedule_flops_ratio
    from ..pruning.schedule import Schedule

    lm, samples, val, digest = _context(args)
    dims, n_text = _dims(lm, samples)
    given = [x is not None for x in (args.budget_tokens, args.budget_flops, args.match)]
    if sum(given) != 1:
        raise UserError("give exactly one budget: --budget-tokens T, --budget-flops F or --match SPEC")
    if args.budget_tokens is not None:
        budget = {"mean_tokens": args.budget_tokens}
        fit = lambda ratios_for: search.fit_mean_tokens(ratios_for, dims.patches, args.budget_tokens)  # noqa: E731
    else:
        if args.match is not None:
            try:
                target = schedule_flops_ratio(dims, Schedule.parse(args.match), n_text)
            except ValueError as e:
                raise UserError(str(e)) from None
            budget = {"flops_ratio": target, "match": args.match}
        else:
            target = args.budget_flops
            budget = {"flops_ratio": target}
        ratio = lambda counts: schedule_flops_ratio(dims, Schedule.per_layer(counts), n_text)  # noqa: E731
        fit = lambda ratios_for: search.fit_flops(ratios_for, dims.patches, ratio, target)  # noqa: E731
    scorer, evaluate = _scorer(lm, samples, args)
    t0 = time.perf_counter()
    bar = tqdm(total=args.trials, desc="P-Sigmoid BO", unit="trial", disable=args.quiet)
    try:
        result = search.p_sigmoid_search(evaluate, dims.layers, dims.patches, fit, args.trials, args.seed,
                                         progress=lambda _: bar.update())
    except ValueError as e:
        raise UserError(str(e)) from None
    bar.close()
    _write(args, result.counts, {
        "method": "psigmoid", "model": lm.source.name, "model_digest": digest, "metric": scorer.metric,
        "score": result.score, "full_score": evaluate([dims.patches] * dims.layers), "budget": budget,
        "params": result.params, "trials": args.trials, "seed": args.seed, "val": val,
        "mean_tokens": sum(result.counts) / len(result.counts),
        "prefill_flops_ratio": schedule_flops_ratio(dims, Schedule.per_layer(result.counts), n_text),
        "evaluations": evaluate.log.evaluations, "seconds": round(time.perf_counter() - t0, 1)})
    return 0


def build_parser() -> Parser:
    p = Parser(prog="accm-search", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(sp):
        sp.add_argument("--model", default=None, help="checkpoint directory, alias or accm-tiny (default)")
        sp.add_argument("--val", default=None, help="JSONL of {image, question[, answer]} (default: ShapesVQA val)")
        sp.add_argument("--n", type=int, default=200, help="ShapesVQA validation questions")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--batch-size", type=int, default=16)
        sp.add_argument("--output", default=None, help="write the JSON result here")
        sp.add_argument("--quiet", action="store_true")

    r = sub.add_parser("ranks", help="Kendall τ between layers' image-token rankings")
    common(r)
    r.add_argument("--plot", default=None, help="heatmap PNG")
    r.set_defaults(func=_ranks)
    g = sub.add_parser("gsearch", help="greedy per-layer search, shallow to deep")
    common(g)
    g.add_argument("--tolerance", type=float, default=0.0, help="allowed drop of the validation score (0.01 = 1 point)")
    g.add_argument("--z", type=float, default=0.0,
                   help="accept a cut only if drop + z x its paired standard error <= tolerance "
                        "(1.645: one-sided 95%%)")
    g.set_defaults(func=_gsearch)
    s = sub.add_parser("psigmoid", help="P-Sigmoid curve tuned by Bayesian optimisation for a budget")
    common(s)
    s.add_argument("--budget-tokens", type=float, default=None, help="mean kept image tokens over layers")
    s.add_argument("--budget-flops", type=float, default=None, help="prefill FLOPs ratio against full tokens")
    s.add_argument("--match", default=None, help="the FLOPs of another schedule, e.g. fastv:2:64")
    s.add_argument("--trials", type=int, default=30, help="Bayesian optimisation evaluations")
    s.set_defaults(func=_psigmoid)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
