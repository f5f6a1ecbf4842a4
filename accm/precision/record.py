"""Recording each stage's real inputs by running the fp32 bundle on calibration samples.

Calibration then sees exactly what the pipeline feeds every graph (prefill on paired
image+prompt, decode steps with their caches, caption beams, selector batches), not
synthetic tensors.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..bundle import names
from ..runtime.pipeline import Pipeline


def record_feeds(bundle: Path, samples: list[tuple], max_per_stage: int = 64, max_new_tokens: int = 4,
                 progress: bool = True) -> dict[str, list[dict[str, np.ndarray]]]:
    pipe = Pipeline(bundle, verify=False)
    stages = {names.VISION: pipe.vision, names.EMBED: pipe.embed, names.LLM_PREFILL: pipe.prefill,
              names.LLM_DECODE: pipe.decode}
    if pipe.compensator is not None:
        c = pipe.compensator
        stages.update(caption_prefix=c.prefix, caption_embed=c.embed, caption_decode=c.decode, selector=c.selector)
    recorded: dict[str, list] = defaultdict(list)
    for name, stage in stages.items():
        original = stage.run

        def run(feeds, _name=name, _original=original):
            if len(recorded[_name]) < max_per_stage:
                recorded[_name].append({k: np.array(v, copy=True) for k, v in feeds.items()})
            return _original(feeds)

        stage.run = run
    for image, prompt in tqdm(samples, desc="calibrate", unit="sample", disable=not progress):
        pipe.generate([image], [prompt], max_new_tokens)
    return dict(recorded)
