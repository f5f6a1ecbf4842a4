"""Stage 1, the "CLIP" stage: pretrain the vision tower alone with dense scene-graph labels.

Per patch: colour and shape class (background included), object-centre flag, the patch's own
grid position and its named cell (so a cell name can be matched to patches in one hop); on the
CLS token: which (colour, shape) pairs are present and how many of
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
from ..models.placement import module_device
from ..pruning.select import select_tokens
from ..pruning.vision import encoder_layers, patch_scores
from . import checkpoint
from .gate import GatedSchedule, gate_passed
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
        self.cell = nn.Linear(hidden, len(shapes.CELL_NAMES))
        self.present = nn.Linear(hidden, N_COLOURS * N_SHAPES)
        self.counts = nn.Linear(hidden, N_COLOURS + N_SHAPES)


def _grid_targets() -> torch.Tensor:
    idx = torch.arange(shapes.GRID * shapes.GRID)
    return torch.stack([idx // shapes.GRID, idx % shapes.GRID], -1).float() / (shapes.GRID - 1)


CELL_TARGETS = torch.tensor([shapes.CELL_NAMES.index(shapes.cell_of_patch(p)) for p in range(shapes.GRID ** 2)])


def _count_targets(pool: ScenePool, idx: np.ndarray) -> torch.Tensor:
    out = np.zeros((len(idx), N_COLOURS + N_SHAPES), dtype=np.float32)
    for r, i in enumerate(idx):
        for o in pool.objects[i]:
            out[r, COLOUR_IDS[o.colour]] += 1
            out[r, N_COLOURS + SHAPE_IDS[o.shape]] += 1
    return torch.from_numpy(out)


def dense_loss(tower, heads: DenseHeads, pool: ScenePool, idx: np.ndarray):
    idx = np.sort(idx)
    device = module_device(tower)
    on = lambda a: torch.as_tensor(a).to(device)  # noqa: E731
    pixels = on(preprocess_uint8(pool.images[idx]))
    labels = pool.patch_labels(idx)
    out = tower(pixels, output_hidden_states=True)
    last = out.hidden_states[-1]
    patches, cls = last[:, 1:], out.pooler_output
    colour_t = on(labels["colour"])
    shape_t = on(labels["shape"])
    weight = torch.where(colour_t < N_COLOURS, 3.0, 1.0)  # objects are ~8% of patches
    ce = lambda logits, t: (F.cross_entropy(logits.transpose(1, 2), t, reduction="none") * weight).mean()  # noqa: E731
    loss_colour = ce(heads.colour(patches), colour_t)
    loss_shape = ce(heads.shape(patches), shape_t)
    loss_centre = F.binary_cross_entropy_with_logits(
        heads.centre(patches).squeeze(-1), on(labels["centre"]),
        pos_weight=on(10.0),
    )
    loss_pos = F.mse_loss(heads.position(patches), on(_grid_targets()).expand(len(idx), -1, -1))
    loss_cell = F.cross_entropy(heads.cell(patches).transpose(1, 2), on(CELL_TARGETS).expand(len(idx), -1))
    loss_present = F.binary_cross_entropy_with_logits(heads.present(cls), on(labels["present"]))
    loss_counts = F.mse_loss(heads.counts(cls), on(_count_targets(pool, idx)))
    parts = {
        "colour": loss_colour, "shape": loss_shape, "centre": loss_centre,
        "position": 5 * loss_pos, "cell": loss_cell, "present": 2 * loss_present, "counts": 0.2 * loss_counts,
    }
    # detached tensors, read only when logged (reading one waits for the GPU)
    return sum(parts.values()), {k: v.detach() for k, v in parts.items()}, out, labels


def _object_accuracy(heads: DenseHeads, patches: torch.Tensor, pool: ScenePool, idx) -> tuple[float, float]:
    """Colour and shape read from an object's patches together (their mean logits), as attention
    over the object's patches can: a patch an object only grazes shows a corner of it."""
    colour_logits = heads.colour(patches)[..., :N_COLOURS].cpu().numpy()
    shape_logits = heads.shape(patches)[..., :N_SHAPES].cpu().numpy()
    colour_hits, shape_hits = [], []
    for r, i in enumerate(idx):
        for k, o in enumerate(pool.objects[i]):
            mine = pool.patch_object[i] == k
            colour_hits.append(colour_logits[r][mine].mean(0).argmax() == COLOUR_IDS[o.colour])
            shape_hits.append(shape_logits[r][mine].mean(0).argmax() == SHAPE_IDS[o.shape])
    return float(np.mean(colour_hits)), float(np.mean(shape_hits))


@torch.no_grad()
def evaluate(tower, heads: DenseHeads, pool: ScenePool, n: int = 64, keep: int = 18) -> dict:
    tower.eval()
    idx = np.arange(min(n, pool.n))
    device = module_device(tower)
    pixels = torch.from_numpy(preprocess_uint8(pool.images[idx])).to(device)
    out = tower(pixels, output_hidden_states=True)
    labels = pool.patch_labels(idx)
    patches = out.hidden_states[-1][:, 1:]
    obj = labels["colour"] < N_COLOURS
    colour_acc = float((heads.colour(patches).argmax(-1).cpu().numpy() == labels["colour"])[obj].mean())
    shape_hit = heads.shape(patches).argmax(-1).cpu().numpy() == labels["shape"]
    shape_acc = float(shape_hit[obj].mean())
    centre_shape_acc = float(shape_hit[labels["centre"] > 0].mean())  # the patch holding the object's centre
    cell_acc = float((heads.cell(patches).argmax(-1).cpu() == CELL_TARGETS).float().mean())
    object_colour, object_shape = _object_accuracy(heads, patches, pool, idx)
    layers = encoder_layers(tower)
    scores = patch_scores(layers[-1], out.hidden_states[len(layers) - 1])
    kept = select_tokens(scores.cpu(), keep).numpy()
    on_object = float(np.take_along_axis(pool.patch_object[idx], kept, 1).__ge__(0).mean())
    covered = []
    for r, i in enumerate(idx):
        hit = set(pool.patch_object[i][kept[r]].tolist()) - {-1}
        covered.append(len(hit) / max(1, len(pool.objects[i])))
    tower.train()
    return {
        "patch_colour_acc": colour_acc, "patch_shape_acc": shape_acc, "centre_shape_acc": centre_shape_acc,
        "patch_cell_acc": cell_acc, "object_colour_acc": object_colour, "object_shape_acc": object_shape,
        f"cls_top{keep}_on_object": on_object, f"cls_top{keep}_object_coverage": float(np.mean(covered)),
    }


#: the vision stage ends once the tower's features carry what the questions need: each object's
#: colour and shape, read from its patches together (a single patch that an object only grazes
#: shows a corner of it), the cell of every patch, and a CLS that ranks objects first
VISION_GATE = {"object_colour_acc": 0.99, "object_shape_acc": 0.97, "patch_cell_acc": 0.98,
               "cls_top18_on_object": 0.85}


def train_vision(model, pool: ScenePool, val: ScenePool, work: Path, max_steps: int, batch: int = 16,
                 lr: float = 2e-3, seed: int = 0, log_every: int = 100, decay_steps: int = 400,
                 gate: dict[str, float] | None = None) -> dict:
    """Train ``model.model.vision_tower`` in place until ``gate`` holds on val, then decay the lr
    over ``decay_steps``; resumes from ``work/vision.pt``."""
    torch.manual_seed(seed)
    gate = VISION_GATE if gate is None else gate
    tower = model.model.vision_tower
    heads = DenseHeads(tower.config.hidden_size).to(module_device(tower))
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = GatedSchedule(lr, warmup=100, decay_steps=decay_steps, max_steps=max_steps)
    ckpt_path = work / "vision.pt"
    step = 0
    state = checkpoint.load(ckpt_path)
    if state is not None:
        tower.load_state_dict(state["tower"])
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        schedule.passed_at = state.get("passed_at")
    log = work / "vision_log.jsonl"
    tower.train()
    t0 = time.time()
    bar = tqdm(initial=step, total=max_steps, desc="stage 1 vision", unit="step")
    while not schedule.done(step):
        rng = np.random.default_rng([seed, step])
        idx = rng.choice(pool.n, size=batch, replace=False)
        loss, parts, _, _ = dense_loss(tower, heads, pool, idx)
        checkpoint.optimise(opt, params, loss, schedule.lr(step))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % log_every == 0 or schedule.done(step):
            metrics = evaluate(tower, heads, val)
            if gate_passed(metrics, gate):
                schedule.pass_gate(step)
            rec = {"step": step, "loss": loss.item(), **{k: float(v) for k, v in parts.items()}, **metrics,
                   "lr": schedule.lr(step), "gate_passed_at": schedule.passed_at,
                   "elapsed_s": round(time.time() - t0, 1)}
            with log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            checkpoint.save(ckpt_path, tower=tower.state_dict(), heads=heads.state_dict(),
                            opt=opt.state_dict(), step=step, passed_at=schedule.passed_at)
    bar.close()
    tower.eval()
    return {**evaluate(tower, heads, val, n=128), "steps": step, "gate": gate,
            "gate_passed_at": schedule.passed_at}
