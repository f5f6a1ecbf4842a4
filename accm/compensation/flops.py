"""Analytic FLOPs of ACCM's compensation (a multiply-add counts as 2 FLOPs, as accm.pruning.flops).

Transformer layers with n tokens and width D count their projections and MLP from the weights
they touch and attention as ``4·n²·D``: the mapper's pre-norm encoder layers (FFN 2D), the
caption LM's GPT-2 blocks (MLP 4D), and the selector's frozen encoder and head. Beam search
decodes ``beams`` sequences of ``caption_tokens`` steps with a KV cache.
"""

from __future__ import annotations


def encoder_layer(n: int, width: int, ffn: int) -> float:
    return 8 * n * width * width + 4 * n * n * width + 4 * n * width * ffn


def cached_step(context: int, width: int, ffn: int) -> float:
    return 8 * width * width + 4 * context * width + 4 * width * ffn


def compensation_flops(caption_cfg, selector_cfg, n_discarded: int, question_tokens: int, caption_tokens: int,
                       selector_tokens: int) -> dict[str, float]:
    """FLOPs of one sample's compensation, per module. The mapper reads the ``input_tokens`` top-scored
    discarded tokens when its config sets them (the selection itself, a top-k, is not counted)."""
    if getattr(caption_cfg, "input_tokens", None):
        n_discarded = min(n_discarded, caption_cfg.input_tokens)
    d = caption_cfg.hidden
    p = caption_cfg.prefix_len
    mapper = 2 * n_discarded * caption_cfg.vision_dim * d
    mapper += caption_cfg.mapper_layers * encoder_layer(n_discarded + p, d, 2 * d)
    first = question_tokens + p + (n_discarded if getattr(caption_cfg, "prefix_all_tokens", False) else 0)
    lm = caption_cfg.lm_layers * encoder_layer(first, d, 4 * d) + 2 * d * caption_cfg.vocab_size
    for t in range(caption_tokens):
        lm += caption_cfg.beams * (caption_cfg.lm_layers * cached_step(first + t + 1, d, 4 * d)
                                   + 2 * d * caption_cfg.vocab_size)
    enc = selector_cfg.encoder
    de, layers = enc["n_embd"], enc["n_layer"]
    selector = caption_cfg.beams * layers * encoder_layer(selector_tokens, de, 4 * de)
    selector += 2 * caption_cfg.beams * de * selector_cfg.hidden
    selector += selector_cfg.layers * encoder_layer(caption_cfg.beams, selector_cfg.hidden, 4 * selector_cfg.hidden)
    return {"caption_mapper": mapper, "caption_lm": lm, "selector": selector, "total": mapper + lm + selector}
