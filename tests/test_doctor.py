"""accm-doctor: one report of versions, backends, device, memory and cache; every provider that
will not work says why."""

import json

import pytest

from accm.cli import doctor


@pytest.mark.runtime
def test_doctor_json_reports_each_backend_and_why_a_provider_will_not_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "bundles" / "broken").mkdir(parents=True)
    assert doctor.main(["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["python"] and r["numpy"] and r["memory"]["total_bytes"] > 0
    assert r["cache"]["directory"] == str(tmp_path / "cache")
    assert r["cache"]["bundles"] == [{"path": str(tmp_path / "cache" / "bundles" / "broken"),
                                      "problem": "no readable manifest"}]
    for backend in ("onnxruntime", "tensorrt"):
        assert isinstance(r[backend]["installed"], bool)
        assert r[backend]["installed"] or r[backend]["why"]
    assert r["device"]["summary"]
    for name in ("cpu", "cuda", "tensorrt"):
        p = r["providers"][name]
        assert p["works"] or p["why"], name
    if not r["device"]["cuda_devices"]:  # this machine, without a GPU: both GPU paths say so
        assert not r["providers"]["cuda"]["works"] and not r["providers"]["tensorrt"]["works"]
    assert r["providers"]["cpu"]["works"] == r["onnxruntime"]["installed"]


@pytest.mark.runtime
def test_doctor_text_has_one_line_per_provider(capsys):
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    assert all(f"--provider {p}:" in out for p in ("cpu", "cuda", "tensorrt"))
