"""ShapesVQA: a seeded synthetic VQA benchmark whose answers live in small image regions.

Each scene is a 336×336 image of several small coloured shapes on a textured, lightly
cluttered background, with its scene graph. Questions have one-word answers in five families
(colour, shape at a location, count, existence with adversarial negatives, relative position).
Everything is a pure function of (split, index), so splits never share a scene and every run
sees the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 336
PATCH = 14
GRID = IMAGE_SIZE // PATCH  # 24 patches per side, 576 in all

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
LOCATIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
DIRECTIONS = ("left", "right", "above", "below")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
FAMILIES = ("colour", "shape_at", "count", "exists", "relation")
#: the instruction whose answer is the scene description (LLaVA-style captioning supervision)
DESCRIBE = "describe the image ."
SPLITS = {"train": 0, "val": 1, "test": 2, "calib": 3}

MIN_OBJECTS, MAX_OBJECTS = 5, 10
MIN_RADIUS, MAX_RADIUS = 10, 19  # half-extent in pixels: objects span about 1.5 to 3 patches
CELL_MARGIN = 10  # object centres this close to a 3×3 cell border are "not clearly in" a cell


@dataclasses.dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
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
    digest = hashlib.sha256(f"shapesvqa/{split}/{index}/{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _background(rng: np.random.Generator) -> Image.Image:
    base = rng.uniform(95, 165, size=3) * np.array([1.0, 0.95, 0.85])
    # mostly luminance texture, a little chroma, so object colours stay unambiguous
    coarse = (rng.normal(0.0, 18.0, size=(7, 7, 1)) + rng.normal(0.0, 5.0, size=(7, 7, 3))).astype(
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
    fine = rng.normal(0.0, 6.0, size=(IMAGE_SIZE, IMAGE_SIZE, 1))
    img = np.clip(base + field + fine, 0, 255).astype(np.uint8)
    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 8))):  # faint grey clutter strokes
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, IMAGE_SIZE, size=4))
        g = int(rng.uniform(60, 200))
        draw.line([(x0, y0), (x1, y1)], fill=(g, g, g), width=int(rng.integers(1, 3)))
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
            rr = r if k % 2 == 0 else r * 0.45
            a = rot - math.pi / 2 + k * math.pi / 5
            pts.append((x + rr * math.cos(a), y + rr * math.sin(a)))
        return pts
    if shape == "cross":
        w = r * 0.36
        local = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r),
                 (-w, w), (-r, w), (-r, -w), (-w, -w)]
        c, s = math.cos(rot), math.sin(rot)
        return [(x + px * c - py * s, y + px * s + py * c) for px, py in local]
    raise ValueError(shape)


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, rot: float, fill) -> None:
    if obj.shape == "circle":
        r = obj.radius * 0.9
        draw.ellipse([obj.x - r, obj.y - r, obj.x + r, obj.y + r], fill=fill)
    else:
        draw.polygon(_polygon(obj.shape, obj.x, obj.y, obj.radius, rot), fill=fill)


def _place_objects(rng: np.random.Generator) -> list[SceneObject]:
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    objects: list[SceneObject] = []
    attempts = 0
    while len(objects) < n and attempts < 2000:
        attempts += 1
        r = float(rng.uniform(MIN_RADIUS, MAX_RADIUS))
        x, y = (float(v) for v in rng.uniform(r + 4, IMAGE_SIZE - r - 4, size=2))
        if any(math.hypot(x - o.x, y - o.y) < r + o.radius + 6 for o in objects):
            continue
        colour = str(rng.choice(list(COLOURS)))
        shape = str(rng.choice(SHAPES))
        objects.append(SceneObject(colour, shape, x, y, r))
    return objects


def render_scene(split: str, index: int) -> Scene:
    rng = _rng(split, index, "scene")
    objects = _place_objects(rng)
    canvas = _background(rng)
    draw = ImageDraw.Draw(canvas)
    coverage = np.zeros((len(objects), GRID, GRID), dtype=np.float32)
    for i, obj in enumerate(objects):
        rot = float(rng.uniform(-0.25, 0.25))
        jitter = rng.integers(-20, 21, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[obj.colour], jitter))
        _draw(draw, obj, rot, fill)
        mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        _draw(ImageDraw.Draw(mask), obj, rot, 255)
        m = np.asarray(mask, dtype=np.float32) / 255.0
        coverage[i] = m.reshape(GRID, PATCH, GRID, PATCH).mean(axis=(1, 3))
    patch_object = np.full(GRID * GRID, -1, dtype=np.int16)
    patch_centre = np.zeros(GRID * GRID, dtype=bool)
    if objects:
        flat = coverage.reshape(len(objects), -1)
        best = flat.argmax(axis=0)
        covered = flat.max(axis=0) >= 0.2
        patch_object[covered] = best[covered]
        for i, obj in enumerate(objects):
            row = min(int(obj.y // PATCH), GRID - 1)
            col = min(int(obj.x // PATCH), GRID - 1)
            patch_centre[row * GRID + col] = True
            patch_object[row * GRID + col] = i
    return Scene(split, index, objects, np.asarray(canvas, dtype=np.uint8), patch_object, patch_centre)


def location_of(obj: SceneObject) -> str | None:
    """The 3×3 cell holding the object's centre, or None when it sits near a cell border."""
    third = IMAGE_SIZE / 3

    def band(v: float) -> int | None:
        b = int(v // third)
        if min(abs(v - k * third) for k in (1, 2)) < CELL_MARGIN:
            return None
        return min(b, 2)

    row, col = band(obj.y), band(obj.x)
    if row is None or col is None:
        return None
    return LOCATIONS[row * 3 + col]


def describe_scene(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """A generic caption listing every object with its coarse location, in reading order.

    With ``rng`` the order is shuffled (augmentation for caption pretraining).
    """
    return describe_objects(scene.objects, rng)


def describe_objects(objects: list[SceneObject], rng: np.random.Generator | None = None) -> str:
    """``colour shape location`` for each object, comma separated, ending with ' .'."""
    third = IMAGE_SIZE / 3
    objs = sorted(objects, key=lambda o: (int(o.y // third), o.x))
    if rng is not None:
        objs = [objs[i] for i in rng.permutation(len(objs))]
    parts = [f"{o.colour} {o.shape} {location_of(o) or _nearest_location(o)}" for o in objs]
    return " , ".join(parts) + " ."


def _nearest_location(obj: SceneObject) -> str:
    third = IMAGE_SIZE / 3
    row = min(int(obj.y // third), 2)
    col = min(int(obj.x // third), 2)
    return LOCATIONS[row * 3 + col]


def _q_colour(scene: Scene, rng) -> Question | None:
    counts = Counter(o.shape for o in scene.objects)
    unique = [o for o in scene.objects if counts[o.shape] == 1]
    if not unique:
        return None
    o = unique[int(rng.integers(len(unique)))]
    return Question("colour", f"what color is the {o.shape} ?", o.colour)


def _q_shape_at(scene: Scene, rng) -> Question | None:
    located = [(location_of(o), o) for o in scene.objects]
    per_cell = Counter(loc for loc, _ in located if loc is not None)
    # a cell qualifies when exactly one object is in it and no object straddles its border
    border = [o for loc, o in located if loc is None]
    cands = []
    for loc, o in located:
        if loc is None or per_cell[loc] != 1:
            continue
        if any(_nearest_location(b) == loc for b in border):
            continue
        cands.append((loc, o))
    if not cands:
        return None
    loc, o = cands[int(rng.integers(len(cands)))]
    return Question("shape_at", f"what shape is in the {loc} ?", o.shape)


def _q_count(scene: Scene, rng) -> Question:
    if rng.random() < 0.5:
        colour = str(rng.choice(list(COLOURS)))
        n = sum(o.colour == colour for o in scene.objects)
        return Question("count", f"how many {colour} objects are there ?", NUMBERS[min(n, 6)])
    shape = str(rng.choice(SHAPES))
    n = sum(o.shape == shape for o in scene.objects)
    return Question("count", f"how many {PLURALS[shape]} are there ?", NUMBERS[min(n, 6)])


def _q_exists(scene: Scene, rng) -> Question:
    present = {(o.colour, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        c, s = sorted(present)[int(rng.integers(len(present)))]
        return Question("exists", f"is there a {c} {s} ?", "yes")
    colours = {c for c, _ in present}
    shapes = {s for _, s in present}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    # POPE-style adversarial negatives: colour and shape both occur, just not together
    adversarial = [(c, s) for c, s in absent if c in colours and s in shapes]
    pool = adversarial if adversarial and rng.random() < 0.7 else absent
    c, s = pool[int(rng.integers(len(pool)))]
    return Question("exists", f"is there a {c} {s} ?", "no")


def _q_relation(scene: Scene, rng) -> Question | None:
    counts = Counter(o.name for o in scene.objects)
    unique = [o for o in scene.objects if counts[o.name] == 1]
    pairs = []
    for a in unique:
        for b in unique:
            if a is b:
                continue
            dx, dy = a.x - b.x, a.y - b.y
            if abs(dx) >= 40 and abs(dx) >= 2 * abs(dy):
                pairs.append((a, b, "left" if dx < 0 else "right"))
            elif abs(dy) >= 40 and abs(dy) >= 2 * abs(dx):
                pairs.append((a, b, "above" if dy < 0 else "below"))
    if not pairs:
        return None
    a, b, rel = pairs[int(rng.integers(len(pairs)))]
    return Question("relation", f"where is the {a.name} relative to the {b.name} ?", rel)


_GENERATORS = {
    "colour": _q_colour,
    "shape_at": _q_shape_at,
    "count": _q_count,
    "exists": _q_exists,
    "relation": _q_relation,
}


def ask(scene: Scene, family: str, rng: np.random.Generator) -> Question | None:
    """One question of ``family`` about ``scene``, or None when the scene has none."""
    return _GENERATORS[family](scene, rng)


def questions_for(scene: Scene, n: int, stream: str = "questions") -> list[Question]:
    """n questions about a scene, families cycled in a seeded order, deterministic."""
    rng = _rng(scene.split, scene.index, stream)
    out: list[Question] = []
    order = list(FAMILIES)
    tries = 0
    while len(out) < n and tries < 20 * n:
        family = order[(tries + int(rng.integers(len(order)))) % len(order)]
        tries += 1
        q = ask(scene, family, rng)
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


def benchmark(split: str, n: int, seed: int = 0) -> list[Sample]:
    """The first n questions of a split's evaluation stream: one question per scene, families
    balanced round-robin. ``seed`` picks a different, equally balanced, set of scenes."""
    out: list[Sample] = []
    scene_index = seed * 1_000_003
    fam = 0
    while len(out) < n:
        scene = scene_from_graph_only(split, scene_index)
        rng = _rng(split, scene_index, "benchmark")
        for attempt in range(len(FAMILIES)):
            family = FAMILIES[(fam + attempt) % len(FAMILIES)]
            q = ask(scene, family, rng)
            if q is not None:
                out.append(Sample(split, scene_index, q.family, q.question, q.answer))
                fam += 1
                break
        scene_index += 1
    return out


def scene_from_graph_only(split: str, index: int) -> Scene:
    """The scene graph without rendering pixels (questions depend on the graph only)."""
    rng = _rng(split, index, "scene")
    objects = _place_objects(rng)
    empty = np.zeros((0,), dtype=np.uint8)
    return Scene(split, index, objects, empty, np.zeros(0, np.int16), np.zeros(0, bool))


def corpus_words() -> list[str]:
    """Every word the task can use, for training a tokenizer that covers it."""
    words = set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | set(NUMBERS) | set(DIRECTIONS)
    for loc in LOCATIONS:
        words |= set(loc.split())
    words |= set("what color is the shape in how many objects are there a where relative to "
                 "yes no additional information : , . ? USER ASSISTANT".split())
    return sorted(words)
