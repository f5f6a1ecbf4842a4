"""G-Search and P-Sigmoid (arXiv 2412.00556), reconstructed: per-layer image-token schedules.

No public code exists; this follows the abstract and ``research/papers.md`` §2.4–2.5:

- **G-Search**: layer 0 keeps every token; for each layer from shallow to deep, the smallest
  count (bisection on integers, never above the previous layer's) such that the validation
  score stays within ``tolerance`` of the full-token model when that layer *and every deeper
  one* keep that count. Under the paper's assumption (the essential set never grows with depth)
  a greedy choice never has to be revisited. ``g_search_with_vision`` starts one step
  shallower, at the vision tower's output (the paper also runs G-Search on top of
  prompt-agnostic compressors): the fewest CLS top-k tokens first, then the layers.
- **P-Sigmoid**: kept ratio ``r(l) = r_min + (1 - r_min) / (1 + exp(s (l - l0)))`` for layers
  ``l >= 1``, clipped to [0, 1] (layer 0 always keeps all). A budget fixes the midpoint ``l0``
  given ``(s, r_min)`` (bisection: kept tokens grow with l0, and a far-left l0 reaches the floor
  r_min in every layer after 0), so Bayesian optimisation searches ``(s, r_min)`` with r_min
  limited to what the budget allows. Budgets: mean kept tokens over layers, or a prefill
  FLOPs ratio. With ``first_free`` the curve starts one step shallower, as ``g_search_with_vision``
  does: layer 0's ratio is the curve's too, and its count is what the vision tower's CLS top-k
  hands over (at least one token).

Everything here is model-free: ``evaluate(counts) -> score`` is supplied by the caller.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np

from ..stats import paired_difference_se
from .schedule import Schedule


@dataclasses.dataclass
class SearchLog:
    evaluations: int = 0
    seconds: float = 0.0
    trace: list[dict] = dataclasses.field(default_factory=list)


class CachedEvaluator:
    """Wraps ``evaluate(counts)`` (a score, or per-sample hits whose mean is the score); every
    distinct schedule is evaluated once."""

    def __init__(self, evaluate: Callable[[tuple[int, ...]], float | np.ndarray]):
        self.evaluate = evaluate
        self.cache: dict[tuple[int, ...], float] = {}
        self.samples: dict[tuple[int, ...], np.ndarray] = {}
        self.log = SearchLog()

    def __call__(self, counts) -> float:
        key = tuple(int(c) for c in counts)
        if key not in self.cache:
            t0 = time.perf_counter()
            value = self.evaluate(key)
            if isinstance(value, np.ndarray):
                self.samples[key] = value.astype(np.float64)
                value = value.mean()
            self.cache[key] = float(value)
            self.log.evaluations += 1
            self.log.seconds += time.perf_counter() - t0
            self.log.trace.append({"counts": list(key), "score": self.cache[key]})
        return self.cache[key]


def paired_drop(full: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(mean drop, its standard error) of ``other`` against ``full`` on the same samples; the SE is
    infinite with one sample, so no cut is accepted on it."""
    drop, se = paired_difference_se(full, other)
    return drop, float("inf") if math.isnan(se) else se


def smallest_accepted(accept: Callable[[int], bool], lo: int, hi: int) -> int:
    """The smallest integer in ``[lo, hi]`` that ``accept`` takes, by bisection (acceptance is
    assumed monotone: more tokens never hurt); ``hi`` itself is never asked."""
    while lo < hi:
        mid = (lo + hi) // 2
        if accept(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def _acceptor(evaluate: CachedEvaluator, reference_score: float, reference_hits: np.ndarray | None,
              tolerance: float, z: float) -> Callable[[list[int]], bool]:
    """Whether a schedule's validation drop from the reference fits ``tolerance``; with ``z > 0``
    (and per-sample hits) the upper confidence bound ``drop + z · SE`` must, SE being the paired
    standard error of the drop on the same questions."""

    def accept(candidate: list[int]) -> bool:
        score = evaluate(candidate)
        if z > 0 and reference_hits is not None:
            drop, se = paired_drop(reference_hits, evaluate.samples[tuple(int(c) for c in candidate)])
            return drop + z * se <= tolerance
        return score >= reference_score - tolerance

    return accept


def g_search(evaluate: CachedEvaluator, num_layers: int, n_image: int, tolerance: float = 0.0,
             progress: Callable[[int, list[int]], None] | None = None, z: float = 0.0,
             reference: tuple[float, np.ndarray | None] | None = None) -> list[int]:
    """The per-layer counts found shallow to deep (non-increasing, layer 0 = ``n_image``).

    A candidate is accepted when its validation drop from the full-token score is at most
    ``tolerance``; with ``z > 0`` (and per-sample hits from the evaluator) when the upper
    confidence bound ``drop + z · SE`` is: so the validation set's own noise cannot let a harmful
    cut through. ``reference`` (score, per-sample hits) replaces the full-token score of this
    evaluator's input, e.g. when that input is already vision-pruned (``g_search_with_vision``).
    """
    full = [n_image] * num_layers
    if reference is None:
        reference = (evaluate(full), evaluate.samples.get(tuple(full)))
    accept = _acceptor(evaluate, *reference, tolerance, z)
    counts = list(full)
    for layer in range(1, num_layers):
        def accept_here(c: int, layer: int = layer) -> bool:  # this layer and every deeper one keep c
            return accept(counts[:layer] + [c] * (num_layers - layer))

        keep = smallest_accepted(accept_here, 0, counts[layer - 1])
        counts[layer:] = [keep] * (num_layers - layer)
        if progress is not None:
            progress(layer, counts)
    return counts


def g_search_with_vision(evaluator_for_keep: Callable[[int], CachedEvaluator], num_layers: int, n_patches: int,
                         tolerance: float = 0.0, progress: Callable[[int, list[int]], None] | None = None,
                         z: float = 0.0, keep: int | None = None) -> tuple[int, list[int]]:
    """G-Search extended one step shallower: first the fewest image tokens the vision tower
    hands over (its CLS top-k), then each decoder layer as in ``g_search``, every cut measured
    against the full-token input, so the whole schedule stays within ``tolerance`` of it.

    ``evaluator_for_keep(k)`` scores LLM schedules on the input with ``k`` vision-kept tokens
    (``k = n_patches``: no vision pruning). A given ``keep`` is used as is instead of searched.
    Returns ``(vision keep, per-layer counts)``; ``progress`` is called with layer ``-1`` once a
    vision keep below ``n_patches`` is fixed."""
    full = [n_patches] * num_layers
    full_evaluator = evaluator_for_keep(n_patches)
    reference = (full_evaluator(full), full_evaluator.samples.get(tuple(full)))

    def accept_keep(k: int) -> bool:
        return _acceptor(evaluator_for_keep(k), *reference, tolerance, z)([k] * num_layers)

    keep = smallest_accepted(accept_keep, 1, n_patches) if keep is None else min(keep, n_patches)
    if progress is not None and keep < n_patches:
        progress(-1, [keep] * num_layers)
    counts = g_search(evaluator_for_keep(keep), num_layers, keep, tolerance, progress, z, reference)
    return keep, counts


def sigmoid_ratios(s: float, l0: float, r_min: float, num_layers: int, first_free: bool = False) -> np.ndarray:
    """``r(l)`` for every layer, clipped to [0, 1]; layer 0 is 1 (no attention before it to prune
    by) unless ``first_free``: then the vision tower's CLS top-k prunes it."""
    layers = np.arange(num_layers, dtype=np.float64)
    with np.errstate(over="ignore"):
        r = r_min + (1.0 - r_min) / (1.0 + np.exp(s * (layers - l0)))
    r = np.clip(r, 0.0, 1.0)
    if not first_free:
        r[0] = 1.0
    return np.minimum.accumulate(r)  # non-increasing, also for s < 0


def to_counts(ratios: np.ndarray, n_image: int) -> list[int]:
    """Kept tokens per layer, non-increasing; layer 0 keeps at least one (a vision keep of 0 is no input)."""
    counts = np.minimum.accumulate(np.floor(ratios * n_image + 1e-9).astype(int))
    counts[0] = max(int(counts[0]), 1)
    return [int(c) for c in counts]


L0_RANGE = 64.0  # midpoints searched in [-L0_RANGE * layers, L0_RANGE * layers]


def floor_counts(curve: Callable[[float], np.ndarray], n_image: int) -> list[int]:
    """The fewest tokens a curve keeps: its counts at the leftmost midpoint searched."""
    return to_counts(curve(-L0_RANGE * len(curve(0.0))), n_image)


def _bisect_l0(curve: Callable[[float], np.ndarray], n_image: int, too_big: Callable[[list[int]], bool]):
    """The largest midpoint whose counts are not ``too_big`` (counts grow with l0)."""
    layers = len(curve(0.0))
    lo, hi = -L0_RANGE * layers, L0_RANGE * layers
    if too_big(floor_counts(curve, n_image)):
        return None
    for _ in range(80):
        mid = (lo + hi) / 2
        if too_big(to_counts(curve(mid), n_image)):
            hi = mid
        else:
            lo = mid
    return lo


def fit_mean_tokens(curve: Callable[[float], np.ndarray], n_image: int, mean_tokens: float,
                    first_free: bool = False) -> list[int]:
    """Counts of ``curve(l0)`` whose mean over layers is ``mean_tokens`` exactly (the nearest
    integer total): bisection on l0, then the rounding remainder spread over the shallowest
    pruned layers (the counts stay non-increasing). ``ValueError`` when the floor is too high.
    ``first_free``: the curve prunes layer 0 too (``sigmoid_ratios``)."""
    num_layers = len(curve(0.0))
    total = round(mean_tokens * num_layers)
    least = 1 if first_free else n_image
    if not least <= total <= n_image * num_layers:
        raise ValueError(f"a mean of {mean_tokens} tokens over {num_layers} layers is impossible with "
                         f"{n_image} image tokens" + ("" if first_free else " (layer 0 keeps all)"))
    l0 = _bisect_l0(curve, n_image, lambda c: sum(c) > total)
    if l0 is None:
        raise ValueError("this curve's floor keeps more tokens than the budget allows")
    counts = to_counts(curve(l0), n_image)
    deficit = total - sum(counts)
    for layer in range(0 if first_free else 1, num_layers):  # shallowest first
        add = min((counts[layer - 1] if layer else n_image) - counts[layer], deficit)
        counts[layer] += add
        deficit -= add
    if deficit:
        raise ValueError("cannot meet the token budget with a non-increasing schedule")
    return counts


def fit_flops(curve: Callable[[float], np.ndarray], n_image: int, flops_ratio: Callable[[list[int]], float],
              target: float) -> list[int]:
    """The counts of the largest midpoint whose prefill FLOPs ratio stays at or under ``target``."""
    l0 = _bisect_l0(curve, n_image, lambda c: flops_ratio(c) > target)
    if l0 is None:
        least = flops_ratio(floor_counts(curve, n_image))
        raise ValueError(f"a FLOPs ratio of {target:.4f} is below what this curve's floor can reach ({least:.4f})")
    return to_counts(curve(l0), n_image)


def feasible_floor(fit: Callable[[Callable[[float], np.ndarray]], list[int]], num_layers: int,
                   slope: float = 6.0, first_free: bool = False) -> float:
    """The largest r_min in [0, 1] for which ``fit`` can meet its budget with this slope (gentle
    slopes keep more tokens in the shallow layers, so their floor must sit lower)."""

    def ok(r_min: float) -> bool:
        try:
            fit(lambda l0: sigmoid_ratios(slope, l0, r_min, num_layers, first_free))
            return True
        except ValueError:
            return False

    fit(lambda l0: sigmoid_ratios(slope, l0, 0.0, num_layers, first_free))  # unmeetable even with no floor: its reason
    lo, hi = 0.0, 1.0
    if ok(hi):
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@dataclasses.dataclass
class PSigmoidResult:
    counts: list[int]
    params: dict
    score: float
    trials: list[dict]


def p_sigmoid_search(evaluate: Callable[[list[int]], float], num_layers: int, n_image: int,
                     fit: Callable[[Callable[[float], np.ndarray]], list[int]], trials: int = 30, seed: int = 0,
                     progress: Callable[[int], None] | None = None, first_free: bool = False) -> PSigmoidResult:
    """Bayesian optimisation (optuna's Gaussian-process sampler) over slope s and floor r_min;
    the midpoint l0 is solved so every trial meets the budget. r_min is searched as a fraction of
    the highest floor that slope can afford, so no trial is infeasible. ``first_free``: the curve
    prunes layer 0 too (its count is a vision keep; ``evaluate`` must run it so)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    feasible_floor(fit, num_layers, first_free=first_free)  # raises if even a zero floor cannot meet the budget
    sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(8, trials))
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial) -> float:
        s = trial.suggest_float("s", 0.05, 6.0, log=True)
        r_min = trial.suggest_float("floor_fraction", 0.0, 1.0) * feasible_floor(fit, num_layers, s, first_free)
        counts = fit(lambda l0: sigmoid_ratios(s, l0, r_min, num_layers, first_free))
        trial.set_user_attr("counts", counts)
        trial.set_user_attr("r_min", r_min)
        score = evaluate(counts)
        if progress is not None:
            progress(trial.number)
        return score

    study.optimize(objective, n_trials=trials)
    best = study.best_trial
    records = [{"number": t.number, "params": {**t.params, "r_min": t.user_attrs["r_min"]}, "score": t.value,
                "counts": t.user_attrs["counts"]} for t in study.trials]
    return PSigmoidResult(best.user_attrs["counts"], records[best.number]["params"], float(best.value), records)


def schedule_for(counts: list[int], meta: dict) -> Schedule:
    return Schedule.per_layer(counts, meta=meta)


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors (ties handled), O(n²) in numpy."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    dx, dy = dx[iu], dy[iu]
    concord = float((dx * dy).sum())
    denom = math.sqrt(float((dx != 0).sum()) * float((dy != 0).sum()))
    return concord / denom if denom else float("nan")
