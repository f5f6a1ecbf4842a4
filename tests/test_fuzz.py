"""Property tests: accm-run's library entry given random bytes as images, random Unicode prompts
and random manifests. The only outcomes allowed are an answer (exit 0) or the one-line error
(exit 2); never a traceback. Fixed budgets so CI time stays bounded."""

import json
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accm.bundle.manifest import MANIFEST, manifest_digest
from accm.cli import run as run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shapes_1.png"
BUDGET = settings(max_examples=25, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _answer_or_one_line(capsys, argv) -> int:
    rc = run_cli.main(argv + ["--max-new-tokens", "1"])
    out = capsys.readouterr()
    assert rc in (0, 2), (rc, out.err)
    if rc == 2:
        err = out.err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("accm-run: error:"), err
    return rc


@BUDGET
@given(data=st.binary(max_size=4096), header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff",
                                                              b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"]))
def test_random_bytes_as_an_image(runtime_bundle, tmp_path_factory, capsys, data, header):
    path = tmp_path_factory.mktemp("img") / "x.img"
    path.write_bytes(header + data)
    _answer_or_one_line(capsys, ["--bundle", str(runtime_bundle), "--image", str(path),
                                 "--prompt", "is there a red star ?"])


@BUDGET
@given(prompt=st.text(max_size=300))
def test_random_unicode_prompts(runtime_bundle, capsys, prompt):
    _answer_or_one_line(capsys, ["--bundle", str(runtime_bundle), "--image", str(EXAMPLE), "--prompt", prompt])


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                           | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@BUDGET
@given(seed=st.integers(0, 2**32 - 1), value=JSON_VALUES, delete=st.booleans(), resign=st.booleans())
def test_random_manifests(runtime_bundle, tmp_path_factory, capsys, seed, value, delete, resign):
    bundle = tmp_path_factory.mktemp("b") / "bundle"
    shutil.copytree(runtime_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    paths = [p for p in _paths(manifest) if p and p[0] not in ("files",)]
    target = random.Random(seed).choice(paths)
    parent = manifest
    for key in target[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[target[-1]]
    else:
        parent[target[-1]] = value
    if resign:  # as whoever made the bundle could: the digest matches the edit
        manifest["manifest_digest"] = manifest_digest(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    _answer_or_one_line(capsys, ["--bundle", str(bundle), "--image", str(EXAMPLE), "--prompt", "is there a red star ?"])


@pytest.mark.runtime
def test_the_fuzz_harness_accepts_a_good_run(runtime_bundle, capsys):
    assert _answer_or_one_line(capsys, ["--bundle", str(runtime_bundle), "--image", str(EXAMPLE),
                                        "--prompt", "is there a red star ?"]) == 0
