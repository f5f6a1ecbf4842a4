"""Prompt token ids with a (possibly pruned) image span; torch-free, shared by reference and runtime.

Image tokens keep their original position ids: the span always occupies ``n_patches``
positions, whichever of its tokens survive, so the text after it sits where it would in the
full-token prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .templates import PROMPT_SLOT, render


def split_at_image(ids: Sequence[int], image_token_id: int) -> tuple[list[int], list[int]]:
    ids = list(ids)
    if ids.count(image_token_id) != 1:
        raise ValueError("the rendered prompt must hold exactly one <image> token")
    cut = ids.index(image_token_id)
    return ids[:cut], ids[cut + 1:]


def encode_text(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    """Ids of the user's text as plain characters: ``</s>`` in a question is five characters,
    never the end token. ``tokenizer`` is a ``tokenizers.Tokenizer`` (an HF tokenizer's
    ``backend_tokenizer``); for text without special-token spellings this equals ``encode``."""
    previous = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        return tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
    finally:
        tokenizer.encode_special_tokens = previous


def _special_spellings(tokenizer) -> list[str]:
    return [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]


def rendered_prompt_ids(tokenizer, template: str, prompt: str, caption: str | None,
                        image_token_id: int) -> tuple[list[int], list[int]]:
    """(ids before the image, ids after it) of the full prompt; the user's prompt and caption are
    text, never special tokens.

    Text without any special-token spelling is tokenized as one string, exactly as the model's
    Hugging Face processor does. Otherwise the template around the prompt slot is tokenized with
    special tokens (its ``<image>``) and the slot's content as plain characters.
    """
    user = [prompt] + ([caption] if caption else [])
    if not any(s in u for s in _special_spellings(tokenizer) for u in user):
        return split_at_image(tokenizer.encode(render(template, prompt, caption)).ids, image_token_id)
    head, tail = template.split(PROMPT_SLOT)
    ids = (tokenizer.encode(head).ids + encode_text(tokenizer, render(PROMPT_SLOT, prompt, caption), False)
           + tokenizer.encode(tail, add_special_tokens=False).ids)
    return split_at_image(ids, image_token_id)


def build_prompt_ids(prefix: list[int], suffix: list[int], kept: Sequence[int], image_token_id: int,
                     n_patches: int) -> tuple[list[int], list[int]]:
    """Token ids and position ids of one prompt whose image span keeps patches ``kept``."""
    ids = list(prefix) + [image_token_id] * len(kept) + list(suffix)
    s = len(prefix)
    pos = list(range(s)) + [s + int(j) for j in kept]
    pos += list(range(s + n_patches, s + n_patches + len(suffix)))
    return ids, pos


def left_pad(rows: list[list[int]], positions: list[list[int]], pad_id: int):
    """numpy ``(ids, position_ids, attention_mask)``, left-padded (pads: position 1, mask 0)."""
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    pos = np.ones((len(rows), length), dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, (r, p) in enumerate(zip(rows, positions)):
        ids[i, length - len(r):] = r
        pos[i, length - len(r):] = p
        mask[i, length - len(r):] = 1
    return ids, pos, mask


def mean_text_tokens(encode, template: str, prompts: list[str], image_token_id: int) -> int:
    """Mean number of non-image prompt tokens (for FLOPs accounting); ``encode(text) -> ids``."""
    from .templates import render

    counts = [sum(len(part) for part in split_at_image(encode(render(template, p)), image_token_id))
              for p in prompts]
    return round(sum(counts) / len(counts))
