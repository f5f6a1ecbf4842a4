import json

import pytest

from accm.pruning.schedule import Schedule


def test_constructors_and_counts():
    assert Schedule.none().layer_counts(4, 576) == [576] * 4
    assert Schedule.fastv(2, 64).layer_counts(4, 576) == [576, 576, 64, 64]
    assert Schedule.fastv(2, 999).layer_counts(4, 576) == [576] * 4  # k >= n: no-op
    assert Schedule.fastv(9, 64).layer_counts(4, 576) == [576] * 4  # K beyond the model: never prunes
    s = Schedule.per_layer([576, 576, 300, 100])
    assert s.layer_counts(4, 576) == [576, 576, 300, 100]
    assert s.layer_counts(4, 64) == [64, 64, 64, 64]  # capped by vision-side pruning
    assert s.prune_points(4, 576) == {2: 300, 3: 100}


@pytest.mark.parametrize("bad", [lambda: Schedule.fastv(0, 64), lambda: Schedule.fastv(2, -1),
                                 lambda: Schedule.per_layer([576, 600]), lambda: Schedule.per_layer([]),
                                 lambda: Schedule.per_layer([576, -1])])
def test_invalid_schedules_raise(bad):
    with pytest.raises(ValueError):
        bad()


def test_layer_zero_cannot_be_pruned_and_length_must_match():
    with pytest.raises(ValueError, match="layer 0"):
        Schedule.per_layer([300, 300]).layer_counts(2, 576)
    with pytest.raises(ValueError, match="decoder layers"):
        Schedule.per_layer([576, 300]).layer_counts(3, 576)


@pytest.mark.parametrize("spec", ["none", "fastv:2:64", "layers:576,576,288,144"])
def test_parse_round_trip(spec):
    s = Schedule.parse(spec)
    assert s.spec() == spec
    assert Schedule.parse(s.spec()) == s
    assert Schedule.from_json(s.to_json()) == s


@pytest.mark.parametrize("spec", ["fastv:2", "fastv:a:b", "layers:1,x", "bogus"])
def test_parse_errors(spec):
    with pytest.raises(ValueError):
        Schedule.parse(spec)


def test_json_file_round_trip_with_metadata(tmp_path):
    s = Schedule.per_layer([576, 576, 200, 50], meta={"model_digest": "abc", "score": 0.91})
    path = tmp_path / "sched.json"
    s.save(path)
    loaded = Schedule.parse(str(path))
    assert loaded == s and loaded.meta["score"] == 0.91
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="newer"):
        Schedule.load(path)
    with pytest.raises(ValueError, match="not found"):
        Schedule.parse(str(tmp_path / "missing.json"))


def test_mean_tokens():
    assert Schedule.fastv(2, 64).mean_tokens(4, 576) == (576 * 2 + 64 * 2) / 4
