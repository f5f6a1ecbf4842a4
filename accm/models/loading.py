"""Loading a HF LLaVA checkpoint (any --model value) with its processor, offline."""

from __future__ import annotations

import dataclasses

from .registry import ModelSource, resolve
from .templates import template_from_processor


@dataclasses.dataclass
class LoadedModel:
    source: ModelSource
    model: object  # LlavaForConditionalGeneration
    processor: object  # LlavaProcessor
    template: str


def load_llava(name: str | None, dtype=None, attn_implementation: str = "sdpa") -> LoadedModel:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = resolve(name)
    model = LlavaForConditionalGeneration.from_pretrained(
        source.path, dtype=dtype or torch.float32, attn_implementation=attn_implementation,
        low_cpu_mem_usage=True,
    ).eval()
    processor = AutoProcessor.from_pretrained(source.path)
    return LoadedModel(source, model, processor, template_from_processor(processor))
