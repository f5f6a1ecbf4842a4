"""A shape-faithful stand-in for LLaVA-1.5-7B: the real configuration, fewer layers, random weights.

CLIP ViT-L/14-336 vision tower (hidden 1024, 16 heads), 2-layer GELU projector, Vicuna-7B
decoder (hidden 4096, 32 heads, intermediate 11008, vocab 32064, ``<image>`` = 32000), the
vicuna_v1 prompt template, and a locally trained tokenizer padded so ``<image>`` is 32000.
Tests and benchmarks use it wherever real shapes matter; no hub access.
"""

from __future__ import annotations

import functools

from ..data import shapes
from .hf_build import llava_processor
from .templates import VICUNA_V1, render
from .tokenizer import train_bpe

IMAGE_TOKEN_ID = 32000
VOCAB_SIZE = 32064


@functools.lru_cache(maxsize=1)
def standin_tokenizer():
    corpus = []
    for i in range(600):
        scene = shapes.scene_from_graph_only("train", i)
        corpus.append(shapes.describe_scene(scene))
        corpus += [render(VICUNA_V1, q.question) + " " + q.answer for q in shapes.questions_for(scene, 2)]
    return train_bpe(corpus, vocab_size=1000, image_token_id=IMAGE_TOKEN_ID)


def standin_config(num_layers: int = 2, num_vision_layers: int = 2):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    tok = standin_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=num_vision_layers,
        num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=num_layers, num_attention_heads=32, num_key_value_heads=32,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<pad>"), tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=576, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def llava_15_standin(num_layers: int = 2, seed: int = 0, num_vision_layers: int = 2, dtype=None):
    """(model, processor) with LLaVA-1.5-7B's shapes and random weights, deterministic in ``seed``."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = standin_config(num_layers, num_vision_layers)
    model = LlavaForConditionalGeneration(config)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return model, llava_processor(standin_tokenizer(), VICUNA_V1)
