"""Calibration samples: paired image + prompt, the way the pipeline will be used.

Built in: ShapesVQA's ``calib`` split (never the test split). A user's directory: images plus a
``prompts.jsonl`` of ``{"image": "file.png", "prompt": "..."}`` lines (a line without an image
field pairs its prompt with every image in turn). Unusable files are skipped with one warning
and a count; fewer than ``min_samples`` usable samples is an error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..data import shapes
from ..errors import AccmUserError, InputError
from ..runtime.inputs import check_prompt, load_image

MIN_SAMPLES = 4


def builtin_samples(n: int) -> list[tuple]:
    return [(shapes.render_scene(s.split, s.scene_index).pil(), s.question) for s in shapes.benchmark("calib", n)]


def directory_samples(directory: str | Path, n: int, min_samples: int = MIN_SAMPLES) -> list[tuple]:
    root = Path(directory)
    prompts_file = root / "prompts.jsonl"
    if not root.is_dir():
        raise AccmUserError(f"calibration directory not found: {root}")
    if not prompts_file.is_file():
        raise AccmUserError(f"calibration directory {root} has no prompts.jsonl")
    images = sorted(p for p in root.iterdir() if p.is_file() and p.name != "prompts.jsonl")
    samples, skipped, reasons = [], 0, []
    lines = [ln for ln in prompts_file.read_text().splitlines() if ln.strip()]
    image_cycle = 0
    for lineno, line in enumerate(lines, 1):
        if len(samples) >= n:
            break
        try:
            row = json.loads(line)
            prompt = check_prompt(row["prompt"])
            if "image" in row:
                path = root / row["image"]
            else:
                if not images:
                    raise InputError("no images to pair with")
                path = images[image_cycle % len(images)]
                image_cycle += 1
            samples.append((load_image(path), prompt))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            skipped += 1
            reasons.append(f"prompts.jsonl:{lineno}: {type(e).__name__}")
        except InputError as e:
            skipped += 1
            reasons.append(f"prompts.jsonl:{lineno}: {e}")
    if skipped:
        print(f"warning: skipped {skipped} unusable calibration sample(s) in {root} "
              f"(first: {reasons[0]})", file=sys.stderr)
    if len(samples) < min_samples:
        raise AccmUserError(f"only {len(samples)} usable calibration sample(s) in {root}; "
                            f"at least {min_samples} are needed")
    return samples
