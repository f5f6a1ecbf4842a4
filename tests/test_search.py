"""G-Search, P-Sigmoid and the rank analysis: known optima, exact budgets, round trips."""

import functools
import json

import numpy as np
import pytest

from accm.pruning import search
from accm.pruning.flops import LLAVA_15_7B, schedule_flops_ratio
from accm.pruning.schedule import Schedule


def _monotone_oracle(need):
    """Perfect when every layer keeps at least what it needs; degrades with the shortfall."""

    def evaluate(counts):
        shortfall = sum(max(0, n - c) for n, c in zip(need, counts))
        return 1.0 - shortfall / (576 * len(need))

    return evaluate


@pytest.mark.parametrize("need", [[576, 576, 200, 120, 120, 40], [576, 300, 300, 64, 10, 0], [576] * 6])
def test_gsearch_finds_the_known_optimal_schedule(need):
    evaluate = search.CachedEvaluator(_monotone_oracle(need))
    counts = search.g_search(evaluate, 6, 576, tolerance=0.0)
    assert counts == need
    assert evaluate.log.evaluations <= 1 + 5 * 11  # bisection: ~log2(576) per layer
    again = search.g_search(evaluate, 6, 576)
    assert again == need and evaluate.log.evaluations == len(evaluate.cache)  # every schedule evaluated once


def test_gsearch_tolerance_trades_score_for_tokens():
    need = [576, 576, 300, 300, 300, 300]
    evaluate = search.CachedEvaluator(_monotone_oracle(need))
    strict = search.g_search(evaluate, 6, 576, 0.0)
    loose = search.g_search(evaluate, 6, 576, 0.05)
    assert sum(loose) < sum(strict)
    assert evaluate(loose) >= evaluate([576] * 6) - 0.05


def _noisy_hits(need, n: int, seed: int = 0):
    """Per-question hits: a question is lost when its layer-wise requirement is cut, plus noise
    that is the same for every schedule (so the full-token run has its own misses)."""
    rng = np.random.default_rng(seed)
    demand = rng.integers(0, 577, size=(n, len(need)))  # what each question needs per layer
    demand = np.minimum(demand, np.asarray(need)[None, :])
    hard = rng.random(n) < 0.2

    def evaluate(counts):
        ok = (np.asarray(counts)[None, :] >= demand).all(1)
        return ok & ~hard

    return evaluate


def test_gsearch_with_z_accepts_only_cuts_whose_upper_bound_fits_the_tolerance():
    need = [576, 576, 300, 200, 200, 100]
    plain = search.CachedEvaluator(_noisy_hits(need, 400))
    careful = search.CachedEvaluator(_noisy_hits(need, 400))
    loose = search.g_search(plain, 6, 576, tolerance=0.01)
    strict = search.g_search(careful, 6, 576, tolerance=0.01, z=1.645)
    assert sum(strict) >= sum(loose)  # the confidence bound never allows a deeper cut
    full = careful.samples[(576,) * 6]
    drop, se = search.paired_drop(full, careful.samples[tuple(strict)])
    assert drop + 1.645 * se <= 0.01 + 1e-12
    drop_loose, se_loose = search.paired_drop(plain.samples[(576,) * 6], plain.samples[tuple(loose)])
    assert drop_loose <= 0.01 + 1e-12 and se_loose > 0


def _vision_oracle(need: list[int], evaluations: list[int]):
    """Evaluators per vision keep (recorded in ``evaluations``); layer 0 sees the vision keep, and
    the score degrades with the shortfall of any layer against its need."""

    def evaluator_for_keep(keep: int):
        evaluations.append(keep)
        return search.CachedEvaluator(_monotone_oracle(need))

    return evaluator_for_keep


def test_gsearch_with_vision_finds_the_vision_keep_then_the_layers():
    made = []
    keep, counts = search.g_search_with_vision(_vision_oracle([200, 200, 150, 150, 80, 0], made), 6, 576)
    assert keep == 200 and counts == [200, 200, 150, 150, 80, 0]
    assert made[0] == 576  # the reference is the full-token input, whatever the vision keep
    given = search.g_search_with_vision(_vision_oracle([200, 200, 150, 150, 80, 0], []), 6, 576, keep=250)
    assert given == (250, [250, 200, 150, 150, 80, 0])  # a given keep is used, not searched


def test_gsearch_with_vision_spends_one_tolerance_measured_from_full_tokens():
    tolerance = 60 / (576 * 6)
    keep, counts = search.g_search_with_vision(_vision_oracle([200] * 6, []), 6, 576, tolerance)
    assert keep == 190  # 6 layers x 10 tokens short: the vision cut spends the whole tolerance
    assert counts == [190] * 6  # so no layer may cut further


def test_paired_drop_standard_error():
    full = np.array([1, 1, 1, 1, 0, 0, 1, 1], float)
    other = np.array([1, 0, 1, 1, 0, 1, 1, 0], float)
    drop, se = search.paired_drop(full, other)
    d = full - other
    assert drop == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / np.sqrt(8))
    assert search.paired_drop(full[:1], other[:1])[1] == float("inf")  # one sample accepts no cut


def test_paired_difference_matches_scipy():
    from scipy.stats import sem

    from accm.measure.accuracy import paired_difference

    rng = np.random.default_rng(1)
    a, b = rng.random(200) < 0.8, rng.random(200) < 0.7
    res = paired_difference(a.astype(int).tolist(), b.astype(int).tolist())
    d = a.astype(float) - b.astype(float)
    assert res["difference"] == pytest.approx(d.mean()) and res["se"] == pytest.approx(sem(d))
    assert res["ci95"][1] - res["ci95"][0] == pytest.approx(2 * 1.96 * sem(d), abs=2e-4)


def test_sigmoid_ratios_shape():
    r = search.sigmoid_ratios(1.5, 3.0, 0.1, 8)
    assert r[0] == 1.0 and np.all(np.diff(r) <= 0) and r[-1] >= 0.1


@pytest.mark.parametrize("mean_tokens", [100.0, 72.125, 200.5, 576.0])
def test_budget_solver_hits_mean_tokens_exactly(mean_tokens):
    layers = 8
    for s, r_min in [(0.5, 0.0), (3.0, 0.0), (1.0, 0.0), (2.0, (mean_tokens * layers - 576) / (7 * 576) / 2)]:
        curve = functools.partial(search.sigmoid_ratios, s, r_min=r_min, num_layers=layers)
        counts = search.fit_mean_tokens(lambda l0, c=curve: c(l0=l0), 576, mean_tokens)
        assert sum(counts) == round(mean_tokens * layers)
        assert counts[0] == 576 and all(b <= a for a, b in zip(counts, counts[1:]))
    if mean_tokens < 576:  # a floor above the budget cannot be met
        with pytest.raises(ValueError, match="floor"):
            search.fit_mean_tokens(lambda l0: search.sigmoid_ratios(1.0, l0, 0.99, layers), 576, mean_tokens)


def test_budget_solver_meets_a_flops_ratio():
    dims = LLAVA_15_7B
    target = schedule_flops_ratio(dims, Schedule.fastv(2, 64), 64)
    ratio = lambda c: schedule_flops_ratio(dims, Schedule.per_layer(c), 64)  # noqa: E731
    counts = search.fit_flops(lambda l0: search.sigmoid_ratios(0.8, l0, 0.02, 32), 576, ratio, target)
    assert ratio(counts) <= target
    assert ratio(counts) > target - 0.01  # tight: within a fraction of a layer's tokens
    least = ratio([576] + [0] * 31)  # layer 0 keeps all: nothing cheaper exists inside the LLM
    with pytest.raises(ValueError, match=f"floor can reach \\({least:.4f}\\)"):
        search.fit_flops(lambda l0: search.sigmoid_ratios(0.8, l0, 0.0, 32), 576, ratio, least - 0.001)


def test_p_sigmoid_trials_stay_feasible_at_every_slope():
    """A shallow model at FastV's FLOPs: gentle slopes afford a lower floor than steep ones, and
    no trial may fail for picking a floor its slope cannot afford (one did, on accm-tiny)."""
    import dataclasses

    dims = dataclasses.replace(LLAVA_15_7B, layers=6)
    target = schedule_flops_ratio(dims, Schedule.fastv(2, 64), 11)
    ratio = lambda c: schedule_flops_ratio(dims, Schedule.per_layer(c), 11)  # noqa: E731
    fit = lambda ratios_for: search.fit_flops(ratios_for, 576, ratio, target)  # noqa: E731
    gentle, steep = (search.feasible_floor(fit, 6, s) for s in (0.05, 6.0))
    assert gentle < steep
    with pytest.raises(ValueError, match="floor"):
        fit(lambda l0: search.sigmoid_ratios(0.05, l0, steep, 6))
    result = search.p_sigmoid_search(search.CachedEvaluator(_monotone_oracle([576, 576, 200, 100, 50, 20])),
                                     6, 576, fit, trials=16, seed=0)
    assert len(result.trials) == 16 and all(ratio(t["counts"]) <= target for t in result.trials)
    assert any(t["params"]["s"] < 0.3 for t in result.trials)


def test_p_sigmoid_bayesian_optimisation_is_seeded_and_respects_the_budget():
    need = [576, 576, 576, 100, 50, 20]
    evaluate = search.CachedEvaluator(_monotone_oracle(need))
    fit = lambda ratios_for: search.fit_mean_tokens(ratios_for, 576, 250.0)  # noqa: E731
    a = search.p_sigmoid_search(evaluate, 6, 576, fit, trials=12, seed=3)
    b = search.p_sigmoid_search(search.CachedEvaluator(_monotone_oracle(need)), 6, 576, fit, trials=12, seed=3)
    assert a.counts == b.counts and a.params == b.params
    assert sum(a.counts) == 250 * 6 and len(a.trials) == 12
    assert a.score == max(t["score"] for t in a.trials)


def test_p_sigmoid_from_the_vision_tower_prunes_layer_0_within_the_same_budget():
    """With ``first_free`` the curve's layer 0 is a vision keep: budgets count it, and where the
    first layer needs few tokens the freed FLOPs buy deeper layers (the vision-start search wins)."""
    import dataclasses

    r = search.sigmoid_ratios(1.5, -1.0, 0.0, 6, first_free=True)
    assert r[0] < 1.0 and np.all(np.diff(r) <= 0)
    assert search.to_counts(np.zeros(6), 576) == [1, 0, 0, 0, 0, 0]  # a vision keep is at least one token
    for mean_tokens in (30.0, 100.5, 400.0):
        counts = search.fit_mean_tokens(lambda l0: search.sigmoid_ratios(0.7, l0, 0.0, 6, True), 576, mean_tokens,
                                        first_free=True)
        assert sum(counts) == round(mean_tokens * 6) and counts[0] < 576
        assert all(b <= a for a, b in zip(counts, counts[1:]))
    dims = dataclasses.replace(LLAVA_15_7B, layers=6)
    target = schedule_flops_ratio(dims, Schedule.fastv(2, 64), 11)
    ratio = lambda c: schedule_flops_ratio(dims, Schedule.per_layer(c), 11, c[0])  # noqa: E731
    fit = lambda ratios_for: search.fit_flops(ratios_for, 576, ratio, target)  # noqa: E731
    need = [220, 200, 180, 160, 140, 120]
    inside = search.p_sigmoid_search(search.CachedEvaluator(_monotone_oracle(need)), 6, 576, fit, trials=16)
    start = search.p_sigmoid_search(search.CachedEvaluator(_monotone_oracle(need)), 6, 576, fit, trials=16,
                                    first_free=True)
    assert inside.counts[0] == 576 and start.counts[0] < 576
    assert all(ratio(t["counts"]) <= target for t in start.trials)
    assert start.score > inside.score


def test_kendall_tau_matches_scipy():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, 300).astype(float)
    y = x + rng.normal(0, 5, 300)
    assert search.kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)


def test_schedule_file_round_trip(tmp_path):
    meta = {"method": "gsearch", "model_digest": "ab" * 32, "metric": "accuracy", "score": 0.97,
            "budget": {"mean_tokens": 120}}
    s = search.schedule_for([576, 576, 200, 100], meta)
    s.save(tmp_path / "s.json")
    loaded = Schedule.parse(str(tmp_path / "s.json"))
    assert loaded.counts == (576, 576, 200, 100) and loaded.meta == meta
    assert json.loads((tmp_path / "s.json").read_text())["format"] == "accm-schedule"


def test_search_cli_on_a_tiny_model(tmp_path, capsys, monkeypatch):
    from accm.cli import run
    from accm.cli import search as cli

    from .conftest import loaded_model, random_llava

    model, proc = random_llava(seed=51)
    loaded_model(model, proc, tmp_path / "m")
    out = tmp_path / "sched.json"
    assert cli.main(["psigmoid", "--model", str(tmp_path / "m"), "--n", "8", "--budget-tokens", "300",
                     "--trials", "3", "--output", str(out), "--quiet"]) == 0
    sched = Schedule.load(out)
    assert sum(sched.counts) == 300 * 4 and sched.meta["metric"] == "accuracy"
    # matched to FastV: the val difference to FastV on the same samples, with its paired SE
    assert cli.main(["psigmoid", "--model", str(tmp_path / "m"), "--n", "8", "--match", "fastv:2:64",
                     "--trials", "2", "--output", str(tmp_path / "pm.json"), "--quiet"]) == 0
    matched = Schedule.load(tmp_path / "pm.json").meta
    versus = matched["budget"]["versus"]
    n_image = sched.counts[0]
    assert versus["counts"] == [n_image, n_image, 64, 64]
    assert versus["score"] + versus["difference"] == pytest.approx(matched["score"])
    assert versus["difference_se"] >= 0
    # from the vision tower: a mean of 100 tokens over 4 layers needs layer 0 pruned (the vision keep)
    below_layer0 = ["psigmoid", "--model", str(tmp_path / "m"), "--n", "8", "--budget-tokens", "100",
                    "--trials", "3", "--output", str(tmp_path / "pv.json"), "--quiet"]
    capsys.readouterr()
    assert cli.main(below_layer0) == 2
    assert "layer 0 keeps all" in (err := capsys.readouterr().err) and "unless --from-vision" in err
    assert cli.main([*below_layer0, "--from-vision"]) == 0
    from_vision = Schedule.load(tmp_path / "pv.json")
    assert from_vision.meta["from_vision"] and sum(from_vision.counts) == 400
    assert from_vision.meta["vision_keep"] == from_vision.counts[0] < n_image
    assert cli.main(["gsearch", "--model", str(tmp_path / "m"), "--n", "8", "--quiet",
                     "--output", str(tmp_path / "g.json")]) == 0
    assert Schedule.load(tmp_path / "g.json").meta["evaluations"] >= 1
    # on the vision tower's top 40: the schedule starts there, and its drop is from full tokens
    assert cli.main(["gsearch", "--model", str(tmp_path / "m"), "--n", "8", "--quiet", "--vision-keep", "40",
                     "--tolerance", "1", "--output", str(tmp_path / "gv.json")]) == 0
    on_top = Schedule.load(tmp_path / "gv.json")
    assert on_top.meta["vision_keep"] == 40 and on_top.counts == (40, 0, 0, 0)
    assert on_top.meta["full_score"] - on_top.meta["score"] == pytest.approx(on_top.meta["drop"])
    assert cli.main(["gsearch", "--model", str(tmp_path / "m"), "--n", "8", "--quiet", "--vision-keep", "auto",
                     "--tolerance", "1", "--output", str(tmp_path / "ga.json")]) == 0
    assert Schedule.load(tmp_path / "ga.json").meta["vision_keep"] == 1  # any cut fits a tolerance of 1
    capsys.readouterr()
    assert cli.main(["gsearch", "--model", str(tmp_path / "m"), "--vision-keep", "577", "--quiet"]) == 2
    assert "--vision-keep must be 1..576" in capsys.readouterr().err
    assert cli.main(["ranks", "--model", str(tmp_path / "m"), "--n", "4", "--quiet",
                     "--output", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]) == 0
    ranks = json.loads((tmp_path / "r.json").read_text())
    assert len(ranks["kendall_tau"]) == 4 and (tmp_path / "r.png").stat().st_size > 0
    capsys.readouterr()
    assert cli.main(["psigmoid", "--model", str(tmp_path / "m"), "--n", "8", "--quiet"]) == 2
    # the searched schedule exports and runs through accm-run
    monkeypatch.setenv("ACCM_CACHE", str(tmp_path / "cache"))
    capsys.readouterr()
    assert run.main(["--model", str(tmp_path / "m"), "--vision-keep", "all", "--schedule", str(out), "--image",
                     "examples/shapes_1.png", "--prompt", "what is here ?", "--max-new-tokens", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"]["llm_image_tokens_per_layer"] == list(sched.counts)
    # a schedule searched on a vision-pruned input runs with that keep, and says so without it
    ask = ["--model", str(tmp_path / "m"), "--schedule", str(tmp_path / "gv.json"), "--image",
           "examples/shapes_1.png", "--prompt", "what is here ?", "--max-new-tokens", "2", "--json"]
    assert run.main([*ask, "--vision-keep", "40"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"]["llm_image_tokens_per_layer"] == [40, 0, 0, 0]
    assert run.main([*ask[:2], "--schedule", str(tmp_path / "pv.json"), *ask[4:], "--vision-keep",
                     str(from_vision.counts[0])]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"]["llm_image_tokens_per_layer"] == list(from_vision.counts)
    for other in (["--vision-keep", "all"], ["--vision-keep", "20"], []):  # [] : accm-run's default keep
        assert run.main([*ask, *other]) == 2
        assert "run it with --vision-keep 40" in capsys.readouterr().err


def test_unlabelled_validation_is_scored_against_the_reference_answers_given():
    from PIL import Image

    from accm.models.templates import LLAVA_HF
    from accm.pruning.search_eval import ScheduleScorer, ValSample

    from .conftest import random_llava

    model, proc = random_llava(seed=52)
    samples = [ValSample(Image.new("RGB", (64, 64), c), "what is here ?", None) for c in ("red", "blue")]
    full = [576] * 4
    own = ScheduleScorer(model, proc, LLAVA_HF, samples, max_new_tokens=2)
    assert own.metric.startswith("agreement") and own(full) == 1.0  # its own answers
    given = ScheduleScorer(model, proc, LLAVA_HF, samples, max_new_tokens=2, reference=["(not an answer)"] * 2)
    assert given.reference == ["(not an answer)"] * 2 and given(full) == 0.0
