"""--target trt: the AccmTokenTopK node contract, its standard-op equivalence, engine bookkeeping."""

import json

import onnx
import pytest

from accm.bundle.manifest import load_manifest
from accm.engines import trt as trt_engines
from accm.export.exporter import ExportConfig, export_bundle
from accm.export.plugin_nodes import standard_bundle
from accm.pruning.reference import ReferencePipeline
from accm.pruning.schedule import Schedule
from accm.runtime.pipeline import Pipeline

from .conftest import loaded_model, random_llava
from .test_export_parity import questions


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory):
    model, proc = random_llava(seed=41)
    root = tmp_path_factory.mktemp("trt")
    loaded = loaded_model(model, proc, root / "model")
    config = ExportConfig(vision_keep=64, schedule=Schedule.parse("fastv:2:32"), target="trt")
    export_bundle(None, root / "bundle", config, progress=False, loaded=loaded)
    return model, proc, root / "bundle"


def _plugin_nodes(path):
    graph = onnx.load(str(path), load_external_data=False)
    return graph, [n for n in graph.graph.node if n.op_type == "AccmTokenTopK"]


def test_plugin_node_contract(trt_bundle):
    _, _, bundle = trt_bundle
    vision, nodes = _plugin_nodes(bundle / "vision.onnx")
    assert len(nodes) == 1
    node = nodes[0]
    attrs = {a.name: a.i for a in node.attribute}
    assert node.domain == "accm" and attrs == {"k": 64, "emit_discarded": 1}
    assert len(node.input) == 2 and len(node.output) == 4
    assert ("accm", 1) in [(o.domain, o.version) for o in vision.opset_import]
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in vision.graph.output}
    assert dims["image_embeds"][1] == 64 and dims["discarded_index"][1] == 576 - 64
    prefill, nodes = _plugin_nodes(bundle / "llm_prefill.onnx")
    assert len(nodes) == 1
    assert {a.name: a.i for a in nodes[0].attribute} == {"k": 32, "emit_discarded": 0}
    assert len(nodes[0].output) == 2
    assert not _plugin_nodes(bundle / "llm_decode.onnx")[1] and not _plugin_nodes(bundle / "embed.onnx")[1]
    assert load_manifest(bundle)["target"] == "trt"


def test_a_layer_that_keeps_no_image_token_gets_no_plugin_node(tmp_path):
    """The plugin needs k >= 1: a schedule ending at 0 selects nothing there, so emits no node."""
    model, proc = random_llava(seed=42)
    loaded = loaded_model(model, proc, tmp_path / "model")
    config = ExportConfig(vision_keep=64, schedule=Schedule.parse("layers:64,32,0,0"), target="trt")
    export_bundle(None, tmp_path / "bundle", config, progress=False, loaded=loaded)
    _, nodes = _plugin_nodes(tmp_path / "bundle" / "llm_prefill.onnx")
    assert [{a.name: a.i for a in n.attribute}["k"] for n in nodes] == [32]


def test_standard_op_form_reproduces_the_reference(trt_bundle, tmp_path):
    model, proc, bundle = trt_bundle
    std = standard_bundle(bundle, tmp_path / "std")
    assert load_manifest(std)["target"] == "ort"
    for stage in ("vision", "llm_prefill"):
        assert not _plugin_nodes(std / f"{stage}.onnx")[1]
    images, prompts = questions(12)
    ref = ReferencePipeline(model, proc, vision_keep=64, schedule="fastv:2:32")
    tokens, state, prep = ref.generate_ids(images, prompts, 3)
    answers = Pipeline(std).generate(images, prompts, 3)
    for b, ans in enumerate(answers):
        assert ans.kept_index == prep.kept_index[b].tolist()
        assert ans.llm_kept[2] == state.kept[2][b].tolist()
        assert ans.token_ids == tokens[b].tolist()[: len(ans.token_ids)]


def test_tensorrt_rtx_parses_up_to_the_plugin_node(trt_bundle):
    pytest.importorskip("tensorrt_rtx")
    from accm.engines.trt_rtx_check import check_bundle

    _, _, bundle = trt_bundle
    results = {r.stage: r for r in check_bundle(bundle, load_manifest(bundle))}
    for stage in ("vision", "llm_prefill"):  # no AccmTokenTopK plugin in TensorRT-RTX
        assert not results[stage].parsed and "AccmTokenTopK" in results[stage].error
    for stage in ("embed", "llm_decode"):
        assert results[stage].parsed and results[stage].built


def test_engine_keys_and_precision_rules():
    manifest = {"bundle_digest": "abc", "pruning": {"vision_keep": 64}, "precision": "fp32", "target": "trt"}
    a = trt_engines.engine_key(manifest, "fp16", "sm_87", "10.3.0")
    b = trt_engines.engine_key(manifest, "fp16", "sm_89", "10.3.0")
    c = trt_engines.engine_key(dict(manifest, bundle_digest="def"), "fp16", "sm_87", "10.3.0")
    assert len({trt_engines.key_dir(tmp, k) for tmp, k in [("/b", a), ("/b", b), ("/b", c)]}) == 3
    assert a["plugin"] == "AccmTokenTopK/1"
    assert trt_engines.engine_precision(manifest, None) == "fp16"
    for cpu_only in ("int8-cpu", "int4-cpu"):
        with pytest.raises(trt_engines.TrtError, match=cpu_only):
            trt_engines.engine_precision(dict(manifest, precision=cpu_only), None)
    with pytest.raises(trt_engines.TrtError, match="Q/DQ"):
        trt_engines.engine_precision(manifest, "int8")


def test_tensorrt_provider_without_a_gpu_is_one_line(trt_bundle, tmp_path, capsys):
    from accm.cli import run as run_cli
    from accm.engines.gpu import gpu_available

    if gpu_available():
        pytest.skip("a GPU with TensorRT is present")
    _, _, bundle = trt_bundle
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (20, 20)).save(img)
    rc = run_cli.main(["--bundle", str(bundle), "--image", str(img), "--prompt", "hi", "--provider", "tensorrt"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "TensorRT" in err


@pytest.mark.gpu
def test_engines_build_and_answer_like_onnx_runtime(trt_bundle, tmp_path):
    """The plugin bundle through TensorRT against its standard-op form in ONNX Runtime."""
    _, _, bundle = trt_bundle
    images, prompts = questions(8)
    expected = Pipeline(standard_bundle(bundle, tmp_path / "std")).generate(images, prompts, 3)
    got = Pipeline(bundle, provider="tensorrt").generate(images, prompts, 3)
    for a, b in zip(got, expected):
        assert a.kept_index == b.kept_index and a.llm_kept == b.llm_kept
        assert a.token_ids == b.token_ids
    engines = list((bundle / "engines").glob("*/engine.json"))
    assert len(engines) == 1 and json.loads(engines[0].read_text())["plugin"] == "AccmTokenTopK/1"
