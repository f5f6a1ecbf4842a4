"""Regenerate examples/: four ShapesVQA v2 scenes and one prompt per question family each.

The scenes come from the val split far beyond the scenes training ever gates on (index 900000+),
so the examples were never seen in training or used for any choice.

    python examples/make_examples.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from accm.data import shapes

HERE = Path(__file__).resolve().parent
FIRST_SCENE = 900_000


def main() -> None:
    rows = []
    for k in range(4):
        scene = shapes.render_scene("val", FIRST_SCENE + k)
        name = f"shapes_{k + 1}.png"
        scene.pil().save(HERE / name)
        rng = np.random.default_rng(k)
        for family in shapes.FAMILIES:
            q = None
            while q is None:
                q = shapes.ask(scene.objects, family, rng)
            rows.append({"image": name, "prompt": q.question, "answer": q.answer, "family": family})
    (HERE / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
