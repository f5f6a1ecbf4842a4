"""What a perfect ACCM caption model would give on ShapesVQA v2 test: the pruned model answers
with the caption ACCM's stage 1 is trained to write (the discarded objects the question needs
among those the mapper reads, rule-made from the scene graph), per family, beside the full and
the pruned model on the same questions. Read it with ``accm_table.json`` (same n and seed): the
gap between the trained caption model and this bound, family by family, is what ACCM misses.

    python benchmarks/accm_ceiling.py --n 1000 --seed 101 --json benchmarks/results/accm_ceiling.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TargetCaptions:
    """``caption_source`` for ``TorchAnswerer``: the stage 1 target caption of each question, for
    the questions ``accm.measure.accuracy.evaluate`` asks, in its order (checked by prompt)."""

    name = "stage 1 target (rule-made)"

    def __init__(self, samples, mapper):
        self.samples, self.mapper, self.cursor = samples, mapper, 0

    def __call__(self, prompts, vision) -> list[str]:
        from accm.data import shapes
        from accm.train.accm_data import caption_target

        chunk = self.samples[self.cursor:self.cursor + len(prompts)]
        if [s.question for s in chunk] != list(prompts):
            raise RuntimeError("caption source out of step with the evaluated questions")
        self.cursor += len(prompts)
        read = self.mapper.read_index(vision.discarded_index, vision.discarded_scores.float())
        out = []
        for b, s in enumerate(chunk):
            scene = shapes.render_scene(s.split, s.scene_index)
            out.append(caption_target(scene.objects, scene.patch_object, s.key, vision.kept_index[b].numpy(),
                                      read[b].numpy()))
        return out


def main() -> None:
    from accm_table import evaluate_on_test, parse_args, recovered, summary

    from accm.compensation.compensator import Compensator
    from accm.data import shapes
    from accm.measure.accuracy import paired_difference
    from accm.measure.latency import machine
    from accm.models.loading import load_llava
    from accm.models.registry import resolve

    args = parse_args("benchmarks/results/accm_ceiling.json")
    lm = load_llava(args.model)
    mapper = Compensator.load(Path(resolve(args.model).path) / "accm", lm.processor.tokenizer).caption.mapper
    samples = shapes.benchmark("test", args.n, args.seed)

    full = evaluate_on_test(args, "full")
    rows = []
    for k in args.keeps:
        pruned = evaluate_on_test(args, f"pruned to {k}", vision_keep=k)
        target = evaluate_on_test(args, f"pruned to {k} + target caption", vision_keep=k,
                                  caption_source=TargetCaptions(samples, mapper))
        rows.append({"keep": k, "full": summary(full), "pruned": summary(pruned), "target_caption": summary(target),
                     "gain_over_pruned": paired_difference(target["hits"], pruned["hits"]),
                     "recovered": recovered(full["hits"], pruned["hits"], target["hits"])})
    report = {"benchmark": "ACCM's bound: the stage 1 target caption, ShapesVQA v2 test", "model": lm.source.name,
              "n": args.n, "seed": args.seed, "mapper_input_tokens": mapper.input_tokens, "machine": machine(),
              "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
