"""Validating what a user hands the runtime: image files and prompts."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import InputError

MAX_PROMPT_CHARS = 4000


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file (first frame of an animation), or raise ``InputError``.

    Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is enforced as an error,
    not a warning, so a hostile file cannot exhaust memory.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"image is empty (0 bytes): {path}")
    return decode_image(path, str(path))


def decode_image(source, name: str = "image") -> Image.Image:
    """Decode an image from a path or a binary file object (the same checks as ``load_image``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.seek(0)
                img.load()
                frame = img.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"image rejected as a decompression bomb: {name} ({e})") from None
    except UnidentifiedImageError:
        raise InputError(f"not an image Pillow can read: {name}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data
        raise InputError(f"unreadable image {name}: {e}") from None
    if frame.width < 1 or frame.height < 1:
        raise InputError(f"image has no pixels: {name}")
    return frame


def check_prompt(prompt: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    if prompt is None or not prompt.strip():
        raise InputError("the prompt is empty")
    if len(prompt) > max_chars:
        raise InputError(f"the prompt is too long ({len(prompt)} characters, at most {max_chars})")
    if "<image>" in prompt:
        raise InputError("the prompt must not contain '<image>' (the image goes where the template puts it)")
    return prompt


def jsonl_rows(path: str | Path, required: tuple[str, ...], what: str = "data",
               lenient: bool = False) -> tuple[list[dict], list[str]]:
    """The objects of a JSONL file that have every ``required`` field, each with ``_line``, and
    its ``image`` (if any) resolved against the file's folder.

    Strict (default): a missing file, an unreadable line or a missing field is one ``InputError``.
    ``lenient``: such lines are skipped and described in the second return value.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    rows, problems = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            missing = [k for k in required if not isinstance(row, dict) or k not in row]
        except json.JSONDecodeError:
            row, missing = None, ["valid JSON"]
        if missing:
            problem = f"{path.name}:{lineno}: needs {' and '.join(missing)}"
            if not lenient:
                raise InputError(problem)
            problems.append(problem)
            continue
        if "image" in row:
            row["image"] = str((path.parent / str(row["image"])).resolve())
        rows.append({**row, "_line": lineno})
    if not rows and not lenient:
        raise InputError(f"{path} holds no samples")
    return rows, problems
