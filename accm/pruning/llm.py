"""LLM-side pruning reference (PyTorch) for HF Llama-family decoders, exact per docs/DESIGN.md.

At a prune point K the score is layer K-1's post-softmax attention of the last *valid* prompt
token over the current image tokens, recomputed as ``softmax(q_last·Kᵀ/√d + mask)`` from that
layer's own norm and q/k projections (so the decoder keeps SDPA), head-mean in float64.
Layers ``≥ K`` see the prefix, the kept image tokens in original order and the suffix, at
their original position ids. Each layer's KV cache holds what that layer saw; decoding never
re-selects. The HF decoder layers themselves do the compute, so eager/SDPA both work.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from .schedule import Schedule
from .select import image_scores, select_tokens


def decoder_of(model):
    """(decoder ``LlamaModel``-like, ``lm_head``) of a LLaVA or causal-LM model."""
    if hasattr(model, "model") and hasattr(model.model, "language_model"):
        return model.model.language_model, model.lm_head
    if hasattr(model, "model") and hasattr(model.model, "layers"):
        return model.model, model.lm_head
    raise TypeError(f"unsupported model type {type(model).__name__}")


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """HF's convention: valid tokens 0..n-1 in order, padding gets 1."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def image_span(image_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-row start of the one contiguous image run and the (shared) run length."""
    counts = image_mask.sum(-1)
    n = int(counts[0]) if counts.numel() else 0
    if bool((counts != n).any()):
        raise ValueError(f"every row of a batch must hold the same number of image tokens, got {counts.tolist()}")
    if n == 0:
        return torch.zeros(image_mask.shape[0], dtype=torch.long, device=image_mask.device), 0
    starts = image_mask.long().argmax(-1)
    idx = torch.arange(image_mask.shape[1], device=image_mask.device)
    expected = (idx[None] >= starts[:, None]) & (idx[None] < starts[:, None] + n)
    if not torch.equal(expected, image_mask.bool()):
        raise ValueError("image tokens must form one contiguous run per row")
    return starts, n


def last_valid_index(valid: torch.Tensor) -> torch.Tensor:
    idx = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
    return torch.where(valid.bool(), idx, -1).max(-1).values


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """``[B, 1, L, L]`` bool: causal in sequence order, invalid keys masked; padding rows see
    themselves only (they are never attended, and this keeps SDPA free of empty rows)."""
    length = valid.shape[1]
    idx = torch.arange(length, device=valid.device)
    mask = (idx[None, :] <= idx[:, None])[None] & valid.bool()[:, None, :]
    mask = mask | torch.eye(length, dtype=torch.bool, device=valid.device)[None]
    return mask[:, None]


def for_attention(mask: torch.Tensor, decoder, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask in the form the decoder's attention implementation expects
    (SDPA takes booleans; eager adds the mask, so it gets 0 / dtype-min)."""
    if decoder.config._attn_implementation == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def last_query_attention(layer, hidden_in, position_embeddings, valid, query_index) -> torch.Tensor:
    """Post-softmax attention (fp32) of each row's query token over all keys: ``[B, H, L]``.

    Recomputed from ``layer``'s input norm and q/k projections with RoPE at the tokens'
    positions: the row ``eager`` attention would return, without materialising ``L × L``.
    """
    attn = layer.self_attn
    if hasattr(attn, "q_norm"):
        raise NotImplementedError("decoders with q/k norms are not supported by the score recompute")
    x = layer.input_layernorm(hidden_in)
    b, length, _ = x.shape
    rows = torch.arange(b, device=x.device)
    q = attn.q_proj(x[rows, query_index][:, None]).view(b, 1, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, length, -1, attn.head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    q, _ = apply_rotary_pos_emb(q, q, cos[rows, query_index][:, None], sin[rows, query_index][:, None])
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    k = repeat_kv(k, attn.num_key_value_groups)
    logits = torch.matmul(q, k.transpose(2, 3)).float() * attn.scaling
    idx = torch.arange(length, device=x.device)
    allowed = valid.bool() & (idx[None] <= query_index[:, None])
    logits = logits.masked_fill(~allowed[:, None, None, :], torch.finfo(torch.float32).min)
    return torch.softmax(logits, dim=-1)[:, :, 0, :]


@dataclasses.dataclass
class PrefillOutput:
    logits: torch.Tensor  # [B, L_final, V] at every position of the final (pruned) sequence
    last_logits: torch.Tensor  # [B, V] at the last valid token
    cache: DynamicCache  # layer l holds what layer l saw
    layer_valid: list[torch.Tensor]  # [B, len_l] valid-key mask of each layer's cache
    next_position: torch.Tensor  # [B] position id of the first generated token
    kept: dict[int, torch.Tensor]  # prune layer -> [B, k] kept offsets into the layer-0 image span
    positions: torch.Tensor  # [B, L_final] position ids of the final sequence
    hidden_states: list[torch.Tensor] | None = None  # input of each layer (+ final), if asked


def prefill(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, image_mask: torch.Tensor,
            schedule: Schedule | None = None, position_ids: torch.Tensor | None = None,
            mode: str = "inplace", output_hidden_states: bool = False,
            forced_keep: dict[int, torch.Tensor] | None = None) -> PrefillOutput:
    """Prefill with the schedule applied.

    ``forced_keep`` (``{layer: [B, k] offsets}``, e.g. an earlier prefill's ``kept``) replaces
    the selection at each prune point: a cache-free re-run with a fixed keep set.

    ``mode="inplace"`` drops pruned tokens (the deployable form); ``mode="mask"`` keeps the
    sequence and masks pruned image keys for the layers after each prune point (FastV's mask
    mode; a test oracle). In mask mode the cache and logits cover the whole sequence.
    """
    if mode not in ("inplace", "mask"):
        raise ValueError(f"mode must be 'inplace' or 'mask', got {mode!r}")
    decoder, lm_head = decoder_of(model)
    schedule = schedule or Schedule.none()
    valid = attention_mask.bool()
    positions = default_position_ids(attention_mask) if position_ids is None else position_ids
    starts, n = image_span(image_mask)
    num_layers = len(decoder.layers)
    points = schedule.prune_points(num_layers, n) if n else {}
    next_position = torch.where(valid, positions, -1).max(-1).values + 1
    bsz = inputs_embeds.shape[0]
    alive = torch.arange(n, device=inputs_embeds.device).expand(bsz, n)  # surviving offsets into the layer-0 image span
    cache = DynamicCache(config=decoder.config)
    layer_valid: list[torch.Tensor] = []
    kept: dict[int, torch.Tensor] = {}
    hidden = inputs_embeds
    key_valid = valid
    record = [] if output_hidden_states else None
    rotary = decoder.rotary_emb(hidden, positions)
    prev_input, prev_rotary = None, None  # the previous layer's input, for its score row
    for li, layer in enumerate(decoder.layers):
        if li in points and forced_keep is not None:
            sel = _offsets_to_selection(alive, forced_keep[li])
        elif li in points:
            q_idx = last_valid_index(valid)
            if mode == "inplace":
                probs = last_query_attention(decoder.layers[li - 1], prev_input, prev_rotary, valid, q_idx)
                scores = image_scores(probs, starts, alive.shape[1])
            else:
                probs = last_query_attention(decoder.layers[li - 1], prev_input, prev_rotary, key_valid, q_idx)
                scores = image_scores(probs, starts, n).gather(1, alive)
            sel = select_tokens(scores, points[li])
        if li in points:
            if mode == "inplace":
                index = _keep_index(starts, alive.shape[1], sel, hidden.shape[1])
                hidden = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
                positions = positions.gather(1, index)
                valid = valid.gather(1, index)
                key_valid = valid
                rotary = decoder.rotary_emb(hidden, positions)
            alive = alive.gather(1, sel)
            kept[li] = alive.clone()
            if mode == "mask":
                pruned = image_mask.bool().clone()
                pruned.scatter_(1, starts[:, None] + alive, False)
                key_valid = valid & ~pruned
        if record is not None:
            record.append(hidden)
        prev_input, prev_rotary = hidden, rotary
        mask = causal_mask(key_valid) if mode == "inplace" else _mask_mode_mask(valid, key_valid)
        mask = for_attention(mask, decoder, hidden.dtype)
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions,
                       past_key_values=cache, use_cache=True)
        layer_valid.append(key_valid.clone())
    hidden = decoder.norm(hidden)
    if record is not None:
        record.append(hidden)
    logits = lm_head(hidden)
    last = logits[torch.arange(bsz, device=logits.device), last_valid_index(valid)]
    return PrefillOutput(logits, last, cache, layer_valid, next_position, kept, positions, record)


def _offsets_to_selection(alive: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Positions within ``alive`` of the given surviving offsets (both ascending)."""
    sel = torch.searchsorted(alive.contiguous(), offsets.contiguous())
    if not torch.equal(alive.gather(1, sel), offsets):
        raise ValueError("forced keep set is not a subset of the surviving tokens")
    return sel


def _mask_mode_mask(valid: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    length = valid.shape[1]
    idx = torch.arange(length, device=valid.device)
    mask = (idx[None, :] <= idx[:, None])[None] & key_valid[:, None, :]
    return (mask | torch.eye(length, dtype=torch.bool, device=valid.device)[None])[:, None]


def _keep_index(starts: torch.Tensor, n_cur: int, sel: torch.Tensor, length: int) -> torch.Tensor:
    """Per-row gather index: prefix, selected image tokens (ascending), suffix."""
    rows, dev = [], sel.device
    for b in range(starts.shape[0]):
        s = int(starts[b])
        rows.append(torch.cat([torch.arange(s, device=dev), s + sel[b], torch.arange(s + n_cur, length, device=dev)]))
    return torch.stack(rows)


def decode_step(model, state: PrefillOutput, token_embeds: torch.Tensor, step: int) -> torch.Tensor:
    """Feed one token per row (``[B, 1, D]``); returns next-token logits ``[B, V]``.

    Generated token ``step`` (0-based) sits at position ``next_position + step`` and is
    appended to every layer's cache; layer l attends to its own cache only.
    """
    decoder, lm_head = decoder_of(model)
    pos = (state.next_position + step)[:, None]
    rotary = decoder.rotary_emb(token_embeds, pos)
    hidden = token_embeds
    ones = torch.ones(token_embeds.shape[0], 1, dtype=torch.bool, device=token_embeds.device)
    for li, layer in enumerate(decoder.layers):
        keys_valid = torch.cat([state.layer_valid[li], ones], dim=1)
        mask = for_attention(keys_valid[:, None, None, :], decoder, hidden.dtype)
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary,
                       position_ids=pos, past_key_values=state.cache, use_cache=True)
        state.layer_valid[li] = keys_valid
    return lm_head(decoder.norm(hidden))[:, -1]


def sample_next(logits: torch.Tensor, do_sample: bool, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-6)
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, inputs_embeds, attention_mask, image_mask, schedule: Schedule | None = None,
             max_new_tokens: int = 16, eos_token_id: int | None = None, pad_token_id: int = 0,
             position_ids: torch.Tensor | None = None, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             step_logits: list | None = None):
    """Greedy or sampled generation with the pruned cache. Returns (tokens ``[B, T]``, prefill).

    With ``step_logits`` (a list), the logits each token was drawn from are appended to it:
    for greedy decoding, the model's distribution teacher-forced on its own answer.
    """
    decoder, _ = decoder_of(model)
    embed = decoder.get_input_embeddings()
    state = prefill(model, inputs_embeds, attention_mask, image_mask, schedule, position_ids)
    logits = state.last_logits
    done = torch.zeros(inputs_embeds.shape[0], dtype=torch.bool, device=inputs_embeds.device)
    out = []
    for step in range(max_new_tokens):
        if step_logits is not None:
            step_logits.append(logits)
        nxt = sample_next(logits, do_sample, temperature, top_k, generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        out.append(nxt)
        if eos_token_id is not None:
            done |= nxt == eos_token_id
        if bool(done.all()) or step + 1 == max_new_tokens:
            break
        logits = decode_step(model, state, embed(nxt[:, None]), step)
    tokens = torch.stack(out, 1) if out else inputs_embeds.new_zeros((inputs_embeds.shape[0], 0), dtype=torch.long)
    return tokens, state
