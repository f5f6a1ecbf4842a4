"""Answerability bounds of ShapesVQA: what a perfect reader can answer from what it is shown.

A rule solver (``accm.data.shapes.answer_from``) answers test questions from:

  scene graph                      every object: must be 100 %
  kept-18 objects                  only the objects under 18 kept patches
  kept-18 + discarded description  those, plus the objects parsed back out of the description
                                   of the discarded ones (the caption ACCM could give)
  kept-18 + relevant caption       those, plus only the discarded objects the question needs

for three ways of keeping 18 patches: 18 random patches, 18 random object patches (an ideal
attention that only ever lands on objects), and, with ``--model``, the CLS-attention top-18 of
a trained vision tower (what vision-side pruning keeps). When a cell lookup's object is not in
view the solver answers the family's commonest train answer (a blind guess). The image-blind
baselines come from train frequencies only.

    python benchmarks/bounds.py --n 2000 --json benchmarks/results/bounds.json [--model accm-tiny]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _wilson(hits: int, n: int) -> list[float]:
    from accm.stats import wilson_interval

    return [round(v, 4) for v in wilson_interval(hits, n)]


def solve(sample, objects, family_majority: dict[str, str]) -> str:
    from accm.data import shapes

    answer = shapes.answer_from(sample.key, sample.family, objects)
    return family_majority[sample.family] if answer is None else answer


def main() -> None:
    from accm.data import baselines, shapes

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--keep", type=int, default=18)
    ap.add_argument("--model", default=None, help="a trained checkpoint: adds the CLS top-k row")
    ap.add_argument("--json", default="benchmarks/results/bounds.json")
    args = ap.parse_args()

    samples = shapes.benchmark("test", args.n, args.seed)
    majority, _ = baselines.train_answer_table()
    scenes = [shapes.render_scene(s.split, s.scene_index) for s in samples]
    rng = np.random.default_rng(args.seed)

    selections = {
        "random patches": [rng.choice(shapes.GRID ** 2, args.keep, replace=False) for _ in scenes],
        "random object patches": [rng.choice(np.flatnonzero(sc.patch_object >= 0),
                                             min(args.keep, int((sc.patch_object >= 0).sum())), replace=False)
                                  for sc in scenes],
    }
    if args.model:
        selections["CLS top-k"] = _cls_topk(args.model, scenes, args.keep)

    rows = []

    def row(name, objects_per_sample, coverage=None):
        hits = np.array([solve(s, objs, majority) == s.answer for s, objs in zip(samples, objects_per_sample)])
        fam = {f: float(hits[[s.family == f for s in samples]].mean()) for f in shapes.FAMILIES}
        rec = {"view": name, "accuracy": float(hits.mean()), "ci95": _wilson(int(hits.sum()), len(hits)),
               "per_family": fam}
        if coverage is not None:
            rec["object_coverage"] = float(np.mean(coverage))
        rows.append(rec)

    row("scene graph", [sc.objects for sc in scenes], [1.0] * len(scenes))
    for sel_name, kept in selections.items():
        seen = [shapes.objects_touched(sc.objects, sc.patch_object, k) for sc, k in zip(scenes, kept)]
        cover = [len(v) / len(sc.objects) for v, sc in zip(seen, scenes)]
        row(f"{sel_name}: kept-{args.keep} objects", seen, cover)
        with_desc, with_relevant = [], []
        for sc, v, s in zip(scenes, seen, samples):
            discarded = [o for o in sc.objects if o not in v]
            parsed = {cell for cell, _, _ in shapes.parse_description(shapes.describe_objects(discarded))}
            described = [o for o in sc.objects if o.cell in parsed]
            with_desc.append(v + described)
            with_relevant.append(v + shapes.relevant_objects(s.key, discarded))
        row(f"{sel_name}: kept-{args.keep} + description of the discarded", with_desc)
        row(f"{sel_name}: kept-{args.keep} + question-relevant caption", with_relevant)

    blind = baselines.blind_answers(samples)
    for name, answers in blind.items():
        hits = np.array([a == s.answer for a, s in zip(answers, samples)])
        fam = {f: float(hits[[s.family == f for s in samples]].mean()) for f in shapes.FAMILIES}
        rows.append({"view": f"blind: {name} (train frequencies)", "accuracy": float(hits.mean()),
                     "ci95": _wilson(int(hits.sum()), len(hits)), "per_family": fam})

    out = {"benchmark": "ShapesVQA v2 test", "n": len(samples), "seed": args.seed, "keep": args.keep,
           "model": args.model, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(markdown(out))


def _cls_topk(model: str, scenes, keep: int) -> list[np.ndarray]:
    import torch

    from accm.models.loading import load_llava
    from accm.pruning.reference import ReferencePipeline

    lm = load_llava(model)
    ref = ReferencePipeline(lm.model, lm.processor, vision_keep=keep)
    kept = []
    for s in range(0, len(scenes), 32):
        with torch.no_grad():
            vis = ref.vision(ref.pixel_values([sc.pil() for sc in scenes[s:s + 32]]))
        kept += [k.numpy() for k in vis.kept_index]
    return kept


def markdown(result: dict) -> str:
    from accm.data import shapes

    head = ("| what the solver sees | accuracy % (95 % CI) | " + " | ".join(shapes.FAMILIES)
            + " | objects seen % |\n|---|---|" + "---|" * len(shapes.FAMILIES) + "---|\n")
    lines = []
    for r in result["rows"]:
        lo, hi = r["ci95"]
        cov = f"{100 * r['object_coverage']:.1f}" if "object_coverage" in r else "–"
        fams = " | ".join(f"{100 * r['per_family'][f]:.1f}" for f in shapes.FAMILIES)
        lines.append(f"| {r['view']} | {100 * r['accuracy']:.1f} ({100 * lo:.1f}–{100 * hi:.1f}) | {fams} | {cov} |")
    return (f"ShapesVQA v2 test, n = {result['n']} (seed {result['seed']}), rule solver\n\n" + head
            + "\n".join(lines))


if __name__ == "__main__":
    main()
