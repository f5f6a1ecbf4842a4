"""The sizes of a HF LLaVA that every layer above needs, computed in one place."""

from __future__ import annotations


def patch_count(vision_config) -> int:
    """Image tokens of the CLIP tower (576 for 336 px and patch 14; the CLS token is dropped)."""
    return (vision_config.image_size // vision_config.patch_size) ** 2


def text_dims(config) -> dict:
    """The language model's sizes a bundle records and the runtime uses."""
    t = config.text_config
    heads = t.num_attention_heads
    return {
        "hidden": t.hidden_size, "num_layers": t.num_hidden_layers, "num_heads": heads,
        "num_kv_heads": getattr(t, "num_key_value_heads", None) or heads,
        "head_dim": getattr(t, "head_dim", None) or t.hidden_size // heads, "vocab": t.vocab_size,
        "max_positions": t.max_position_embeddings,
    }
