"""Stored PyTorch-reference outputs of accm-tiny, for runtime parity where torch is absent.

``tests/data/accm_tiny_reference.json`` holds, for the committed example images and prompts
(``examples/``), what the PyTorch reference pipeline (Hugging Face's LLaVA modules, vision keep
64) computes: the kept patches, the first answer token's logits and the greedy tokens. Stored
PNGs, not re-rendered scenes: Pillow versions rasterise ShapesVQA scenes differently (Pillow 10
and 13 differ by up to 133 levels on some pixels), and the minimum-versions leg runs Pillow 10.
CI's minimum-versions leg compares the runtime against it; the main suite checks that the file
still equals the reference, so it cannot go stale. Regenerate after retraining accm-tiny:

    python -m tests.reference_data
"""

from __future__ import annotations

import json
from pathlib import Path

PATH = Path(__file__).parent / "data" / "accm_tiny_reference.json"
CONFIG = {"model": "accm-tiny", "vision_keep": 64, "schedule": "none", "precision": "fp32"}
NEW_TOKENS = 4
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def samples() -> list[tuple[str, str]]:
    """(image file, prompt) for every line of examples/prompts.jsonl."""
    rows = [json.loads(line) for line in (EXAMPLES / "prompts.jsonl").read_text().splitlines() if line.strip()]
    return [(r["image"], r["prompt"]) for r in rows]


def images(rows):
    from accm.inputs import load_image

    return [load_image(EXAMPLES / name) for name, _ in rows]


def compute() -> dict:
    """Run the PyTorch reference on the prompts (needs torch and transformers)."""
    import torch

    from accm.models.loading import load_llava
    from accm.pruning.reference import ReferencePipeline

    lm = load_llava(CONFIG["model"])
    ref = ReferencePipeline(lm.model, lm.processor, vision_keep=CONFIG["vision_keep"], schedule=CONFIG["schedule"],
                            template=lm.template)
    rows = samples()
    steps: list[torch.Tensor] = []
    from accm.pruning.llm import generate

    prep = ref.prepare(images(rows), [q for _, q in rows])
    tok = ref.tokenizer
    with torch.no_grad():
        tokens, _ = generate(ref.model, prep.inputs_embeds, prep.attention_mask, prep.image_mask, ref.schedule,
                             max_new_tokens=NEW_TOKENS, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, position_ids=prep.position_ids, step_logits=steps)
    out = []
    for b, (image, question) in enumerate(rows):
        ids = tokens[b].tolist()
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id) + 1]
        out.append({"image": image, "prompt": question, "token_ids": ids,
                    "kept_index": prep.kept_index[b].tolist(),
                    "first_logits": [round(float(v), 5) for v in steps[0][b]]})
    return {"config": CONFIG, "new_tokens": NEW_TOKENS, "samples": out}


def load() -> dict:
    return json.loads(PATH.read_text())


if __name__ == "__main__":
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {PATH}")
