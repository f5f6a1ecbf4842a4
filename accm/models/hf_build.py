"""Building LLaVA-1.5-layout models, tokenizers and processors locally (no hub)."""

from __future__ import annotations

from .templates import jinja_for
from .tokenizer import to_hf

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_image_processor(image_size: int = 336, do_pad: bool = False):
    """LLaVA-1.5's image processor (resize shortest edge, centre crop, CLIP normalisation);
    ``do_pad`` gives LLaVA-1.5's ``pad`` aspect-ratio mode (square pad with the mean colour)."""
    from transformers import LlavaImageProcessorPil

    return LlavaImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_pad=do_pad,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


def llava_processor(tokenizer, template: str, image_size: int = 336, do_pad: bool = False):
    """A LlavaProcessor that expands ``<image>`` to 576 tokens (patch 14, CLS dropped)."""
    from transformers import LlavaProcessor

    hf_tok = to_hf(tokenizer, chat_template=jinja_for(template))
    return LlavaProcessor(
        image_processor=clip_image_processor(image_size, do_pad),
        tokenizer=hf_tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=jinja_for(template),
    )
