"""Learnability probe: how fast a language-model size learns ShapesVQA v2 from image features,
measured on a short run before the long one.

It runs the real LLM stage (``accm.train.llm_stage.train_llm``, the same curriculum and gates)
for a few hundred steps and keeps its validation curve. ``--features oracle`` feeds *ideal*
patch features built from the scene graph (one-hot colour, shape, cell, objectness and centre
plus noise), so the probe can run before (or while) the vision tower trains and isolates what
the language model can learn; ``--features WORK`` uses a trained tower's cached features from an
``accm-train base`` work directory.

    python benchmarks/learnability_probe.py --work work/probe --features oracle \
        --text-hidden 160 --text-layers 6 --steps 600 --json benchmarks/results/probe_160x6.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def oracle_features(pool, dim: int, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """Per-patch features that carry exactly what the vision stage's dense heads are trained on."""
    from accm.data import shapes
    from accm.train.vision_stage import CELL_TARGETS

    rng = np.random.default_rng(seed)
    labels = pool.patch_labels(np.arange(pool.n))
    n_col, n_shape = len(shapes.COLOURS) + 1, len(shapes.SHAPES) + 1
    n_cell = len(shapes.CELL_NAMES)
    used = n_col + n_shape + n_cell + 2
    assert used <= dim, f"oracle features need {used} dims"
    feats = np.zeros((pool.n, shapes.GRID ** 2, dim), dtype=np.float16)
    rows = np.arange(pool.n)[:, None]
    patches = np.arange(shapes.GRID ** 2)[None, :]
    feats[rows, patches, labels["colour"]] = 1
    feats[rows, patches, n_col + labels["shape"]] = 1
    feats[:, np.arange(shapes.GRID ** 2), n_col + n_shape + CELL_TARGETS.numpy()] = 1
    feats[..., n_col + n_shape + n_cell] = (labels["colour"] < n_col - 1)
    feats[..., n_col + n_shape + n_cell + 1] = labels["centre"]
    feats += (noise * rng.standard_normal(feats.shape)).astype(np.float16)
    return feats


def main() -> None:
    import torch
    from transformers import LlavaForConditionalGeneration

    from accm.models import tiny
    from accm.train.base import _tokenizer
    from accm.train.llm_stage import default_levels, train_llm
    from accm.train.pool import render_pool

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--features", default="oracle", help="'oracle' or an accm-train base work directory")
    ap.add_argument("--pool", default="work/tiny2/pool", help="rendered pools (accm-train base work/pool)")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--text-hidden", type=int, default=160)
    ap.add_argument("--text-layers", type=int, default=6)
    ap.add_argument("--text-heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = tiny.TinySizes(text_hidden=args.text_hidden, text_layers=args.text_layers,
                           text_heads=args.text_heads, text_intermediate=int(2.75 * args.text_hidden))
    tok = _tokenizer(work, sizes)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(tiny.build_config(tok, sizes))
    pool = render_pool(Path(args.pool), "train", json.loads((Path(args.pool) / "train" / "meta.json").read_text())["n"])
    val = render_pool(Path(args.pool), "val", json.loads((Path(args.pool) / "val" / "meta.json").read_text())["n"])
    if args.features == "oracle":
        pool.n = min(pool.n, args.n_train)
        train_feats = oracle_features(pool, sizes.vision_hidden, 0)
        val_feats = oracle_features(val, sizes.vision_hidden, 1)
        # an ideal CLS ranking: object centres first, then other object patches, then background
        score = lambda p: (p.patch_object >= 0).astype(np.float32) + p.patch_centre  # noqa: E731
        train_scores, val_scores = score(pool)[: pool.n], score(val)
    else:
        src = Path(args.features) / "features"
        train_feats = np.load(src / "train" / "features.npy", mmap_mode="r")
        val_feats = np.load(src / "val" / "features.npy", mmap_mode="r")
        train_scores, val_scores = np.load(src / "train" / "scores.npy"), np.load(src / "val" / "scores.npy")
    levels = default_levels({"acc": 0.95, "min_family": 0.90})
    t0 = time.time()
    summary = train_llm(model, tok, tiny.TEMPLATE, pool, val, work, train_feats, val_feats, train_scores,
                        val_scores, levels, max_steps=args.steps, decay_steps=1, batch=args.batch, lr=args.lr,
                        eval_every=args.eval_every, n_val_scenes=100)
    curve = [json.loads(line) for line in (work / "llm_log.jsonl").read_text().splitlines()]
    params = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" not in n)
    out = {"features": args.features, "text_hidden": args.text_hidden, "text_layers": args.text_layers,
           "llm_and_projector_params": params, "steps": summary["steps"], "batch": args.batch, "lr": args.lr,
           "threads": args.threads, "wall_s": round(time.time() - t0, 1), "gates_passed": summary["gates_passed"],
           "curve": curve}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "curve"}, indent=1))


if __name__ == "__main__":
    main()
