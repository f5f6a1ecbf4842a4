"""Training data for ACCM: (image, question) pairs and (image, caption) pairs.

Either the built-in ShapesVQA training split (rendered on the fly; its caption target is a
function of the kept patches) or the user's JSONL files:
``{"image": path, "question": text}`` per line for stage 2 and ``{"image": path, "caption":
text}`` for stage 1 (relative paths resolve against the file's directory). No labels are read
in stage 2: an ``answer`` field, if present, is ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import shapes
from ..inputs import jsonl_rows, load_image


class ShapesSource:
    """ShapesVQA's train split: scene i gives one image, a question and, for stage 1, the
    question-aware caption target: the discarded objects the question needs, in the names the
    questions use. The target depends on the model's own kept tokens and on which discarded
    tokens the mapper reads, so it is a function ``target(kept_index, read_index)``: an object
    no read patch shows is not in it (no caption model could name it).

    ``describe_share``: that share of caption samples asks ``describe the image .`` for every
    object the mapper reads, a cell → colour, shape lookup at every caption token (dense
    supervision; the question-aware captions alone stayed at "none ." for 1,100 steps)."""

    def __init__(self, n_scenes: int = 16000, split: str = "train", describe_share: float = 0.0):
        self.n = n_scenes
        self.split = split
        self.describe_share = describe_share

    def __len__(self) -> int:
        return self.n

    def caption_sample(self, i: int, rng: np.random.Generator):
        scene = shapes.render_scene(self.split, i)
        q = _random_question(scene, rng)
        describe = rng.random() < self.describe_share

        def target(kept_index, read_index) -> str:
            seen = shapes.objects_touched(scene.objects, scene.patch_object, kept_index)
            read = shapes.objects_touched(scene.objects, scene.patch_object, read_index)
            shown = [o for o in read if o not in seen]
            return shapes.describe_objects(shown if describe else shapes.relevant_objects(q.key, shown))

        return scene.pil(), shapes.DESCRIBE if describe else q.question, target

    def question_sample(self, i: int, rng: np.random.Generator):
        scene = shapes.render_scene(self.split, i)
        return scene.pil(), _random_question(scene, rng).question


def _random_question(scene, rng) -> shapes.Question:
    family = shapes.FAMILIES[int(rng.integers(len(shapes.FAMILIES)))]
    while (q := shapes.ask(scene.objects, family, rng)) is None:  # None only for a count above 12
        pass
    return q


class JsonlSource:
    """Lines of ``{"image": ..., "question": ...}`` and/or ``{"image": ..., "caption": ...}``."""

    def __init__(self, path: str | Path, field: str):
        self.rows, _ = jsonl_rows(path, ("image", field))

    def __len__(self) -> int:
        return len(self.rows)

    def caption_sample(self, i: int, rng: np.random.Generator):
        row = self.rows[i]
        return load_image(row["image"]), row.get("question", ""), row["caption"]

    def question_sample(self, i: int, rng: np.random.Generator):
        row = self.rows[i]
        return load_image(row["image"]), row["question"]


class _Slice:
    def __init__(self, source, rows):
        self.source, self.rows = source, rows

    def __len__(self) -> int:
        return len(self.rows)

    def caption_sample(self, i: int, rng):
        return self.source.caption_sample(self.rows[i], rng)

    def question_sample(self, i: int, rng):
        return self.source.question_sample(self.rows[i], rng)


def held_out(source, fraction: float = 0.1):
    """(train, val) views of a source: its last ``fraction`` (at least one row) is validation."""
    n = len(source)
    cut = max(1, min(n - 1, round(n * (1 - fraction)))) if n > 1 else n
    return _Slice(source, list(range(cut))), _Slice(source, list(range(cut, n)) or [0])
