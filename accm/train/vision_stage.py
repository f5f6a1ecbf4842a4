"""Stage 1, the "CLIP" stage: pretrain the vision tower alone with dense scene-graph labels.

Per patch: colour and shape class (background included), object-centre flag and the patch's
own grid position; on the CLS token: which (colour, shape) pairs are present and how many of
each colour and shape. The CLS objective makes the last layer's CLS query attend to objects,
which is what vision-side pruning ranks by.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import shapes
from ..data.preprocess import preprocess_uint8
from ..pruning.select import select_tokens
from ..pruning.vision import encoder_layers, patch_scores
from . import checkpoint
from .pool import COLOUR_IDS, SHAPE_IDS, ScenePool

N_COLOURS, N_SHAPES = len(COLOUR_IDS), len(SHAPE_IDS)


class DenseHeads(nn.Module):
    """Training-only heads; discarded after the stage."""

    def __init__(self, hidden: int):
        super().__init__()
        self.colour = nn.Linear(hidden, N_COLOURS + 1)
        self.shape = nn.Linear(hidden, N_SHAPES + 1)
        self.centre = nn.Linear(hidden, 1)
        self.position = nn.Linear(hidden, 2)
        self.present = nn.Linear(hidden, N_COLOURS * N_SHAPES)
        self.counts = nn.Linear(hidden, N_COLOURS + N_SHAPES)


def _grid_targets() -> torch.Tensor:
    idx = torch.arange(shapes.GRID * shapes.GRID)
    return torch.stack([idx // shapes.GRID, idx % shapes.GRID], -1).float() / (shapes.GRID - 1)


def _count_targets(pool: ScenePool, idx: np.ndarray) -> torch.Tensor:
    out = np.zeros((len(idx), N_COLOURS + N_SHAPES), dtype=np.float32)
    for r, i in enumerate(idx):
        for o in pool.objects[i]:
            out[r, COLOUR_IDS[o.colour]] += 1
            out[r, N_COLOURS + SHAPE_IDS[o.shape]] += 1
    return torch.from_numpy(out)


def dense_loss(tower, heads: DenseHeads, pool: ScenePool, idx: np.ndarray):
    idx = np.sort(idx)
    pixels = torch.from_numpy(preprocess_uint8(pool.images[idx]))
    labels = pool.patch_labels(idx)
    out = tower(pixels, output_hidden_states=True)
    last = out.hidden_states[-1]
    patches, cls = last[:, 1:], out.pooler_output
    colour_t = torch.from_numpy(labels["colour"])
    shape_t = torch.from_numpy(labels["shape"])
    weight = torch.where(colour_t < N_COLOURS, 3.0, 1.0)  # objects are ~8% of patches
    ce = lambda logits, t: (F.cross_entropy(logits.transpose(1, 2), t, reduction="none") * weight).mean()  # noqa: E731
    loss_colour = ce(heads.colour(patches), colour_t)
    loss_shape = ce(heads.shape(patches), shape_t)
    loss_centre = F.binary_cross_entropy_with_logits(
        heads.centre(patches).squeeze(-1), torch.from_numpy(labels["centre"]),
        pos_weight=torch.tensor(10.0),
    )
    loss_pos = F.mse_loss(heads.position(patches), _grid_targets().expand(len(idx), -1, -1))
    loss_present = F.binary_cross_entropy_with_logits(
        heads.present(cls), torch.from_numpy(labels["present"])
    )
    loss_counts = F.mse_loss(heads.counts(cls), _count_targets(pool, idx))
    parts = {
        "colour": loss_colour, "shape": loss_shape, "centre": loss_centre,
        "position": 5 * loss_pos, "present": 2 * loss_present, "counts": 0.2 * loss_counts,
    }
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}, out, labels


@torch.no_grad()
def evaluate(tower, heads: DenseHeads, pool: ScenePool, n: int = 64, keep: int = 18) -> dict:
    tower.eval()
    idx = np.arange(min(n, pool.n))
    pixels = torch.from_numpy(preprocess_uint8(pool.images[idx]))
    out = tower(pixels, output_hidden_states=True)
    labels = pool.patch_labels(idx)
    patches = out.hidden_states[-1][:, 1:]
    obj = labels["colour"] < N_COLOURS
    colour_acc = float((heads.colour(patches).argmax(-1).numpy() == labels["colour"])[obj].mean())
    shape_acc = float((heads.shape(patches).argmax(-1).numpy() == labels["shape"])[obj].mean())
    layers = encoder_layers(tower)
    scores = patch_scores(layers[-1], out.hidden_states[len(layers) - 1])
    kept = select_tokens(scores, keep).numpy()
    on_object = float(np.take_along_axis(pool.patch_object[idx], kept, 1).__ge__(0).mean())
    covered = []
    for r, i in enumerate(idx):
        hit = set(pool.patch_object[i][kept[r]].tolist()) - {-1}
        covered.append(len(hit) / max(1, len(pool.objects[i])))
    tower.train()
    return {
        "patch_colour_acc": colour_acc, "patch_shape_acc": shape_acc,
        f"cls_top{keep}_on_object": on_object, f"cls_top{keep}_object_coverage": float(np.mean(covered)),
    }


def train_vision(model, pool: ScenePool, val: ScenePool, work: Path, steps: int, batch: int = 16,
                 lr: float = 2e-3, seed: int = 0, log_every: int = 100) -> dict:
    """Train ``model.model.vision_tower`` in place; resumes from ``work/vision.pt``."""
    torch.manual_seed(seed)
    tower = model.model.vision_tower
    heads = DenseHeads(tower.config.hidden_size)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ckpt_path = work / "vision.pt"
    start = 0
    state = checkpoint.load(ckpt_path)
    if state is not None:
        tower.load_state_dict(state["tower"])
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    log = work / "vision_log.jsonl"
    tower.train()
    t0 = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="stage 1 vision", unit="step")
    for step in bar:
        rng = np.random.default_rng([seed, step])
        idx = rng.choice(pool.n, size=batch, replace=False)
        loss, parts, _, _ = dense_loss(tower, heads, pool, idx)
        checkpoint.optimise(opt, params, loss, checkpoint.lr_at(step, steps, lr, warmup=100))
        bar.set_postfix(loss=f"{float(loss):.3f}")
        if (step + 1) % log_every == 0 or step + 1 == steps:
            metrics = evaluate(tower, heads, val)
            rec = {"step": step + 1, "loss": float(loss), **parts, **metrics,
                   "elapsed_s": round(time.time() - t0, 1)}
            with log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            checkpoint.save(ckpt_path, tower=tower.state_dict(), heads=heads.state_dict(),
                            opt=opt.state_dict(), step=step + 1)
    tower.eval()
    return evaluate(tower, heads, val, n=128)
