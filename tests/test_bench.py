"""Latency sweep and roofline: outputs are complete, labelled, and internally consistent."""

import csv
import json

import pytest

from accm.measure import roofline
from accm.pruning.schedule import Schedule


def test_roofline_is_labelled_a_model_and_behaves():
    result = roofline.table("orin-agx-64gb", roofline.DEFAULT_BUDGETS)
    assert "MODEL" in result["kind"] and "not a measurement" in result["kind"]
    rows = {(r["precision"], r["vision_keep"], r["schedule"]): r for r in result["rows"]}
    full, k64 = rows[("fp16", None, "none")], rows[("fp16", 64, "none")]
    assert k64["ttft_ms"] < full["ttft_ms"]
    assert rows[("int8", None, "none")]["ttft_ms"] < full["ttft_ms"]
    assert full["decode_bound"] == "memory"
    # 7B fp16 decode reads ~13.5 GB per token: at 204.8 GB/s that is about 15 tokens/s
    assert 13 < full["decode_tokens_per_s"] < 16


def test_roofline_efficiency_and_devices():
    dims = roofline.LLAVA_15_7B
    fast = roofline.predict(roofline.DEVICES["a100"], dims, "fp16", Schedule.none())
    slow = roofline.predict(roofline.DEVICES["orin-nano-8gb"], dims, "fp16", Schedule.none())
    assert fast.ttft_ms < slow.ttft_ms
    half = roofline.predict(roofline.DEVICES["a100"], dims, "fp16", Schedule.none(), compute_eff=0.5)
    assert half.ttft_ms == pytest.approx(2 * fast.ttft_ms, rel=1e-6)


@pytest.mark.slow
def test_latency_cli_writes_json_csv_and_plot(tmp_path, monkeypatch, capsys):
    from accm.cli import bench

    from .conftest import loaded_model, random_llava

    model, proc = random_llava(seed=61)
    loaded_model(model, proc, tmp_path / "m")
    monkeypatch.setenv("ACCM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lat"
    rc = bench.main(["latency", "--model", str(tmp_path / "m"), "--vision-keep", "all", "64", "--warmup", "0",
                     "--repeat", "2", "--max-new-tokens", "3", "--json", f"{out}.json", "--csv", f"{out}.csv",
                     "--plot", f"{out}.png", "--quiet"])
    assert rc == 0
    report = json.loads((tmp_path / "lat.json").read_text())
    assert report["machine"]["cores"] >= 1 and report["machine"]["versions"]["onnxruntime"]
    names = [r["name"] for r in report["results"]]
    assert "hf-eager" in names and "hf-sdpa" in names and any(n.startswith("reference") for n in names)
    ours = [r for r in report["results"] if r["kind"] == "bundle"]
    assert len(ours) == 2 and all(r["stages_ms"]["prefill"]["n"] == 2 for r in ours)
    pruned = next(r for r in ours if r["vision_keep"] == 64)
    assert 0 < pruned["prefill_flops_ratio"] < 1 and pruned["prefill_speedup"] > 0
    assert set(report["ratios"]) >= {"hf-eager", "hf-sdpa"}
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert len(rows) == len(report["results"])
    assert (tmp_path / "lat.png").stat().st_size > 0
    assert "FLOPs ratio" in capsys.readouterr().out
