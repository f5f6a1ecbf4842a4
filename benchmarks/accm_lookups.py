"""Does the ACCM caption model find the object a question asks about? On ShapesVQA v2 *val*
questions whose stage 1 target names a discarded object (a diagnostic for whoever trains ACCM,
never a reported accuracy): teacher-forced on that target, the attention mass each layer-1 head
of the caption LM puts, at the position that predicts the first caption token (the object's
cell), on the read tokens that show that object; and whether that token is predicted. Per family:
colour and shape questions name a cell (a match on position), count and existence questions ask
by colour or shape (a match on content).

    python benchmarks/accm_lookups.py --n 400 --json benchmarks/results/accm_lookups.json
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def lookups(answerer, samples) -> dict:
    import torch

    from accm.data import shapes
    from accm.train.accm import Layout, _caption_ids
    from accm.train.accm_data import caption_target

    comp = answerer.compensator
    cap, tok = comp.caption, comp.tokenizer
    rows = defaultdict(list)
    for s in samples:
        scene = shapes.render_scene(s.split, s.scene_index)
        vision = answerer.ref.vision(answerer.ref.pixel_values([scene.pil()]))
        read = cap.mapper.read_index(vision.discarded_index, vision.discarded_scores.float())[0].numpy()
        target = caption_target(scene.objects, scene.patch_object, s.key, vision.kept_index[0].numpy(), read)
        if target.strip() == shapes.NOTHING:
            continue
        cells = shapes.patch_cells(scene.objects, scene.patch_object)[read]
        on = np.flatnonzero(cells == target.split()[0])
        question, caption = [tok(s.question)["input_ids"]], [_caption_ids(tok, target, cap.cfg)]
        attention: list = []
        with torch.no_grad():
            prefix = cap.mapper(vision.discarded.float(), vision.discarded_index, vision.discarded_scores.float())
            logits, wanted, _ = cap.caption_logits(question, prefix, caption, attention=attention)
        layout = Layout(len(question[0]), prefix.shape[1], len(caption[0]))
        at = attention[1][0, :, layout.caption_start - 1]  # [heads, L]
        mass = at[:, layout.question_len + on].sum(-1).tolist()
        first = torch.softmax(logits[0, 0].float(), -1)
        rows[s.family].append((mass, int(first.argmax() == wanted[0, 0]), float(first[wanted[0, 0]])))
    out = {}
    for family, got in sorted(rows.items()):
        mass = np.array([g[0] for g in got])
        out[family] = {"n": len(got), "lookup_mass_by_head": mass.mean(0).round(3).tolist(),
                       "first_token_right": round(float(np.mean([g[1] for g in got])), 3),
                       "first_token_probability": round(float(np.mean([g[2] for g in got])), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--accm-dir", default=None, help="ACCM modules (default: the model's own)")
    ap.add_argument("--keep", type=int, default=18)
    ap.add_argument("--n", type=int, default=400, help="val questions (about half name a discarded object)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from accm.data import shapes
    from accm.measure.accuracy import TorchAnswerer
    from accm.measure.latency import machine
    from accm.models.registry import checkpoint_digest, resolve

    modules = Path(args.accm_dir) if args.accm_dir else Path(resolve(args.model).path) / "accm"
    answerer = TorchAnswerer(args.model, vision_keep=args.keep, accm=True, accm_dir=str(modules))
    result = {"benchmark": "ACCM caption model lookups (val, teacher-forced)", "split": "val", "n": args.n,
              "seed": args.seed, "keep": args.keep, "accm_modules_digest": checkpoint_digest(modules, recursive=True),
              "families": lookups(answerer, shapes.benchmark("val", args.n, args.seed)), "machine": machine()}
    for family, row in result["families"].items():
        print(family, row)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
