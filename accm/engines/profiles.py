"""TensorRT optimisation profiles sized by the bundle's pruning configuration (torch-free).

The LLM never sees more image tokens than the configuration keeps: the prefill's sequence
range is ``n_image + text``, and each decode group's cache range is ``k_group + text + new``.
"""

from __future__ import annotations

import dataclasses

from ..bundle import names

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Limits:
    max_batch: int = 1
    max_text_tokens: int = 256  # prompt text around the image (template + question + caption)
    max_new_tokens: int = 128
    opt_text_tokens: int = 48


def stage_profiles(manifest: dict, limits: Limits | None = None) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
    """``{stage: {input: (min, opt, max)}}`` for every stage of a bundle."""
    limits = limits or Limits()
    t, m = manifest["tokens"], manifest["model"]
    size = manifest["image"]["size"]
    n = t["n_image"]
    b_max = limits.max_batch
    hidden, kvh, hd = m["hidden"], m["num_kv_heads"], m["head_dim"]
    seq = (n + 1, n + limits.opt_text_tokens, n + limits.max_text_tokens)
    out = {
        names.VISION: {names.PIXEL_VALUES: ((1, 3, size, size), (1, 3, size, size), (b_max, 3, size, size))},
        names.EMBED: {names.INPUT_IDS: ((1, 1), (1, seq[1]), (b_max, seq[2]))},
        names.LLM_PREFILL: {
            name: ((1, seq[0]), (1, seq[1]), (b_max, seq[2]))
            for name in (names.INPUT_IDS, names.ATTENTION_MASK, names.POSITION_IDS)
        },
    }
    out[names.LLM_PREFILL][names.INPUTS_EMBEDS] = ((1, seq[0], hidden), (1, seq[1], hidden), (b_max, seq[2], hidden))
    counts = manifest["pruning"]["layer_counts"]
    groups = manifest["pruning"]["layer_groups"]
    decode = {
        names.INPUTS_EMBEDS: ((1, 1, hidden), (1, 1, hidden), (b_max, 1, hidden)),
        names.POSITION_IDS: ((1, 1), (1, 1), (b_max, 1)),
    }
    for g in range(max(groups) + 1):
        k = counts[groups.index(g)]
        past = (k + 1, k + limits.opt_text_tokens + 8, k + limits.max_text_tokens + limits.max_new_tokens)
        decode[names.group_mask(g)] = tuple((b, p + 1) for b, p in zip((1, 1, b_max), past))
        for li, lg in enumerate(groups):
            if lg == g:
                for kind in names.KV_KINDS:
                    decode[names.past(li, kind)] = tuple((b, kvh, p, hd) for b, p in zip((1, 1, b_max), past))
    out[names.LLM_DECODE] = decode
    return out
