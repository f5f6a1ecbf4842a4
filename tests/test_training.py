"""accm-train base: the accm-tiny recipe, a few steps on a tiny configuration; the loss falls."""

import json

from accm.models.tiny import TinySizes
from accm.train.base import BaseRecipe, train_base


def _losses(path):
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def test_recipe_trains_and_resumes(tmp_path):
    sizes = TinySizes(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=48, text_layers=2,
                      text_heads=2, text_intermediate=96)
    recipe = BaseRecipe(sizes=sizes, n_train_scenes=24, n_val_scenes=8, vision_steps=16, vision_batch=4,
                        text_steps=16, text_batch=4, llm_steps=16, llm_batch=4, questions_per_image=4,
                        eval_every=8, vision_log_every=8, vision_lr=3e-3, text_lr=3e-3, llm_lr=3e-3)
    work, out = tmp_path / "work", tmp_path / "out"
    train_base(work, out, recipe)
    for log in ("vision_log.jsonl", "text_log.jsonl", "llm_log.jsonl"):
        losses = _losses(work / log)
        assert len(losses) == 2 and losses[-1] < losses[0], (log, losses)
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(out)  # a plain HF checkpoint
    assert model.config.text_config.num_hidden_layers == 2 and model.config.vision_feature_layer == -1
    # resumable: a second run finds every stage finished and does not train again
    before = {p.name: p.stat().st_mtime_ns for p in work.glob("*.pt")}
    train_base(work, out, recipe)
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*.pt")} == before
    assert len(_losses(work / "llm_log.jsonl")) == 2
