"""Every exported graph parses and builds with TensorRT-RTX (a CPU-side proxy for TensorRT)."""

import pytest

from accm.bundle.manifest import load_manifest
from accm.engines.trt_rtx_check import check_bundle

pytest.importorskip("tensorrt_rtx")


@pytest.mark.parametrize("config", ["full", "vision64", "fastv", "vision64_layers"])
def test_bundle_graphs_build_with_tensorrt_rtx(tiny_bundles, config):
    bundle = tiny_bundles[2][config]
    results = check_bundle(bundle, load_manifest(bundle))
    assert [r.stage for r in results] == ["vision", "embed", "llm_prefill", "llm_decode"]
    for r in results:
        assert r.parsed and r.built, f"{r.stage}: {r.error}"
        assert r.engine_bytes > 0
