"""A rendered pool of ShapesVQA scenes on disk: images, per-patch labels and scene graphs.

Rendering with Pillow is a large share of a training step, so scenes are rendered once into
memory-mapped arrays and questions are sampled from the stored scene graphs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data import shapes

COLOUR_IDS = {c: i for i, c in enumerate(shapes.COLOURS)}
SHAPE_IDS = {s: i for i, s in enumerate(shapes.SHAPES)}


class ScenePool:
    """Scenes ``[0, n)`` of one split, rendered under ``root/<split>``."""

    def __init__(self, root: Path, split: str):
        self.dir = Path(root) / split
        meta = json.loads((self.dir / "meta.json").read_text())
        self.split = split
        self.n = meta["n"]
        self.images = np.load(self.dir / "images.npy", mmap_mode="r")
        self.patch_object = np.load(self.dir / "patch_object.npy")
        self.patch_centre = np.load(self.dir / "patch_centre.npy")
        self.objects = [
            [shapes.SceneObject(**o) for o in objs] for objs in meta["objects"]
        ]

    def scene(self, i: int) -> shapes.Scene:
        return shapes.Scene(
            self.split, i, self.objects[i], np.asarray(self.images[i]),
            self.patch_object[i], self.patch_centre[i],
        )

    def patch_labels(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Dense per-patch colour/shape classes (last class = background) and centre flags."""
        obj = self.patch_object[idx]
        colour = np.full(obj.shape, len(COLOUR_IDS), dtype=np.int64)
        shape = np.full(obj.shape, len(SHAPE_IDS), dtype=np.int64)
        present = np.zeros((len(idx), len(COLOUR_IDS) * len(SHAPE_IDS)), dtype=np.float32)
        for row, i in enumerate(idx):
            for k, o in enumerate(self.objects[i]):
                hit = obj[row] == k
                colour[row, hit] = COLOUR_IDS[o.colour]
                shape[row, hit] = SHAPE_IDS[o.shape]
                present[row, COLOUR_IDS[o.colour] * len(SHAPE_IDS) + SHAPE_IDS[o.shape]] = 1.0
        return {
            "colour": colour,
            "shape": shape,
            "centre": self.patch_centre[idx].astype(np.float32),
            "present": present,
        }


def _render_range(images_path: str, split: str, start: int, stop: int):
    """Render scenes ``[start, stop)`` into the pool's image file; return their labels and graphs."""
    images = np.load(images_path, mmap_mode="r+")
    patch_object, patch_centre, objects = [], [], []
    for i in range(start, stop):
        scene = shapes.render_scene(split, i)
        images[i] = scene.image
        patch_object.append(scene.patch_object)
        patch_centre.append(scene.patch_centre)
        objects.append([o.__dict__ for o in scene.objects])
    images.flush()
    return start, patch_object, patch_centre, objects


#: below this many scenes a pool renders in this process (starting workers costs more)
PARALLEL_FROM = 256
RENDER_CHUNK = 64  # scenes per task handed to a worker


def render_workers(n: int) -> int:
    return 1 if n < PARALLEL_FROM else max(1, min(os.cpu_count() or 1, 16))


def render_pool(root: Path, split: str, n: int, workers: int | None = None) -> ScenePool:
    """Render scenes ``[0, n)`` of ``split`` once (a finished pool is reused).

    Every scene is a function of its split and index alone, so ``workers`` processes (default:
    one per core for large pools) render disjoint ranges into one memory-mapped file, and the
    pool is the same whatever their number: rendering 16,000 scenes is about 5 minutes on one
    core, a large share of a GPU run's time.
    """
    out = Path(root) / split
    out.mkdir(parents=True, exist_ok=True)
    if (out / "meta.json").exists() and json.loads((out / "meta.json").read_text())["n"] == n:
        return ScenePool(root, split)
    images = np.lib.format.open_memmap(
        out / "images.npy", mode="w+", dtype=np.uint8,
        shape=(n, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3),
    )
    del images  # the renderers write through their own maps
    patch_object = np.zeros((n, shapes.GRID * shapes.GRID), dtype=np.int16)
    patch_centre = np.zeros((n, shapes.GRID * shapes.GRID), dtype=bool)
    objects: list = [None] * n
    workers = render_workers(n) if workers is None else workers
    ranges = [(s, min(s + RENDER_CHUNK, n)) for s in range(0, n, RENDER_CHUNK)]
    bar = tqdm(total=n, desc=f"render {split}", unit="scene")

    def collect(done) -> None:
        start, po, pc, objs = done
        stop = start + len(objs)
        patch_object[start:stop], patch_centre[start:stop], objects[start:stop] = po, pc, objs
        bar.update(len(objs))

    if workers <= 1:
        for s, e in ranges:
            collect(_render_range(str(out / "images.npy"), split, s, e))
    else:
        # spawn, not fork: the parent may hold torch's thread pools
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            for done in ex.map(_render_range, [str(out / "images.npy")] * len(ranges), [split] * len(ranges),
                               [r[0] for r in ranges], [r[1] for r in ranges]):
                collect(done)
    bar.close()
    np.save(out / "patch_object.npy", patch_object)
    np.save(out / "patch_centre.npy", patch_centre)
    (out / "meta.json").write_text(json.dumps({"n": n, "objects": objects}))
    return ScenePool(root, split)
