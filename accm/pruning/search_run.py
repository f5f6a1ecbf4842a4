"""accm-search's work, as library calls: load the model and validation data, run the rank
analysis, G-Search or P-Sigmoid, and return (and optionally write) the result. The CLI only
parses flags and prints."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from ..errors import AccmUserError
from ..files import write_text


@dataclasses.dataclass
class SearchOptions:
    model: str | None = None
    val: str | None = None  # JSONL of {image, question[, answer]}; None: ShapesVQA val
    n: int = 600  # ShapesVQA val questions; two schedules differ with a paired SE ≈ 1.3 points on accm-tiny
    seed: int = 0
    batch_size: int = 16
    output: str | None = None
    quiet: bool = False
    plot: str | None = None  # ranks: heatmap PNG
    tolerance: float = 0.0  # gsearch
    z: float = 0.0  # gsearch
    vision_keep: int | str | None = None  # gsearch: CLS top-k before the LLM; "auto": searched first
    budget_tokens: float | None = None  # psigmoid
    budget_flops: float | None = None
    match: str | None = None
    trials: int = 30
    from_vision: bool = False  # psigmoid: the curve prunes layer 0 too, by the vision tower's CLS top-k


def _context(args: SearchOptions):
    from ..models.loading import load_llava
    from ..models.registry import checkpoint_digest
    from .search_eval import jsonl_val, shapes_val

    lm = load_llava(args.model)
    samples = jsonl_val(args.val) if args.val else shapes_val(args.n, args.seed)
    source = str(args.val) if args.val else f"ShapesVQA val split (n={args.n}, seed={args.seed})"
    return lm, samples, {"source": source, "n": len(samples)}, checkpoint_digest(lm.source.path)


def run_ranks(args: SearchOptions) -> dict:
    from .reference import ReferencePipeline
    from .search_eval import plot_heatmap, rank_similarity

    lm, samples, val, digest = _context(args)
    ref = ReferencePipeline(lm.model, lm.processor, template=lm.template)
    result = rank_similarity(ref, samples, progress=not args.quiet)
    result.update(model=lm.source.name, model_digest=digest, val=val)
    if args.output:
        write_text(args.output, json.dumps(result, indent=1) + "\n")
    if args.plot:
        title = f"{lm.source.name}: Kendall τ of image-token rankings ({len(samples)} samples)"
        plot_heatmap(result, Path(args.plot), title)
    return result


class EvaluatorsByKeep:
    """One ``CachedEvaluator`` per vision keep (``patches``: no vision pruning), made on first use;
    only the latest input's scorer (and its prepared tensors) is kept, scores stay cached. The
    full-token input is made first: unlabelled val is scored against its answers at every keep.
    Called with per-layer counts, it scores them on the input whose keep is ``counts[0]``."""

    def __init__(self, lm, samples, args, patches: int):
        self.lm, self.samples, self.args, self.patches = lm, samples, args, patches
        self.made: dict = {}
        self.reference: list[str] | None = None
        self.full = self.for_keep(patches)

    def for_keep(self, keep: int):
        from .search import CachedEvaluator
        from .search_eval import ScheduleScorer

        evaluator = self.made.get(keep)
        if evaluator is None or evaluator.evaluate is None:
            for other in self.made.values():
                other.evaluate = None  # cached scores stay
            scorer = ScheduleScorer(self.lm.model, self.lm.processor, self.lm.template, self.samples,
                                    batch_size=self.args.batch_size,
                                    vision_keep=None if keep >= self.patches else keep, reference=self.reference)
            self.reference = self.reference or scorer.reference
            self.metric = scorer.metric
            evaluator = self.made.setdefault(keep, CachedEvaluator(scorer.hits))
            evaluator.evaluate = scorer.hits
        return evaluator

    def __call__(self, counts) -> float:
        key = tuple(int(c) for c in counts)
        made = self.made.get(key[0])
        if made is not None and key in made.cache:  # no need to prepare that input again
            return made.cache[key]
        return self.for_keep(key[0])(key)

    @property
    def samples_by_counts(self) -> dict:
        return {k: v for e in self.made.values() for k, v in e.samples.items()}

    @property
    def evaluations(self) -> int:
        return sum(e.log.evaluations for e in self.made.values())


def _dims(lm, samples):
    from ..models.prompt import mean_text_tokens
    from .flops import dims_from_config

    encode = lambda text: lm.processor.tokenizer(text)["input_ids"]  # noqa: E731
    n_text = mean_text_tokens(encode, lm.template, [s.question for s in samples], lm.model.config.image_token_index)
    return dims_from_config(lm.model.config), n_text


def _write(args, counts, meta) -> dict:
    from .schedule import Schedule

    schedule = Schedule.per_layer(counts, meta=meta)
    if args.output:
        schedule.save(args.output)
    return schedule.to_json()


def run_gsearch(args: SearchOptions) -> dict:
    from tqdm import tqdm

    from ..stats import standard_error
    from .flops import schedule_flops_ratio
    from .schedule import Schedule
    from .search import g_search_with_vision, paired_drop

    lm, samples, val, digest = _context(args)
    dims, n_text = _dims(lm, samples)
    full_counts = [dims.patches] * dims.layers
    keep = args.vision_keep
    if keep not in (None, "auto") and not 1 <= int(keep) <= dims.patches:
        raise AccmUserError(f"--vision-keep must be 1..{dims.patches} or auto, got {keep}")
    fixed = dims.patches if keep is None else None if keep == "auto" else int(keep)
    t0 = time.perf_counter()
    bar = tqdm(total=dims.layers - 1 + (fixed != dims.patches), desc="G-Search", unit="stage", disable=args.quiet)
    progress = lambda layer, c: (bar.update(), bar.set_postfix_str(str(c[max(layer, 0)])))  # noqa: E731
    by_keep = EvaluatorsByKeep(lm, samples, args, dims.patches)
    keep, counts = g_search_with_vision(by_keep.for_keep, dims.layers, dims.patches, args.tolerance,
                                        progress, args.z, fixed)
    bar.close()
    full, found = by_keep.full, by_keep.made[keep]
    score = found(counts)
    drop, se = paired_drop(full.samples[tuple(full_counts)], found.samples[tuple(counts)])
    vision = {} if keep >= dims.patches else {"vision_keep": keep}
    return _write(args, counts, {
        "method": "gsearch", "model": lm.source.name, "model_digest": digest, "metric": by_keep.metric,
        **vision, "score": score, "full_score": full(full_counts), "val_n": len(samples),
        "score_se": standard_error(score, len(samples)), "drop": drop, "drop_se": se,
        "tolerance": args.tolerance, "z": args.z, "val": val,
        "prefill_flops_ratio": schedule_flops_ratio(dims, Schedule.per_layer(counts), n_text,
                                                    vision.get("vision_keep")),
        "evaluations": by_keep.evaluations,
        "seconds": round(time.perf_counter() - t0, 1)})


def _versus(evaluate: EvaluatorsByKeep, counts: list[int], baseline: list[int]) -> dict:
    """The found schedule minus ``baseline`` on the same val samples: score difference and its
    paired standard error."""
    from ..stats import paired_difference_se

    score = evaluate(baseline)
    hits = evaluate.samples_by_counts
    difference, se = paired_difference_se(hits[tuple(counts)], hits[tuple(baseline)])
    return {"counts": baseline, "score": score, "difference": difference, "difference_se": se}


def run_psigmoid(args: SearchOptions) -> dict:
    from tqdm import tqdm

    from . import search
    from .flops import schedule_flops_ratio
    from .schedule import Schedule

    lm, samples, val, digest = _context(args)
    dims, n_text = _dims(lm, samples)

    def flops_of(counts: list[int]) -> float:  # layer 0's count is the vision keep (all, unless from_vision)
        return schedule_flops_ratio(dims, Schedule.per_layer(counts), n_text, counts[0])

    given = [x is not None for x in (args.budget_tokens, args.budget_flops, args.match)]
    if sum(given) != 1:
        raise AccmUserError("give exactly one budget: --budget-tokens T, --budget-flops F or --match SPEC")
    if args.budget_tokens is not None:
        budget = {"mean_tokens": args.budget_tokens}
        fit = lambda ratios_for: search.fit_mean_tokens(ratios_for, dims.patches, args.budget_tokens,  # noqa: E731
                                                        args.from_vision)
    else:
        if args.match is not None:
            try:
                matched = Schedule.parse(args.match)
                target = schedule_flops_ratio(dims, matched, n_text)
            except ValueError as e:
                raise AccmUserError(str(e)) from None
            budget = {"flops_ratio": target, "match": args.match}
        else:
            target = args.budget_flops
            budget = {"flops_ratio": target}
        fit = lambda ratios_for: search.fit_flops(ratios_for, dims.patches, flops_of, target)  # noqa: E731
    evaluate = EvaluatorsByKeep(lm, samples, args, dims.patches)
    t0 = time.perf_counter()
    bar = tqdm(total=args.trials, desc="P-Sigmoid BO", unit="trial", disable=args.quiet)
    try:
        result = search.p_sigmoid_search(evaluate, dims.layers, dims.patches, fit, args.trials, args.seed,
                                         progress=lambda _: bar.update(), first_free=args.from_vision)
    except ValueError as e:
        hint = "" if args.from_vision else "; layer 0 keeps every image token unless --from-vision prunes it"
        raise AccmUserError(f"{e}{hint}") from None
    bar.close()
    if args.match is not None:  # how well val resolves the gap the search must show over what it matches
        budget["versus"] = _versus(evaluate, result.counts, matched.layer_counts(dims.layers, dims.patches))
    keep = result.counts[0]
    vision = {"vision_keep": keep} if keep < dims.patches else {}
    return _write(args, result.counts, {
        "method": "psigmoid", "model": lm.source.name, "model_digest": digest, "metric": evaluate.metric,
        **vision, "from_vision": args.from_vision,
        "score": result.score, "full_score": evaluate([dims.patches] * dims.layers), "budget": budget,
        "params": result.params, "trials": args.trials, "seed": args.seed, "val": val,
        "mean_tokens": sum(result.counts) / len(result.counts),
        "prefill_flops_ratio": flops_of(result.counts),
        "evaluations": evaluate.evaluations, "seconds": round(time.perf_counter() - t0, 1)})


