"""Calibration samples: paired image + prompt, the way the pipeline will be used.

Built in: ShapesVQA's ``calib`` split (never the test split). A user's directory: images plus a
``prompts.jsonl`` of ``{"image": "file.png", "prompt": "..."}`` lines (a line without an image
field pairs its prompt with every image in turn). Unusable files are skipped with one warning
and a count; fewer than ``min_samples`` usable samples is an error.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..data import shapes
from ..errors import AccmUserError, InputError
from ..inputs import check_prompt, jsonl_rows, load_image

MIN_SAMPLES = 4


def builtin_samples(n: int) -> list[tuple]:
    return [(shapes.render_scene(s.split, s.scene_index).pil(), s.question) for s in shapes.benchmark("calib", n)]


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


def directory_samples(directory: str | Path, n: int, min_samples: int = MIN_SAMPLES) -> list[tuple]:
    root = Path(directory)
    prompts_file = root / "prompts.jsonl"
    if not root.is_dir():
        raise AccmUserError(f"calibration directory not found: {root}")
    if not prompts_file.is_file():
        raise AccmUserError(f"calibration directory {root} has no prompts.jsonl")
    loaded: dict[Path, object] = {}
    problems: list[str] = []

    def image(path: Path):
        if path not in loaded:  # each bad file is reported once, however many prompts name it
            try:
                loaded[path] = load_image(path)
            except InputError as e:
                loaded[path] = None
                problems.append(str(e))
        return loaded[path]

    pool = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    samples = []
    cycle = 0
    rows, problems = jsonl_rows(prompts_file, ("prompt",), "calibration", lenient=True)
    for row in rows:
        if len(samples) >= n:
            break
        try:
            prompt = check_prompt(row["prompt"])
        except (TypeError, AttributeError, InputError) as e:
            problems.append(f"prompts.jsonl:{row['_line']}: {type(e).__name__}")
            continue
        if "image" in row:
            img = image(Path(row["image"]))
        else:  # a prompt without an image pairs with the next usable image of the directory
            img = None
            for _ in range(len(pool)):
                img = image(pool[cycle % len(pool)])
                cycle += 1
                if img is not None:
                    break
        if img is not None:
            samples.append((img, prompt))
    if problems:
        print(f"warning: skipped {len(problems)} unusable calibration file(s) or line(s) in {root} "
              f"(first: {problems[0]})", file=sys.stderr)
    if len(samples) < min_samples:
        raise AccmUserError(f"only {len(samples)} usable calibration sample(s) in {root}; "
                            f"at least {min_samples} are needed")
    return samples
