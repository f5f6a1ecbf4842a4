"""Can a count be read off accm-tiny's image tokens? Two per-patch probes on the projected tokens
the language model receives (whole 576-token images), each read out as a sum:

- ``centre``: is this patch an object's centre patch, and of which colour / shape? The count of
  an attribute is the number of patches flagged with it: one mark per object, the readout a
  softmax-attention LM can approximate in one layer.
- ``cell``: which colours / shapes does this patch show? A cell holds at most one object, so the
  count is the number of cells (4 × 4 patches) where any patch shows the attribute: cleaner
  evidence, but a two-step readout (merge a cell's patches, then count cells).

Counts are scored on the attributes a count question can ask about (up to 12). Nothing here is
chosen on test questions: the probes train on train scenes and are scored on val scenes.

    python benchmarks/count_probe.py --json benchmarks/results/count_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tokens_and_targets(ref, split: str, n: int, attributes: list[str], batch: int = 32):
    """Projected image tokens ``[n, P, D]`` and, per patch and attribute, the centre and the
    object-patch targets ``[n, P, A]``, and the true counts ``[n, A]``."""
    import torch

    from accm.data import shapes

    feats, centre, shown, counts = [], [], [], []
    for start in range(0, n, batch):
        scenes = [shapes.render_scene(split, i) for i in range(start, min(n, start + batch))]
        feats.append(ref.vision(ref.pixel_values([s.pil() for s in scenes])).kept.float())
        for s in scenes:
            c = np.zeros((len(s.patch_object), len(attributes)), np.float32)
            w = np.zeros_like(c)
            for p, k in enumerate(s.patch_object):
                if k < 0:
                    continue
                cols = [attributes.index(s.objects[k].colour), attributes.index(s.objects[k].shape)]
                w[p, cols] = 1
                if s.patch_centre[p]:
                    c[p, cols] = 1
            centre.append(c)
            shown.append(w)
            counts.append([sum(a in (o.colour, o.shape) for o in s.objects) for a in attributes])
    as_tensor = lambda xs: torch.from_numpy(np.stack(xs))  # noqa: E731
    return torch.cat(feats), as_tensor(centre), as_tensor(shown), torch.tensor(counts, dtype=torch.float32)


def fit_patch_probe(x, y, epochs: int, seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    probe = nn.Sequential(nn.Linear(x.shape[-1], 128), nn.GELU(), nn.Linear(128, y.shape[-1]))
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            j = order[i:i + 32]
            loss = nn.functional.binary_cross_entropy_with_logits(probe(x[j]), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval()


def count_scores(predicted, counts, max_count: int) -> dict:
    asked = counts <= max_count
    err = (predicted - counts)[asked]
    return {"count_exact": round(float((err == 0).float().mean()), 4),
            "count_within_one": round(float((err.abs() <= 1).float().mean()), 4),
            "mean_signed_error": round(float(err.mean()), 3)}


def main() -> None:
    import torch

    from accm.data import shapes
    from accm.measure.latency import machine
    from accm.models.loading import load_llava
    from accm.pruning.reference import ReferencePipeline

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--train-scenes", type=int, default=3000)
    ap.add_argument("--val-scenes", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--json", default="benchmarks/results/count_probe.json")
    args = ap.parse_args()

    t0 = time.time()
    lm = load_llava(args.model)
    ref = ReferencePipeline(lm.model, lm.processor, template=lm.template)
    attributes = list(shapes.COLOURS) + list(shapes.SHAPES)
    with torch.no_grad():
        x_tr, centre_tr, shown_tr, _ = tokens_and_targets(ref, "train", args.train_scenes, attributes)
        x_va, centre_va, shown_va, counts_va = tokens_and_targets(ref, "val", args.val_scenes, attributes)
    mean, std = x_tr.mean((0, 1)), x_tr.std((0, 1)) + 1e-5
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    max_count = len(shapes.NUMBERS) - 1
    cell_of = torch.tensor([shapes.CELL_NAMES.index(shapes.cell_of_patch(p)) for p in range(x_va.shape[1])])
    n_cells = len(shapes.CELL_NAMES)

    def per_cell(flags):  # any patch of the cell → the cell
        index = cell_of[None, :, None].expand_as(flags)
        return torch.zeros(flags.shape[0], n_cells, flags.shape[2]).scatter_reduce(1, index, flags, "amax")

    probes = {}
    for name, y_tr, y_va, readout in (("centre", centre_tr, centre_va, lambda f: f.sum(1)),
                                      ("cell", shown_tr, shown_va, lambda f: per_cell(f).sum(1))):
        probe = fit_patch_probe(x_tr, y_tr, args.epochs)
        with torch.no_grad():
            flags = (probe(x_va) > 0).float()
        probes[name] = {"patch_all_attributes_right": round(float((flags == y_va).all(-1).float().mean()), 4),
                        **count_scores(readout(flags), counts_va, max_count),
                        "readout_of_true_targets_exact": count_scores(readout(y_va), counts_va, max_count)[
                            "count_exact"]}
        print(name, probes[name], flush=True)
    report = {"benchmark": "count probes on accm-tiny's projected image tokens (whole images)",
              "model": lm.source.name, "machine": machine(), "train_scenes": args.train_scenes,
              "val_scenes": args.val_scenes, "epochs": args.epochs, "attributes": attributes,
              "max_count": max_count, "probes": probes, "seconds": round(time.time() - t0, 1)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
