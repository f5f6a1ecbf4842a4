"""ACCM's caption model: a ClipCap-style mapper feeding a GPT-2-class causal LM.

The mapper reads the *discarded* vision tokens (unprojected CLIP features, raster order), or,
with ``input_tokens = m``, only the m of them the CLS attention ranks highest (the same scores
that chose the kept tokens: on a scene, the next objects in line), which cuts its cost by
``N - k`` over m. It linearly maps each token to the LM width, adds a learned embedding of the
token's patch index (ClipCap has no positions; our captions name locations, and the
kept/discarded split removes the raster layout), appends P learned prefix constants, runs a
small pre-norm transformer and outputs the last P positions: the prefix (ClipCap's form), or,
with ``prefix_all_tokens``, every position, so the caption LM can attend to each discarded token
itself instead of reading them through P summary vectors. The LM (``transformers.GPT2LMHeadModel``) reads
``[question embeddings ; prefix]`` and writes the caption. It uses the VLM's own tokenizer, so
captions re-tokenize exactly when spliced into the prompt.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

CONFIG_FILE = "accm_caption.json"
WEIGHTS_FILE = "caption.safetensors"


@dataclasses.dataclass
class CaptionConfig:
    vision_dim: int
    n_patches: int = 576
    vocab_size: int = 32064
    prefix_len: int = 10
    hidden: int = 96
    mapper_layers: int = 1
    mapper_heads: int = 4
    lm_layers: int = 2
    lm_heads: int = 4
    max_positions: int = 160
    max_caption_tokens: int = 67
    input_tokens: int | None = None  # m: the mapper reads the m highest-scored discarded tokens (None: all)
    prefix_all_tokens: bool = False  # the LM reads every mapped token, not only the P summary slots
    beams: int = 3
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    stop_token_ids: tuple[int, ...] = ()

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["stop_token_ids"] = list(self.stop_token_ids)
        return d

    @classmethod
    def from_json(cls, d: dict) -> CaptionConfig:
        d = dict(d)
        d["stop_token_ids"] = tuple(d.get("stop_token_ids", ()))
        return cls(**d)


def encoder_layers(width: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def top_positions(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Positions of the m highest scores per row, ascending; ties to the lower position (the
    ``select_tokens`` rule: a stable sort eagerly, ONNX TopK's lower-index rule when exported)."""
    if torch.onnx.is_in_onnx_export():
        top = torch.topk(scores, m, dim=-1, largest=True, sorted=True).indices
    else:
        top = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :m]
    return torch.sort(top, dim=-1).values


class Mapper(nn.Module):
    def __init__(self, cfg: CaptionConfig):
        super().__init__()
        self.linear = nn.Linear(cfg.vision_dim, cfg.hidden)
        self.patch_embed = nn.Embedding(cfg.n_patches, cfg.hidden)
        self.prefix_const = nn.Parameter(torch.randn(cfg.prefix_len, cfg.hidden) * 0.02)
        self.transformer = encoder_layers(cfg.hidden, cfg.mapper_heads, cfg.mapper_layers)
        self.prefix_len = cfg.prefix_len
        self.input_tokens = cfg.input_tokens
        self.all_tokens = cfg.prefix_all_tokens

    def read_index(self, discarded_index: torch.Tensor, discarded_scores: torch.Tensor) -> torch.Tensor:
        """The patch indices of the discarded tokens this mapper reads (all, or its top m)."""
        m = self.input_tokens
        if m is None or discarded_index.shape[1] <= m:
            return discarded_index
        return torch.gather(discarded_index, 1, top_positions(discarded_scores, m))

    def forward(self, discarded: torch.Tensor, discarded_index: torch.Tensor,
                discarded_scores: torch.Tensor | None = None) -> torch.Tensor:
        m = self.input_tokens
        if m is not None and discarded.shape[1] > m:
            if discarded_scores is None:
                raise ValueError("this caption model reads the top-scored discarded tokens: pass their scores")
            pos = top_positions(discarded_scores, m)
            discarded = torch.gather(discarded, 1, pos.unsqueeze(-1).expand(-1, -1, discarded.shape[-1]))
            discarded_index = torch.gather(discarded_index, 1, pos)
        x = self.linear(discarded) + self.patch_embed(discarded_index)
        const = self.prefix_const.unsqueeze(0).expand(x.shape[0], -1, -1)
        out = self.transformer(torch.cat([x, const], dim=1))
        return out if self.all_tokens else out[:, -self.prefix_len:]


class CaptionModel(nn.Module):
    def __init__(self, cfg: CaptionConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.cfg = cfg
        self.mapper = Mapper(cfg)
        lm_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_positions, n_embd=cfg.hidden,
                            n_layer=cfg.lm_layers, n_head=cfg.lm_heads, bos_token_id=cfg.bos_token_id,
                            eos_token_id=cfg.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        lm_cfg._attn_implementation = "sdpa"
        self.lm = GPT2LMHeadModel(lm_cfg)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.cfg.to_json(), indent=1))
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        state.pop("lm.lm_head.weight", None)  # tied to the token embeddings
        save_file(state, str(directory / WEIGHTS_FILE))

    @classmethod
    def load(cls, directory: Path) -> CaptionModel:
        from safetensors.torch import load_file

        directory = Path(directory)
        model = cls(CaptionConfig.from_json(json.loads((directory / CONFIG_FILE).read_text())))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=False)
        model.lm.tie_weights()
        return model.eval()

    # ------------------------------------------------------------------ compute
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.transformer.wte(ids)

    def prompt_embeds(self, question_ids: list[list[int]], prefix: torch.Tensor):
        """Left-padded ``[question ; prefix]`` embeddings, attention mask and position ids."""
        length = max(len(q) for q in question_ids)
        bsz = len(question_ids)
        ids = torch.full((bsz, length), self.cfg.pad_token_id, dtype=torch.long)
        mask = torch.zeros((bsz, length + prefix.shape[1]), dtype=torch.long)
        for i, q in enumerate(question_ids):
            ids[i, length - len(q):] = torch.tensor(q)
            mask[i, length - len(q):] = 1
        ids, mask = ids.to(prefix.device), mask.to(prefix.device)  # built on the CPU, one copy each
        embeds = torch.cat([self.embed(ids), prefix.to(self.embed(ids).dtype)], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, pos

    def caption_logits(self, question_ids, prefix, caption_ids, attention: list | None = None):
        """Teacher-forced ``(logits [B, T, V], targets [B, T], mask [B, T])``: the logits that
        predict each caption token, the caption right-padded to its longest.

        ``attention``: a list that receives each LM layer's attention weights ``[B, heads, L, L]``
        over ``[question ; prefix ; caption]``, in layer order (eager attention for this call)."""
        embeds, mask, _ = self.prompt_embeds(question_ids, prefix)
        length = max(len(c) for c in caption_ids)
        bsz = len(caption_ids)
        cap = torch.full((bsz, length), self.cfg.pad_token_id, dtype=torch.long)
        cmask = torch.zeros((bsz, length), dtype=torch.long)
        for i, c in enumerate(caption_ids):
            cap[i, : len(c)] = torch.tensor(c)
            cmask[i, : len(c)] = 1
        cap, cmask = cap.to(embeds.device), cmask.to(embeds.device)
        full = torch.cat([embeds, self.embed(cap)], 1)
        fmask = torch.cat([mask, cmask], 1)
        pos = (fmask.cumsum(-1) - 1).clamp(min=0)
        hooks, impl = [], self.lm.config._attn_implementation
        if attention is not None:  # eager attention returns the weights; sdpa does not
            hooks = [block.attn.register_forward_hook(lambda _m, _i, out: attention.append(out[1]))
                     for block in self.lm.transformer.h]
            self.lm.config._attn_implementation = "eager"
        try:
            logits = self.lm(inputs_embeds=full, attention_mask=fmask, position_ids=pos).logits
        finally:
            for hook in hooks:
                hook.remove()
            self.lm.config._attn_implementation = impl
        start = embeds.shape[1]
        return logits[:, start - 1:-1], cap, cmask

    def caption_loss(self, question_ids, prefix, caption_ids, weights: torch.Tensor | None = None,
                     attention: list | None = None):
        """Cross-entropy of each caption (token-mean per sample, then ``weights``-weighted mean);
        ``attention`` as in ``caption_logits``."""
        pred, cap, cmask = self.caption_logits(question_ids, prefix, caption_ids, attention)
        ce = nn.functional.cross_entropy(pred.transpose(1, 2), cap, reduction="none")
        per = (ce * cmask).sum(1) / cmask.sum(1).clamp(min=1)
        if weights is None:
            return per.mean()
        return (per * weights).mean()
