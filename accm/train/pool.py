"""A rendered pool of ShapesVQA scenes on disk: images, per-patch labels and scene graphs.

Rendering with Pillow is a large share of a training step, so scenes are rendered once into
memory-mapped arrays and questions are sampled from the stored scene graphs.
"""

from __future__ import annotations

import json
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


def render_pool(root: Path, split: str, n: int) -> ScenePool:
    """Render scenes ``[0, n)`` of ``split`` (resumes where an earlier run stopped)."""
    out = Path(root) / split
    out.mkdir(parents=True, exist_ok=True)
    if (out / "meta.json").exists() and json.loads((out / "meta.json").read_text())["n"] == n:
        return ScenePool(root, split)
    images = np.lib.format.open_memmap(
        out / "images.npy", mode="w+", dtype=np.uint8,
        shape=(n, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3),
    )
    patch_object = np.zeros((n, shapes.GRID * shapes.GRID), dtype=np.int16)
    patch_centre = np.zeros((n, shapes.GRID * shapes.GRID), dtype=bool)
    objects = []
    for i in tqdm(range(n), desc=f"render {split}", unit="scene"):
        scene = shapes.render_scene(split, i)
        images[i] = scene.image
        patch_object[i] = scene.patch_object
        patch_centre[i] = scene.patch_centre
        objects.append([o.__dict__ for o in scene.objects])
    images.flush()
    np.save(out / "patch_object.npy", patch_object)
    np.save(out / "patch_centre.npy", patch_centre)
    (out / "meta.json").write_text(json.dumps({"n": n, "objects": objects}))
    return ScenePool(root, split)
