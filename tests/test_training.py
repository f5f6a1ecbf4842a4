"""accm-train base: the accm-tiny recipe, a few steps on a tiny configuration; the loss falls,
gates move the curriculum on, and a finished run resumes to nothing."""

import json

from accm.models.tiny import TinySizes
from accm.train.base import BaseRecipe, train_base


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_recipe_trains_and_resumes(tmp_path):
    sizes = TinySizes(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=48, text_layers=2,
                      text_heads=2, text_intermediate=96)
    recipe = BaseRecipe(sizes=sizes, n_train_scenes=24, n_val_scenes=8, vision_max_steps=16, vision_batch=4,
                        vision_decay_steps=4, llm_max_steps=16, llm_decay_steps=4, llm_batch=4,
                        questions_per_image=4, eval_every=8, eval_scenes=8, vision_log_every=8,
                        vision_lr=3e-3, llm_lr=3e-3)
    work, out = tmp_path / "work", tmp_path / "out"
    summary = train_base(work, out, recipe)
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
