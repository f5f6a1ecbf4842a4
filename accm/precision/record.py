"""Recording each stage's real inputs by running a pipeline on calibration samples.

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


def pipeline_stages(pipe: Pipeline) -> dict:
    """Every stage runner of ``pipe`` by stage name."""
    stages = {names.VISION: pipe.vision, names.EMBED: pipe.embed, names.LLM_PREFILL: pipe.prefill,
              names.LLM_DECODE: pipe.decode}
    if pipe.compensator is not None:
        c = pipe.compensator
        stages.update({names.CAPTION_PREFIX: c.prefix, names.CAPTION_EMBED: c.embed,
                       names.CAPTION_DECODE: c.decode, names.SELECTOR: c.selector})
    return stages


def run_samples(pipe: Pipeline, samples: list[tuple], max_new_tokens: int = 4, progress: bool = True,
                record: tuple[str, ...] | None = None, max_per_stage: int = 64, batch: int = 1,
                ignore_eos: bool = False) -> dict[str, list[dict]]:
    """Answer every (image, prompt) sample, ``batch`` at a time, recording the feeds of the stages
    named in ``record`` (default: all). ``ignore_eos``: every row decodes ``max_new_tokens`` of its
    own tokens (a batch then never feeds a finished row's padding)."""
    recorded: dict[str, list] = defaultdict(list)
    for name, stage in pipeline_stages(pipe).items():
        if record is not None and name not in record:
            continue
        original = stage.run

        def run(feeds, _name=name, _original=original):
            if len(recorded[_name]) < max_per_stage:
                recorded[_name].append({k: np.array(v, copy=True) for k, v in feeds.items()})
            return _original(feeds)

        stage.run = run
    with tqdm(total=len(samples), desc="calibrate", unit="sample", disable=not progress) as bar:
        for start in range(0, len(samples), batch):
            chunk = samples[start:start + batch]
            pipe.generate([image for image, _ in chunk], [prompt for _, prompt in chunk], max_new_tokens,
                          ignore_eos=ignore_eos)
            bar.update(len(chunk))
    return dict(recorded)


def record_feeds(bundle: Path, samples: list[tuple], max_per_stage: int = 64, max_new_tokens: int = 4,
                 progress: bool = True) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every stage's feeds when ``bundle`` (an fp32 bundle) answers ``samples``."""
    return run_samples(Pipeline(bundle, verify=False), samples, max_new_tokens, progress,
                       max_per_stage=max_per_stage)
