"""ShapesVQA v2: a seeded synthetic VQA benchmark that pruning can hurt and a caption can heal.

Each scene is a 336×336 image cut into a 6×6 grid of named cells (columns ``a``–``f`` left to
right, rows ``1``–``6`` top to bottom: ``a1`` is the top-left cell). Between 22 and 34 cells hold
one small coloured shape each (1–2 patches across), jittered inside its cell, on a textured
background. So there are more objects than 18 kept tokens can show, and every object is
addressable by a one-token cell name.

Questions have one-word answers in four families, balanced within every scene:

- ``colour``: ``what color is at c4 ?``
- ``shape``: ``what shape is at c4 ?``
- ``count``: ``how many red objects are there ?`` / ``how many stars are there ?`` (0–12)
- ``exists``: ``is there a red star ?`` (half yes; negatives mostly POPE-style adversarial:
  the colour and the shape both occur, just not together)

Every question is answerable from the image and from the scene description
(``a1 red circle , c4 blue star , … .``), which uses exactly the questions' names. Answers are a
pure function of a question and a set of objects (:func:`answer_from`), so the same rules label
questions about a partial view (pruned tokens, a caption of some objects).
Everything is a pure function of (split, index): splits never share a scene.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw

VERSION = 2
IMAGE_SIZE = 336
PATCH = 14
GRID = IMAGE_SIZE // PATCH  # 24 patches per side, 576 in all
CELLS_PER_SIDE = 6
CELL = IMAGE_SIZE // CELLS_PER_SIDE  # 56 px, 4×4 patches
COLUMNS = "abcdef"
CELL_NAMES = tuple(f"{c}{r}" for r in range(1, CELLS_PER_SIDE + 1) for c in COLUMNS)  # reading order

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (45, 75, 225),
    "yellow": (235, 215, 35),
    "purple": (145, 55, 195),
    "orange": (245, 135, 25),
    "cyan": (35, 200, 215),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "cross": "crosses"}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve")
FAMILIES = ("colour", "shape", "count", "exists")
#: the instruction whose answer is the scene description (LLaVA-style captioning supervision)
DESCRIBE = "describe the image ."
#: training-only instructions with dense answers (see :func:`dense_targets`)
INVENTORY = "list the objects ."
COUNT_COLOURS = "count the colors ."
COUNT_SHAPES = "count the shapes ."
CHECK_PAIRS = "check the pairs ."
#: the description of an empty set of objects
NOTHING = "none ."
SPLITS = {"train": 0, "val": 1, "test": 2, "calib": 3}

MIN_OBJECTS, MAX_OBJECTS = 22, 34
MIN_RADIUS, MAX_RADIUS = 9.0, 13.0  # half-extent in pixels: 18–26 px across, 1.3–1.9 patches
CELL_MARGIN = 3.0  # an object stays this far inside its cell, so it touches only its cell's patches


@dataclasses.dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    cell: str
    x: float  # centre, pixels
    y: float
    radius: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Question:
    family: str
    question: str
    answer: str
    #: what the answer is about: ("cell", "c4"), ("colour", "red"), ("shape", "star") or
    #: ("pair", "red", "star")
    key: tuple[str, ...]


@dataclasses.dataclass
class Scene:
    split: str
    index: int
    objects: list[SceneObject]
    image: np.ndarray  # uint8 [336, 336, 3]
    patch_object: np.ndarray  # int16 [576]: index of the object covering the patch most, -1 background
    patch_centre: np.ndarray  # bool [576]: the patch holds an object's centre

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


def _rng(split: str, index: int, stream: str) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    digest = hashlib.sha256(f"shapesvqa{VERSION}/{split}/{index}/{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def cell_of_patch(patch: int) -> str:
    """The cell name of a patch index (raster order over the 24×24 grid)."""
    row, col = divmod(int(patch), GRID)
    per = GRID // CELLS_PER_SIDE
    return CELL_NAMES[(row // per) * CELLS_PER_SIDE + col // per]


def _background(rng: np.random.Generator) -> Image.Image:
    base = rng.uniform(95, 165, size=3) * np.array([1.0, 0.95, 0.85])
    # mostly luminance texture, a little chroma, so object colours stay unambiguous
    coarse = (rng.normal(0.0, 16.0, size=(7, 7, 1)) + rng.normal(0.0, 4.0, size=(7, 7, 3))).astype(
        np.float32
    )
    field = np.stack(
        [
            np.asarray(
                Image.fromarray(coarse[..., c]).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
            )
            for c in range(3)
        ],
        axis=-1,
    )
    fine = rng.normal(0.0, 5.0, size=(IMAGE_SIZE, IMAGE_SIZE, 1))
    img = np.clip(base + field + fine, 0, 255).astype(np.uint8)
    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):  # faint grey clutter strokes
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, IMAGE_SIZE, size=4))
        g = int(rng.uniform(70, 190))
        draw.line([(x0, y0), (x1, y1)], fill=(g, g, g), width=1)
    return canvas


def _polygon(shape: str, x: float, y: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(x + r * math.cos(rot + a), y + r * math.sin(rot + a))
                for a in (math.pi / 4, 3 * math.pi / 4, 5 * math.pi / 4, 7 * math.pi / 4)]
    if shape == "triangle":
        return [(x + r * math.cos(rot - math.pi / 2 + k * 2 * math.pi / 3),
                 y + r * math.sin(rot - math.pi / 2 + k * 2 * math.pi / 3)) for k in range(3)]
    if shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.48
            a = rot - math.pi / 2 + k * math.pi / 5
            pts.append((x + rr * math.cos(a), y + rr * math.sin(a)))
        return pts
    if shape == "cross":
        w = r * 0.38
        local = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r),
                 (-w, w), (-r, w), (-r, -w), (-w, -w)]
        c, s = math.cos(rot), math.sin(rot)
        return [(x + px * c - py * s, y + px * s + py * c) for px, py in local]
    raise ValueError(shape)


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, rot: float, fill) -> None:
    if obj.shape == "circle":
        r = obj.radius * 0.85
        draw.ellipse([obj.x - r, obj.y - r, obj.x + r, obj.y + r], fill=fill)
    else:
        draw.polygon(_polygon(obj.shape, obj.x, obj.y, obj.radius, rot), fill=fill)


def _place_objects(rng: np.random.Generator) -> list[SceneObject]:
    """One object in each of n distinct cells, in reading order of the cells."""
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    cells = np.sort(rng.choice(len(CELL_NAMES), size=n, replace=False))
    objects = []
    for c in cells:
        row, col = divmod(int(c), CELLS_PER_SIDE)
        r = float(rng.uniform(MIN_RADIUS, MAX_RADIUS))
        lo, hi = r + CELL_MARGIN, CELL - r - CELL_MARGIN
        x, y = col * CELL + float(rng.uniform(lo, hi)), row * CELL + float(rng.uniform(lo, hi))
        colour = str(rng.choice(list(COLOURS)))
        shape = str(rng.choice(SHAPES))
        objects.append(SceneObject(colour, shape, CELL_NAMES[c], x, y, r))
    return objects


def render_scene(split: str, index: int) -> Scene:
    rng = _rng(split, index, "scene")
    objects = _place_objects(rng)
    canvas = _background(rng)
    draw = ImageDraw.Draw(canvas)
    coverage = np.zeros((len(objects), GRID, GRID), dtype=np.float32)
    for i, obj in enumerate(objects):
        rot = float(rng.uniform(-0.25, 0.25))
        jitter = rng.integers(-18, 19, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[obj.colour], jitter))
        _draw(draw, obj, rot, fill)
        mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        _draw(ImageDraw.Draw(mask), obj, rot, 255)
        m = np.asarray(mask, dtype=np.float32) / 255.0
        coverage[i] = m.reshape(GRID, PATCH, GRID, PATCH).mean(axis=(1, 3))
    patch_object = np.full(GRID * GRID, -1, dtype=np.int16)
    patch_centre = np.zeros(GRID * GRID, dtype=bool)
    flat = coverage.reshape(len(objects), -1)
    best = flat.argmax(axis=0)
    covered = flat.max(axis=0) >= 0.2
    patch_object[covered] = best[covered]
    for i, obj in enumerate(objects):
        centre = min(int(obj.y // PATCH), GRID - 1) * GRID + min(int(obj.x // PATCH), GRID - 1)
        patch_centre[centre] = True
        patch_object[centre] = i
    return Scene(split, index, objects, np.asarray(canvas, dtype=np.uint8), patch_object, patch_centre)


def scene_from_graph_only(split: str, index: int) -> Scene:
    """The scene graph without rendering pixels (questions depend on the graph only)."""
    objects = _place_objects(_rng(split, index, "scene"))
    empty = np.zeros((0,), dtype=np.uint8)
    return Scene(split, index, objects, empty, np.zeros(0, np.int16), np.zeros(0, bool))


# --- descriptions ---------------------------------------------------------------------------


def describe_objects(objects, rng: np.random.Generator | None = None) -> str:
    """``cell colour shape`` for each object, comma separated, ending with ' .'.

    Reading order of the cells; with ``rng`` shuffled (augmentation). No objects: ``none .``.
    """
    objs = sorted(objects, key=lambda o: CELL_NAMES.index(o.cell))
    if rng is not None:
        objs = [objs[i] for i in rng.permutation(len(objs))]
    if not objs:
        return NOTHING
    return " , ".join(f"{o.cell} {o.colour} {o.shape}" for o in objs) + " ."


def describe_scene(scene: Scene, rng: np.random.Generator | None = None) -> str:
    return describe_objects(scene.objects, rng)


def dense_targets(objects) -> dict[str, str]:
    """Instructions whose answers put a one-hop lookup at (almost) every token, for training:

    - ``describe the image .``: ``c4 red star , …`` in reading order (cell → colour, shape);
    - ``list the objects .``: ``red star c4 , …`` sorted by colour, shape, cell (colour and
      shape → where: the conjunctive search that existence questions need);
    - ``count the colors .`` / ``count the shapes .``: ``red two , green zero , …`` in a fixed
      order (a name → how many: counting at the name's own token);
    - ``check the pairs .``: ``red circle no , red square yes , …`` for all 35 pairs in a fixed
      order (colour and shape → whether any object has both: existence at the shape's token).
    A count above twelve leaves its block out.
    """
    out = {DESCRIBE: describe_objects(objects)}
    order = sorted(objects, key=lambda o: (list(COLOURS).index(o.colour), SHAPES.index(o.shape),
                                           CELL_NAMES.index(o.cell)))
    out[INVENTORY] = " , ".join(f"{o.colour} {o.shape} {o.cell}" for o in order) + " ." if order else NOTHING
    for instruction, names, attr in ((COUNT_COLOURS, list(COLOURS), "colour"), (COUNT_SHAPES, SHAPES, "shape")):
        counts = [sum(getattr(o, attr) == n for o in objects) for n in names]
        if max(counts) < len(NUMBERS):
            out[instruction] = " , ".join(f"{n} {NUMBERS[c]}" for n, c in zip(names, counts)) + " ."
    present = {(o.colour, o.shape) for o in objects}
    out[CHECK_PAIRS] = " , ".join(f"{c} {k} {'yes' if (c, k) in present else 'no'}"
                                  for c in COLOURS for k in SHAPES) + " ."
    return out


# --- questions and the rules that answer them ----------------------------------------------


def answer_from(key: tuple[str, ...], family: str, objects) -> str | None:
    """The answer to a question about ``objects`` (any subset of a scene), or None when a cell
    lookup names a cell none of them occupies (the answer is not in that view)."""
    if family in ("colour", "shape"):
        hit = [o for o in objects if o.cell == key[1]]
        if not hit:
            return None
        return hit[0].colour if family == "colour" else hit[0].shape
    if family == "count":
        n = sum((o.colour if key[0] == "colour" else o.shape) == key[1] for o in objects)
        return NUMBERS[n] if n < len(NUMBERS) else None
    if family == "exists":
        return "yes" if any(o.colour == key[1] and o.shape == key[2] for o in objects) else "no"
    raise ValueError(family)


def relevant_objects(key: tuple[str, ...], objects) -> list:
    """The objects a question's answer depends on (what a question-aware caption should name)."""
    kind = key[0]
    if kind == "cell":
        return [o for o in objects if o.cell == key[1]]
    if kind == "colour":
        return [o for o in objects if o.colour == key[1]]
    if kind == "shape":
        return [o for o in objects if o.shape == key[1]]
    return [o for o in objects if o.colour == key[1] and o.shape == key[2]]


def _text(family: str, key: tuple[str, ...]) -> str:
    if family == "colour":
        return f"what color is at {key[1]} ?"
    if family == "shape":
        return f"what shape is at {key[1]} ?"
    if family == "count":
        noun = f"{key[1]} objects" if key[0] == "colour" else PLURALS[key[1]]
        return f"how many {noun} are there ?"
    return f"is there a {key[1]} {key[2]} ?"


def make_question(family: str, key: tuple[str, ...], objects) -> Question | None:
    answer = answer_from(key, family, objects)
    return None if answer is None else Question(family, _text(family, key), answer, tuple(key))


def _key(family: str, objects, rng: np.random.Generator) -> tuple[str, ...]:
    if family in ("colour", "shape"):
        return ("cell", objects[int(rng.integers(len(objects)))].cell)
    if family == "count":
        if rng.random() < 0.5:
            return ("colour", str(rng.choice(list(COLOURS))))
        return ("shape", str(rng.choice(SHAPES)))
    present = sorted({(o.colour, o.shape) for o in objects})
    if rng.random() < 0.5:
        c, s = present[int(rng.integers(len(present)))]
        return ("pair", c, s)
    colours, kinds = {c for c, _ in present}, {s for _, s in present}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    # POPE-style adversarial negatives: colour and shape both occur, just not together
    adversarial = [(c, s) for c, s in absent if c in colours and s in kinds]
    pool = adversarial if adversarial and rng.random() < 0.7 else absent
    c, s = pool[int(rng.integers(len(pool)))]
    return ("pair", c, s)


def ask(objects, family: str, rng: np.random.Generator) -> Question | None:
    """One question of ``family`` about ``objects``, or None when they give none
    (no objects, or a count above twelve)."""
    if not objects:
        return None
    return make_question(family, _key(family, objects, rng), objects)


def questions_for(scene: Scene, n: int, stream: str = "questions", objects=None) -> list[Question]:
    """n distinct questions about a scene (or about ``objects``, a view of it), the families
    taking turns so each gets an equal share; deterministic per (scene, stream)."""
    rng = _rng(scene.split, scene.index, stream)
    objects = scene.objects if objects is None else objects
    return sample_questions(objects, n, rng)


def sample_questions(objects, n: int, rng: np.random.Generator) -> list[Question]:
    out: list[Question] = []
    start = int(rng.integers(len(FAMILIES)))
    tries = 0
    while len(out) < n and tries < 20 * n:
        family = FAMILIES[(start + len(out)) % len(FAMILIES)]
        tries += 1
        q = ask(objects, family, rng)
        if q is not None and all(q.question != seen.question for seen in out):
            out.append(q)
    return out


@dataclasses.dataclass(frozen=True)
class Sample:
    split: str
    scene_index: int
    family: str
    question: str
    answer: str
    key: tuple[str, ...] = ()


def benchmark(split: str, n: int, seed: int = 0) -> list[Sample]:
    """The first n questions of a split's evaluation stream: one question per scene, families
    in turn (equal shares). ``seed`` picks a different, equally balanced, set of scenes."""
    out: list[Sample] = []
    scene_index = seed * 1_000_003
    while len(out) < n:
        scene = scene_from_graph_only(split, scene_index)
        rng = _rng(split, scene_index, "benchmark")
        family = FAMILIES[len(out) % len(FAMILIES)]
        for _ in range(10):
            q = ask(scene.objects, family, rng)
            if q is not None:
                out.append(Sample(split, scene_index, q.family, q.question, q.answer, q.key))
                break
        scene_index += 1
    return out


def answer_words() -> dict[str, list[str]]:
    """Every answer each family can give."""
    return {"colour": list(COLOURS), "shape": list(SHAPES), "count": list(NUMBERS), "exists": ["yes", "no"]}


def corpus_words() -> list[str]:
    """Every word the task can use, for training a tokenizer that covers it."""
    words = set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | set(NUMBERS) | set(CELL_NAMES)
    words |= set("what color shape is at how many objects are there a yes no none describe the image "
                 "list count colors shapes check pairs "
                 "additional information : , . ? USER ASSISTANT".split())
    return sorted(words)


def single_token_words() -> list[str]:
    """The names that must each be one token: cells, colours, shapes, plurals and answers."""
    return sorted(set(CELL_NAMES) | set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | set(NUMBERS)
                  | {"yes", "no"})


def family_counts(questions) -> Counter:
    return Counter(q.family for q in questions)


def objects_touched(scene_objects, patch_object: np.ndarray, kept) -> list:
    """The objects under the kept patches (a patch shows the object covering most of it)."""
    hit = sorted({int(i) for i in np.asarray(patch_object)[np.asarray(kept, dtype=np.int64)] if i >= 0})
    return [scene_objects[i] for i in hit]


def patch_cells(scene_objects, patch_object: np.ndarray) -> np.ndarray:
    """Per patch, the cell name of the object covering it ("" where none does)."""
    return np.array([""] + [o.cell for o in scene_objects])[np.asarray(patch_object) + 1]


def parse_description(text: str) -> list[tuple[str, str, str]]:
    """``(cell, colour, shape)`` triples from a description; unreadable parts are skipped."""
    out = []
    for part in text.replace(" .", "").split(","):
        words = part.split()
        if len(words) == 3 and words[0] in CELL_NAMES and words[1] in COLOURS and words[2] in SHAPES:
            out.append((words[0], words[1], words[2]))
    return out
