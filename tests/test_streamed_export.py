"""The 7B path: a stand-in written into the Hugging Face cache as llava-1.5-7b-hf lays out its
checkpoint, and exports that trace a weightless model and stream the weights (never the model)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
HWM = "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"


def _python(code: str, env: dict, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """A private HF_HOME holding a 2-layer, 1-vision-layer 7B-geometry stand-in (1.4 GB fp16)."""
    home = tmp_path_factory.mktemp("hf_home")
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "benchmarks/make_standin.py", "--layers", "2", "--vision-layers", "1",
                           "--shard-gb", "0.4"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_make_standin_is_llava_hf_checkpoint_layout_in_the_cache(hf_home):
    env, made = hf_home
    path = Path(made["path"])
    assert path.parent.parent == Path(env["HF_HOME"]) / "hub" / "models--llava-hf--llava-1.5-7b-hf"
    assert (path.parent.parent / "refs" / "main").read_text() == path.name
    index = json.loads((path / "model.safetensors.index.json").read_text())
    keys = set(index["weight_map"])
    assert "language_model.lm_head.weight" in keys and "multi_modal_projector.linear_1.weight" in keys
    assert all(k.split(".")[0] in ("language_model", "vision_tower", "multi_modal_projector") for k in keys)
    assert any(k.startswith("vision_tower.vision_model.encoder.layers.0.") for k in keys)
    assert any(k.startswith("language_model.model.layers.1.") for k in keys)
    assert len(set(index["weight_map"].values())) >= 3
    assert made["peak_rss_gb"] < made["weights_gb"]  # shard by shard: never the whole model, nor fp32
    # --model llava-1.5-7b resolves to it, and transformers loads every tensor with nothing left over
    code = ("import sys, torch; from accm.models.registry import resolve; "
            "from transformers import LlavaForConditionalGeneration as L; p = resolve('llava-1.5-7b').path; "
            "m, info = L.from_pretrained(p, output_loading_info=True); "
            "print(p, m.dtype, m.config.text_config.hidden_size, sum(len(v) for v in info.values()))")
    resolved, dtype, hidden, leftovers = _python(code, env).split()
    assert Path(resolved) == path and dtype == "torch.float16" and hidden == "4096" and leftovers == "0"


@pytest.mark.slow
def test_streamed_export_peaks_below_loading_the_checkpoint_and_matches_hugging_face(hf_home, tmp_path):
    """accm-export --precision fp16 holds neither the model nor a graph copy of it: its peak RSS
    grows by less than half the checkpoint over the libraries' own footprint (holding the
    weights would add all of them), and its prefill answers as HF does."""
    env, made = hf_home
    imports = ("import torch, transformers, onnx, onnx_ir, onnxscript, onnxruntime, accm.export.streamed, "
               f"accm.export.exporter, accm.cli.export; {HWM}")
    export = ("import sys; from accm.cli.export import main; "
              "rc = main(['--model', 'llava-1.5-7b', '--precision', 'fp16', '--vision-keep', 'all', "
              "'--output', sys.argv[1], '--quiet']); "
              f"assert rc == 0; {HWM}")
    base_kb = int(_python(imports, env))
    export_kb = int(_python(export, env, str(tmp_path / "bundle")))
    assert (export_kb - base_kb) * 1024 < 0.5 * made["weights_gb"] * 1e9, (export_kb, base_kb)

    from accm.bundle.manifest import load_manifest
    from accm.runtime.pipeline import Pipeline

    manifest = load_manifest(tmp_path / "bundle")
    assert {d["method"] for d in manifest["precision_detail"].values()} == {
        "traced in fp16, weights streamed from the checkpoint"}
    assert "TopK" not in manifest["precision_detail"]["llm_prefill"]["ops_kept_fp32"]  # nothing pruned here
    assert "ReduceMean" in manifest["precision_detail"]["llm_prefill"]["ops_kept_fp32"]  # RMSNorm variance
    # logits of the fp16 graph against Hugging Face's own fp32 forward of the same checkpoint
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(made["path"], dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    pixel = rng.standard_normal((1, 3, 336, 336)).astype(np.float32)
    ids = np.array([[1, 5, 7] + [32000] * 576 + [9, 11, 13]], dtype=np.int64)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixel)).logits[0, -1].numpy()
    pipe = Pipeline(tmp_path / "bundle")
    embeds = pipe.embed_ids(np.where(ids == 32000, 0, ids))
    embeds[0, 3:579] = pipe.vision.run({"pixel_values": pixel})["image_embeds"][0]
    got = pipe.prefill.run({"input_ids": ids, "inputs_embeds": embeds, "attention_mask": np.ones_like(ids),
                            "position_ids": np.arange(ids.shape[1])[None]})["logits"][0]
    assert np.corrcoef(got, want)[0, 1] > 0.999 and got.argmax() == want.argmax()


def test_streamed_export_of_a_checkpoint_missing_a_tensor_is_one_line(tmp_path, capsys):
    """A checkpoint without one of its model's tensors, or without safetensors at all: one line on
    stderr, exit code 2, no bundle."""
    from safetensors.torch import load_file, save_file

    from accm.cli.export import main

    from .conftest import random_llava

    model, proc = random_llava(seed=5)
    model.save_pretrained(tmp_path / "model")
    proc.save_pretrained(tmp_path / "model")
    (weights,) = (tmp_path / "model").glob("*.safetensors")
    tensors = load_file(str(weights))
    dropped = next(k for k in tensors if "layers.1.mlp" in k)
    del tensors[dropped]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    args = ["--model", str(tmp_path / "model"), "--precision", "int8-cpu", "--output", str(tmp_path / "b"), "--quiet"]
    capsys.readouterr()  # save_pretrained's own progress
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no tensor for" in err[0] and "layers.1.mlp" in err[0]
    weights.unlink()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no .safetensors weights" in err[0]
    assert not (tmp_path / "b").exists()


def test_streamed_decode_borrows_the_weights_prefill_wrote(tmp_path):
    """Written after prefill, the decode graph points its weights into prefill's data file
    instead of quantizing and writing them again, and computes what a decode graph with its own
    copy computes."""
    import onnx

    from accm.engines.ort import OrtStage
    from accm.export import exporter
    from accm.export.streamed import StreamedExport
    from accm.precision.streamed import int8_dynamic_stage
    from accm.pruning.schedule import Schedule

    from .conftest import loaded_model, random_llava

    model, proc = random_llava(seed=31)
    loaded = loaded_model(model, proc, tmp_path / "model")
    streamer = StreamedExport.open(None, loaded, torch.float32)
    config = exporter.ExportConfig(precision="int8-cpu", schedule=Schedule.parse("fastv:2:32"))
    plan = exporter.plan_export(streamer.loaded, config)
    jobs = {job.stage: job for job in exporter.core_jobs(streamer.loaded, plan)}
    (tmp_path / "own").mkdir()
    (tmp_path / "borrowed").mkdir()
    for where in ("own", "borrowed"):
        prefill = tmp_path / where / "llm_prefill.onnx"
        streamer.export(jobs["llm_prefill"], prefill, lambda m, s: int8_dynamic_stage(m))
        streamer.export(jobs["llm_decode"], tmp_path / where / "llm_decode.onnx", lambda m, s: int8_dynamic_stage(m),
                        borrow_from=prefill if where == "borrowed" else None)
    own, borrowed = ((tmp_path / w / "llm_decode.onnx.data").stat().st_size for w in ("own", "borrowed"))
    assert own > 100_000 and borrowed < 0.05 * own
    graph = onnx.load(str(tmp_path / "borrowed" / "llm_decode.onnx"), load_external_data=False).graph
    locations = {e.value for i in graph.initializer for e in i.external_data if e.key == "location"}
    assert locations == {"llm_prefill.onnx.data"}
    a, b = (OrtStage(tmp_path / w / "llm_decode.onnx") for w in ("own", "borrowed"))
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in a.session.get_inputs():  # batch 2, caches of 2 tokens, masks over them and the new one
        shape = [2 if not isinstance(d, int) else d for d in arg.shape]
        if "int64" in arg.type:
            mask = arg.name != "position_ids"
            feeds[arg.name] = np.ones([2, 3], dtype=np.int64) if mask else np.full([2, 1], 2, dtype=np.int64)
        else:
            feeds[arg.name] = rng.standard_normal(shape).astype(np.float32)
    for name, x in a.run(feeds).items():
        assert np.array_equal(x, b.run(feeds)[name]), name
