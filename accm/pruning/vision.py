"""Vision-side pruning (PyTorch reference): CLS-query attention top-k inside the CLIP tower.

The score of patch j is the CLS query's post-softmax attention on patch j at a chosen CLIP
layer (default the last), averaged over heads in float64. The kept features go to the LLM in
raster order; the discarded ones (the complement, raster order) feed the ACCM caption model.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import PruningError
from .select import image_scores, select_tokens


def encoder_layers(vision_tower):
    """The CLIP encoder layers of a HF CLIPVisionModel (or its inner CLIPVisionTransformer)."""
    inner = getattr(vision_tower, "vision_model", vision_tower)
    return inner.encoder.layers


def resolve_layer(n_layers: int, layer: int | None) -> int:
    """Layer index in ``[0, n_layers)``; None means the last, negatives count from the end."""
    if layer is None:
        return n_layers - 1
    idx = layer + n_layers if layer < 0 else layer
    if not 0 <= idx < n_layers:
        raise PruningError(f"CLIP score layer {layer} out of range for {n_layers} layers")
    return idx


def cls_attention(layer_module, layer_input: torch.Tensor) -> torch.Tensor:
    """Per-head post-softmax attention of the CLS query over all 577 keys: ``[B, H, 1+N]``.

    Recomputed from the layer's own LayerNorm and q/k projections, so the tower itself can
    keep fast (SDPA) attention. ``layer_input`` is the hidden state entering that layer.
    """
    attn = layer_module.self_attn
    x = layer_module.layer_norm1(layer_input)
    b, n, _ = x.shape
    h, d = attn.num_heads, attn.head_dim
    q = attn.q_proj(x[:, :1]).view(b, 1, h, d).transpose(1, 2)
    k = attn.k_proj(x).view(b, n, h, d).transpose(1, 2)
    logits = torch.matmul(q, k.transpose(-1, -2)) * attn.scale
    return torch.softmax(logits.float(), dim=-1)[:, :, 0, :]


def patch_scores(layer_module, layer_input: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """CLS attention on the patch tokens, head-mean: ``[B, N]``.

    ``exact``: the reference rule (``image_scores``: float64, heads summed in order). Exported
    graphs use a float32 mean instead (TensorRT has no float64).
    """
    probs = cls_attention(layer_module, layer_input)
    if exact:
        return image_scores(probs, 1, probs.shape[-1] - 1)
    return probs[:, :, 1:].mean(dim=1)


@dataclasses.dataclass
class VisionPruned:
    kept: torch.Tensor  # [B, k, D] projected features, raster order
    kept_index: torch.Tensor  # [B, k] int64, ascending
    discarded: torch.Tensor  # [B, N-k, D_vision] unprojected features, raster order
    discarded_index: torch.Tensor  # [B, N-k]
    scores: torch.Tensor  # [B, N] float64

    @property
    def discarded_scores(self) -> torch.Tensor:
        """The CLS scores of the discarded tokens, in their (raster) order: ``[B, N-k]``."""
        return torch.gather(self.scores, 1, self.discarded_index)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b]]`` for ``x [B, N, D]`` and ``index [B, m]``."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def complement(index: torch.Tensor, n: int) -> torch.Tensor:
    """The ascending indices of ``[0, n)`` not in each row of ``index``."""
    keep = torch.zeros(index.shape[0], n, dtype=torch.bool, device=index.device)
    keep.scatter_(1, index, True)
    rows = [torch.nonzero(~keep[b]).squeeze(-1) for b in range(index.shape[0])]
    return torch.stack(rows) if rows else index.new_zeros((0, n - index.shape[1]))


@torch.no_grad()
def vision_features(model, pixel_values: torch.Tensor, keep: int | None, score_layer: int | None = None,
                    generator: torch.Generator | None = None) -> VisionPruned:
    """Run the vision tower and projector of a HF LLaVA, keeping ``keep`` patch tokens.

    ``keep=None`` keeps all. With ``generator`` the kept set is random (the baseline), not
    attention-guided. Features come from ``config.vision_feature_layer`` with the CLS dropped
    (strategy ``default``), exactly what LLaVA feeds its projector.
    """
    cfg = model.config
    if cfg.vision_feature_select_strategy != "default":
        raise ValueError("vision-side pruning needs vision_feature_select_strategy='default'")
    if not isinstance(cfg.vision_feature_layer, int):
        raise ValueError("vision-side pruning needs a single vision_feature_layer")
    inner = model.model if hasattr(model, "model") else model
    tower = inner.vision_tower
    out = tower(pixel_values.to(tower.dtype), output_hidden_states=True)
    hidden = out.hidden_states
    feats = hidden[cfg.vision_feature_layer][:, 1:]
    layers = encoder_layers(tower)
    li = resolve_layer(len(layers), score_layer)
    scores = patch_scores(layers[li], hidden[li])
    n = feats.shape[1]
    if generator is not None:
        rand = torch.rand(scores.shape, generator=generator, dtype=torch.float64)  # the seed's draws on any device
        kept_index = select_tokens(rand.to(scores.device), n if keep is None else keep)
    else:
        kept_index = select_tokens(scores, n if keep is None else keep)
    discarded_index = complement(kept_index, n)
    projected = inner.multi_modal_projector(gather_rows(feats, kept_index))
    return VisionPruned(projected, kept_index, gather_rows(feats, discarded_index), discarded_index, scores)
