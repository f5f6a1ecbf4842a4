"""accm-tiny, the shipped default model: a plain HF checkpoint, exported and run like any other."""

import json

import numpy as np
import pytest

from accm.data import shapes
from accm.models.registry import TINY_DIR

from .test_export_parity import assert_parity, questions


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(TINY_DIR).eval()
    return model, AutoProcessor.from_pretrained(TINY_DIR)


def test_loads_with_plain_from_pretrained_and_yields_576_image_tokens(tiny):
    model, proc = tiny
    image = shapes.render_scene("test", 0).pil()
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                       {"type": "text", "text": "what color is at c4 ?"}]}],
                                      add_generation_prompt=True)
    inputs = proc(images=image, text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 576
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 336, 336)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.slow
@pytest.mark.parametrize("keep,schedule", [(64, "fastv:2:32"), (None, "layers:576,576,288,144,72,36")])
def test_bundle_matches_reference(tiny, tmp_path, keep, schedule):
    from accm.export.exporter import ExportConfig, export_bundle
    from accm.pruning.schedule import Schedule

    export_bundle("accm-tiny", tmp_path / "b", ExportConfig(vision_keep=keep, schedule=Schedule.parse(schedule)),
                  progress=False)
    images, prompts = questions(20)
    assert_parity(*tiny, tmp_path / "b", keep, schedule, images, prompts)


def _accuracy(capsys, *args) -> dict:
    from accm.cli import bench

    assert bench.main(["accuracy", "--model", "accm-tiny", "--json", "--quiet", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_cls_attention_keeps_tokens_on_objects(capsys):
    """Vision-side pruning depends on the CLS query attending to objects: far above random keeps."""
    on_object = {}
    for extra in ([], ["--random-keep"]):
        report = _accuracy(capsys, "--vision-keep", "18", "--n", "32", *extra)
        on_object[bool(extra)] = report["kept_on_object"]
        assert 0.0 <= report["accuracy"] <= 1.0 and report["n"] == 32
    assert on_object[False] > 0.8 > 4 * on_object[True]


@pytest.mark.slow
def test_the_shipped_model_reads_its_images_and_pruning_costs_it(capsys):
    """Full tokens: far above the train-frequency blind baselines in every family. Vision top-18:
    much lower (18 tokens cannot show 22-34 objects), and random 18 lower still."""
    n = 300
    full = _accuracy(capsys, "--n", str(n))
    blind = full["blind_baselines"]["family_majority"]
    assert full["accuracy"] >= 0.85, full
    for family, acc in full["per_family"].items():
        assert acc >= blind["per_family"][family] + 0.3, (family, acc, blind)
    top18 = _accuracy(capsys, "--n", str(n), "--vision-keep", "18")
    rand18 = _accuracy(capsys, "--n", str(n), "--vision-keep", "18", "--random-keep")
    assert full["accuracy"] - top18["accuracy"] >= 0.10, (full["accuracy"], top18["accuracy"])
    assert top18["accuracy"] > rand18["accuracy"], (top18["accuracy"], rand18["accuracy"])


def test_main_job_exports_the_default_bundle_and_answers(tmp_path, monkeypatch, capsys):
    """The README's main-job command, answered correctly."""
    from accm.cli import run as run_cli

    monkeypatch.setenv("ACCM_CACHE", str(tmp_path / "cache"))
    args = ["--image", "examples/shapes_1.png", "--prompt", "what color is at a6 ?", "--json"]
    assert run_cli.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"]["image_tokens_kept"] == 64
    assert report["answer"].strip() == "green"
    assert np.isfinite(report["times_ms"]["ttft"])


@pytest.mark.slow
def test_shipped_accm_modules_in_the_bundle_match_the_reference(tiny, tmp_path):
    """accm-tiny's trained caption model and selector: bundle + runtime against the PyTorch reference."""
    from accm.compensation.compensator import Compensator
    from accm.export.exporter import ExportConfig, export_bundle
    from accm.pruning.reference import ReferencePipeline
    from accm.runtime.pipeline import Pipeline

    model, proc = tiny
    export_bundle("accm-tiny", tmp_path / "b", ExportConfig(vision_keep=18, accm=True), progress=False)
    comp = Compensator.load(TINY_DIR / "accm", proc.tokenizer)
    ref = ReferencePipeline(model, proc, vision_keep=18, compensator=comp)
    pipe = Pipeline(tmp_path / "b")
    images, prompts = questions(50)
    for s in range(0, 50, 10):
        ims, ps = images[s:s + 10], prompts[s:s + 10]
        tokens, _, prep = ref.generate_ids(ims, ps, 3)
        for b, ans in enumerate(pipe.generate(ims, ps, 3)):
            assert ans.candidates == prep.compensation.candidates[b]
            assert ans.caption == prep.compensation.captions[b]
            assert ans.token_ids == tokens[b].tolist()[: len(ans.token_ids)]


@pytest.mark.slow
def test_fp16_bundle_with_accm_opens_and_answers(tmp_path):
    """Every stage of an fp16 accm-tiny bundle opens in ONNX Runtime (its fp16 mapper once crashed it)."""
    from accm.bundle.manifest import load_manifest
    from accm.export.exporter import ExportConfig, export_bundle
    from accm.runtime.pipeline import Pipeline

    export_bundle("accm-tiny", tmp_path / "b", ExportConfig(precision="fp16", vision_keep=18, accm=True),
                  progress=False)
    detail = load_manifest(tmp_path / "b")["precision_detail"]
    assert {"caption_prefix", "caption_decode", "selector", "llm_prefill"} <= set(detail)
    images, prompts = questions(4)
    answers = Pipeline(tmp_path / "b").generate(images, prompts, 2)
    assert all(a.caption for a in answers)


@pytest.mark.slow
def test_int8_bundle_with_accm_calibrates_the_caption_stages_on_their_pipeline_inputs(tmp_path):
    """int8 with ACCM: the core stages are calibrated layer by layer, ACCM's modules on the inputs
    the PyTorch pipeline fed them (captions of the discarded tokens), and the bundle answers."""
    from accm.bundle.manifest import load_manifest
    from accm.export.exporter import ExportConfig, export_bundle
    from accm.runtime.pipeline import Pipeline

    export_bundle("accm-tiny", tmp_path / "b", ExportConfig(precision="int8", vision_keep=18, accm=True,
                                                            calib_samples=8), progress=False)
    detail = load_manifest(tmp_path / "b")["precision_detail"]
    assert detail["calibration"]["samples"] == 8
    for stage in ("vision", "llm_prefill", "llm_decode"):
        assert detail[stage]["quantized_nodes"] and not detail[stage]["left_float"], stage
    for stage in ("caption_decode", "selector"):
        assert detail[stage]["calibration_batches"] > 0 and detail[stage]["quantized_nodes"], stage
    images, prompts = questions(4)
    answers = Pipeline(tmp_path / "b").generate(images, prompts, 2)
    assert all(a.caption for a in answers) and all(a.token_ids for a in answers)


@pytest.mark.slow
def test_fp16_bundle_prefill_agrees_with_fp32_on_real_prompts(tmp_path):
    """accm-tiny's fp16 prefill logits on recorded test prompts: same top-1, high SNR, every prompt
    (rotary angles and RMSNorm once went through fp16 and zeroed some prompts' logits)."""
    from accm.bundle.manifest import load_manifest
    from accm.engines.ort import open_bundle_stages
    from accm.export.exporter import ExportConfig, export_bundle
    from accm.precision.record import record_feeds

    bundles = {}
    for prec in ("fp32", "fp16"):
        export_bundle("accm-tiny", tmp_path / prec, ExportConfig(precision=prec, vision_keep=None), progress=False)
        bundles[prec] = open_bundle_stages(tmp_path / prec, load_manifest(tmp_path / prec))["llm_prefill"]
    samples = [(shapes.render_scene(s.split, s.scene_index).pil(), s.question) for s in shapes.benchmark("test", 12, 9)]
    feeds = record_feeds(tmp_path / "fp32", samples, max_per_stage=12, progress=False)["llm_prefill"]
    assert len(feeds) == 12
    for feed in feeds:
        ref, half = (bundles[p].run(feed)["logits"].astype(np.float64) for p in ("fp32", "fp16"))
        snr = 10 * np.log10((ref ** 2).sum() / ((ref - half) ** 2).sum())
        assert snr > 45 and (ref.argmax(-1) == half.argmax(-1)).all(), snr
