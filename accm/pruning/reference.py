"""The PyTorch reference pipeline: image + prompt → answer, with vision-side and LLM-side pruning.

Everything deployable (ONNX bundle, runtime, TensorRT) is checked against this. Image tokens
that survive vision-side pruning keep their original position ids (as LLM-side pruning does),
so the text after the image sits where it would in the full-token prompt.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data.preprocess import ImageSpec, preprocess
from ..models.dims import patch_count
from ..models.placement import module_device
from ..models.prompt import build_prompt_ids, left_pad, rendered_prompt_ids
from ..models.templates import template_from_processor
from .llm import generate
from .schedule import Schedule
from .vision import resolve_layer, vision_features


@dataclasses.dataclass
class Prepared:
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    image_mask: torch.Tensor
    position_ids: torch.Tensor
    input_ids: torch.Tensor
    kept_index: torch.Tensor  # [B, k] vision-side kept patches
    discarded: torch.Tensor  # [B, N-k, D_vision] for the caption model
    discarded_index: torch.Tensor
    compensation: object | None = None  # accm.compensation.compensator.Compensation, with ACCM


class ReferencePipeline:
    def __init__(self, model, processor, vision_keep: int | None = None, schedule=None,
                 score_layer: int | None = None, random_keep_seed: int | None = None,
                 template: str | None = None, compensator=None):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template = template or template_from_processor(processor)
        self.spec = ImageSpec.from_hf(processor.image_processor)
        self.vision_keep = vision_keep
        self.schedule = Schedule.parse(schedule)
        self.score_layer = score_layer
        self.random_keep_seed = random_keep_seed
        self.compensator = compensator  # ACCM: captions of the discarded tokens, spliced into the prompt
        self.image_id = model.config.image_token_index
        self.n_patches = patch_count(model.config.vision_config)
        # before any work: the schedule must fit the model and this input, the score layer the tower
        self.schedule.counts_for_input(model.config.text_config.num_hidden_layers, self.n_patches, vision_keep)
        resolve_layer(model.config.vision_config.num_hidden_layers, score_layer)

    @property
    def device(self) -> torch.device:
        return module_device(self.model)

    def pixel_values(self, images) -> torch.Tensor:
        return torch.from_numpy(np.stack([preprocess(im, self.spec) for im in images])).to(self.device)

    def split_prompt(self, prompt: str, caption: str | None = None) -> tuple[list[int], list[int]]:
        return rendered_prompt_ids(self.tokenizer.backend_tokenizer, self.template, prompt, caption, self.image_id)

    @torch.no_grad()
    def vision(self, pixel_values: torch.Tensor):
        gen = None
        if self.random_keep_seed is not None:
            gen = torch.Generator().manual_seed(self.random_keep_seed)
        return vision_features(self.model, pixel_values, self.vision_keep, self.score_layer, gen)

    @torch.no_grad()
    def prepare(self, images, prompts: list[str], captions: list[str | None] | None = None,
                vision=None) -> Prepared:
        vis = vision if vision is not None else self.vision(self.pixel_values(images))
        comp = None
        if captions is None and self.compensator is not None and vis.discarded.shape[1] > 0:
            comp = self.compensator(vis.discarded, vis.discarded_index, vis.discarded_scores, prompts)
            captions = comp.captions
        captions = captions or [None] * len(prompts)
        rows, positions = [], []
        for b, (prompt, cap) in enumerate(zip(prompts, captions)):
            prefix, suffix = self.split_prompt(prompt, cap)
            ids, pos = build_prompt_ids(prefix, suffix, vis.kept_index[b].cpu().numpy(), self.image_id,
                                        self.n_patches)
            rows.append(ids)
            positions.append(pos)
        padded = left_pad(rows, positions, self.tokenizer.pad_token_id)
        input_ids, position_ids, mask = (torch.from_numpy(a).to(self.device) for a in padded)
        embed = self.model.get_input_embeddings()
        image_mask = input_ids == self.image_id
        embeds = embed(input_ids.masked_fill(image_mask, 0))
        embeds = embeds.masked_scatter(image_mask[..., None], vis.kept.to(embeds.dtype))
        return Prepared(embeds, mask, image_mask, position_ids, input_ids, vis.kept_index,
                        vis.discarded, vis.discarded_index, comp)

    @torch.no_grad()
    def generate_ids(self, images, prompts, max_new_tokens: int = 16, captions=None, **sampling):
        prep = self.prepare(images, prompts, captions)
        tokens, state = generate(
            self.model, prep.inputs_embeds, prep.attention_mask, prep.image_mask, self.schedule,
            max_new_tokens=max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id, position_ids=prep.position_ids, **sampling,
        )
        return tokens, state, prep

    def answer(self, images, prompts, max_new_tokens: int = 16, captions=None) -> list[str]:
        tokens, _, _ = self.generate_ids(images, prompts, max_new_tokens, captions)
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
