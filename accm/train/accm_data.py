"""Training data for ACCM: (image, question) pairs and (image, caption) pairs.

Either the built-in ShapesVQA training split (rendered on the fly; its caption target is a
function of the kept patches) or the user's JSONL files:
``{"image": path, "question": text}`` per line for stage 2 and ``{"image": path, "caption":
text}`` for stage 1 (relative paths resolve against the file's directory). No labels are read
in stage 2: an ``answer`` field, if present, is ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..data import shapes
from ..inputs import jsonl_rows, load_image
from ..models.placement import tensors_to
from ..pruning.select import select_tokens
from ..pruning.vision import complement, gather_rows


@dataclasses.dataclass
class CaptionBatch:
    """Stage 1 inputs: what vision-side pruning to ``keep`` tokens discards, the questions, and the
    caption targets (strings, or ShapesVQA's functions of the kept and the mapper-read patches)."""

    kept_index: torch.Tensor
    discarded: torch.Tensor
    discarded_index: torch.Tensor
    discarded_scores: torch.Tensor
    questions: list[str]
    targets: list
    patch_cells: list | None = None  # ShapesVQA: per sample, the cell name of the object on each patch ("" none)
    read_cells: list | None = None  # the same for the tokens the caption mapper reads (set when resolved)

    def to(self, device) -> CaptionBatch:
        return tensors_to(self, device)


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
        question, target = _caption_question(scene.objects, scene.patch_object, self.describe_share, rng)
        return scene.pil(), question, target

    def question_sample(self, i: int, rng: np.random.Generator):
        scene = shapes.render_scene(self.split, i)
        return scene.pil(), _random_question(scene.objects, rng).question


def _random_question(objects, rng) -> shapes.Question:
    family = shapes.FAMILIES[int(rng.integers(len(shapes.FAMILIES)))]
    while (q := shapes.ask(objects, family, rng)) is None:  # None only for a count above 12
        pass
    return q


def _caption_question(objects, patch_object, describe_share: float, rng):
    """A stage 1 question and its caption target ``target(kept_index, read_index)``: the discarded
    objects the question needs among those the mapper reads (``describe_share``: all of them)."""
    q = _random_question(objects, rng)
    describe = rng.random() < describe_share

    def target(kept_index, read_index) -> str:
        return caption_target(objects, patch_object, None if describe else q.key, kept_index, read_index)

    return (shapes.DESCRIBE if describe else q.question), target


def caption_target(objects, patch_object, key, kept_index, read_index) -> str:
    """What a perfect caption model says: the objects the read patches show and the kept ones do
    not, those a question with ``key`` needs (``key`` None: all of them), in ShapesVQA's names."""
    seen = shapes.objects_touched(objects, patch_object, kept_index)
    shown = [o for o in shapes.objects_touched(objects, patch_object, read_index) if o not in seen]
    return shapes.describe_objects(shown if key is None else shapes.relevant_objects(key, shown))


class ImageCaptions:
    """Stage 1 batches from an image source: each step runs the VLM's vision tower (``ref``)."""

    def __init__(self, source, ref):
        self.source, self.ref = source, ref

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, rows, keep: int, rng: np.random.Generator) -> CaptionBatch:
        samples = [self.source.caption_sample(int(i), rng) for i in rows]
        self.ref.vision_keep = keep
        vis = self.ref.vision(self.ref.pixel_values([s[0] for s in samples]))
        return CaptionBatch(vis.kept_index, vis.discarded.float(), vis.discarded_index, vis.discarded_scores.float(),
                            [s[1] for s in samples], [s[2] for s in samples])


class CachedShapesCaptions:
    """Stage 1 batches from ShapesVQA scenes rendered once, with the frozen vision tower's features
    and CLS scores cached (fp16; ``accm.train.llm_stage.extract_features``): a step then costs only
    the caption model, about a tenth of running the tower, so stage 1 can run to its gate. Pruning
    is the same ``select_tokens`` on the same scores the pipeline uses."""

    def __init__(self, model, root: Path, split: str, n_scenes: int, describe_share: float = 0.0,
                 workers: int | None = None):
        from .llm_stage import extract_features
        from .pool import render_pool

        self.pool = render_pool(Path(root) / "pool", split, n_scenes, workers)
        self.features, self.scores = extract_features(model, self.pool, Path(root) / "features" / split)
        self.describe_share = describe_share

    def __len__(self) -> int:
        return self.pool.n

    def batch(self, rows, keep: int, rng: np.random.Generator) -> CaptionBatch:
        rows = np.asarray(rows, dtype=np.int64)
        feats = torch.from_numpy(np.stack([self.features[r] for r in rows]).astype(np.float32))
        scores = torch.from_numpy(np.asarray(self.scores[rows], dtype=np.float32))
        kept = select_tokens(scores, keep)
        discarded_index = complement(kept, scores.shape[1])
        questions, targets = zip(*(_caption_question(self.pool.objects[r], self.pool.patch_object[r],
                                                     self.describe_share, rng) for r in rows))
        cells = [shapes.patch_cells(self.pool.objects[r], self.pool.patch_object[r]) for r in rows]
        return CaptionBatch(kept, gather_rows(feats, discarded_index), discarded_index,
                            torch.gather(scores, 1, discarded_index), list(questions), list(targets), cells)


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
