"""``accm-train base``: train accm-tiny from nothing, LLaVA's recipe in miniature.

stage 0: render the scene pools once; train the BPE tokenizer
stage 1: vision tower alone on dense scene-graph labels (vision_stage)
stage 2: the LLM learns the task from text descriptions (llm_stage, text_only)
stage 3: projector + LLM on packed image questions over frozen, cached features (llm_stage)
then the result is written as a plain HF LLaVA directory (safetensors, tokenizer, processor).
Every stage checkpoints into the work directory and resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ..models import tiny
from . import checkpoint
from .llm_stage import extract_features, train_llm
from .pool import render_pool
from .vision_stage import train_vision


@dataclasses.dataclass
class BaseRecipe:
    sizes: tiny.TinySizes = dataclasses.field(default_factory=tiny.TinySizes)
    n_train_scenes: int = 16000
    n_val_scenes: int = 300
    vision_steps: int = 1500
    vision_batch: int = 16
    vision_lr: float = 2e-3
    text_steps: int = 1500
    text_batch: int = 32
    text_lr: float = 2e-3
    llm_steps: int = 12000
    llm_batch: int = 16
    llm_lr: float = 1e-3
    questions_per_image: int = 8
    seed: int = 0
    eval_every: int = 250
    vision_log_every: int = 100


def _tokenizer(work: Path, sizes: tiny.TinySizes):
    from tokenizers import Tokenizer

    path = work / "tokenizer.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = tiny.build_tokenizer(sizes)
    tok.save(str(path))
    return tok


def train_base(work: Path, output: Path, recipe: BaseRecipe | None = None) -> dict:
    from transformers import LlavaForConditionalGeneration

    from ..models.hf_build import llava_processor

    recipe = recipe or BaseRecipe()
    work, output = Path(work), Path(output)
    work.mkdir(parents=True, exist_ok=True)
    (work / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=1))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    tok = _tokenizer(work, recipe.sizes)
    torch.manual_seed(recipe.seed)
    model = LlavaForConditionalGeneration(tiny.build_config(tok, recipe.sizes))
    pool = render_pool(work / "pool", "train", recipe.n_train_scenes)
    val = render_pool(work / "pool", "val", recipe.n_val_scenes)

    vision_metrics = train_vision(model, pool, val, work, recipe.vision_steps, recipe.vision_batch,
                                  recipe.vision_lr, recipe.seed, log_every=recipe.vision_log_every)
    train_feats, _ = extract_features(model, pool, work / "features" / "train")
    val_feats, val_scores = extract_features(model, val, work / "features" / "val")

    common = dict(pool=pool, val=val, work=work, seed=recipe.seed, eval_every=recipe.eval_every,
                  n_questions=recipe.questions_per_image, val_scores=val_scores)
    train_llm(model, tok, tiny.TEMPLATE, name="text", steps=recipe.text_steps,
              batch=recipe.text_batch, lr=recipe.text_lr, text_only=True, **common)
    train_llm(model, tok, tiny.TEMPLATE, name="llm", steps=recipe.llm_steps,
              batch=recipe.llm_batch, lr=recipe.llm_lr, text_only=False,
              train_features=train_feats, val_features=val_feats,
              init_from=work / "text.pt", **common)

    output.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(output, safe_serialization=True)
    llava_processor(tok, tiny.TEMPLATE).save_pretrained(output)
    summary = {
        "recipe": dataclasses.asdict(recipe),
        "vision": vision_metrics,
        "train_seconds_this_run": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


__all__ = ["BaseRecipe", "train_base", "checkpoint"]
