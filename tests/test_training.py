"""accm-train base: the accm-tiny recipe, a few steps on a tiny configuration; the loss falls,
gates move the curriculum on, and a finished run resumes to nothing."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from accm.models.tiny import TinySizes
from accm.train.base import BaseRecipe, train_base


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


SIZES = TinySizes(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=48, text_layers=2,
                  text_heads=2, text_intermediate=96)


def _tiny_recipe(**overrides) -> BaseRecipe:
    recipe = BaseRecipe(sizes=SIZES, n_train_scenes=24, n_val_scenes=8, vision_max_steps=16, vision_batch=4,
                        vision_decay_steps=4, llm_max_steps=16, llm_decay_steps=4, llm_batch=4,
                        questions_per_image=4, eval_every=8, eval_scenes=8, vision_log_every=8,
                        vision_lr=3e-3, llm_lr=3e-3)
    return dataclasses.replace(recipe, **overrides)


def test_recipe_trains_and_resumes(tmp_path):
    recipe = _tiny_recipe()
    work, out = tmp_path / "work", tmp_path / "out"
    summary = train_base(work, out, recipe)
    assert summary["device"] == "cpu"
    vision = _log(work / "vision_log.jsonl")
    assert len(vision) == 2 and vision[-1]["loss"] < vision[0]["loss"]
    assert vision[-1]["gate_passed_at"] is None  # 16 steps do not make a vision tower
    llm = _log(work / "llm_log.jsonl")
    assert [r["step"] for r in llm] == [8, 16] and llm[0]["level"] == "few"
    assert {"full_acc", "view_acc", "full_acc_colour"} <= set(llm[0])
    assert summary["llm"]["final_gate_reached"] is False  # a cap, reported as one
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(out)  # a plain HF checkpoint
    assert model.config.text_config.num_hidden_layers == 2 and model.config.vision_feature_layer == -1
    # resumable: a second run finds every stage finished and does not train again
    before = {p.name: p.stat().st_mtime_ns for p in work.glob("*.pt")}
    train_base(work, out, recipe)
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*.pt")} == before
    assert len(_log(work / "llm_log.jsonl")) == 2

    # --init continues that result: same tokenizer and vision tower, no vision stage, the LLM
    # stage starts at the last curriculum level
    import torch

    work2, out2 = tmp_path / "work2", tmp_path / "out2"
    summary2 = train_base(work2, out2, recipe, init=out)
    assert not (work2 / "vision_log.jsonl").exists() and summary2["vision"] == {"kept_from": str(out)}
    from tokenizers import Tokenizer

    vocab = [Tokenizer.from_file(str(w / "tokenizer.json")).get_vocab() for w in (work, work2)]
    assert vocab[0] == vocab[1]
    assert {r["level"] for r in _log(work2 / "llm_log.jsonl")} == {"full"}
    continued = LlavaForConditionalGeneration.from_pretrained(out2)
    before_sd, after_sd = model.state_dict(), continued.state_dict()
    assert all(torch.equal(before_sd[k], after_sd[k]) for k in before_sd if "vision_tower" in k)
    assert not torch.equal(before_sd["lm_head.weight"], after_sd["lm_head.weight"])


def test_gated_schedule_holds_the_peak_until_the_gate_and_decays_a_capped_run():
    from accm.train.gate import GatedSchedule

    s = GatedSchedule(1e-3, warmup=10, decay_steps=100, max_steps=1000)
    assert s.lr(500) == 1e-3 and not s.done(999)
    assert s.lr(950) < 1e-3 and s.lr(999) < 1e-4 and s.done(1000)  # capped: the tail still decays
    s.pass_gate(300)
    assert s.lr(299) == 1e-3 and s.lr(350) < 1e-3 and s.done(400) and not s.done(399)


def test_a_plateau_gate_passes_on_a_stall_but_not_before_the_metric_leaves_its_floor():
    from accm.train.gate import Plateau

    stalled = Plateau(patience=2, floor=0.0)
    assert not any(stalled.update(0.0) for _ in range(10))  # never learnt: no plateau, the cap ends it
    assert not stalled.update(0.3)
    assert not stalled.update(0.3) and stalled.update(0.301)  # two evaluations without a real gain
    assert Plateau(target=0.9).update(0.95)
    unfloored = Plateau(patience=2)
    assert not unfloored.update(0.0) and not unfloored.update(0.0) and unfloored.update(0.0)


def test_training_steps_keep_every_tensor_on_the_models_device(tmp_path):
    """--device cuda cannot run here, so both stages' training steps run on PyTorch's ``meta``
    device (shapes, no data): a label, mask or feature left on the CPU meets a model tensor on
    another device and raises, as it would on a GPU."""
    from transformers import LlavaForConditionalGeneration

    from accm.models import tiny
    from accm.train import llm_stage, vision_stage
    from accm.train.packing import Packer
    from accm.train.pool import render_pool

    tok = tiny.build_tokenizer(SIZES)
    model = LlavaForConditionalGeneration(tiny.build_config(tok, SIZES)).to("meta")
    pool = render_pool(tmp_path / "pool", "train", 4)
    heads = vision_stage.DenseHeads(SIZES.vision_hidden).to("meta")
    loss, parts, _, _ = vision_stage.dense_loss(model.model.vision_tower, heads, pool, np.arange(4))
    loss.backward()
    assert loss.device.type == "meta" and all(v.device.type == "meta" for v in parts.values())

    features = torch.zeros(pool.n, 576, SIZES.vision_hidden)  # the cached table stays on the CPU
    scores = np.random.default_rng(1).random((pool.n, 576)).astype(np.float32)
    rng, full_level = np.random.default_rng(0), llm_stage.default_levels({"acc": 1.0})[-1]
    for full_image in (False, True):
        pairs = [llm_stage.sample_item(pool, row, rng, 4, full_level, scores, full_image) for row in range(4)]
        loss, logits, _ = llm_stage._step_loss(model, Packer(tok, tiny.TEMPLATE), [p[0] for p in pairs],
                                               [p[1] for p in pairs], features)
        loss.backward()
        assert loss.device.type == "meta" and logits.device.type == "meta"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_training_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, capsys):
    from accm.cli.train import main

    work = tmp_path / "work"
    assert main(["base", "--work", str(work), "--output", str(tmp_path / "out"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda needs an NVIDIA GPU" in err[0] and "--device cpu" in err[0]
    assert not work.exists() and not (tmp_path / "out").exists()
    assert main(["base", "--work", str(work), "--output", str(tmp_path / "out"), "--device", "tpu"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.torch_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch and an NVIDIA GPU")
def test_recipe_trains_on_cuda_as_on_cpu(tmp_path):
    """The same recipe on a GPU: it runs, writes a plain CPU checkpoint, resumes across devices,
    and its first logged losses are the CPU run's (float reductions differ in order, not in what
    is learnt)."""
    from transformers import LlavaForConditionalGeneration

    runs = {}
    for device in ("cpu", "cuda"):
        work, out = tmp_path / device / "work", tmp_path / device / "out"
        summary = train_base(work, out, _tiny_recipe(device=device))
        runs[device] = (_log(work / "vision_log.jsonl"), _log(work / "llm_log.jsonl"), summary)
    assert runs["cuda"][2]["device"] != "cpu"
    for stage in (0, 1):
        cpu, gpu = runs["cpu"][stage][0]["loss"], runs["cuda"][stage][0]["loss"]
        assert abs(cpu - gpu) <= 0.02 * abs(cpu), (stage, cpu, gpu)
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "cuda" / "out")
    assert model.lm_head.weight.device.type == "cpu"
    # a CUDA work directory resumes on the CPU: nothing left to train
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cuda" / "work").glob("*.pt")}
    train_base(tmp_path / "cuda" / "work", tmp_path / "cuda" / "out2", _tiny_recipe(device="cpu"))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cuda" / "work").glob("*.pt")} == before


def test_a_pool_rendered_by_several_processes_is_the_pool_rendered_by_one(tmp_path, monkeypatch):
    from accm.train import pool as pool_module

    monkeypatch.setattr(pool_module, "RENDER_CHUNK", 5)  # several ranges, out of order across workers
    one = pool_module.render_pool(tmp_path / "one", "val", 23, workers=1)
    two = pool_module.render_pool(tmp_path / "two", "val", 23, workers=2)
    assert np.array_equal(np.asarray(one.images), np.asarray(two.images)) and np.asarray(one.images).any()
    assert np.array_equal(one.patch_object, two.patch_object) and np.array_equal(one.patch_centre, two.patch_centre)
    assert one.objects == two.objects and len(one.objects) == 23
    meta = [(tmp_path / d / "val" / "meta.json").read_bytes() for d in ("one", "two")]
    assert meta[0] == meta[1]


def test_threads_cap_the_rendering_processes(tmp_path, monkeypatch):
    """--threads 1 (other work shares the machine) renders in this process, even a large pool."""
    from accm.train import pool as pool_module

    def no_processes(*args, **kwargs):
        raise AssertionError("started rendering processes")

    monkeypatch.setattr(pool_module, "PARALLEL_FROM", 1)
    monkeypatch.setattr(pool_module, "ProcessPoolExecutor", no_processes)
    assert pool_module.render_workers(10) > 1 or (pool_module.os.cpu_count() or 1) == 1
    recipe = _tiny_recipe(threads=1, vision_max_steps=1, llm_max_steps=1, eval_every=1, vision_log_every=1)
    train_base(tmp_path / "work", tmp_path / "out", recipe)
    assert json.loads((tmp_path / "work" / "pool" / "train" / "meta.json").read_text())["n"] == 24
