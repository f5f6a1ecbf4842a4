"""Analytic FLOPs of each pipeline stage (a multiply-add counts as 2 FLOPs).

Decoder layer with n tokens, hidden d, KV width d_kv, MLP width m (SwiGLU, three matrices):

    q,o projections 4·n·d²  +  k,v projections 4·n·d·d_kv  +  attention 4·n²·d  +  MLP 6·n·d·m

This is FastV's per-layer formula ``4nd² + 2n²d + 2ndm`` (arXiv 2403.06764, §4) in FLOPs rather
than multiply-adds, with LLaMA's gated MLP counted as three matrices (as SparseVLM's code does)
and causal attention counted as the full n² (the convention of both). A prune point adds the
score recompute of the previous layer's last query row: q and k projections and one row of
logits, ``2·d² + 2·n·d·d_kv + 2·n·d``. Decode of one token with c cached entries in a layer is
the same formula with n = 1 and attention ``4·c·d``.

CLIP vision layer with N tokens, width D, MLP M (two matrices): ``8·N·D² + 4·N²·D + 4·N·D·M``;
patch embedding ``2·N_p·(3·p²)·D``; the projector ``2·k·(D·d + d·d)``. The LM head is counted once
per produced token (``2·d·V``).
"""

from __future__ import annotations

import dataclasses

from ..models.dims import patch_count
from .schedule import Schedule


@dataclasses.dataclass(frozen=True)
class ModelDims:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers_run: int  # CLIP layers executed up to the feature layer
    patches: int
    patch_size: int

    @property
    def kv_width(self) -> int:
        return self.hidden // self.heads * self.kv_heads


def dims_from_config(config) -> ModelDims:
    """From a HF ``LlavaConfig``."""
    t, v = config.text_config, config.vision_config
    n_vis = v.num_hidden_layers
    layer = config.vision_feature_layer
    run = n_vis + 1 + layer if layer < 0 else layer  # hidden_states[i] is the output of layer i-1
    return ModelDims(
        hidden=t.hidden_size, intermediate=t.intermediate_size, heads=t.num_attention_heads,
        kv_heads=getattr(t, "num_key_value_heads", None) or t.num_attention_heads,
        layers=t.num_hidden_layers, vocab=t.vocab_size, vision_hidden=v.hidden_size,
        vision_intermediate=v.intermediate_size, vision_layers_run=run,
        patches=patch_count(v), patch_size=v.patch_size,
    )


#: LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf): Vicuna-7B + CLIP ViT-L/14-336, features from layer -2
LLAVA_15_7B = ModelDims(hidden=4096, intermediate=11008, heads=32, kv_heads=32, layers=32, vocab=32064,
                        vision_hidden=1024, vision_intermediate=4096, vision_layers_run=23,
                        patches=576, patch_size=14)


def decoder_layer_flops(d: int, d_kv: int, m: int, n: int) -> float:
    return 4 * n * d * d + 4 * n * d * d_kv + 4 * n * n * d + 6 * n * d * m


def score_flops(d: int, d_kv: int, n: int) -> float:
    return 2 * d * d + 2 * n * d * d_kv + 2 * n * d


def prefill_layer_flops(dims: ModelDims, n_text: int, layer_counts: list[int]) -> list[float]:
    """Per-layer prefill FLOPs when layer l sees ``layer_counts[l]`` image tokens."""
    out = []
    for li, c in enumerate(layer_counts):
        f = decoder_layer_flops(dims.hidden, dims.kv_width, dims.intermediate, n_text + c)
        if li > 0 and c < layer_counts[li - 1]:  # score recompute from layer li-1
            f += score_flops(dims.hidden, dims.kv_width, n_text + layer_counts[li - 1])
        out.append(f)
    return out


def llm_prefill_flops(dims: ModelDims, schedule: Schedule, n_text: int, n_image: int | None = None) -> float:
    n_image = dims.patches if n_image is None else n_image
    counts = schedule.layer_counts(dims.layers, n_image)
    return sum(prefill_layer_flops(dims, n_text, counts)) + 2 * dims.hidden * dims.vocab


def llm_decode_flops(dims: ModelDims, schedule: Schedule, n_text: int, n_image: int | None = None,
                     generated: int = 0) -> float:
    """FLOPs of producing one more token after ``generated`` tokens."""
    n_image = dims.patches if n_image is None else n_image
    counts = schedule.layer_counts(dims.layers, n_image)
    d, dkv, m = dims.hidden, dims.kv_width, dims.intermediate
    per = [4 * d * d + 4 * d * dkv + 4 * (n_text + c + generated + 1) * d + 6 * d * m for c in counts]
    return sum(per) + 2 * d * dims.vocab


def vision_flops(dims: ModelDims, keep: int | None = None) -> float:
    """CLIP tower up to the feature layer, the CLS score row, and the projector on kept tokens."""
    n = dims.patches + 1
    D, M = dims.vision_hidden, dims.vision_intermediate
    tower = dims.vision_layers_run * (8 * n * D * D + 4 * n * n * D + 4 * n * D * M)
    embed = 2 * dims.patches * 3 * dims.patch_size**2 * D
    score = 2 * n * D * D + 2 * D * D + 2 * n * D if keep is not None else 0.0
    k = dims.patches if keep is None else min(keep, dims.patches)
    projector = 2 * k * (D * dims.hidden + dims.hidden * dims.hidden)
    return tower + embed + score + projector


def schedule_flops_ratio(dims: ModelDims, schedule: Schedule, n_text: int, vision_keep: int | None = None) -> float:
    """LLM prefill FLOPs of (vision keep, schedule) over the unpruned model's, same prompt."""
    n_image = dims.patches if vision_keep is None else min(vision_keep, dims.patches)
    pruned = llm_prefill_flops(dims, schedule, n_text, n_image)
    full = llm_prefill_flops(dims, Schedule.none(), n_text, dims.patches)
    return pruned / full


def pipeline_flops(dims: ModelDims, schedule: Schedule, n_text: int, vision_keep: int | None = None,
                   extra: dict[str, float] | None = None) -> dict[str, float]:
    """FLOPs per stage of one prefill: vision, LLM prefill, and any extra modules (caption, selector)."""
    n_image = dims.patches if vision_keep is None else min(vision_keep, dims.patches)
    out = {"vision": vision_flops(dims, vision_keep), "llm_prefill": llm_prefill_flops(dims, schedule, n_text, n_image)}
    out.update(extra or {})
    out["total"] = sum(out.values())
    return out
