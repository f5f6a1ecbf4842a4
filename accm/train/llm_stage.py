"""Stages 2–3: the language model learns the task, first from text, then from the image.

Stage 2 (text): the LLM answers from the scene description spliced in as ACCM does
(``additional information: …``) with no image tokens at all. Cheap, and it teaches the answer
space and the splice. Stage 3 (image): projector and LLM on packed questions over cached,
frozen vision features, mixing full images, object-biased token subsets, captions that
complement dropped tokens, and randomly dropped tokens, so the LLM learns to use both.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import shapes
from ..data.preprocess import preprocess_uint8
from ..pruning.select import select_tokens
from ..pruning.vision import encoder_layers, patch_scores
from . import checkpoint
from .packing import N_PATCHES, Packer, PackItem, packed_logits
from .pool import ScenePool

MODE_WEIGHTS = {"image": 0.55, "caption_full": 0.15, "caption_complement": 0.2, "dropped": 0.1}
#: share of steps whose whole batch sees all 576 image tokens; other steps see token subsets, so
#: their sequences stay short (mixing both in one batch would pad every sample to full length)
FULL_BATCH_SHARE = 0.2
#: share of samples showing every object that also carry a captioning block ("describe the
#: image ." → the scene description): dense supervision that teaches the LLM to read each
#: object's colour, shape and place, as LLaVA's own captioning stage does
CAPTION_BLOCK_SHARE = 0.5


@torch.no_grad()
def extract_features(model, pool: ScenePool, out_dir: Path, batch: int = 32):
    """Frozen vision features ``[n, 576, D]`` (fp16) and CLS scores ``[n, 576]`` for a pool."""
    out_dir.mkdir(parents=True, exist_ok=True)
    feat_path, score_path = out_dir / "features.npy", out_dir / "scores.npy"
    tower = model.model.vision_tower
    dim = tower.config.hidden_size
    if feat_path.exists() and score_path.exists():
        f = np.load(feat_path, mmap_mode="r")
        if f.shape == (pool.n, N_PATCHES, dim):
            return f, np.load(score_path)
    feats = np.lib.format.open_memmap(feat_path.with_suffix(".tmp.npy"), mode="w+",
                                      dtype=np.float16, shape=(pool.n, N_PATCHES, dim))
    scores = np.zeros((pool.n, N_PATCHES), dtype=np.float32)
    layers = encoder_layers(tower)
    layer = model.config.vision_feature_layer
    tower.eval()
    for s in tqdm(range(0, pool.n, batch), desc=f"features {pool.split}", unit="batch"):
        idx = np.arange(s, min(s + batch, pool.n))
        out = tower(torch.from_numpy(preprocess_uint8(pool.images[idx])), output_hidden_states=True)
        feats[idx] = out.hidden_states[layer][:, 1:].numpy().astype(np.float16)
        scores[idx] = patch_scores(layers[-1], out.hidden_states[len(layers) - 1]).numpy()
    feats.flush()
    del feats
    feat_path.with_suffix(".tmp.npy").rename(feat_path)
    np.save(score_path, scores)
    return np.load(feat_path, mmap_mode="r"), scores


def _questions(scene: shapes.Scene, rng: np.random.Generator, n: int) -> list[shapes.Question]:
    out: list[shapes.Question] = []
    for _ in range(4 * n):
        q = shapes.ask(scene, shapes.FAMILIES[int(rng.integers(len(shapes.FAMILIES)))], rng)
        if q is not None and all(q.question != o.question for o in out):
            out.append(q)
        if len(out) == n:
            break
    return out


def _background(patch_object: np.ndarray, rng, n: int) -> np.ndarray:
    bg = np.flatnonzero(patch_object < 0)
    return rng.choice(bg, size=min(n, len(bg)), replace=False)


def sample_item(pool: ScenePool, row: int, rng: np.random.Generator, n_questions: int,
                text_only: bool = False, full_image: bool = False) -> tuple[PackItem, list[str]]:
    objects = pool.objects[row]
    scene = shapes.Scene(pool.split, row, objects, np.zeros(0, np.uint8), pool.patch_object[row],
                         pool.patch_centre[row])
    qs = _questions(scene, rng, n_questions)
    po = pool.patch_object[row]
    obj_patches = np.flatnonzero(po >= 0)
    shuffle = rng if rng.random() < 0.5 else None
    caption = None
    if text_only:
        kept = np.zeros(0, np.int64)
        caption = shapes.describe_objects(objects, shuffle)
    elif full_image:
        kept = np.arange(N_PATCHES)
    else:
        mode = rng.choice(list(MODE_WEIGHTS), p=list(MODE_WEIGHTS.values()))
        if mode == "image":
            kept = np.union1d(obj_patches, _background(po, rng, int(rng.integers(30, 121))))
        elif mode == "caption_full":
            kept = rng.choice(N_PATCHES, size=int(rng.integers(0, 65)), replace=False)
            caption = shapes.describe_objects(objects, shuffle)
        elif mode == "caption_complement":
            in_caption = rng.random(len(objects)) < 0.5
            shown = np.flatnonzero(np.isin(po, np.flatnonzero(~in_caption)))
            kept = np.union1d(shown, _background(po, rng, int(rng.integers(10, 61))))
            described = [o for o, c in zip(objects, in_caption) if c]
            caption = shapes.describe_objects(described, shuffle) if described else None
        else:  # dropped
            frac = rng.uniform(0.3, 0.9)
            shown = obj_patches[rng.random(len(obj_patches)) < frac]
            kept = np.union1d(shown, _background(po, rng, int(rng.integers(20, 81))))
    questions, answers, families = [q.question for q in qs], [q.answer for q in qs], [q.family for q in qs]
    shows_all = not text_only and caption is None and np.isin(obj_patches, kept).all()
    if shows_all and rng.random() < CAPTION_BLOCK_SHARE:
        questions.append(shapes.DESCRIBE)
        answers.append(shapes.describe_objects(objects))
        families.append("describe")
    item = PackItem(row, np.sort(kept).astype(np.int64), caption, questions, answers)
    return item, families


def _step_loss(model, packer: Packer, items, families, features: torch.Tensor):
    batch = packer.pack(items, families)
    logits = packed_logits(model, batch, features)
    weights = torch.where(batch.is_answer, 1.0, 0.2)
    loss = (F.cross_entropy(logits, batch.labels, reduction="none") * weights).sum() / weights.sum()
    return loss, logits, batch


@torch.no_grad()
def evaluate(model, packer: Packer, val: ScenePool, features: torch.Tensor, scores: np.ndarray,
             n_scenes: int = 100, keep: int | None = None, caption: bool = False) -> dict:
    """Answer-token accuracy on val questions (teacher-forced first token), per family."""
    model.eval()
    hits: dict[str, list[bool]] = defaultdict(list)
    for s in range(0, min(n_scenes, val.n), 16):
        items, fams = [], []
        for row in range(s, min(s + 16, n_scenes, val.n)):
            scene = shapes.Scene(val.split, row, val.objects[row], np.zeros(0, np.uint8),
                                 val.patch_object[row], val.patch_centre[row])
            qs = shapes.questions_for(scene, 5, stream="val-questions")
            kept = np.arange(N_PATCHES) if keep is None else select_tokens(scores[row], keep)
            cap = shapes.describe_objects(val.objects[row]) if caption else None
            items.append(PackItem(row, kept, cap, [q.question for q in qs], [q.answer for q in qs]))
            fams.append([q.family for q in qs])
        logits, batch = None, None
        batch = packer.pack(items, fams)
        logits = packed_logits(model, batch, features)
        pred = logits.argmax(-1)[batch.is_answer]
        gold = batch.labels[batch.is_answer]
        for f, ok in zip(batch.answer_family, (pred == gold).tolist()):
            hits[f].append(ok)
    model.train()
    per = {f: float(np.mean(v)) for f, v in sorted(hits.items())}
    allv = [x for v in hits.values() for x in v]
    return {"acc": float(np.mean(allv)), **{f"acc_{f}": v for f, v in per.items()}}


def train_llm(model, tokenizer, template: str, pool: ScenePool, val: ScenePool, work: Path,
              name: str, steps: int, batch: int, lr: float, text_only: bool,
              train_features=None, val_features=None, val_scores=None, seed: int = 0,
              n_questions: int = 8, eval_every: int = 250, init_from: Path | None = None) -> dict:
    """Train projector + LLM (vision frozen) in place; resumes from ``work/<name>.pt``."""
    torch.manual_seed(seed)
    inner = model.model
    for p in inner.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if "vision_tower" not in n]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    ckpt_path = work / f"{name}.pt"
    state = checkpoint.load(ckpt_path)
    start = 0
    trainable = lambda: {k: v for k, v in model.state_dict().items() if "vision_tower" not in k}  # noqa: E731
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        start = state["step"]
    elif init_from is not None:
        model.load_state_dict(checkpoint.load(init_from)["model"], strict=False)
    packer = Packer(tokenizer, template)
    feats = torch.from_numpy(np.asarray(train_features)) if train_features is not None else torch.zeros(1, N_PATCHES, 1)
    vfeats = torch.from_numpy(np.asarray(val_features)) if val_features is not None else feats
    log = work / f"{name}_log.jsonl"
    model.train()
    t0 = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"stage {name}", unit="step")
    for step in bar:
        rng = np.random.default_rng([seed, 17, step])
        rows = rng.choice(pool.n, size=batch, replace=False)
        full = not text_only and rng.random() < FULL_BATCH_SHARE
        pairs = [sample_item(pool, int(r), rng, n_questions, text_only, full) for r in rows]
        loss, _, _ = _step_loss(model, packer, [p[0] for p in pairs], [p[1] for p in pairs], feats)
        checkpoint.optimise(opt, params, loss, checkpoint.lr_at(step, steps, lr, warmup=min(300, steps // 10 + 1)))
        bar.set_postfix(loss=f"{float(loss):.3f}")
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            rec = {"step": step + 1, "loss": float(loss), "elapsed_s": round(time.time() - t0, 1)}
            if text_only:
                rec.update({f"caption_{k}": v for k, v in evaluate(
                    model, packer, val, vfeats, val_scores, keep=0, caption=True).items()})
            else:
                rec.update(evaluate(model, packer, val, vfeats, val_scores))
                rec.update({f"k18_{k}": v for k, v in evaluate(
                    model, packer, val, vfeats, val_scores, keep=18).items() if k == "acc"})
                rec.update({f"k18cap_{k}": v for k, v in evaluate(
                    model, packer, val, vfeats, val_scores, keep=18, caption=True).items() if k == "acc"})
            with log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.write(json.dumps(rec))
            checkpoint.save(ckpt_path, model=trainable(), opt=opt.state_dict(), step=step + 1)
    model.eval()
    return {"steps": steps}
