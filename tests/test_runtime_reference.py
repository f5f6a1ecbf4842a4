"""The torch-free runtime against stored PyTorch-reference outputs of accm-tiny (runs without torch)."""

import numpy as np
import pytest

from accm.bundle.manifest import load_manifest

from . import reference_data


@pytest.mark.runtime
def test_bundle_answers_equal_the_stored_pytorch_reference(runtime_bundle):
    from accm.runtime.pipeline import Pipeline

    stored = reference_data.load()
    manifest = load_manifest(runtime_bundle)
    assert manifest["pruning"]["vision_keep"] == stored["config"]["vision_keep"]
    assert manifest["precision"] == stored["config"]["precision"]
    rows = [(s["image"], s["prompt"]) for s in stored["samples"]]
    answers = Pipeline(runtime_bundle).generate(reference_data.images(rows), [r[1] for r in rows],
                                                stored["new_tokens"])
    for want, got in zip(stored["samples"], answers):
        assert got.kept_index == want["kept_index"], want["prompt"]
        assert got.token_ids == want["token_ids"][: len(got.token_ids)] and got.token_ids, want["prompt"]
        np.testing.assert_allclose(got.first_logits, want["first_logits"], atol=2e-3)


def test_stored_reference_is_still_the_pytorch_reference():
    """The stored file must equal what the PyTorch reference computes now (else regenerate it:
    ``python -m tests.reference_data``)."""
    pytest.importorskip("torch")
    fresh, stored = reference_data.compute(), reference_data.load()
    assert fresh["config"] == stored["config"]
    for want, got in zip(stored["samples"], fresh["samples"]):
        assert got["token_ids"] == want["token_ids"] and got["kept_index"] == want["kept_index"]
        np.testing.assert_allclose(got["first_logits"], want["first_logits"], atol=1e-4)
