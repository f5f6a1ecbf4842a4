"""Exportable PyTorch modules, one per bundle stage, built from a HF LLaVA's own submodules.

The pruning math is the reference's (``accm.pruning``) rewritten with export-friendly ops:
selection is ONNX ``TopK``, whose specification breaks ties towards the lower index, exactly
``select_tokens``' rule (``torch.topk`` itself leaves ties unspecified, which is why the
PyTorch reference never uses it; tests compare ONNX Runtime's output with ``select_tokens``).
Head means are float32 here (TensorRT has no float64). With ``target="trt"`` both pruning
sites become one ``AccmTokenTopK`` plugin node (``token_topk``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..bundle import names
from ..models.dims import patch_count
from ..pruning.llm import for_attention, last_query_attention
from ..pruning.schedule import Schedule
from ..pruning.vision import encoder_layers, patch_scores, resolve_layer
from .token_topk import gather_tokens, token_topk


class VisionStage(nn.Module):
    """pixel_values → kept projected embeddings (+ indices, discarded features)."""

    def __init__(self, model, keep: int | None, score_layer: int | None = None, target: str = "ort"):
        super().__init__()
        self.target = target
        inner = model.model
        self.tower = inner.vision_tower
        self.projector = inner.multi_modal_projector
        cfg = model.config
        self.feature_layer = cfg.vision_feature_layer
        n_layers = len(encoder_layers(self.tower))
        self.score_layer = resolve_layer(n_layers, score_layer)
        self.n = patch_count(cfg.vision_config)
        self.keep = None if keep is None or keep >= self.n else int(keep)

    def forward(self, pixel_values):
        out = self.tower(pixel_values, output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer][:, 1:]
        if self.keep is None:
            idx = torch.arange(self.n).expand(feats.shape[0], self.n)
            return self.projector(feats), idx
        layer = encoder_layers(self.tower)[self.score_layer]
        scores = patch_scores(layer, out.hidden_states[self.score_layer], exact=False)
        kept, kept_index, dropped, dropped_index = token_topk(scores, feats, self.keep, True, self.target)
        return self.projector(kept), kept_index, dropped, dropped_index, torch.gather(scores, 1, dropped_index)

    def output_names(self) -> list[str]:
        if self.keep is None:
            return [names.IMAGE_EMBEDS, names.KEPT_INDEX]
        return [names.IMAGE_EMBEDS, names.KEPT_INDEX, names.DISCARDED_FEATURES, names.DISCARDED_INDEX,
                names.DISCARDED_SCORES]


class EmbedStage(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids):
        return self.embed(input_ids)


class _KV:
    """The piece of HF's Cache API a decoder layer calls: concatenates and records K/V."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.past = past
        self.present: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key, value, layer_idx, *args, **kwargs):
        if self.past is not None:
            pk, pv = self.past[layer_idx]
            key, value = torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2)
        self.present[layer_idx] = (key, value)
        return key, value


def _layer_mask(valid: torch.Tensor) -> torch.Tensor:
    """Causal, invalid keys masked, padding rows see themselves (bool ``[B, 1, L, L]``)."""
    length = valid.shape[1]
    idx = torch.arange(length, device=valid.device)
    causal = idx[None, :] <= idx[:, None]
    mask = (causal[None] & valid[:, None, :]) | (idx[None, :] == idx[:, None])[None]
    return mask[:, None]


def layer_groups(counts: list[int]) -> list[int]:
    """Group id of each layer: layers between two prune points share a KV length."""
    groups, g = [], 0
    for li, c in enumerate(counts):
        if li > 0 and c < counts[li - 1]:
            g += 1
        groups.append(g)
    return groups


class PrefillStage(nn.Module):
    """Prefill with the LLM-side schedule inside the graph (standard ONNX ops only)."""

    def __init__(self, model, n_image: int, schedule: Schedule, target: str = "ort"):
        super().__init__()
        self.target = target
        self.decoder = model.model.language_model
        self.lm_head = model.lm_head
        self.image_token_id = int(model.config.image_token_index)
        self.n_image = int(n_image)
        self.counts = schedule.layer_counts(len(self.decoder.layers), n_image)
        self.points = schedule.prune_points(len(self.decoder.layers), n_image)

    def forward(self, input_ids, inputs_embeds, attention_mask, position_ids):
        valid = attention_mask > 0
        bsz, length = input_ids.shape
        idx = torch.arange(length, device=input_ids.device)
        query = torch.where(valid, idx[None], -1).amax(dim=1)
        start = torch.argmax((input_ids == self.image_token_id).to(torch.int32), dim=1)
        alive = torch.arange(self.n_image, device=input_ids.device).expand(bsz, self.n_image)
        n_cur = self.n_image
        hidden = inputs_embeds
        positions = position_ids
        rotary = self.decoder.rotary_emb(hidden, positions)
        cache = _KV()
        kept_out = []
        prev = None
        for li, layer in enumerate(self.decoder.layers):
            if li in self.points:
                k = self.points[li]
                new_len = hidden.shape[1] - n_cur + k
                j = torch.arange(new_len, device=input_ids.device)[None]
                rel = j - start[:, None]
                inside = (rel >= 0) & (rel < k)
                if k > 0:
                    probs = last_query_attention(self.decoder.layers[li - 1], prev[0], prev[1], valid, query)
                    cols = start[:, None] + torch.arange(n_cur, device=input_ids.device)[None]
                    scores = torch.gather(probs, 2, cols[:, None, :].expand(-1, probs.shape[1], -1)).mean(dim=1)
                    _, sel = token_topk(scores, gather_tokens(hidden, cols), k, False, self.target)
                    image_src = start[:, None] + torch.gather(sel, 1, rel.clamp(0, k - 1))
                else:  # every image token dropped: nothing to score or select (the plugin needs k >= 1)
                    sel = alive[:, :0]
                    image_src = j.expand(bsz, -1)
                index = torch.where(inside, image_src, torch.where(rel < 0, j, j + (n_cur - k)))
                hidden = gather_tokens(hidden, index)
                positions = torch.gather(positions, 1, index)
                valid = torch.gather(valid, 1, index)
                query = query - (n_cur - k)
                alive = torch.gather(alive, 1, sel)
                kept_out.append(alive)
                n_cur = k
                rotary = self.decoder.rotary_emb(hidden, positions)
            prev = (hidden, rotary)
            mask = for_attention(_layer_mask(valid), self.decoder, hidden.dtype)
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary,
                           position_ids=positions, past_key_values=cache, use_cache=True)
        last = hidden[torch.arange(bsz, device=hidden.device), query]
        logits = self.lm_head(self.decoder.norm(last))
        presents = [t for li in range(len(self.decoder.layers)) for t in cache.present[li]]
        return (logits, *kept_out, *presents)

    def output_names(self) -> list[str]:
        kept = [names.kept_index(li) for li in sorted(self.points)]
        return [names.LOGITS, *kept, *names.kv_names(len(self.decoder.layers))]


class DecodeStage(nn.Module):
    """One token per row; each layer attends to its own cache (lengths differ by group)."""

    def __init__(self, model, counts: list[int]):
        super().__init__()
        self.decoder = model.model.language_model
        self.lm_head = model.lm_head
        self.groups = layer_groups(counts)

    @property
    def n_groups(self) -> int:
        return max(self.groups) + 1

    def forward(self, inputs_embeds, position_ids, *rest):
        masks = rest[: self.n_groups]
        past = rest[self.n_groups:]
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(self.decoder.layers))]
        cache = _KV(pairs)
        rotary = self.decoder.rotary_emb(inputs_embeds, position_ids)
        hidden = inputs_embeds
        for li, layer in enumerate(self.decoder.layers):
            mask = for_attention((masks[self.groups[li]] > 0)[:, None, None, :], self.decoder, hidden.dtype)
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=position_ids,
                           past_key_values=cache, use_cache=True)
        logits = self.lm_head(self.decoder.norm(hidden[:, -1]))
        presents = [t for li in range(len(self.decoder.layers)) for t in cache.present[li]]
        return (logits, *presents)

    def input_names(self) -> list[str]:
        masks = [names.group_mask(g) for g in range(self.n_groups)]
        return [names.INPUTS_EMBEDS, names.POSITION_IDS, *masks, *names.kv_names(len(self.decoder.layers), names.past)]

    def output_names(self) -> list[str]:
        return [names.LOGITS, *names.kv_names(len(self.decoder.layers))]


class CaptionPrefixStage(nn.Module):
    """discarded features + their patch indices → the caption LM's prefix embeddings."""

    def __init__(self, caption):
        super().__init__()
        self.mapper = caption.mapper

    def forward(self, discarded_features, discarded_index, discarded_scores):
        return self.mapper(discarded_features, discarded_index, discarded_scores)


class CaptionDecodeStage(nn.Module):
    """The caption LM (GPT-2 blocks) on ``T`` new embeddings with a KV cache of length ``P``.

    The first pass feeds ``[question ; prefix]`` with an empty cache, each beam step one token.
    ``past_mask [B, P]`` and ``new_mask [B, T]`` mark valid cache entries and new tokens (two
    inputs, as an export cannot tie one dynamic length to the sum of two others). Returns the
    last position's logits.
    """

    def __init__(self, caption):
        super().__init__()
        self.lm = caption.lm
        self.blocks = caption.lm.transformer.h

    def forward(self, inputs_embeds, new_mask, past_mask, position_ids, *past):
        attention_mask = torch.cat([past_mask, new_mask], dim=1)
        n_new = inputs_embeds.shape[1]
        total = attention_mask.shape[1]
        keys = torch.arange(total, device=inputs_embeds.device)
        query_abs = keys[-n_new:] if n_new > 0 else keys[:0]
        allowed = (keys[None, :] <= query_abs[:, None])[None] & (attention_mask > 0)[:, None, :]
        allowed = (allowed | (keys[None, :] == query_abs[:, None])[None])[:, None]
        mask = for_attention(allowed, self.lm.transformer, inputs_embeds.dtype)
        cache = _KV([(past[2 * i], past[2 * i + 1]) for i in range(len(self.blocks))])
        hidden = inputs_embeds + self.lm.transformer.wpe(position_ids)
        for block in self.blocks:
            hidden = block(hidden, past_key_values=cache, attention_mask=mask, use_cache=True)
        logits = self.lm.lm_head(self.lm.transformer.ln_f(hidden[:, -1]))
        presents = [t for li in range(len(self.blocks)) for t in cache.present[li]]
        return (logits, *presents)

    def input_names(self) -> list[str]:
        return [names.INPUTS_EMBEDS, names.NEW_MASK, names.PAST_MASK, names.POSITION_IDS,
                *names.kv_names(len(self.blocks), names.past)]

    def output_names(self) -> list[str]:
        return [names.LOGITS, *names.kv_names(len(self.blocks))]


class SelectorStage(nn.Module):
    """Candidate texts ``[B, M, T]`` → selector probabilities ``[B, M]``."""

    def __init__(self, selector):
        super().__init__()
        self.selector = selector

    def forward(self, input_ids, attention_mask):
        return torch.softmax(self.selector(input_ids, attention_mask), dim=-1)
