"""Stage 2: projector + language model learn the questions from the image, with a gated curriculum.

Lookups ("what color is at c4 ?") are one hop in the image: every patch feature carries its
cell, colour, shape and objectness, so one attention layer can match the cell name to its
patches. They are learnt first on *views* that show few objects (the objects' patches plus a
little background), where attention has little to search; the curriculum moves on when the
view's val accuracy passes a gate, with the lr held at its peak until the last gate.

A view is a subset of a scene's patches; its questions are asked and answered about the objects
it shows (``shapes.answer_from`` on that view), so "answer from what you see" is what is learnt,
which is also what a pruned model can do. Samples in the last level mix:

- ``full``: every object (object patches + some background);
- any view that shows its objects whole often carries a dense block, from step 0: the captioning
  block (``describe the image .`` → the description of the view) or a training-only sibling that
  lists or counts them (``shapes.dense_targets``);
- ``partial``: a random subset of the objects;
- ``pruned``: the CLS-attention top-k patches (k from 18 to 128), as vision-side pruning keeps;
- ``caption``: a partial or pruned view plus a short question-relevant caption of hidden objects
  (ACCM's ``additional information: …`` splice), answered about view + caption; a tenth of these
  have no image tokens at all (reading a caption alone);

and a share of steps whose whole batch sees all 576 tokens (mixing them with short views in one
batch would pad every sample to full length).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import shapes
from ..data.preprocess import preprocess_uint8
from ..models.placement import module_device
from ..pruning.select import select_tokens
from ..pruning.vision import encoder_layers, patch_scores
from . import checkpoint
from .gate import GatedSchedule, gate_passed
from .packing import N_PATCHES, Packer, PackItem, packed_logits
from .pool import ScenePool


@dataclasses.dataclass(frozen=True)
class Level:
    """One curriculum level: views showing ``min_objects``–``max_objects`` objects (None: the
    whole scene and the full mix), left when ``gate`` holds on this level's val views."""

    name: str
    min_objects: int | None
    max_objects: int | None
    gate: dict[str, float]
    max_background: int = 40  # background patches shown besides the objects' (few: less to search)


def default_levels(final_gate: dict[str, float]) -> tuple[Level, ...]:
    """few → some → full. The middle gate asks for overall accuracy only: the lookups (colour,
    shape, existence) pass 0.96 there while counting, which needs the larger counts of whole
    scenes, plateaus near 0.7 (measured: counts of 0-2 right, 4+ mostly off by one)."""
    return (
        Level("few", 2, 6, {"acc": 0.90, "min_family": 0.80}, max_background=8),
        Level("some", 6, 16, {"acc": 0.90}, max_background=40),
        Level("full", None, None, final_gate),
    )


#: sample mix of the last level
FULL_MIX = {"full": 0.35, "partial": 0.2, "pruned": 0.15, "caption": 0.3}
#: share of last-level steps whose whole batch shows all 576 tokens (0.15 until LLM step 6000 of
#: the run that made accm-tiny v2: counts on whole 576-token images then stalled near 0.45, mostly
#: one or two short, while object views with a little background were counted better)
FULL_BATCH_SHARE = 0.3
#: share of samples that show every object of their view and also carry a dense block
#: (``shapes.dense_targets``: the captioning block or one of its training-only siblings)
DENSE_BLOCK_SHARE = 0.75
#: share of curriculum (early level) samples that carry a short caption
EARLY_CAPTION_SHARE = 0.2
PRUNE_KEEPS = (18, 36, 64, 128)


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
    device = module_device(tower)
    for s in tqdm(range(0, pool.n, batch), desc=f"features {pool.split}", unit="batch"):
        idx = np.arange(s, min(s + batch, pool.n))
        out = tower(torch.from_numpy(preprocess_uint8(pool.images[idx])).to(device), output_hidden_states=True)
        feats[idx] = out.hidden_states[layer][:, 1:].cpu().numpy().astype(np.float16)
        scores[idx] = patch_scores(layers[-1], out.hidden_states[len(layers) - 1]).cpu().numpy()
    feats.flush()
    del feats
    feat_path.with_suffix(".tmp.npy").rename(feat_path)
    np.save(score_path, scores)
    return np.load(feat_path, mmap_mode="r"), scores


# --- views ----------------------------------------------------------------------------------


@dataclasses.dataclass
class View:
    kept: np.ndarray  # ascending patch indices
    objects: list  # the objects the view shows
    complete: bool  # every patch of every shown object is kept (a description of it is exact)


def _background(patch_object: np.ndarray, rng, n: int) -> np.ndarray:
    bg = np.flatnonzero(patch_object < 0)
    return rng.choice(bg, size=min(n, len(bg)), replace=False)


def object_view(pool: ScenePool, row: int, chosen: np.ndarray, rng, n_background: int) -> View:
    """All patches of the chosen objects (indices into the scene's objects) plus background."""
    po = pool.patch_object[row]
    shown = np.flatnonzero(np.isin(po, chosen))
    kept = np.union1d(shown, _background(po, rng, n_background)).astype(np.int64)
    objects = [pool.objects[row][i] for i in sorted(int(c) for c in chosen)]
    return View(kept, objects, True)


def pruned_view(pool: ScenePool, row: int, scores: np.ndarray, keep: int) -> View:
    kept = np.asarray(select_tokens(scores[row], keep), dtype=np.int64)
    return View(kept, shapes.objects_touched(pool.objects[row], pool.patch_object[row], kept), False)


def full_view(pool: ScenePool, row: int) -> View:
    return View(np.arange(N_PATCHES, dtype=np.int64), list(pool.objects[row]), True)


def _choose(n_objects: int, lo: int, hi: int, rng) -> np.ndarray:
    m = int(rng.integers(min(lo, n_objects), min(hi, n_objects) + 1))
    return rng.choice(n_objects, size=m, replace=False)


def _caption_for(questions, hidden, rng) -> str:
    """The hidden objects the questions need, plus now and then a distractor, shuffled."""
    needed = {id(o): o for q in questions for o in shapes.relevant_objects(q.key, hidden)}
    others = [o for o in hidden if id(o) not in needed]
    chosen = list(needed.values())
    if others and rng.random() < 0.3:
        chosen.append(others[int(rng.integers(len(others)))])
    return shapes.describe_objects(chosen, rng)


def _captioned(view: View, scene_objects, rng, n_questions: int, image: bool = True):
    """Questions about the whole scene, a view, and a caption of the hidden objects they need."""
    hidden = [o for o in scene_objects if o not in view.objects]
    if not image:
        view = View(np.zeros(0, np.int64), [], True)
        hidden = list(scene_objects)
    qs = shapes.sample_questions(scene_objects, n_questions, rng)
    caption = _caption_for(qs, hidden, rng)
    # the caption's objects join the view; answers come from what the LLM can know
    known = view.objects + [o for o in hidden if (o.cell, o.colour, o.shape) in
                            set(shapes.parse_description(caption))]
    qs = [q for q in (shapes.make_question(q.family, q.key, known) for q in qs) if q is not None]
    return view, caption, qs


def sample_item(pool: ScenePool, row: int, rng: np.random.Generator, n_questions: int, level: Level,
                scores: np.ndarray | None = None, full_image: bool = False) -> tuple[PackItem, list[str]]:
    objects = pool.objects[row]
    caption = None
    if full_image:
        view, mode = full_view(pool, row), "full"
    elif level.max_objects is not None:  # curriculum: few objects in view
        view = object_view(pool, row, _choose(len(objects), level.min_objects, level.max_objects, rng), rng,
                           int(rng.integers(0, level.max_background + 1)))
        mode = "caption" if rng.random() < EARLY_CAPTION_SHARE else "view"
    else:
        mode = str(rng.choice(list(FULL_MIX), p=list(FULL_MIX.values())))
        if mode == "full":
            # every object and much of the background (20-100 background patches until step 6000)
            view = object_view(pool, row, np.arange(len(objects)), rng, int(rng.integers(50, 401)))
        elif mode == "pruned" or (mode == "caption" and rng.random() < 0.5 and scores is not None):
            view = pruned_view(pool, row, scores, int(rng.choice(PRUNE_KEEPS)))
        else:
            view = object_view(pool, row, _choose(len(objects), 1, len(objects) - 1, rng), rng,
                               int(rng.integers(10, 81)))
    if mode == "caption":
        view, caption, qs = _captioned(view, objects, rng, int(rng.integers(1, 4)), image=rng.random() >= 0.1)
    else:
        qs = shapes.sample_questions(view.objects, n_questions, rng)
    questions, answers, families = [q.question for q in qs], [q.answer for q in qs], [q.family for q in qs]
    if caption is None and view.complete and view.objects and rng.random() < DENSE_BLOCK_SHARE:
        instruction, target = _pick(shapes.dense_targets(view.objects), rng)
        questions.append(instruction)
        answers.append(target)
        families.append("dense")
    if not questions:  # a view with nothing to ask about: ask about the whole scene from all of it
        view = full_view(pool, row)
        qs = shapes.sample_questions(objects, n_questions, rng)
        questions, answers, families = [q.question for q in qs], [q.answer for q in qs], [q.family for q in qs]
    return PackItem(row, view.kept, caption, questions, answers), families


# --- loss and evaluation ----------------------------------------------------------------------


#: loss weight of every token of a dense block: in "c4 red star" the cell token's own query finds
#: its patches, one hop, at every object; without these blocks lookups stayed at chance for 800
#: steps, with them colour and shape passed 0.85 (benchmarks/results/probe_*.json)
DENSE_WEIGHT = 1.0


def _pick(options: dict[str, str], rng) -> tuple[str, str]:
    keys = sorted(options)
    key = keys[int(rng.integers(len(keys)))]
    return key, options[key]


def _step_loss(model, packer: Packer, items, families, features: torch.Tensor):
    batch = packer.pack(items, families)
    logits = packed_logits(model, batch, features)
    dense = torch.tensor([f == "dense" for f in batch.label_family], dtype=torch.bool)
    weights = torch.where(batch.is_answer, 1.0, torch.where(dense, DENSE_WEIGHT, 0.2)).to(logits.device)
    labels = batch.labels.to(logits.device)
    loss = (F.cross_entropy(logits, labels, reduction="none") * weights).sum() / weights.sum()
    return loss, logits, batch


def val_items(val: ScenePool, level: Level | None, n_scenes: int, scores: np.ndarray | None = None,
              keep: int | None = None, caption: bool = False):
    """Deterministic val questions: one per family per scene.

    ``level`` with a finite object range: views of that level, questions about the view.
    Otherwise whole-scene questions on all 576 tokens, or on the CLS top-``keep`` tokens (answers
    still about the whole scene: the pruned accuracy), optionally with the question-relevant
    caption of the discarded objects (what a perfect ACCM would say).
    """
    items, fams = [], []
    for row in range(min(n_scenes, val.n)):
        rng = np.random.default_rng([row, 991])
        objects = val.objects[row]
        if level is not None and level.max_objects is not None:
            view = object_view(val, row, _choose(len(objects), level.min_objects, level.max_objects, rng), rng,
                               int(rng.integers(0, level.max_background + 1)))
        elif keep is not None:
            view = pruned_view(val, row, scores, keep)
        else:
            view = full_view(val, row)
        asked = view.objects if (level is not None and level.max_objects is not None) else objects
        qs = [q for q in (shapes.ask(asked, f, rng) for f in shapes.FAMILIES) if q is not None]
        if not caption:  # the scene's questions share one prefix
            items.append(PackItem(row, view.kept, None, [q.question for q in qs], [q.answer for q in qs]))
            fams.append([q.family for q in qs])
            continue
        hidden = [o for o in objects if o not in view.objects]
        for q in qs:  # captions are per question, as ACCM's are
            cap = shapes.describe_objects(shapes.relevant_objects(q.key, hidden))
            items.append(PackItem(row, view.kept, cap, [q.question], [q.answer]))
            fams.append([q.family])
    return items, fams


@torch.no_grad()
def evaluate(model, packer: Packer, items, fams, features: torch.Tensor, batch: int = 32) -> dict:
    """Teacher-forced first-answer-token accuracy, overall and per family."""
    model.eval()
    hits: dict[str, list[bool]] = defaultdict(list)
    for s in range(0, len(items), batch):
        packed = packer.pack(items[s:s + batch], fams[s:s + batch])
        logits = packed_logits(model, packed, features)
        pred = logits.argmax(-1).cpu()[packed.is_answer]
        gold = packed.labels[packed.is_answer]
        for f, ok in zip(packed.answer_family, (pred == gold).tolist()):
            hits[f].append(ok)
    model.train()
    per = {f: float(np.mean(v)) for f, v in sorted(hits.items())}
    allv = [x for v in hits.values() for x in v]
    return {"acc": float(np.mean(allv)), "min_family": min(per.values()), "n": len(allv),
            **{f"acc_{f}": v for f, v in per.items()}}


# --- the stage --------------------------------------------------------------------------------


def train_llm(model, tokenizer, template: str, pool: ScenePool, val: ScenePool, work: Path,
              train_features, val_features, train_scores, val_scores, levels: tuple[Level, ...],
              max_steps: int, decay_steps: int, batch: int, lr: float, seed: int = 0,
              n_questions: int = 8, eval_every: int = 250, n_val_scenes: int = 200,
              name: str = "llm", full_batch_share: float = FULL_BATCH_SHARE) -> dict:
    """Train projector + LLM (vision frozen) in place through ``levels``; resumes from
    ``work/<name>.pt``. Returns the steps, when each gate was passed, and the last metrics."""
    torch.manual_seed(seed)
    inner = model.model
    for p in inner.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if "vision_tower" not in n]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = GatedSchedule(lr, warmup=200, decay_steps=decay_steps, max_steps=max_steps)
    trainable = lambda: {k: v for k, v in model.state_dict().items() if "vision_tower" not in k}  # noqa: E731
    ckpt_path = work / f"{name}.pt"
    state = checkpoint.load(ckpt_path)
    step, level_idx, history = 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        step, level_idx, history = state["step"], state["level"], state["history"]
        schedule.passed_at = state["passed_at"]
    packer = Packer(tokenizer, template)
    with warnings.catch_warnings():  # read-only memory maps, only ever read (a copy would be 2.4 GB)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        feats = torch.from_numpy(np.asarray(train_features))
        vfeats = torch.from_numpy(np.asarray(val_features))
    final_eval = {
        "full": val_items(val, None, n_val_scenes),
        "k18": val_items(val, None, n_val_scenes, val_scores, keep=18),
        "k18cap": val_items(val, None, n_val_scenes, val_scores, keep=18, caption=True),
    }
    log = work / f"{name}_log.jsonl"
    model.train()
    t0 = time.time()
    bar = tqdm(initial=step, total=max_steps, desc=f"stage {name}", unit="step")
    last: dict = {}
    while not schedule.done(step):
        level = levels[level_idx]
        rng = np.random.default_rng([seed, 17, step])
        rows = rng.choice(pool.n, size=batch, replace=False)
        full = level.max_objects is None and rng.random() < full_batch_share
        pairs = [sample_item(pool, int(r), rng, n_questions, level, train_scores, full) for r in rows]
        loss, _, _ = _step_loss(model, packer, [p[0] for p in pairs], [p[1] for p in pairs], feats)
        checkpoint.optimise(opt, params, loss, schedule.lr(step))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", level=level.name)
        if step % eval_every == 0 or schedule.done(step):
            rec = {"step": step, "level": level.name, "loss": loss.item(), "lr": schedule.lr(step)}
            if level.max_objects is not None:
                level_metrics = evaluate(model, packer, *val_items(val, level, n_val_scenes), vfeats)
                rec.update({f"view_{k}": v for k, v in level_metrics.items()})
            for tag, (items, fams) in final_eval.items():
                if tag == "full" or level.max_objects is None:
                    rec.update({f"{tag}_{k}": v for k, v in evaluate(model, packer, items, fams, vfeats).items()})
            gate_metrics = ({k[5:]: v for k, v in rec.items() if k.startswith("view_")}
                            if level.max_objects is not None else
                            {k[5:]: v for k, v in rec.items() if k.startswith("full_")})
            if gate_passed(gate_metrics, level.gate) and not any(h["level"] == level.name for h in history):
                history.append({"level": level.name, "passed_at": step})
                if level_idx + 1 < len(levels):
                    level_idx += 1
                else:
                    schedule.pass_gate(step)
            rec.update(passed=list(history), elapsed_s=round(time.time() - t0, 1))
            with log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.write(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()
                                  if k != "passed"}))
            checkpoint.save(ckpt_path, model=trainable(), opt=opt.state_dict(), step=step, level=level_idx,
                            history=history, passed_at=schedule.passed_at)
            last = rec
    bar.close()
    model.eval()
    return {"steps": step, "gates_passed": history, "final_gate_reached": schedule.passed_at is not None,
            "last": last}
