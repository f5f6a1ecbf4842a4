"""Analytic FLOPs, checked against PyTorch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from accm.pruning import flops
from accm.pruning.schedule import Schedule


def test_decoder_layer_formula_matches_torch_flop_counter():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=1, vocab_size=10)
    cfg._attn_implementation = "eager"  # explicit matmuls, which the counter sees
    layer = LlamaDecoderLayer(cfg, 0).eval()
    n = 37
    h = torch.randn(1, n, 64)
    pos = torch.arange(n)[None]
    rot = LlamaRotaryEmbedding(cfg)(h, pos)
    mask = torch.zeros(1, 1, n, n)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(h, attention_mask=mask, position_embeddings=rot, position_ids=pos)
    assert counter.get_total_flops() == flops.decoder_layer_flops(64, 32, 176, n)


def test_config_dims_match_llava_15_7b():
    from accm.models.standin import standin_config

    cfg = standin_config(num_layers=32, num_vision_layers=24)
    assert flops.dims_from_config(cfg) == flops.LLAVA_15_7B


def test_ratios():
    d = flops.LLAVA_15_7B
    assert flops.schedule_flops_ratio(d, Schedule.none(), 64) == 1.0
    r64 = flops.schedule_flops_ratio(d, Schedule.fastv(2, 64), 64)
    r144 = flops.schedule_flops_ratio(d, Schedule.fastv(2, 144), 64)
    assert 0.2 < r64 < r144 < 1.0
    # about (2·640 + 30·128)/(32·640) of the linear work, plus the score recompute
    assert r64 == pytest.approx((2 * 640 + 30 * 128) / (32 * 640), abs=0.02)
    vision64 = flops.schedule_flops_ratio(d, Schedule.none(), 64, vision_keep=64)
    assert vision64 < r64  # pruning before the LLM saves layers 0 and 1 as well


def test_per_layer_prefill_counts_and_score_overhead():
    d = flops.LLAVA_15_7B
    per = flops.prefill_layer_flops(d, 64, [576, 576, 64])
    base = flops.decoder_layer_flops(4096, 4096, 11008, 64 + 64)
    assert per[2] == base + flops.score_flops(4096, 4096, 640)
    assert per[0] == per[1] == flops.decoder_layer_flops(4096, 4096, 11008, 640)


def test_decode_and_pipeline():
    d = flops.LLAVA_15_7B
    full = flops.llm_decode_flops(d, Schedule.none(), 64)
    pruned = flops.llm_decode_flops(d, Schedule.fastv(2, 64), 64)
    assert pruned < full
    stages = flops.pipeline_flops(d, Schedule.none(), 64, vision_keep=64, extra={"caption": 1e9})
    assert stages["total"] == pytest.approx(stages["vision"] + stages["llm_prefill"] + 1e9)


def test_compensation_flops_count_only_the_tokens_the_mapper_reads():
    from accm.compensation.flops import compensation_flops, encoder_layer
    from accm.models.caption import CaptionConfig
    from accm.models.selector import SelectorConfig

    sel = SelectorConfig(encoder={"n_embd": 96, "n_layer": 2}, hidden=128, layers=2, heads=4)
    full = compensation_flops(CaptionConfig(vision_dim=128, hidden=96), sel, 558, 12, 10, 30)
    cheap = compensation_flops(CaptionConfig(vision_dim=128, hidden=96, input_tokens=64), sel, 558, 12, 10, 30)
    assert cheap["caption_lm"] == full["caption_lm"] and cheap["selector"] == full["selector"]
    assert cheap["caption_mapper"] == 2 * 64 * 128 * 96 + encoder_layer(64 + 10, 96, 192)
    assert full["caption_mapper"] > 8 * cheap["caption_mapper"]
