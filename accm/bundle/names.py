"""Every stage and tensor name of a bundle: the exporter writes them, the runtime, the engines
and the manifest checks read them, and nobody else spells them out."""

from __future__ import annotations

# stages
VISION, EMBED, LLM_PREFILL, LLM_DECODE = "vision", "embed", "llm_prefill", "llm_decode"
CAPTION_PREFIX, CAPTION_EMBED = "caption_prefix", "caption_embed"
CAPTION_DECODE, SELECTOR = "caption_decode", "selector"
CORE_STAGES = (VISION, EMBED, LLM_PREFILL, LLM_DECODE)
ACCM_STAGES = (CAPTION_PREFIX, CAPTION_EMBED, CAPTION_DECODE, SELECTOR)
SHARED_WEIGHT_STAGES = (LLM_PREFILL, LLM_DECODE)

# tensors
PIXEL_VALUES = "pixel_values"
IMAGE_EMBEDS = "image_embeds"
KEPT_INDEX = "kept_index"
DISCARDED_FEATURES, DISCARDED_INDEX, DISCARDED_SCORES = "discarded_features", "discarded_index", "discarded_scores"
INPUT_IDS, INPUTS_EMBEDS = "input_ids", "inputs_embeds"
ATTENTION_MASK, POSITION_IDS = "attention_mask", "position_ids"
LOGITS = "logits"
NEW_MASK, PAST_MASK = "new_mask", "past_mask"  # the caption decoder's masks
PREFIX = "prefix"
PROBS = "probs"
KV_KINDS = ("key", "value")

# the TensorRT plugin node of --target trt graphs: ONNX domain and op type, and its version
PLUGIN_DOMAIN, PLUGIN_NAME, PLUGIN_VERSION = "accm", "AccmTokenTopK", "1"
PLUGIN_OUTPUTS = ("kept", "kept_index", "discarded", "discarded_index")


def past(layer: int, kind: str) -> str:
    """A decode graph's input: layer ``layer``'s cached keys or values."""
    return f"past.{layer}.{kind}"


def present(layer: int, kind: str) -> str:
    """A prefill or decode graph's output: layer ``layer``'s keys or values so far."""
    return f"present.{layer}.{kind}"


def kept_index(layer: int) -> str:
    """The prefill graph's output: the image tokens kept from layer ``layer`` on."""
    return f"{KEPT_INDEX}.{layer}"


def group_mask(group: int) -> str:
    """The decode graph's input: the key mask of the layers that share one cache length."""
    return f"{ATTENTION_MASK}.{group}"


def kv_names(layers: int, name=present) -> list[str]:
    """``present.0.key, present.0.value, present.1.key, …`` (or ``past.…``)."""
    return [name(i, kind) for i in range(layers) for kind in KV_KINDS]
